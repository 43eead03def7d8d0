"""The archive as the engine's fourth tier (``tiers.archive``, :mod:`simkv_engine.archive`): what
the engine refuses of it, starting its worker over the engine's tiers, the trace clock
(:meth:`~ArchiveTier.advance`), and hydration: archive chunks fetched, verified and decompressed
(concurrently for a run of them) into the KV being built, then stored into LMCache and admitted
to the GPU cache like computed chunks; a fetch that fails ends the prefix there. The archive
worker reads the chunks it uploads from the local tiers through :class:`_Chunks`. A mixin of
:class:`~simkv_engine.engine.KVEngine`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import PreTrainedModel

from simkv.core.errors import ScenarioError
from simkv.core.policies.state import PolicyState
from simkv.core.scenario import Scenario
from simkv.core.tiers import ARCHIVE, archived_bytes, new_policy_state
from simkv_engine.archive import (
    ArchiveError,
    ArchiveOptions,
    ArchiveWorker,
    ChunkFormat,
    ChunkSource,
    EngineClock,
    codec,
    model_fingerprint,
    open_store,
)
from simkv_engine.connector import HFKVConnector, KVLayers
from simkv_engine.gpu_cache import GPUPrefixCache
from simkv_engine.models import KVShape
from simkv_engine.tier_io import Timer, chunk_runs

if TYPE_CHECKING:
    from simkv_engine.engine import KVEngine


class ArchiveTier:
    """The engine's side of the archive tier."""

    scenario: Scenario
    model: PreTrainedModel
    kv: KVShape
    chunk_size: int
    chunk_bytes: int
    device: torch.device
    gpu_cache: GPUPrefixCache
    connector: HFKVConnector
    archive: ArchiveWorker | None
    policy: PolicyState | None
    _lm_keys: dict[int, Any]
    _counts: dict[str, Any]
    _block_bytes: int
    _hw: Any
    _lock: Any

    def _start_archive(self, options: ArchiveOptions | str | Path) -> None:
        a = self.scenario.tiers.archive
        opts = options if isinstance(options, ArchiveOptions) else ArchiveOptions(options)
        store = open_store(opts.location, endpoint_url=opts.endpoint_url, region=opts.region,
                           timeout_s=opts.timeout_s, storage_class=a.storage_class)
        fingerprint = model_fingerprint(self.model, self.kv, self.chunk_size)
        fmt = ChunkFormat.of(self.kv, self.chunk_size, fingerprint)
        self.policy = new_policy_state(self.scenario, self.chunk_size, self._block_bytes, self._hw)
        clock = opts.clock or EngineClock(opts.clock_scale)
        archived = archived_bytes(self._block_bytes, a.compression_ratio)
        tr = self._hw.transfers(self.scenario, self._block_bytes, archived)
        busy = 0.0 if self.scenario.hardware.zero_service_time else (
            tr.write_per_block_s[ARCHIVE])
        try:
            self.archive = ArchiveWorker(store, self.policy, fmt, a.codec, a.interval_s, _Chunks(self),
                                         self._lock, clock=clock, busy_per_upload_s=busy)
        except BaseException:
            store.close()
            raise
        if opts.worker_thread:
            self.archive.start()

    def advance(self, t: float) -> float:
        """Trace clock (the archive's clock a :class:`~simkv_engine.archive.TraceClock`): engine
        time moves to ``t``, the trace arrival of the request about to be served, after the
        archive passes due at or before it ran (expiries apply at their deadlines). Time never
        runs backwards: a request earlier than the clock is served at the clock's time and
        counted in ``clock_late_requests``. Returns the time now. Without an archive the clock
        only counts."""
        with self._lock:
            if self.archive is not None:
                now = self.archive.advance(t)
            else:
                now = self._trace_now = max(getattr(self, "_trace_now", t), t)
            if now > t:
                self._counts["clock_late_requests"] += 1
            return now

    def hydrate(self, tokens: Sequence[int]) -> tuple[int, float]:
        """Bring the archive chunks of ``tokens``' cached prefix into LMCache and the GPU cache
        without serving the prompt (the server's ``/kv/hydrate``): each chunk the walk finds only
        in the archive, up to the first one that fails. Returns (tokens hydrated, seconds). Not
        a request: no counts of prompt tokens, no policy events."""
        tokens = [int(t) for t in tokens]
        if self.archive is None:
            return 0, 0.0
        c = self.chunk_size
        with self._lock, Timer(self.device) as timer:
            keys = self.chunk_keys(tokens)
            hashes = self.chunk_hashes(tokens)
            sources = self._walk(keys, hashes)
            wanted = [m for m, t in enumerate(sources) if t == "archive"]
            if not wanted:
                return 0, 0.0
            kv = self._empty_kv((wanted[-1] + 1) * c)
            got: list[int] = []
            for a, b in chunk_runs(wanted):
                done = self._hydrate_run(kv, hashes, a, b)
                got.extend(range(a, done))
                if done < b:
                    break
            self._admit(tokens, keys, got, kv)
            self._lm_keys.update((hashes[m], keys[m]) for m in got)
        return len(got) * c, timer.seconds

    def _hydrate_run(self, kv: KVLayers, hashes: list[int], a: int, b: int) -> int:
        """Fetch archive chunks ``a..b-1`` (concurrently) into ``kv``; returns the index of
        the first chunk that failed (``b``: none did). Failures are counted by the worker."""
        assert self.archive is not None
        c = self.chunk_size
        for m, got in enumerate(self.archive.fetch_many(hashes[a:b]), start=a):
            if isinstance(got, ArchiveError):
                return m
            self.connector.scatter(kv, self.archive.fmt.to_tensor(got, self.device), m * c)
        return b

    def _admit(self, tokens: list[int], keys: list, chunks: list[int], kv: KVLayers) -> None:
        """Hydrated ``chunks`` (indices) of ``kv`` into the GPU cache and LMCache."""
        c = self.chunk_size
        for m in chunks:
            key = keys[m].chunk_hash
            if key not in self.gpu_cache:
                self._counts["bytes_stored"]["gpu"] += self.chunk_bytes
            self.gpu_cache.put(key, HFKVConnector.gather(kv, m * c, (m + 1) * c), self._tick())
        self._store_lmcache(tokens, chunks, kv)
        self._counts["archive_hydrations"] += len(chunks)


class _Chunks(ChunkSource):
    """The archive worker's view of the engine's GPU cache and LMCache (CPU, then disk)."""

    def __init__(self, engine: KVEngine) -> None:
        self.engine = engine

    def _key(self, h: int):
        return self.engine._lm_keys.get(h)

    def held(self, hashes: np.ndarray) -> np.ndarray:
        e = self.engine
        out = np.zeros(len(hashes), np.bool_)
        for i, h in enumerate(hashes.tolist()):
            key = self._key(h)
            out[i] = key is not None and e._tier_of(key) is not None
        return out

    def read(self, h: int) -> bytes | None:
        e = self.engine
        key = self._key(h)
        if key is None:
            return None
        assert e.archive is not None
        fmt = e.archive.fmt
        chunk = e.gpu_cache.chunks.get(key.chunk_hash)
        if chunk is not None:
            return fmt.to_bytes(chunk)
        cpu = e._backends["cpu"]
        obj = cpu.get_blocking(key) if cpu is not None else None   # no policy update
        if obj is not None:
            try:
                return fmt.to_bytes(obj.tensor)
            finally:
                obj.ref_count_down()
        if e._disk_guard is not None:
            # The file itself, not the backend's read: that would touch the disk's eviction order
            # and allocate in LMCache's CPU pool (evicting there), which the simulator's worker,
            # reading a block, does not. The file holds the chunk's bytes from its start; it is
            # verified against the digest of its write (a bad one is dropped and counted).
            raw = e._disk_guard.read_bytes(key)
            if raw is not None and len(raw) >= fmt.raw_bytes:
                return raw[:fmt.raw_bytes]
        return None


def check_archive(scenario: Scenario, archive: object) -> None:
    """What the engine's archive cannot honour, refused before LMCache starts."""
    a, ttl = scenario.tiers.archive, scenario.ttl
    codec(a.codec)
    if archive is None:
        raise ScenarioError("tiers.archive.enabled: the engine needs where the archive lives "
                            "(archive='s3://bucket/prefix' or a folder)")
    if ttl.scope != "archive":
        raise ScenarioError("ttl.scope: the engine applies TTLs to the archive only (LMCache has no "
                            "expiry); set ttl.scope: archive")
    if a.capacity_blocks is not None or a.capacity_bytes is not None:
        raise ScenarioError("tiers.archive.capacity_*: the engine's archive is bounded by TTLs only; "
                            "remove the capacity")
