"""The archive worker: the in-memory index of the archived chunks (rebuilt from the store at
start) and the passes, run in a background thread or at the trace clock's times, that expire,
refresh and upload chunks as the scenario's TTL policy decides; and the deep-miss fetches."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

from simkv.core.errors import ScenarioError
from simkv.core.policies.state import PolicyState
from simkv_engine.archive.chunks import ChunkFormat
from simkv_engine.archive.clock import EngineClock, TraceClock
from simkv_engine.archive.codecs import codec
from simkv_engine.archive.store import ERROR_KINDS, ArchiveError, ArchiveStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IndexEntry:
    """An archived chunk: its deadline (engine clock), stored size, metadata, and (trace clock)
    the time its upload lands, before which lookups do not see it."""

    deadline: float
    stored_bytes: int
    meta: dict[str, str] = field(repr=False)
    visible_from: float = -math.inf


@dataclass
class _Upload:
    hash: int
    raw: bytes
    ttl: float
    access_count: int
    prompt_class: str


class ChunkSource(ABC):
    """The engine's side of the worker: which chunks its GPU, CPU or disk tier holds, and
    their KV bytes. Called with the engine's lock held."""

    @abstractmethod
    def held(self, hashes: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def read(self, h: int) -> bytes | None:
        """The raw KV bytes of chunk ``h`` from the fastest tier holding it (``None``: gone)."""


class ArchiveWorker:
    """The archive's index and its background worker (see engine/README.md, "The archive").

    Every ``interval_s`` of engine time after the previous pass finished, a pass (:meth:`run_pass`):
    deletes the objects whose deadline is ``<= now``; asks :meth:`PolicyState.decide_pass` about
    the chunks referenced since the last pass, with this index as the archive's membership and
    the engine's tiers as the held set; slides the deadlines of live candidates (a metadata
    COPY); reads the KV of the uploads from the engine (under its lock, at pass time), then
    compresses and PUTs them with the TTL's deadline in the metadata, outside the lock.
    ``lock`` is the engine's: it guards the policy state and the tiers the worker reads."""

    def __init__(self, store: ArchiveStore, state: PolicyState, fmt: ChunkFormat, codec_name: str,
                 interval_s: float, source: ChunkSource, lock: threading.RLock, *,
                 clock: Callable[[], float] | None = None, busy_per_upload_s: float = 0.0) -> None:
        self.store = store
        self.state = state
        self.fmt = fmt
        self.codec_name = codec_name
        self._compress, _ = codec(codec_name)
        self.interval_s = interval_s
        self.source = source
        self.lock = lock
        self.clock: Callable[[], float] = clock or EngineClock()
        #: Trace clock: the simulator's busy time of a pass per upload (compress + upload; 0 with
        #: zero service time); a pass's uploads land that long after it, the next pass is due
        #: ``interval_s`` after they landed. The first pass is due at ``interval_s``.
        self.busy_per_upload_s = busy_per_upload_s
        self.next_pass_s = (clock.now if isinstance(clock, TraceClock) else 0.0) + interval_s
        self.index: dict[int, IndexEntry] = {}
        self._index_lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._stale = True  # the index still has to be read from the store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="simkv-archive")
        self._closed = False
        self.counts: dict[str, Any] = {
            "uploads": 0, "upload_raw_bytes": 0, "upload_stored_bytes": 0, "compress_s": 0.0,
            "upload_s": 0.0, "refreshes": 0, "skipped": 0, "expirations": 0, "passes": 0,
            "fetches": 0, "fetch_bytes": 0, "fetch_s": 0.0, "decompress_s": 0.0, "rejected_objects": 0,
            "errors": dict.fromkeys(ERROR_KINDS, 0)}
        self._count_lock = threading.Lock()
        self.store.check()
        self.rebuild()

    def name(self, h: int) -> str:
        return f"{self.fmt.model}/{h:016x}"

    def _count(self, key: str, by: float = 1) -> None:
        with self._count_lock:
            self.counts[key] += by

    def error(self, exc: ArchiveError) -> None:
        with self._count_lock:
            self.counts["errors"][exc.kind] += 1
        log.warning("archive %s: %s", self.store.location, exc)

    # -- the index ------------------------------------------------------------------------
    def rebuild(self) -> bool:
        """Read the index from the store (a listing of this model's folder, then a HEAD per
        object); objects whose layout differs from this engine's are left out. A failure
        (endpoint down) is counted and leaves the index stale, to be read again at the next
        pass; entries added meanwhile are kept. Returns whether it succeeded."""
        try:
            names = list(self.store.list(self.fmt.model))
        except ArchiveError as exc:
            self.error(exc)
            return False

        def head(name: str) -> tuple[str, int, dict[str, str]] | ArchiveError:
            try:
                return (name, *self.store.head(name))
            except ArchiveError as exc:
                return exc

        found: dict[int, IndexEntry] = {}
        for res in self._pool.map(head, names):
            if isinstance(res, ArchiveError):
                if res.kind != "missing":     # deleted since the listing: nothing lost
                    self.error(res)
                continue
            name, size, meta = res
            why = self.fmt.mismatch(meta)
            try:
                h = int(name.rsplit("/", 1)[1], 16)
                deadline = float(meta["deadline"])
            except (KeyError, ValueError):
                why = why or "no deadline or a bad name"
            if why:
                log.warning("archive %s: %s left out: %s", self.store.location, name, why)
                self._count("rejected_objects")
                continue
            found[h] = IndexEntry(deadline, size, meta)
        with self._index_lock:
            for h, entry in found.items():
                self.index.setdefault(h, entry)
        if found:
            with self.lock:
                self.state.archived(np.array(list(found), np.uint64), [e.deadline for e in found.values()])
        self._stale = False
        return True

    def live(self, h: int, now: float | None = None) -> bool:
        """Whether chunk ``h`` is in the archive (its upload landed) and not past its deadline."""
        entry = self.index.get(h)
        if entry is None:
            return False
        now = self.clock() if now is None else now
        return entry.visible_from <= now < entry.deadline

    def archived_mask(self, ids: np.ndarray, now: float) -> np.ndarray:
        hashes = self.state.hashes[ids].tolist()
        return np.fromiter((self.live(h, now) for h in hashes), np.bool_, len(hashes))

    # -- the pass -------------------------------------------------------------------------
    def advance(self, t: float) -> float:
        """Trace clock: move engine time to ``t`` (never backwards; returns the time now), first
        running, synchronously and at their own times, every pass due at or before ``t``."""
        clock = self.clock
        if not isinstance(clock, TraceClock):
            raise TypeError("advance() needs the trace clock")
        while self.next_pass_s <= t:
            at = self.next_pass_s
            clock.now = max(clock.now, at)
            busy = self.run_pass(at)
            self.next_pass_s = (at + busy) + self.interval_s
        clock.now = max(clock.now, t)
        return clock.now

    def run_pass(self, now: float | None = None) -> float:
        """One pass at ``now`` (default: the clock's now; see the class docstring). Passes never
        overlap. Returns the pass's busy time in the simulator's terms (uploads decided ×
        ``busy_per_upload_s``); on the trace clock its uploads land (become visible, their TTL
        counting) that long after ``now``."""
        with self._pass_lock:
            if self._stale:
                self.rebuild()
            now = self.clock() if now is None else now
            self._expire(now)
            state, fmt = self.state, self.fmt
            with self.lock:
                d = state.decide_pass(now, lambda ids: self.archived_mask(ids, now),
                                      lambda ids: self.source.held(state.hashes[ids]))
                hashes = state.hashes[d.blocks]
                refresh = list(zip(hashes[d.refresh].tolist(), d.refresh_ttl.tolist(), strict=True))
                uploads: list[_Upload] = []
                ids, rs = d.blocks[d.upload], d.requests[d.upload]
                for h, ttl, b, r in zip(hashes[d.upload].tolist(), d.upload_ttl.tolist(), ids.tolist(),
                                        rs.tolist(), strict=True):
                    raw = self.source.read(h)
                    if raw is None:             # LMCache dropped it since the held check
                        self._count("skipped")
                        continue
                    if len(raw) != fmt.raw_bytes:
                        raise RuntimeError(f"chunk {h:016x}: {len(raw)} bytes, expected {fmt.raw_bytes}")
                    uploads.append(_Upload(h, raw, ttl, max(int(state.refs[b]) - 1, 0),
                                           state.class_names[int(state.req_class[r])]))
            self._count("skipped", d.skipped)
            self._count("passes")
            busy = int(d.upload.sum()) * self.busy_per_upload_s
            land = now + busy if isinstance(self.clock, TraceClock) else None
            for h, ttl in refresh:
                self._refresh(h, now + ttl, ttl)
            for up in uploads:
                self._upload(up, land)
            return busy

    def _expire(self, now: float) -> None:
        with self._index_lock:
            due = [h for h, e in self.index.items() if e.deadline <= now]
            for h in due:
                del self.index[h]
        if not due:
            return
        with self.lock:
            self.state.expired(np.array(due, np.uint64))
        for h in due:
            try:
                self.store.delete(self.name(h))
            except ArchiveError as exc:
                self.error(exc)   # left in the bucket; the next rebuild finds it expired again
            self._count("expirations")

    def _refresh(self, h: int, deadline: float, ttl: float) -> None:
        entry = self.index.get(h)
        if entry is None:
            return
        meta = {**entry.meta, "deadline": repr(deadline), "ttl": repr(ttl)}
        try:
            self.store.set_meta(self.name(h), meta)
        except ArchiveError as exc:
            self.error(exc)
            if exc.kind == "missing":
                with self._index_lock:
                    self.index.pop(h, None)
            return
        with self._index_lock:
            if h in self.index:
                self.index[h] = IndexEntry(deadline, entry.stored_bytes, meta)
        with self.lock:
            self.state.archived(np.array([h], np.uint64), [deadline])
        self._count("refreshes")

    def _upload(self, up: _Upload, land: float | None = None) -> None:
        """Compress and PUT one chunk; it lands now (``land``: at that engine time)."""
        t0 = time.perf_counter()
        body = self._compress(up.raw)
        t1 = time.perf_counter()
        deadline = (self.clock() if land is None else land) + up.ttl
        meta = {"deadline": repr(deadline), "ttl": repr(up.ttl), "access-count": str(up.access_count),
                "prompt-class": quote(up.prompt_class, safe=""), "codec": self.codec_name,
                "raw-bytes": str(len(up.raw)), "sha256": hashlib.sha256(up.raw).hexdigest(),
                **self.fmt.meta()}
        try:
            self.store.put(self.name(up.hash), body, meta)
        except ArchiveError as exc:
            self.error(exc)
            return
        t2 = time.perf_counter()
        with self._index_lock:
            self.index[up.hash] = IndexEntry(deadline, len(body), meta,
                                             -math.inf if land is None else land)
        with self.lock:
            self.state.archived(np.array([up.hash], np.uint64), [deadline])
        with self._count_lock:
            c = self.counts
            c["uploads"] += 1
            c["upload_raw_bytes"] += len(up.raw)
            c["upload_stored_bytes"] += len(body)
            c["compress_s"] += t1 - t0
            c["upload_s"] += t2 - t1

    # -- deep misses ----------------------------------------------------------------------
    def fetch(self, h: int) -> bytes:
        """Chunk ``h``'s raw KV bytes, verified (layout, codec, length, SHA-256). A corrupt or
        vanished object is dropped from the index (a later pass may upload the chunk again)."""
        entry = self.index.get(h)
        if entry is None:
            raise ArchiveError("missing", f"chunk {h:016x} is not in the index")
        t0 = time.perf_counter()
        try:
            body, meta = self.store.get(self.name(h))
            t1 = time.perf_counter()
            why = self.fmt.mismatch(meta)
            if why:
                raise ArchiveError("corrupt", f"{self.name(h)}: {why}")
            try:
                raw = codec(meta.get("codec", ""), f"{self.name(h)}: codec")[1](body)
            except ScenarioError as exc:
                raise ArchiveError("corrupt", str(exc)) from None
            except Exception as exc:  # any codec's failure on a damaged body
                raise ArchiveError("corrupt", f"{self.name(h)}: cannot decompress: {exc}") from None
            if len(raw) != self.fmt.raw_bytes or hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
                raise ArchiveError("corrupt", f"{self.name(h)}: the checksum of the KV does not match")
        except ArchiveError as exc:
            if exc.kind in ("corrupt", "missing"):
                with self._index_lock:
                    self.index.pop(h, None)
            raise
        with self._count_lock:
            c = self.counts
            c["fetches"] += 1
            c["fetch_bytes"] += len(body)
            c["fetch_s"] += t1 - t0
            c["decompress_s"] += time.perf_counter() - t1
        return raw

    def fetch_many(self, hashes: Sequence[int]) -> list[bytes | ArchiveError]:
        """:meth:`fetch` of each, concurrently; each result is the bytes or the error (counted)."""
        def one(h: int) -> bytes | ArchiveError:
            try:
                return self.fetch(h)
            except ArchiveError as exc:
                self.error(exc)
                return exc
        if len(hashes) == 1:
            return [one(hashes[0])]
        return list(self._pool.map(one, hashes))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Run passes in a daemon thread, ``interval_s`` of engine time apart."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="simkv-archive-worker", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        scale = getattr(self.clock, "scale", 1.0)
        next_at = self.clock() + self.interval_s
        while not self._stop.is_set():
            wait = (next_at - self.clock()) / scale
            if wait > 0:
                self._stop.wait(min(wait, 1.0))
                continue
            try:
                self.run_pass()
            except Exception:   # a bug must not kill the worker silently; it is logged and counted
                log.exception("archive pass failed")
                with self._count_lock:
                    self.counts["errors"]["other"] += 1
            next_at = self.clock() + self.interval_s

    def close(self, final_pass: bool = True) -> None:
        """Stop the thread (a pass in flight finishes its uploads), then run one last pass so the
        chunks referenced since the previous one are archived before the engine's tiers go away.
        Nothing is persisted elsewhere: an upload that fails now is counted and lost. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if final_pass:
                self.run_pass()
        finally:
            self._pool.shutdown(wait=True)
            self.store.close()

    def snapshot(self) -> dict[str, Any]:
        with self._count_lock:
            c = {k: dict(v) if isinstance(v, dict) else v for k, v in self.counts.items()}
        with self._index_lock:
            c["objects"] = len(self.index)
            c["stored_bytes"] = sum(e.stored_bytes for e in self.index.values())
        return c
