"""LMCache's CPU, disk and remote backends as the engine's tiers
(:class:`~simkv_engine.backends.TierBackend`).

What they share (:class:`LMCacheTiers`): LMCache's engine, whose ``store`` writes a run of chunks
into every LMCache backend at once (the CPU's put and the disk's write) and whose ``retrieve``
reads a run from the first backend holding it (the CPU, the disk, then the remote store), writing
a chunk read from disk or from the remote store back into the CPU (their ``fills_on_read``). A
chunk the CPU holds already is handed to the disk (and the remote store) from the CPU's copy, so
no staging buffer is allocated for it (an allocation in a full pool evicts). LMCache's private
state is reached only through :mod:`simkv_engine.lmcache_glue` (and the disk's files through
:class:`~simkv_engine.integrity.DiskGuard`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
import torch

from simkv_engine import lmcache_glue
from simkv_engine.backends import Chunk, Prompt, TierCounters, chunk_runs
from simkv_engine.connector import KVLayers
from simkv_engine.engine_types import EngineError
from simkv_engine.integrity import DiskGuard

if TYPE_CHECKING:
    from simkv_engine.archive import ChunkFormat

#: Poll interval of the deterministic drain (after each write) and of a clear's wait.
DRAIN_POLL_S = 0.0005
CLEAR_POLL_S = 0.005
#: How long the remote tier's counters wait for its puts in flight.
COUNTERS_WAIT_S = 1.0


class LMCacheTiers:
    """LMCache's engine and its backends (``cpu`` / ``disk`` / ``remote``: LMCache's own objects,
    ``None`` where the tier is off), and the tiers built over them (:meth:`tiers`, CPU, disk,
    remote). ``remote_url``: the remote backend's server (redis://HOST:PORT), which the remote
    tier also asks directly (EXISTS) for its deterministic wait and its counters."""

    def __init__(self, lmcache: Any, backends: dict[str, Any], chunk_size: int, chunk_bytes: int,
                 remote_url: str | None = None) -> None:
        self.lmcache = lmcache
        self.cpu, self.disk, self.remote = backends["cpu"], backends["disk"], backends.get("remote")
        self.remote_url = remote_url
        self.chunk_size = chunk_size
        self.chunk_bytes = chunk_bytes
        self.stored_cpu_chunks = 0
        #: The remote tier (:meth:`tiers` builds it), told of every put an LMCache store makes.
        self.remote_tier: RemoteTier | None = None
        self.reach = frozenset(t for t, b in backends.items() if b is not None)
        self.guard = DiskGuard(self.disk) if self.disk is not None else None
        self._evictions = {"cpu": 0, "disk": 0}
        self._evictions_lock = threading.Lock()
        for tier in self._evictions:
            if backends[tier] is not None:
                lmcache_glue.count_evictions(backends[tier], tier, self._evictions, self._evictions_lock)

    def tiers(self) -> list[Any]:
        out: list[Any] = []
        if self.cpu is not None:
            out.append(CPUTier(self))
        if self.disk is not None:
            out.append(DiskTier(self))
        if self.remote is not None:
            if not lmcache_glue.remote_connected(self.remote):
                raise EngineError(f"{self.remote_url}: LMCache's remote backend could not connect "
                                  "(see its log)")
            self.remote_tier = RemoteTier(self)
            out.append(self.remote_tier)
        return out

    def evictions(self, tier: str) -> int:
        with self._evictions_lock:
            return self._evictions[tier]

    def store(self, prompt: Prompt, chunks: Sequence[int], kv: KVLayers) -> frozenset[str]:
        """One LMCache store per run of ``chunks`` (its mask is False-prefix then True): every
        LMCache backend receives them."""
        c = self.chunk_size
        if self.remote_tier is not None:
            self.remote_tier.putting([prompt.keys[m] for m in chunks])
        for a, b in chunk_runs(chunks):
            mask = torch.zeros(b * c, dtype=torch.bool)
            mask[a * c:] = True
            self.lmcache.store(prompt.tokens[: b * c], mask=mask, kvcaches=kv, req_id="simkv")
        if self.cpu is not None:         # the disk's: counted as its writes land
            self.stored_cpu_chunks += len(chunks)
        return self.reach

    def hand_over(self, prompt: Prompt, chunks: Sequence[int], put: Callable[[Any, Any], Any]) -> list[int]:
        """``put(key, obj)`` the CPU backend's copy of each of ``chunks`` (no staging allocation,
        no policy update); returns the chunks the CPU does not hold."""
        assert self.cpu is not None
        lacking: list[int] = []
        for m in chunks:
            key = prompt.keys[m]
            obj = self.cpu.get_blocking(key)
            if obj is None:
                lacking.append(m)
                continue
            try:
                put(key, obj)
            finally:
                obj.ref_count_down()
        return lacking

    def retrieve(self, prompt: Prompt, kv: KVLayers, a: int, b: int) -> int:
        """One LMCache retrieve of chunks ``a..b-1``; the first chunk that did not deliver (evicted
        since the lookup)."""
        c = self.chunk_size
        mask = torch.zeros(b * c, dtype=torch.bool)
        mask[a * c:] = True
        got = self.lmcache.retrieve(prompt.tokens[: b * c], mask=mask, kvcaches=kv, req_id="simkv")
        missing = (~got[a * c:]).nonzero()
        return a + int(missing[0]) // c if len(missing) else b

    def wait_disk_writes(self, timeout_s: float, poll_s: float) -> None:
        if self.disk is not None:
            lmcache_glue.wait_disk_writes(self.disk, timeout_s, poll_s)


class CPUTier:
    """LMCache's ``LocalCPUBackend``: a write stores the chunks it lacks with one LMCache store
    (reaching the disk too) and touches those it holds, as the simulator's write-through."""

    name = "cpu"
    local = True
    admits = False
    writes_through = True
    fills_on_read: tuple[str, ...] = ()

    def __init__(self, shared: LMCacheTiers) -> None:
        self.shared = shared
        self.backend = shared.cpu

    def contains(self, chunk: Chunk) -> bool:
        return self.backend.contains(chunk.key, pin=False)

    def touch(self, chunk: Chunk) -> None:
        lmcache_glue.touch_cpu(self.backend, chunk.key)

    def read(self, prompt: Prompt, kv: KVLayers, a: int, b: int) -> int:
        return self.shared.retrieve(prompt, kv, a, b)

    def write(self, prompt: Prompt, chunks: Sequence[int], kv: KVLayers) -> frozenset[str]:
        reached = {self.name}
        lacking: list[int] = []
        for m in chunks:
            key = prompt.keys[m]
            if not self.backend.contains(key, pin=False):
                lacking.append(m)
                continue
            if lacking:
                reached |= self.shared.store(prompt, lacking, kv)
                lacking = []
            lmcache_glue.touch_cpu(self.backend, key)
        if lacking:
            reached |= self.shared.store(prompt, lacking, kv)
        return frozenset(reached)

    def peek(self, chunk: Chunk, fmt: ChunkFormat) -> bytes | None:
        obj = self.backend.get_blocking(chunk.key)   # no policy update
        if obj is None:
            return None
        try:
            return fmt.to_bytes(obj.tensor)
        finally:
            obj.ref_count_down()

    def flush(self, timeout_s: float) -> None:
        return None

    def clear(self, timeout_s: float) -> int:
        """A pending disk write pins its CPU copy (LMCache's clear skips pinned objects): the
        disk's writes finish first."""
        self.shared.wait_disk_writes(timeout_s, CLEAR_POLL_S)
        n = lmcache_glue.cpu_chunks(self.backend)
        self.shared.lmcache.clear(locations=[lmcache_glue.BACKENDS["cpu"]])
        return n - lmcache_glue.cpu_chunks(self.backend)

    def counters(self) -> TierCounters:
        n = lmcache_glue.cpu_chunks(self.backend)
        s = self.shared
        return TierCounters(n, n * s.chunk_bytes, s.evictions(self.name), s.stored_cpu_chunks * s.chunk_bytes)

    def health(self) -> list[str]:
        return []


class DiskTier:
    """LMCache's ``LocalDiskBackend`` behind :class:`~simkv_engine.integrity.DiskGuard` (reads
    verified, failed writes left off the disk). Its read (LMCache's retrieve) touches its chunk
    and writes it back into the CPU backend; a write hands it the CPU's copy (its
    ``submit_put_task`` touches a chunk it holds and writes one it lacks), or, without a CPU
    tier, is one LMCache store."""

    name = "disk"
    local = True
    admits = False
    writes_through = True

    def __init__(self, shared: LMCacheTiers) -> None:
        assert shared.guard is not None
        self.shared = shared
        self.backend = shared.disk
        self.guard: DiskGuard = shared.guard
        self.fills_on_read: tuple[str, ...] = ("cpu",) if shared.cpu is not None else ()

    def contains(self, chunk: Chunk) -> bool:
        return self.backend.contains(chunk.key, pin=False)

    def touch(self, chunk: Chunk) -> None:
        return None                  # LMCache's disk read touches the chunk itself

    def read(self, prompt: Prompt, kv: KVLayers, a: int, b: int) -> int:
        return self.shared.retrieve(prompt, kv, a, b)

    def write(self, prompt: Prompt, chunks: Sequence[int], kv: KVLayers) -> frozenset[str]:
        if self.shared.cpu is None:
            return self.shared.store(prompt, chunks, kv)
        self.shared.hand_over(prompt, chunks, self.backend.submit_put_task)
        return frozenset((self.name,))

    def peek(self, chunk: Chunk, fmt: ChunkFormat) -> bytes | None:
        # The file itself, not the backend's read: that would touch the disk's eviction order
        # and allocate in LMCache's CPU pool (evicting there), which the simulator's worker,
        # reading a block, does not. The file holds the chunk's bytes from its start; it is
        # verified against the digest of its write (a bad one is dropped and counted).
        raw = self.guard.read_bytes(chunk.key)
        return raw[:fmt.raw_bytes] if raw is not None and len(raw) >= fmt.raw_bytes else None

    def flush(self, timeout_s: float) -> None:
        self.shared.wait_disk_writes(timeout_s, DRAIN_POLL_S)

    def clear(self, timeout_s: float) -> int:
        """LMCache 0.5.6's disk backend has no ``clear``: its chunks are removed one by one, after
        its pending writes (which would re-create a cleared chunk) are done."""
        self.shared.wait_disk_writes(timeout_s, CLEAR_POLL_S)
        return sum(self.guard.drop(key) for key in lmcache_glue.disk_keys(self.backend))

    def counters(self) -> TierCounters:
        n = lmcache_glue.disk_chunks(self.backend)
        errors, stored, _ = self.guard.counts()
        s = self.shared
        return TierCounters(n, n * s.chunk_bytes, s.evictions(self.name), stored * s.chunk_bytes,
                            {"disk_errors": errors})

    def health(self) -> list[str]:
        write_error = self.guard.counts()[2]
        if write_error is None:
            return []
        return [f"disk tier: writes fail ({write_error}); chunks are not stored on disk"]


class RemoteTier:
    """LMCache's ``RemoteBackend`` on a Redis-protocol server (its ``valkey://`` connector): one
    key per chunk, written with the connector's TTL at every put (``SET ... EX``; a put of a key
    the store holds restarts its TTL; a read does not refresh it). Not local: the engine's clear
    and the archive worker leave it alone. Its read (LMCache's retrieve) writes the chunk back
    into the CPU backend; a write puts the CPU's copy of each chunk (or, without a CPU tier, is
    one LMCache store, reaching the disk too). LMCache's puts are asynchronous: :meth:`flush`
    waits until the server holds every key put since the last flush (EXISTS)."""

    name = "remote"
    local = False
    admits = False
    writes_through = True

    def __init__(self, shared: LMCacheTiers) -> None:
        assert shared.remote is not None and shared.remote_url is not None
        self.shared = shared
        self.backend = shared.remote
        self.url = shared.remote_url
        self.client = redis.Redis.from_url(self.url, socket_timeout=5)
        self.fills_on_read: tuple[str, ...] = ("cpu",) if shared.cpu is not None else ()
        self.puts = 0
        self.expired = 0
        #: Keys put since the last flush (LMCache's puts are asynchronous), and the keys put
        #: before it not yet seen gone (LMCache's ``to_string``): the chunks counted.
        self.pending: list[Any] = []
        self.held: set[str] = set()

    def contains(self, chunk: Chunk) -> bool:
        return self.backend.contains(chunk.key)        # one EXISTS

    def touch(self, chunk: Chunk) -> None:
        return None                  # a read does not refresh a key's TTL; the server has no order

    def read(self, prompt: Prompt, kv: KVLayers, a: int, b: int) -> int:
        return self.shared.retrieve(prompt, kv, a, b)

    def write(self, prompt: Prompt, chunks: Sequence[int], kv: KVLayers) -> frozenset[str]:
        if self.shared.cpu is None:
            return self.shared.store(prompt, chunks, kv)
        lacking = self.shared.hand_over(prompt, chunks, self._put)
        # a chunk evicted from the CPU since its store: stored anew (reaching the CPU too)
        reached = self.shared.store(prompt, lacking, kv) if lacking else frozenset()
        return reached | {self.name}

    def _put(self, key: Any, obj: Any) -> None:
        self.putting([key])
        self.backend.submit_put_task(key, obj)

    def peek(self, chunk: Chunk, fmt: ChunkFormat) -> bytes | None:
        return None                  # the archive worker reads local tiers only

    def putting(self, keys: list[Any]) -> None:
        """Note the puts of ``keys`` about to be made. A key put before and now gone from the
        server counts as expired (:meth:`counters`): a put restarts a key's life, so this is
        the last moment its expiry can be seen."""
        self._gone([k for k in (key.to_string() for key in keys) if k in self.held])
        self.pending += keys
        self.puts += len(keys)

    def _missing(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` the server does not hold (one EXISTS each, in one round trip)."""
        if not keys:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return [k for k, n in zip(keys, pipe.execute(), strict=True) if not n]

    def _gone(self, keys: list[str]) -> None:
        """Those of ``keys`` (held before) the server holds no more count as expired."""
        gone = self._missing(keys)
        self.held.difference_update(gone)
        self.expired += len(gone)

    def flush(self, timeout_s: float) -> None:
        """Wait until the server holds every key put since the last flush (a key that expired
        meanwhile, with a TTL shorter than the wait, ends the wait at ``timeout_s``)."""
        taken, self.pending = self.pending, []
        pending = [key.to_string() for key in taken]
        self.held.update(pending)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            pending = self._missing(pending)
            if pending:
                time.sleep(DRAIN_POLL_S)

    def clear(self, timeout_s: float) -> int:
        """Delete the keys this engine put (never another client's)."""
        self.flush(timeout_s)
        n = self.client.delete(*self.held) if self.held else 0
        self.held.clear()
        return int(n)

    def counters(self) -> TierCounters:
        """``chunks``: the keys this engine put that the server still holds (one EXISTS each);
        a key found gone counts in ``expirations`` (expired by its TTL, or evicted under the
        server's ``maxmemory``: the server does not tell which) once, when a read of the counters
        or a new put of it (:meth:`putting`) finds it gone. ``stored_bytes``: chunks put (re-puts
        included). The puts in flight are waited for first (at most :data:`COUNTERS_WAIT_S`), so
        none counts as gone."""
        self.flush(COUNTERS_WAIT_S)
        self._gone(list(self.held))
        n = len(self.held)
        s = self.shared
        return TierCounters(n, n * s.chunk_bytes, 0, self.puts * s.chunk_bytes,
                            {"expirations": {self.name: self.expired}})

    def health(self) -> list[str]:
        if lmcache_glue.remote_connected(self.backend):
            return []
        return [f"remote tier: not connected to {self.url}; its chunks are misses"]
