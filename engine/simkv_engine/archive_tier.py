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
from simkv_engine.backends import Chunk, Prompt, TierBackend, TierCounters, chunk_runs
from simkv_engine.connector import HFKVConnector, KVLayers
from simkv_engine.engine_types import EngineError
from simkv_engine.models import KVShape
from simkv_engine.tier_io import Timer

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
    tiers: list[TierBackend]
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
        archived = archived_bytes(self._block_bytes, self._hw.compression_ratio(self.scenario))
        tr = self._hw.transfers(self.scenario, self._block_bytes, archived)
        busy = 0.0 if self.scenario.hardware.zero_service_time else (
            tr.write_per_block_s[ARCHIVE])
        try:
            self.archive = ArchiveWorker(store, self.policy, fmt, a.codec, a.interval_s, _Chunks(self),
                                         self._lock, clock=clock, busy_per_upload_s=busy)
        except BaseException:
            store.close()
            raise
        self.tiers.append(ArchiveBackend(self.archive, self.chunk_size, self.device))
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
            prompt = self._prompt(tokens)
            archive = self.tier("archive")
            wanted = [m for m, t in enumerate(self._walk(prompt)) if t is archive]
            if archive is None or not wanted:
                return 0, 0.0
            kv = self._empty_kv((wanted[-1] + 1) * c)
            got: list[int] = []
            for a, b in chunk_runs(wanted):
                done = archive.read(prompt, kv, a, b)
                got.extend(range(a, done))
                if done < b:
                    break
            self._admit(prompt, got, kv)
            self._lm_keys.update((prompt.hashes[m], prompt.keys[m]) for m in got)
        return len(got) * c, timer.seconds

    def _admit(self, prompt: Prompt, chunks: list[int], kv: KVLayers) -> None:
        """Hydrated ``chunks`` (indices) of ``kv`` into the admitting tiers (the GPU cache) and
        written through (LMCache), as computed chunks are."""
        for tier in self.tiers:
            if tier.admits:
                tier.write(prompt, chunks, kv)
        self._write_chunks(prompt, chunks, kv, self._targets(None))


class ArchiveBackend:
    """The archive (its worker's index and store) as the engine's last tier. It is written by the
    worker's passes, not by requests (``writes_through`` off), and never cleared by the engine;
    its read fetches, verifies and decompresses a run of chunks concurrently."""

    name = "archive"
    local = False
    admits = False
    writes_through = False
    fills_on_read: tuple[str, ...] = ()

    def __init__(self, worker: ArchiveWorker, chunk_size: int, device: torch.device) -> None:
        self.worker = worker
        self.chunk_size = chunk_size
        self.device = device
        self.hydrations = 0

    def contains(self, chunk: Chunk) -> bool:
        return chunk.hash is not None and self.worker.live(chunk.hash)

    def touch(self, chunk: Chunk) -> None:
        return None        # the policy state sees the request's chunks after it (the worker's TTLs)

    def read(self, prompt: Prompt, kv: KVLayers, a: int, b: int) -> int:
        """Failures are counted by the worker."""
        c = self.chunk_size
        done = b
        for m, got in enumerate(self.worker.fetch_many(prompt.hashes[a:b]), start=a):
            if isinstance(got, ArchiveError):
                done = m
                break
            HFKVConnector.scatter(kv, self.worker.fmt.to_tensor(got, self.device), m * c)
        self.hydrations += done - a
        return done

    def write(self, prompt: Prompt, chunks: Sequence[int], kv: KVLayers) -> frozenset[str]:
        return frozenset()

    def peek(self, chunk: Chunk, fmt: ChunkFormat) -> bytes | None:
        return None

    def flush(self, timeout_s: float) -> None:
        return None

    def clear(self, timeout_s: float) -> int:
        raise EngineError("the archive is not cleared by the engine (its objects expire at their TTLs)")

    def counters(self) -> TierCounters:
        a = self.worker.snapshot()
        extra: dict[str, Any] = {
            "archive_hydrations": self.hydrations,
            "expirations": {"archive": a["expirations"]},
            "archive_uploads": a["uploads"],
            "archive_upload_bytes": {"raw": a["upload_raw_bytes"], "stored": a["upload_stored_bytes"]},
            "archive_compression_ratio": (a["upload_raw_bytes"] / a["upload_stored_bytes"]
                                          if a["upload_stored_bytes"] else 0.0),
        }
        for k in ("compress_s", "upload_s", "refreshes", "skipped", "passes", "fetches", "fetch_bytes",
                  "fetch_s", "decompress_s", "errors", "rejected_objects", "objects", "stored_bytes"):
            extra[f"archive_{k}"] = a[k]
        return TierCounters(a["objects"], a["stored_bytes"], 0, a["upload_raw_bytes"], extra)

    def health(self) -> list[str]:
        return []


class _Chunks(ChunkSource):
    """The archive worker's view of the engine's GPU cache and LMCache (CPU, then disk)."""

    def __init__(self, engine: KVEngine) -> None:
        self.engine = engine

    def _key(self, h: int):
        return self.engine._lm_keys.get(h)

    def _local(self) -> list[TierBackend]:
        return [t for t in self.engine.tiers if t.local]

    def held(self, hashes: np.ndarray) -> np.ndarray:
        local = self._local()
        out = np.zeros(len(hashes), np.bool_)
        for i, h in enumerate(hashes.tolist()):
            key = self._key(h)
            out[i] = key is not None and self.engine._holder(Chunk(key, h), local) is not None
        return out

    def read(self, h: int) -> bytes | None:
        key = self._key(h)
        if key is None:
            return None
        assert self.engine.archive is not None
        fmt = self.engine.archive.fmt
        for tier in self._local():        # the fastest tier holding it; none updates its policy
            raw = tier.peek(Chunk(key, h), fmt)
            if raw is not None:
                return raw
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
