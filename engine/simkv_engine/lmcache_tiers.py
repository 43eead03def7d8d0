"""LMCache's CPU and disk backends as the engine's tiers (:class:`~simkv_engine.backends.TierBackend`).

What they share (:class:`LMCacheTiers`): LMCache's engine, whose ``store`` writes a run of chunks
into every LMCache backend at once (the CPU's put and the disk's write) and whose ``retrieve``
reads a run from the first backend holding it (the CPU before the disk), writing a chunk read
from disk back into the CPU (the disk's ``fills_on_read``). A chunk the CPU holds already is
handed to the disk from the CPU's copy, so no staging buffer is allocated for it (an allocation
in a full pool evicts). LMCache's private state is reached only through
:mod:`simkv_engine.lmcache_glue` (and the disk's files through
:class:`~simkv_engine.integrity.DiskGuard`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from simkv_engine import lmcache_glue
from simkv_engine.backends import Chunk, Prompt, TierCounters, chunk_runs
from simkv_engine.connector import KVLayers
from simkv_engine.integrity import DiskGuard

if TYPE_CHECKING:
    from simkv_engine.archive import ChunkFormat

#: Poll interval of the deterministic drain (after each write) and of a clear's wait.
DRAIN_POLL_S = 0.0005
CLEAR_POLL_S = 0.005


class LMCacheTiers:
    """LMCache's engine and its local backends (``cpu`` / ``disk``: LMCache's own objects, ``None``
    where the tier is off), and the tiers built over them (:meth:`tiers`, CPU then disk)."""

    def __init__(self, lmcache: Any, backends: dict[str, Any], chunk_size: int, chunk_bytes: int) -> None:
        self.lmcache = lmcache
        self.cpu, self.disk = backends["cpu"], backends["disk"]
        self.chunk_size = chunk_size
        self.chunk_bytes = chunk_bytes
        self.stored_cpu_chunks = 0
        self.reach = frozenset(t for t, b in backends.items() if b is not None)
        self.guard = DiskGuard(self.disk) if self.disk is not None else None
        self._evictions = dict.fromkeys(backends, 0)
        self._evictions_lock = threading.Lock()
        for tier, backend in backends.items():
            if backend is not None:
                lmcache_glue.count_evictions(backend, tier, self._evictions, self._evictions_lock)

    def tiers(self) -> list[Any]:
        out: list[Any] = []
        if self.cpu is not None:
            out.append(CPUTier(self))
        if self.disk is not None:
            out.append(DiskTier(self))
        return out

    def evictions(self, tier: str) -> int:
        with self._evictions_lock:
            return self._evictions[tier]

    def store(self, prompt: Prompt, chunks: Sequence[int], kv: KVLayers) -> frozenset[str]:
        """One LMCache store per run of ``chunks`` (its mask is False-prefix then True): every
        LMCache backend receives them."""
        c = self.chunk_size
        for a, b in chunk_runs(chunks):
            mask = torch.zeros(b * c, dtype=torch.bool)
            mask[a * c:] = True
            self.lmcache.store(prompt.tokens[: b * c], mask=mask, kvcaches=kv, req_id="simkv")
        if self.cpu is not None:         # the disk's: counted as its writes land
            self.stored_cpu_chunks += len(chunks)
        return self.reach

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
        cpu = self.shared.cpu
        if cpu is None:
            return self.shared.store(prompt, chunks, kv)
        for m in chunks:
            key = prompt.keys[m]
            obj = cpu.get_blocking(key)
            if obj is not None:
                try:
                    self.backend.submit_put_task(key, obj)
                finally:
                    obj.ref_count_down()
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
