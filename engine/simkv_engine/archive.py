"""The engine's S3 archive: one object per KV chunk with its TTL in the object's metadata, an
in-memory index rebuilt from the bucket at start, and the archive worker (a background thread)
that expires, refreshes and uploads chunks as the scenario's TTL policy decides.

Keys. A chunk is named by a hash of the whole token prefix up to its end, stable across
processes, restarts and Python versions (LMCache's own key is Python's ``hash()`` of int
tuples: seed-independent, but not a documented format, so the archive does not rely on it)::

    h_b = blake2b_64(h_{b-1} (8 bytes, little-endian) || token ids of chunk b (uint32 LE)),  h_{-1} = 0

Object ``{prefix}/{model}/{h:016x}``, where ``model`` is :func:`model_fingerprint` (a digest
of the KV layout, the chunk size and a sample of the weights): engines hosting different
models can share a bucket and never see each other's chunks. The body is the chunk's KV
(``[2, layers, chunk, kv_heads, head_dim]`` in the model's dtype, C order) compressed by the
scenario's ``tiers.archive.codec`` (``zstd``, ``zlib`` or ``none``). Metadata (S3 user
metadata, ``x-amz-meta-simkv-*``; a ``.meta.json`` file beside the body in a local folder):
``deadline`` (engine-clock epoch seconds), ``ttl``, ``access-count``, ``prompt-class``
(URL-quoted), ``codec``, ``raw-bytes``, ``sha256`` (of the raw bytes), ``dtype``, ``shape``,
``chunk-size``, ``model``, ``version``. A fetch checks the layout fields against the engine's,
decompresses, and checks the length and SHA-256 of the result before the KV is used.

Storage (:func:`open_store`): ``s3://bucket/prefix`` through boto3 (any endpoint; credentials
from boto3's usual chain; connect/read timeouts and one retry so that an unreachable or slow
endpoint fails a request in seconds instead of hanging it), or a local folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from simkv.errors import ScenarioError, SimkvError
from simkv.policies.state import PolicyState
from simkv.scenario import ARCHIVE_CODECS
from simkv_engine.models import KVShape

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
_MASK64 = (1 << 64) - 1
#: The kinds an archive error is counted under in ``archive_errors``.
ERROR_KINDS = ("unreachable", "timeout", "corrupt", "missing", "other")


class ArchiveError(Exception):
    """An archive operation failed; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class ArchiveConfigError(SimkvError):
    """The archive's location cannot be used (no such bucket, a bad URL)."""


# -- chunk names and layout ------------------------------------------------------------------

def chunk_hashes(tokens: Sequence[int], chunk_size: int) -> list[int]:
    """The archive's uint64 hashes of the full chunks of ``tokens`` (see the module docstring)."""
    out: list[int] = []
    prev = 0
    arr = np.asarray(tokens, dtype="<u4")
    for lo in range(0, len(arr) // chunk_size * chunk_size, chunk_size):
        digest = hashlib.blake2b(prev.to_bytes(8, "little") + arr[lo:lo + chunk_size].tobytes(),
                                 digest_size=8).digest()
        prev = int.from_bytes(digest, "little") & _MASK64
        out.append(prev)
    return out


def model_fingerprint(model: torch.nn.Module, kv: KVShape, chunk_size: int) -> str:
    """16 hex digits identifying what a chunk's KV depends on: the KV layout and dtype, the chunk
    size, the config's shape keys, and the first 64 values of every parameter (tells two
    checkpoints, or two seeds, of one shape apart without hashing gigabytes)."""
    cfg = model.config
    h = hashlib.blake2b(digest_size=8)
    desc = {"layers": kv.layers, "kv_heads": kv.kv_heads, "head_dim": kv.head_dim, "dtype": str(kv.dtype),
            "chunk_size": chunk_size, "model_type": getattr(cfg, "model_type", ""),
            "vocab_size": getattr(cfg, "vocab_size", 0), "hidden_size": getattr(cfg, "hidden_size", 0)}
    h.update(json.dumps(desc, sort_keys=True).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ChunkFormat:
    """What a stored chunk must match to be loaded: dtype, shape, chunk size, model."""

    dtype: str
    shape: tuple[int, ...]
    chunk_size: int
    model: str

    @classmethod
    def of(cls, kv: KVShape, chunk_size: int, model: str) -> ChunkFormat:
        return cls(str(kv.dtype).removeprefix("torch."), (2, kv.layers, chunk_size, kv.kv_heads, kv.head_dim),
                   chunk_size, model)

    @property
    def raw_bytes(self) -> int:
        return int(np.prod(self.shape)) * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()

    def meta(self) -> dict[str, str]:
        return {"dtype": self.dtype, "shape": ",".join(map(str, self.shape)),
                "chunk-size": str(self.chunk_size), "model": self.model, "version": FORMAT_VERSION}

    def mismatch(self, meta: dict[str, str]) -> str | None:
        """The first layout field of ``meta`` that differs from this format, or ``None``."""
        for k, v in self.meta().items():
            if meta.get(k) != v:
                return f"{k} is {meta.get(k)!r}, this engine's is {v!r}"
        return None

    def to_bytes(self, chunk: torch.Tensor) -> bytes:
        """A chunk tensor (``shape``, any device) as raw bytes, C order."""
        return chunk.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    def to_tensor(self, raw: bytes, device: torch.device) -> torch.Tensor:
        t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(getattr(torch, self.dtype))
        return t.view(self.shape).to(device)


# -- codecs --------------------------------------------------------------------------------

def _zstd() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    import zstandard

    # Contexts are not thread-safe: one per call (cheap next to a chunk's bytes).
    return (lambda b: zstandard.ZstdCompressor(level=3).compress(b),
            lambda b: zstandard.ZstdDecompressor().decompress(b))


CODECS: dict[str, Callable[[], tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]] = {
    "zstd": _zstd,
    "zlib": lambda: (lambda b: zlib.compress(b, 1), zlib.decompress),
    "none": lambda: (bytes, bytes),
}


def codec(name: str, key: str = "tiers.archive.codec") -> tuple[Callable[[bytes], bytes],
                                                                  Callable[[bytes], bytes]]:
    """``(compress, decompress)`` of a codec name; an unknown name is a :class:`ScenarioError`."""
    if name not in ARCHIVE_CODECS:  # the scenario's list, which CODECS implements
        raise ScenarioError(f"{key}: {name!r} is not one of {list(ARCHIVE_CODECS)}")
    return CODECS[name]()


# -- stores --------------------------------------------------------------------------------

class ArchiveStore(ABC):
    """Objects by name (``model/hash``) under the store's root: a body and string metadata.
    Every failure is an :class:`ArchiveError`."""

    location = ""

    @abstractmethod
    def put(self, name: str, body: bytes, meta: dict[str, str]) -> None: ...

    @abstractmethod
    def get(self, name: str) -> tuple[bytes, dict[str, str]]: ...

    @abstractmethod
    def head(self, name: str) -> tuple[int, dict[str, str]]:
        """Stored size and metadata."""

    @abstractmethod
    def set_meta(self, name: str, meta: dict[str, str]) -> None:
        """Replace an object's metadata (S3: a COPY onto itself, a new object)."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def list(self, folder: str) -> Iterator[str]:
        """Names of the objects under ``folder``."""

    def check(self) -> None:  # noqa: B027 - most stores have nothing to check
        """Refuse a location that cannot exist (a missing bucket); transient errors pass."""

    def close(self) -> None:  # noqa: B027 - most stores hold no connections
        """Release connections."""


class LocalStore(ArchiveStore):
    """A folder: ``ROOT/model/hash`` (the body) and ``ROOT/model/hash.meta.json``; each file is
    written to a temporary name and renamed, the metadata last, so a reader never sees a
    body without its metadata."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def put(self, name: str, body: bytes, meta: dict[str, str]) -> None:
        try:
            self._write(self.root / name, body)
            self._write(self.root / f"{name}.meta.json", json.dumps(meta).encode())
        except OSError as exc:
            raise ArchiveError("other", f"{self.root / name}: {exc}") from None

    def _meta(self, name: str) -> dict[str, str]:
        try:
            return json.loads((self.root / f"{name}.meta.json").read_text())
        except FileNotFoundError:
            raise ArchiveError("missing", f"{self.root / name}: no such object") from None
        except (OSError, ValueError) as exc:
            raise ArchiveError("corrupt", f"{self.root / name}.meta.json: {exc}") from None

    def get(self, name: str) -> tuple[bytes, dict[str, str]]:
        meta = self._meta(name)
        try:
            return (self.root / name).read_bytes(), meta
        except FileNotFoundError:
            raise ArchiveError("missing", f"{self.root / name}: no such object") from None
        except OSError as exc:
            raise ArchiveError("other", f"{self.root / name}: {exc}") from None

    def head(self, name: str) -> tuple[int, dict[str, str]]:
        meta = self._meta(name)
        try:
            return (self.root / name).stat().st_size, meta
        except FileNotFoundError:
            raise ArchiveError("missing", f"{self.root / name}: no such object") from None

    def set_meta(self, name: str, meta: dict[str, str]) -> None:
        if not (self.root / name).exists():
            raise ArchiveError("missing", f"{self.root / name}: no such object")
        try:
            self._write(self.root / f"{name}.meta.json", json.dumps(meta).encode())
        except OSError as exc:
            raise ArchiveError("other", f"{self.root / name}: {exc}") from None

    def delete(self, name: str) -> None:
        for path in (self.root / f"{name}.meta.json", self.root / name):
            path.unlink(missing_ok=True)

    def list(self, folder: str) -> Iterator[str]:
        base = self.root / folder
        if not base.is_dir():
            return
        for path in sorted(base.glob("*.meta.json")):
            name = path.name.removesuffix(".meta.json")
            if (base / name).exists():
                yield f"{folder}/{name}"


def _s3_error(exc: Exception, what: str) -> ArchiveError:
    """Classify a boto3/botocore exception by kind."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return ArchiveError("timeout", f"{what}: {exc}")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError | bx.ProxyConnectionError
                  | bx.HTTPClientError):
        return ArchiveError("unreachable", f"{what}: {exc}")
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return ArchiveError("missing", f"{what}: no such object")
        return ArchiveError("other", f"{what}: {exc}")
    if isinstance(exc, bx.ResponseStreamingError | bx.IncompleteReadError):
        return ArchiveError("unreachable", f"{what}: {exc}")
    return ArchiveError("other", f"{what}: {type(exc).__name__}: {exc}")


class S3Store(ArchiveStore):
    """``s3://bucket/prefix`` through boto3. ``timeout_s`` bounds each connect and each read;
    ``attempts`` counts the first try (boto3's standard retry mode), so a dead or stalled endpoint
    fails an operation after about ``attempts * timeout_s`` seconds plus the retry backoff."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 timeout_s: float = 2.0, attempts: int = 2, storage_class: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not url.startswith("s3://") or not bucket:
            raise ArchiveConfigError(f"archive {url!r}: expected s3://bucket[/prefix]")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = url
        self.storage_class = storage_class
        config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                        retries={"max_attempts": attempts, "mode": "standard"},
                        s3={"addressing_style": "path"} if endpoint_url else None,
                        max_pool_connections=16)
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region,
                                                     config=config)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:  # every botocore failure becomes a counted ArchiveError
            raise _s3_error(exc, f"{what} s3://{self.bucket}/{kwargs.get('Key', '')}") from None

    def put(self, name: str, body: bytes, meta: dict[str, str]) -> None:
        extra = {"StorageClass": self.storage_class} if self.storage_class else {}
        self._call("PUT", self.client.put_object, Key=self._key(name), Body=body, Metadata=meta,
                   ContentType="application/octet-stream", ChecksumAlgorithm="SHA256", **extra)

    def get(self, name: str) -> tuple[bytes, dict[str, str]]:
        key = self._key(name)
        resp = self._call("GET", self.client.get_object, Key=key)
        try:
            body = resp["Body"].read()
        except Exception as exc:
            raise _s3_error(exc, f"GET s3://{self.bucket}/{key}") from None
        return body, resp.get("Metadata", {})

    def head(self, name: str) -> tuple[int, dict[str, str]]:
        resp = self._call("HEAD", self.client.head_object, Key=self._key(name))
        return int(resp["ContentLength"]), resp.get("Metadata", {})

    def set_meta(self, name: str, meta: dict[str, str]) -> None:
        key = self._key(name)
        extra = {"StorageClass": self.storage_class} if self.storage_class else {}
        self._call("COPY", self.client.copy_object, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                   Metadata=meta, MetadataDirective="REPLACE", **extra)

    def delete(self, name: str) -> None:
        self._call("DELETE", self.client.delete_object, Key=self._key(name))

    def list(self, folder: str) -> Iterator[str]:
        root = self._key(folder) + "/"
        token: dict[str, str] = {}
        while True:
            resp = self._call("LIST", self.client.list_objects_v2, Prefix=root, **token)
            for obj in resp.get("Contents", []):
                yield folder + "/" + obj["Key"][len(root):]
            if not resp.get("IsTruncated"):
                return
            token = {"ContinuationToken": resp["NextContinuationToken"]}

    def check(self) -> None:
        try:
            self._call("HEAD", self.client.head_bucket)
        except ArchiveError as exc:
            if exc.kind in ("missing", "other"):
                raise ArchiveConfigError(
                    f"archive {self.location}: the bucket cannot be used ({exc})") from None
            # unreachable / timeout: the engine starts anyway; the index rebuild counts it and retries

    def close(self) -> None:
        self.client.close()


#: Scenario storage classes the engine can PUT into (the others need a restore before a GET).
S3_STORAGE_CLASSES = {"standard": None, "standard_ia": "STANDARD_IA", "glacier_ir": "GLACIER_IR"}


def open_store(location: str | Path, *, endpoint_url: str | None = None, region: str | None = None,
               timeout_s: float = 2.0, storage_class: str = "standard") -> ArchiveStore:
    """``s3://bucket/prefix`` → :class:`S3Store`; anything else is a local folder."""
    text = str(location)
    if text.startswith("s3://"):
        if storage_class not in S3_STORAGE_CLASSES:
            raise ScenarioError(f"tiers.archive.storage_class: {storage_class!r} objects must be restored "
                                f"before a GET; the engine archives to {', '.join(S3_STORAGE_CLASSES)}")
        return S3Store(text, endpoint_url=endpoint_url, region=region, timeout_s=timeout_s,
                       storage_class=S3_STORAGE_CLASSES[storage_class])
    if endpoint_url:
        raise ArchiveConfigError(f"archive {text!r}: an endpoint URL needs an s3://bucket location")
    return LocalStore(text.removeprefix("file://"))


# -- the index and the worker --------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveOptions:
    """Where the engine's archive lives and how it is reached: engine options, like LMCache's
    disk folder, so that one scenario file (what the archive does: codec, interval, TTLs)
    serves the simulator and the engine unchanged and keeps its ``scenario_sha256``.

    ``location``: ``s3://bucket/prefix`` or a local folder; ``endpoint_url`` / ``region``: the
    S3 endpoint (any S3 API; boto3's defaults when ``None``); ``timeout_s``: each connect and read
    (one retry); ``clock_scale``: engine time runs this many times faster than the wall clock
    (TTLs and ``interval_s`` shrink with it; a replay at speed k sets k); ``clock``: a clock of
    epoch seconds to use instead (tests); ``worker_thread``: run passes in the background (off:
    the caller calls ``engine.archive.run_pass()``)."""

    location: str | Path
    endpoint_url: str | None = None
    region: str | None = None
    timeout_s: float = 2.0
    clock_scale: float = 1.0
    clock: Callable[[], float] | None = None
    worker_thread: bool = True


@dataclass(slots=True)
class IndexEntry:
    """An archived chunk: its deadline (engine clock), stored size, metadata, and (trace clock)
    the time its upload lands, before which lookups do not see it."""

    deadline: float
    stored_bytes: int
    meta: dict[str, str] = field(repr=False)
    visible_from: float = -math.inf


class EngineClock:
    """Engine time in epoch seconds, running ``scale`` times faster than the wall clock from
    the moment it is made (``scale=1``: ``time.time()``). A replay at speed ``k`` uses
    ``scale=k`` so that TTLs and the worker's interval shrink with the trace's gaps."""

    def __init__(self, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError("clock scale must be > 0")
        self.scale = scale
        self._t0 = time.time()

    def __call__(self) -> float:
        now = time.time()
        return self._t0 + (now - self._t0) * self.scale


class TraceClock:
    """Engine time set by the requests (``simkv engine serve --clock trace``): seconds on the
    trace's time axis, the arrival time of the latest request (``arrival_s``), never running
    backwards. With it the archive worker has no thread: :meth:`ArchiveWorker.advance` runs the
    passes due before each request, at their own times, as the simulator's worker does."""

    scale = 1.0

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


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
