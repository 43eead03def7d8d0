"""The engine's tiered prefix walk: our GPU prefix cache, then LMCache (CPU, then disk), then
prefill of the rest, configured by the same scenario file the simulator reads.

Tiers (from the scenario):

- ``block_size`` is the chunk size (LMCache's ``chunk_size``); only full chunks are cached,
  the tail of a prompt never is.
- ``tiers.gpu``: :class:`GPUPrefixCache`, KV chunks in device memory keyed by LMCache's chunk
  hash (a hash of the whole prefix up to the chunk's end), capacity ``capacity_bytes //
  chunk_bytes`` chunks of the hosted model, evicted by the scenario's policy from
  ``simkv.policies.eviction``.
- ``tiers.cpu`` / ``tiers.disk``: LMCache's ``LocalCPUBackend`` / ``LocalDiskBackend`` with
  those capacities and LMCache's own eviction (``cache_policy``, the tiers' ``eviction`` name
  when LMCache has it). LMCache writes every stored chunk through to disk.

A request walks its full chunks in order and takes each from the fastest tier holding it,
stopping at the first chunk found nowhere (prefix semantics, as the simulator). The logits of
the last prompt token need one forward pass, so a prompt whose every token was loaded (all full
chunks, all cached) recomputes its last token over the others' KV: its chunks still count as
served by their tiers (as the simulator and LMCache's simulator count them), and
``RequestResult.recomputed_tokens`` is 1 (the simulator's prefill time is likewise that of
``max(n, 1)`` tokens). The prefill continues from the loaded KV
(a ``DynamicCache``); the chunks it computed are then stored into the GPU cache and LMCache,
and chunks loaded from LMCache are admitted to the GPU cache (they now sit in device memory).
Chunks served by the GPU cache are not written back to LMCache.

Every chunk read back from LMCache's disk is verified against the digest of its write, and a
failed disk write leaves the chunk off the disk instead of wedging LMCache
(:mod:`simkv_engine.integrity`): a bad chunk ends the prefix there, like a missing one.

Which LMCache tier served a chunk: the walk asks each backend's ``contains`` (no pinning, no
side effects) before the retrieve, and LMCache's retrieve reads from the first backend holding
the chunk (CPU before disk), so a chunk the CPU backend holds is counted ``cpu``, else ``disk``.
What cannot be known from outside LMCache: a concurrent eviction between that check and the
read (the walk is single-threaded, but LMCache's disk writes are asynchronous; a chunk whose
retrieve returns nothing ends the prefix there and is recomputed), and whether a disk read hit
the page cache.

The archive (``tiers.archive``, :mod:`simkv_engine.archive`) is the fourth tier of the walk: a
chunk in no local tier but live in the archive's index is fetched, verified and decompressed
(concurrently for a run of such chunks), written into the KV being built, and then stored into
LMCache and admitted to the GPU cache like a computed chunk; a fetch that fails in any way ends
the prefix there (the rest is recomputed) and is counted. The archive worker is fed the same
events as the simulator's (a request with its prompt class and length; its chunks after the
lookup) and reads the chunks it uploads from these tiers.

``load_policy: if_faster`` cuts the found prefix where loading stops paying, with the
simulator's own rule (:func:`simkv.model.cache_base.best_cut`) on the scenario's hardware
profile and the scenario's model size: the same cut the simulator makes for that prefix.

Requests are served one at a time (a lock; the archive worker takes it to read the tiers).

After :meth:`KVEngine.serve`, :meth:`KVEngine.decode` generates greedily over the prompt's KV
(generated tokens are not stored).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lmcache.utils import mock_up_broadcast_fn, mock_up_broadcast_object_fn
from lmcache.v1.cache_engine import LMCacheEngine, LMCacheEngineBuilder
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.standalone.manager import StandaloneLMCacheManager
from transformers import DynamicCache, PreTrainedModel

from simkv.errors import ScenarioError, SimkvError
from simkv.model.cache_base import TIER_NAMES, best_cut, new_policy_state
from simkv.policies.eviction import EVICTION_POLICIES, EvictionPolicy
from simkv.policies.state import PolicyState
from simkv.scenario import Scenario
from simkv.scenario.lmcache import GIB, STAGING_BYTES, lmcache_gib, lmcache_policy
from simkv_engine.archive import (
    ArchiveError,
    ArchiveOptions,
    ArchiveWorker,
    ChunkFormat,
    ChunkSource,
    EngineClock,
    chunk_hashes,
    codec,
    model_fingerprint,
    open_store,
)
from simkv_engine.connector import HFKVConnector, KVLayers
from simkv_engine.integrity import DiskGuard, check_disk_folder, install_log_filters, lmcache_alloc_failures
from simkv_engine.models import KVShape, kv_shape_of

log = logging.getLogger(__name__)

#: Tier names in walk order (fastest first): the simulator's.
TIERS = TIER_NAMES
#: The tiers in the engine's own memory and disk (what :meth:`KVEngine.clear` drops).
LOCAL_TIERS = ("gpu", "cpu", "disk")
_BACKENDS = {"cpu": "LocalCPUBackend", "disk": "LocalDiskBackend"}


class EngineError(SimkvError):
    """The engine cannot start (LMCache unhealthy) or was given a request it cannot serve."""


class GPUPrefixCache:
    """KV chunks in device memory (``[2, layers, chunk, kv_heads, head_dim]`` each), keyed by
    chunk hash; ``capacity`` chunks (``None``: unlimited), the victim named by ``policy``."""

    def __init__(self, capacity: int | None, policy: EvictionPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self.chunks: dict[int, torch.Tensor] = {}
        self.evictions = 0

    def __contains__(self, key: int) -> bool:
        return key in self.chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def hit(self, key: int, ref: int) -> None:
        self.policy.hit(key, ref)

    def put(self, key: int, chunk: torch.Tensor, ref: int) -> None:
        """Admit ``chunk`` (evicting as needed); a resident key only counts as a hit."""
        if key in self.chunks:
            self.policy.hit(key, ref)
            return
        if self.capacity is not None and self.capacity <= 0:
            return
        while self.capacity is not None and len(self.chunks) >= self.capacity:
            del self.chunks[self.policy.evict()]
            self.evictions += 1
        self.chunks[key] = chunk
        self.policy.admit(key, ref)

    def clear(self) -> int:
        """Drop every chunk (not counted as evictions); returns how many were held."""
        n = len(self.chunks)
        for key in self.chunks:
            self.policy.drop(key)
        self.chunks.clear()
        return n


@dataclass
class RequestResult:
    """One request: tokens served per tier (``hit_tokens``; ``gpu`` / ``cpu`` / ``disk`` /
    ``archive``), tokens prefilled (``computed_tokens``), and times in seconds: ``load_s``
    (GPU-cache copies, LMCache retrieves and archive hydration), ``prefill_s`` (the model's
    forward pass), ``store_s`` (into the GPU cache and LMCache; LMCache's disk writes finish
    asynchronously after it), ``hydrate_s`` (the part of ``load_s`` spent on archive chunks:
    GETs, checks, decompression, the copy into the KV; failed fetches included). ``logits``: the
    last prompt token's logits (all computed positions' with ``all_logits=True``).
    ``past_key_values``: the prompt's whole KV (a ``DynamicCache``) for :meth:`KVEngine.decode`.
    ``recomputed_tokens``: 1 when every prompt token was served from a tier and the last one was
    recomputed for its logits (counted in ``hit_tokens``, not in ``computed_tokens``)."""

    prompt_tokens: int
    hit_tokens: dict[str, int]
    computed_tokens: int
    load_s: float
    prefill_s: float
    store_s: float
    logits: torch.Tensor = field(repr=False)
    past_key_values: DynamicCache | None = field(default=None, repr=False)
    hydrate_s: float = 0.0
    recomputed_tokens: int = 0

    @property
    def cached_tokens(self) -> int:
        return sum(self.hit_tokens.values())


class _Timer:
    """Wall time of a block: CUDA events on a GPU (device time), else ``time.perf_counter``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> _Timer:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def _count_evictions(backend: Any, tier: str, counts: dict[str, int], lock: threading.Lock) -> None:
    """Count the chunks LMCache's ``backend`` evicts into ``counts[tier]``. LMCache 0.5.6 keeps no
    per-backend eviction total (its stats monitor has an interval count for the CPU backend only,
    process-wide and reset by whoever reads it), but both local backends pick every victim with
    their cache policy's ``get_evict_candidates`` and nothing else calls it (``clear`` and
    ``remove`` do not), so the engine wraps that method on the backend's own policy instance."""
    policy = backend.cache_policy
    pick = policy.get_evict_candidates

    def counted(*args: Any, **kwargs: Any) -> Any:
        keys = pick(*args, **kwargs)
        with lock:
            counts[tier] += len(keys or ())
        return keys

    policy.get_evict_candidates = counted


class KVEngine:
    """A model, our GPU prefix cache and LMCache's standalone engine, for one scenario.

    ``disk_path``: the folder of LMCache's disk backend (required when ``tiers.disk`` is
    enabled). ``staging_bytes``: LMCache's host buffer when ``tiers.cpu`` is off (LMCache
    allocates every chunk it stores or reads there first, so it must hold one request's chunks).
    ``archive``: where the archive lives (required when ``tiers.archive`` is enabled; a string
    is a location, see :class:`~simkv_engine.archive.ArchiveOptions`). ``deterministic``: every
    request's LMCache disk writes are done, in order, before it returns (one disk I/O thread
    and a wait), so the tiers' contents and eviction order depend on the requests alone, not on
    thread timing (the trace clock's mode; see docs/system.md, "Simulation vs the real engine").
    Call :meth:`close` (or use it as a context manager) to drain the archive worker and
    release LMCache.
    """

    def __init__(self, scenario: Scenario, model: PreTrainedModel, *, disk_path: str | Path | None = None,
                 staging_bytes: int = STAGING_BYTES, archive: ArchiveOptions | str | Path | None = None,
                 deterministic: bool = False) -> None:
        if scenario.block_size is None:
            raise ScenarioError("block_size: the engine's chunk size; set it (e.g. --set block_size=256)")
        if scenario.tiers.disk.enabled and scenario.tiers.disk.write_policy != "write_through":
            raise ScenarioError("tiers.disk.write_policy: LMCache writes every stored chunk through to "
                                "disk; the engine supports write_through only")
        if scenario.tiers.archive.enabled:
            _check_archive(scenario, archive)
        if os.environ.get("PYTHONHASHSEED") != "0":
            log.info("PYTHONHASHSEED is not 0: LMCache keys chunks with Python's hash() without vLLM; "
                     "set PYTHONHASHSEED=0 before Python starts to keep keys stable across processes")
        self.scenario = scenario
        self.deterministic = deterministic
        self.load_policy = scenario.load_policy
        self.model = model
        self.device = next(model.parameters()).device
        self.chunk_size = scenario.block_size
        self.kv: KVShape = kv_shape_of(model)
        self.chunk_bytes = self.kv.chunk_bytes(self.chunk_size)
        self._ref = 0
        self._lock = threading.RLock()
        self.archive: ArchiveWorker | None = None
        self.policy: PolicyState | None = None
        self._lm_keys: dict[int, Any] = {}     # archive hash -> LMCache key, of chunks served
        # Policy decisions (if_faster, TTLs) use the scenario's description (hardware profile,
        # model size), as the simulator does; the profile is only read when one is needed.
        self._block_bytes = self.chunk_size * scenario.model.bytes_per_token
        self._cut = self.load_policy == "if_faster" and not scenario.hardware.zero_service_time
        if self._cut or scenario.tiers.archive.enabled:
            self._hw = scenario.hardware.time_model()
            self._hw.check_block_size(self.chunk_size)
        if self._cut:
            archived = int(self._block_bytes / scenario.tiers.archive.compression_ratio)
            self._transfers = self._hw.transfers(scenario, self._block_bytes, archived)
        self._counts: dict[str, Any] = {
            "requests": 0,
            "prompt_tokens_by_source": dict.fromkeys((*TIERS, "computed"), 0),
            "bytes_loaded": dict.fromkeys(TIERS, 0),
            "bytes_stored": dict.fromkeys(TIERS, 0),
            "archive_hydrations": 0,
            "clock_late_requests": 0,
        }

        gpu = scenario.tiers.gpu
        policy_cls = EVICTION_POLICIES.get(gpu.eviction, key="tiers.gpu.eviction")
        if gpu.eviction in ("belady", "opt"):
            raise ScenarioError(f"tiers.gpu.eviction: {gpu.eviction!r} needs the future (offline); "
                                "the engine serves online")
        self.gpu_cache = GPUPrefixCache(gpu.blocks(self.chunk_bytes), policy_cls(None))

        cpu, disk = scenario.tiers.cpu, scenario.tiers.disk
        if disk.enabled and disk_path is None:
            raise ScenarioError("tiers.disk.enabled: the engine needs a folder for LMCache's disk backend")
        if disk.enabled:
            disk_path = check_disk_folder(disk_path)    # LMCache's own failure would hang the process
        install_log_filters()
        self._alloc_failures0 = lmcache_alloc_failures()
        self.instance_id = f"simkv-{uuid.uuid4().hex[:12]}"
        config = LMCacheEngineConfig.from_defaults(
            chunk_size=self.chunk_size,
            local_cpu=cpu.enabled,
            max_local_cpu_size=(lmcache_gib(cpu, "tiers.cpu", self.chunk_bytes) if cpu.enabled
                                else staging_bytes / GIB),
            local_disk=f"file://{Path(disk_path).resolve()}/" if disk.enabled else None,
            max_local_disk_size=lmcache_gib(disk, "tiers.disk", self.chunk_bytes) if disk.enabled else 0.0,
            cache_policy=lmcache_policy(scenario),
            lmcache_instance_id=self.instance_id,
            save_unfull_chunk=False,
            extra_config={"disk_io_threads": 1} if deterministic else None,
        )
        metadata = LMCacheMetadata(
            model_name=f"simkv-engine/{model.config.model_type}", world_size=1, local_world_size=1,
            worker_id=0, local_worker_id=0, kv_dtype=self.kv.dtype,
            kv_shape=self.kv.lmcache_kv_shape(self.chunk_size), chunk_size=self.chunk_size)
        self.connector = HFKVConnector(self.kv, self.device)
        threads = set(threading.enumerate())
        self._manager = StandaloneLMCacheManager(
            config=config, metadata=metadata, gpu_connector=self.connector,
            broadcast_fn=mock_up_broadcast_fn, broadcast_object_fn=mock_up_broadcast_object_fn)
        self._manager.post_init()
        lmc = self._manager.lmcache_engine
        # The manager logs and swallows init errors, then stores nothing: refuse to run so.
        if lmc is None or not lmc.is_healthy():
            self.close()
            _stop_event_loops(set(threading.enumerate()) - threads)
            raise EngineError("LMCache's engine is not healthy after init (see LMCache's log above)")
        self.lmcache: LMCacheEngine = lmc
        assert lmc.storage_manager is not None
        self._backends = {tier: lmc.storage_manager.storage_backends.get(name)
                          for tier, name in _BACKENDS.items()}
        if not cpu.enabled:
            self._backends["cpu"] = None   # LMCache's CPU backend is then only its allocator
        self._disk_guard = DiskGuard(self._backends["disk"]) if self._backends["disk"] is not None else None
        self._lmcache_evictions = dict.fromkeys(_BACKENDS, 0)
        self._evictions_lock = threading.Lock()
        for tier, backend in self._backends.items():
            if backend is not None:
                _count_evictions(backend, tier, self._lmcache_evictions, self._evictions_lock)
        if scenario.tiers.archive.enabled:
            try:
                self._start_archive(archive)  # type: ignore[arg-type]
            except BaseException:
                self.close()
                raise

    def _start_archive(self, options: ArchiveOptions | str | Path) -> None:
        a = self.scenario.tiers.archive
        opts = options if isinstance(options, ArchiveOptions) else ArchiveOptions(options)
        store = open_store(opts.location, endpoint_url=opts.endpoint_url, region=opts.region,
                           timeout_s=opts.timeout_s, storage_class=a.storage_class)
        fingerprint = model_fingerprint(self.model, self.kv, self.chunk_size)
        fmt = ChunkFormat.of(self.kv, self.chunk_size, fingerprint)
        self.policy = new_policy_state(self.scenario, self.chunk_size, self._block_bytes, self._hw)
        clock = opts.clock or EngineClock(opts.clock_scale)
        archived = int(self._block_bytes / a.compression_ratio)
        tr = self._hw.transfers(self.scenario, self._block_bytes, archived)
        busy = 0.0 if self.scenario.hardware.zero_service_time else (
            tr.arch_compress_per_block + tr.arch_upload_per_block)
        try:
            self.archive = ArchiveWorker(store, self.policy, fmt, a.codec, a.interval_s, _Chunks(self),
                                         self._lock, clock=clock, busy_per_upload_s=busy)
        except BaseException:
            store.close()
            raise
        if opts.worker_thread:
            self.archive.start()

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release LMCache (its threads and buffers). Idempotent."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            if self.archive is not None:
                self.archive.close()   # its last pass reads LMCache: before LMCache stops
        finally:
            try:
                self._manager.stop_services()
            finally:
                LMCacheEngineBuilder.destroy(self.instance_id)

    def __enter__(self) -> KVEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counters(self) -> dict[str, Any]:
        """A snapshot of the engine's cumulative counters, for ``/metrics`` and benchmarks: each
        value a number, or a dict from a label (tier, source, error kind) to a number.
        ``prompt_tokens_by_source`` (tiers and ``computed``), ``bytes_loaded`` / ``bytes_stored``
        per tier (KV bytes of the hosted model; the archive's raw bytes hydrated / uploaded),
        ``evictions`` per tier in chunks (the GPU cache's, and LMCache's CPU and disk backends' own
        evictions; :func:`_count_evictions`; :meth:`clear` is not counted), ``requests``, and the
        gauge ``tier_bytes`` (KV bytes each tier holds now: its chunks x ``chunk_bytes``; the
        archive's: the stored bytes of its index's objects).
        ``bytes_stored["disk"]`` counts the chunks whose disk write landed (LMCache writes
        asynchronously: it lags the requests by the writes in flight). With a disk tier:
        ``disk_errors`` (``{kind: n}``: chunks not served because their file was ``unreadable``,
        of the wrong ``length``, failed its ``checksum`` or had no digest (``unverified``), and
        disk writes that failed (``write``); :mod:`simkv_engine.integrity`).
        ``lmcache_alloc_failures``: LMCache's failed CPU-pool allocations (each one a warning
        LMCache logs in a busy loop; the console shows one per 10 s).

        With an archive: ``expirations`` (``{"archive": n}``, objects deleted at their deadline),
        ``archive_uploads``, ``archive_upload_bytes`` (``{"raw": , "stored": }``),
        ``archive_compression_ratio`` (raw / stored over all uploads; 0 before the first),
        ``archive_compress_s`` / ``archive_upload_s`` (seconds spent compressing / in PUTs),
        ``archive_refreshes`` (sliding-TTL metadata COPYs), ``archive_skipped`` (candidates
        gone from every local tier at the pass), ``archive_passes``, ``archive_fetches``
        (objects fetched and verified), ``archive_fetch_bytes`` (stored bytes),
        ``archive_fetch_s`` / ``archive_decompress_s``, ``archive_hydrations`` (chunks written
        into LMCache and the GPU cache from the archive), ``archive_errors`` (``{kind: n}``,
        kinds unreachable, timeout, corrupt, missing, other), ``archive_rejected_objects``
        (objects of another layout left out of the index), and the gauges
        ``archive_objects`` / ``archive_stored_bytes`` (the index now)."""
        out = {k: dict(v) if isinstance(v, dict) else v for k, v in self._counts.items()}
        if self._disk_guard is not None:
            out["disk_errors"], stored, _ = self._disk_guard.counts()
            out["bytes_stored"]["disk"] = stored * self.chunk_bytes
        out["lmcache_alloc_failures"] = lmcache_alloc_failures() - self._alloc_failures0
        with self._evictions_lock:
            out["evictions"] = {"gpu": self.gpu_cache.evictions, **self._lmcache_evictions}
        cpu, disk = self._backends["cpu"], self._backends["disk"]
        held = {"gpu": len(self.gpu_cache), "cpu": 0 if cpu is None else len(cpu.hot_cache),
                "disk": 0 if disk is None else len(disk.dict)}
        out["tier_bytes"] = {**{t: n * self.chunk_bytes for t, n in held.items()}, "archive": 0}
        if self.archive is not None:
            a = self.archive.snapshot()
            out["bytes_stored"]["archive"] = a["upload_raw_bytes"]
            out["tier_bytes"]["archive"] = a["stored_bytes"]
            out["expirations"] = {"archive": a["expirations"]}
            out["archive_uploads"] = a["uploads"]
            out["archive_upload_bytes"] = {"raw": a["upload_raw_bytes"], "stored": a["upload_stored_bytes"]}
            out["archive_compression_ratio"] = (a["upload_raw_bytes"] / a["upload_stored_bytes"]
                                                if a["upload_stored_bytes"] else 0.0)
            for k in ("compress_s", "upload_s", "refreshes", "skipped", "passes", "fetches", "fetch_bytes",
                      "fetch_s", "decompress_s", "errors", "rejected_objects", "objects", "stored_bytes"):
                out[f"archive_{k}"] = a[k]
        return out

    def health(self) -> list[str]:
        """Why the engine is degraded (it serves, by recompute, but a tier does not work), or
        nothing: the disk tier while its last write failed (full or failing filesystem)."""
        if self._disk_guard is None:
            return []
        write_error = self._disk_guard.counts()[2]
        if write_error is None:
            return []
        return [f"disk tier: writes fail ({write_error}); chunks are not stored on disk"]

    def clear(self, tiers: Sequence[str] = LOCAL_TIERS, *, timeout_s: float = 30.0) -> dict[str, int]:
        """Drop the named local tiers' contents (for calibration and tests; never the archive);
        returns the chunks dropped per tier. Clearing the CPU or disk tier first waits (at most
        ``timeout_s``) for LMCache's pending asynchronous disk writes, so a chunk being written
        neither stays pinned in the CPU tier nor reappears on disk after the clear. LMCache
        0.5.6's disk backend has no ``clear``: its chunks are removed one by one."""
        unknown = [t for t in tiers if t not in LOCAL_TIERS]
        if unknown:
            raise EngineError(f"tiers: {unknown[0]!r} is not a local tier ({', '.join(LOCAL_TIERS)})")
        with self._lock:
            return self._clear(tiers, timeout_s)

    def _clear(self, tiers: Sequence[str], timeout_s: float) -> dict[str, int]:
        out: dict[str, int] = {}
        disk = self._backends["disk"]
        if disk is not None and {"cpu", "disk"} & set(tiers):
            # A pending disk write pins its CPU copy (the CPU clear skips pinned objects) and
            # would re-create a cleared disk chunk: let them finish first.
            deadline = time.monotonic() + timeout_s
            while disk.disk_worker.put_tasks and time.monotonic() < deadline:
                time.sleep(0.005)
        for tier in dict.fromkeys(tiers):
            if tier == "gpu":
                out[tier] = self.gpu_cache.clear()
                continue
            backend = self._backends[tier]
            if backend is None:
                out[tier] = 0
            elif tier == "cpu":
                out[tier] = len(backend.hot_cache)
                self.lmcache.clear(locations=[_BACKENDS["cpu"]])
                out[tier] -= len(backend.hot_cache)
            else:
                assert self._disk_guard is not None
                out[tier] = sum(self._disk_guard.drop(key) for key in list(backend.dict))
        return out

    # -- the walk -------------------------------------------------------------------------------
    def chunk_keys(self, tokens: Sequence[int]) -> list:
        """LMCache's keys of the full chunks of ``tokens`` (the tail is never cached)."""
        n_full = len(tokens) // self.chunk_size * self.chunk_size
        if n_full == 0:
            return []
        return [key for _, _, key in self.lmcache.token_database.process_tokens(list(tokens[:n_full]))]

    def chunk_hashes(self, tokens: Sequence[int]) -> list[int]:
        """The archive's (and the policy state's) hashes of the full chunks of ``tokens``."""
        return chunk_hashes(tokens, self.chunk_size)

    def lookup(self, tokens: Sequence[int]) -> list[str]:
        """The tier holding each chunk of the cached prefix of ``tokens``, in order, ending at
        the first chunk no tier holds (the archive included). No side effects (no pinning, no
        policy update)."""
        with self._lock:
            keys = self.chunk_keys(tokens)
            return self._walk(keys, self.chunk_hashes(tokens) if self.archive is not None else [])

    def _walk(self, keys: list, hashes: list[int]) -> list[str]:
        out: list[str] = []
        now = self.archive.clock() if self.archive is not None else 0.0
        for m, key in enumerate(keys):
            tier = self._tier_of(key)
            if tier is None and self.archive is not None and self.archive.live(hashes[m], now):
                tier = "archive"
            if tier is None:
                break
            out.append(tier)
        return out

    def _tier_of(self, key) -> str | None:
        if key.chunk_hash in self.gpu_cache:
            return "gpu"
        for tier in ("cpu", "disk"):
            backend = self._backends[tier]
            if backend is not None and backend.contains(key, pin=False):
                return tier
        return None

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

    def serve(self, tokens: Sequence[int], *, all_logits: bool = False,
              prompt_class: str | None = None) -> RequestResult:
        """Serve one prompt: load its cached prefix tier by tier, prefill the rest, store it.
        ``prompt_class``: the request's class for the TTL policy (``default`` when not given)."""
        tokens = [int(t) for t in tokens]
        n = len(tokens)
        if n == 0:
            raise EngineError("empty prompt")
        vocab = self.model.config.vocab_size
        if min(tokens) < 0 or max(tokens) >= vocab:
            raise EngineError(f"token ids must be in [0, {vocab})")
        with self._lock:
            return self._serve(tokens, all_logits, prompt_class or "default")

    def _serve(self, tokens: list[int], all_logits: bool, prompt_class: str) -> RequestResult:
        n, c = len(tokens), self.chunk_size
        keys = self.chunk_keys(tokens)
        hashes = self.chunk_hashes(tokens) if self.archive is not None else []
        sources = self._walk(keys, hashes)
        if self._cut:
            k, _, _ = best_cut([TIERS.index(t) for t in sources], n, c, self._hw, self._transfers)
            sources = sources[:k]

        self._touch(keys, sources)
        with _Timer(self.device) as load:
            hit, kv, hydrate_s = self._load(tokens, keys, hashes, sources)
        sources = sources[: hit // c]
        # The logits of the last prompt token need one forward pass: a prompt whose every
        # token was loaded has its last token recomputed over the others' KV (served from the
        # cache all the same, as the simulator and LMCache's simulator count it).
        recomputed = 1 if hit == n else 0
        start = hit - recomputed

        cache = DynamicCache()
        for layer, (k, v) in enumerate(kv):
            cache.update(k[:, :, :start], v[:, :, :start], layer)
        ids = torch.tensor([tokens[start:]], dtype=torch.long, device=self.device)
        with _Timer(self.device) as prefill, torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                             logits_to_keep=0 if all_logits else 1)
        logits = out.logits[0]

        with _Timer(self.device) as store:
            self._store(tokens, keys, sources, out.past_key_values)
        if self.deterministic:
            self._drain_disk()
        if self.policy is not None:   # the simulator's events: the request, then its chunks
            self._lm_keys.update(zip(hashes, keys, strict=True))
            self.policy.accessed(np.array(hashes, np.uint64), self.policy.request(prompt_class, n))

        hits = dict.fromkeys(TIERS, 0)
        for tier in sources:
            hits[tier] += c
        counts = self._counts
        counts["requests"] += 1
        for tier, tokens_ in hits.items():
            counts["prompt_tokens_by_source"][tier] += tokens_
            counts["bytes_loaded"][tier] += tokens_ // c * self.chunk_bytes
        counts["prompt_tokens_by_source"]["computed"] += n - hit
        return RequestResult(prompt_tokens=n, hit_tokens=hits, computed_tokens=n - hit,
                             load_s=load.seconds, prefill_s=prefill.seconds, store_s=store.seconds,
                             logits=logits, hydrate_s=hydrate_s, past_key_values=out.past_key_values,
                             recomputed_tokens=recomputed)

    def decode(self, result: RequestResult, max_tokens: int) -> Iterator[int]:
        """Greedy decoding after :meth:`serve`: yields up to ``max_tokens`` token ids, the first
        from the prefill's logits, each next from one forward pass of the previous token over
        ``result.past_key_values`` (extended in place). Generated tokens are never stored in
        the tiers. Releases ``result.past_key_values`` when done."""
        cache = result.past_key_values
        if max_tokens <= 0:
            result.past_key_values = None
            return
        if cache is None:
            raise EngineError("decode: the request's KV cache is gone (decode once per serve)")
        try:
            token = int(result.logits[-1].argmax())
            yield token
            for _ in range(max_tokens - 1):
                ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
                with torch.inference_mode():
                    out = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                                     logits_to_keep=1)
                token = int(out.logits[0, -1].argmax())
                yield token
        finally:
            result.past_key_values = None

    def hydrate(self, tokens: Sequence[int]) -> tuple[int, float]:
        """Bring the archive chunks of ``tokens``' cached prefix into LMCache and the GPU cache
        without serving the prompt (the server's ``/kv/hydrate``): each chunk the walk finds only
        in the archive, up to the first one that fails. Returns (tokens hydrated, seconds). Not
        a request: no counts of prompt tokens, no policy events."""
        tokens = [int(t) for t in tokens]
        if self.archive is None:
            return 0, 0.0
        c = self.chunk_size
        with self._lock, _Timer(self.device) as timer:
            keys = self.chunk_keys(tokens)
            hashes = self.chunk_hashes(tokens)
            sources = self._walk(keys, hashes)
            wanted = [m for m, t in enumerate(sources) if t == "archive"]
            if not wanted:
                return 0, 0.0
            kv = self._empty_kv((wanted[-1] + 1) * c)
            got: list[int] = []
            for a, b in _runs(wanted):
                done = self._hydrate_run(kv, hashes, a, b)
                got.extend(range(a, done))
                if done < b:
                    break
            self._admit(tokens, keys, got, kv)
            self._lm_keys.update((hashes[m], keys[m]) for m in got)
        return len(got) * c, timer.seconds

    def _empty_kv(self, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (1, self.kv.kv_heads, tokens, self.kv.head_dim)
        return [(torch.empty(shape, dtype=self.kv.dtype, device=self.device),
                 torch.empty(shape, dtype=self.kv.dtype, device=self.device))
                for _ in range(self.kv.layers)]

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

    def _load(self, tokens: list[int], keys: list, hashes: list[int],
              sources: list[str]) -> tuple[int, KVLayers, float]:
        """Fill KV tensors for the chunks in ``sources``; returns (tokens loaded, per-layer K/V,
        seconds spent on archive chunks). A run of LMCache chunks is one retrieve, a run of
        archive chunks one concurrent fetch; a chunk either does not deliver ends the prefix.
        A run of LMCache chunks is of one tier: LMCache maps a retrieve's chunks to backends by
        prefix (the CPU's leading chunks, then the disk's), so a mixed run could be read from the
        disk where the walk counted the CPU. The CPU's runs are read first (see below); a chunk
        that fails ends the prefix, and the runs after it are not read."""
        c = self.chunk_size
        hit = len(sources) * c
        kv = self._empty_kv(hit)
        hydrate_s = 0.0
        runs: list[tuple[int, int]] = []              # [i, j): one tier each
        for m, tier in enumerate(sources):
            if runs and sources[runs[-1][0]] == tier and tier != "gpu":
                runs[-1] = (runs[-1][0], m + 1)
            else:
                runs.append((m, m + 1))
        # The CPU's chunks first: reading a disk chunk writes it back to the CPU (allocating there,
        # which may evict), which in the simulator happens after the lookup, never before a read.
        runs.sort(key=lambda r: sources[r[0]] != "cpu")
        end = len(sources)                            # the first chunk that did not deliver
        for i, j in runs:
            if i >= end:
                continue
            tier = sources[i]
            if tier == "gpu":
                self.connector.scatter(kv, self.gpu_cache.chunks[keys[i].chunk_hash], i * c)
            elif tier == "archive":
                with _Timer(self.device) as t:
                    done = self._hydrate_run(kv, hashes, i, j)
                hydrate_s += t.seconds
                if done < j:                          # a failed fetch: the prefix ends there
                    end = min(end, done)
            else:
                mask = torch.zeros(j * c, dtype=torch.bool)
                mask[i * c:] = True
                got = self.lmcache.retrieve(tokens[: j * c], mask=mask, kvcaches=kv, req_id="simkv")
                missing = (~got[i * c:]).nonzero()
                if len(missing):                      # evicted since the lookup: the prefix ends
                    end = min(end, i + int(missing[0]) // c)
        if end < len(sources):
            return end * c, [(k[:, :, :end * c], v[:, :, :end * c]) for k, v in kv], hydrate_s
        return hit, kv, hydrate_s

    def _touch(self, keys: list, sources: list[str]) -> None:
        """The lookup's side of a hit, as the simulator's: each chunk served by the GPU cache or
        LMCache's CPU backend is an access for that tier's eviction order, in prompt order, before
        anything is admitted. (LMCache's own CPU read does not touch its policy, and its vLLM path
        touches every looked-up CPU chunk, the GPU's too, in reverse; the disk backend's read
        touches its chunk, as here.)"""
        cpu = self._backends["cpu"]
        for m, tier in enumerate(sources):
            key = keys[m]
            if tier == "gpu":
                self.gpu_cache.hit(key.chunk_hash, self._tick())
            elif tier == "cpu" and cpu is not None:
                with cpu.cpu_lock:
                    if key in cpu.hot_cache:
                        cpu.cache_policy.update_on_hit(key, cpu.hot_cache)

    def _store(self, tokens: list[int], keys: list, sources: list[str], cache: DynamicCache) -> None:
        """Admit the prompt's full chunks to the GPU cache in prompt order (those it served stay,
        already touched by :meth:`_touch`; the others, loaded from LMCache or the archive or
        computed, now sit in device memory), then write them through to LMCache
        (:meth:`_write_through`). A chunk the GPU cache served but evicted before its turn (a
        cache smaller than the prompt: the admissions before it pushed it out) is admitted again
        and written through, as the simulator does. The cache is only changed after the loads,
        so admitting a chunk never evicts one this request still reads."""
        c = self.chunk_size
        n_full = len(tokens) // c * c
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        written = list(sources)
        for m in range(n_full // c):
            key = keys[m].chunk_hash
            if m < len(sources) and sources[m] == "gpu":
                if key in self.gpu_cache:
                    continue
                written[m] = "gpu-evicted"   # admitted again, and written through like a computed chunk
            if key not in self.gpu_cache:
                self._counts["bytes_stored"]["gpu"] += self.chunk_bytes
            self.gpu_cache.put(key, HFKVConnector.gather(kv, m * c, (m + 1) * c), self._tick())
        self._write_through(tokens, keys, written, kv)
        self._counts["archive_hydrations"] += sources.count("archive")

    def _write_through(self, tokens: list[int], keys: list, sources: list[str], kv: KVLayers) -> None:
        """The simulator's ``write_through``, chunk by chunk in prompt order, for every chunk the
        GPU cache did not serve: the CPU tier receives it unless it came from there (held already:
        an access; else stored), the disk tier likewise unless it came from disk (LMCache's disk
        backend touches a chunk it holds and writes one it lacks). Chunks read from disk were
        written back to the CPU by LMCache's retrieve. A run of chunks the CPU lacks is one
        LMCache store (CPU put and disk write); a chunk the CPU holds is handed to the disk
        backend from the CPU's copy, so no staging buffer is allocated for it (an allocation in a
        full pool evicts). Whether the CPU holds a chunk is read when its turn comes, after the
        stores before it.

        Deterministic: one chunk per store and each disk write done before the next chunk. LMCache
        adds a chunk to the disk's eviction order when its asynchronous write finishes, so a
        write still in flight when a later chunk of the request touches its own disk copy would
        land after that touch (the simulator's order: the write first)."""
        cpu, disk = self._backends["cpu"], self._backends["disk"]
        n = len(tokens) // self.chunk_size
        src = [sources[m] if m < len(sources) else None for m in range(n)]

        def needs_store(m: int) -> bool:
            return src[m] in (None, "archive", "gpu-evicted") and (cpu is None or not cpu.contains(keys[m]))

        m = 0
        while m < n:
            if src[m] in ("gpu", "disk"):
                m += 1
                continue
            if needs_store(m):
                j = m + 1
                while j < n and needs_store(j) and not self.deterministic:
                    j += 1
                self._store_lmcache(tokens, list(range(m, j)), kv)
                if self.deterministic:
                    self._drain_disk()
                m = j
                continue
            key = keys[m]                      # the CPU holds it (served from there, or held)
            assert cpu is not None
            if src[m] != "cpu":
                with cpu.cpu_lock:
                    if key in cpu.hot_cache:
                        cpu.cache_policy.update_on_hit(key, cpu.hot_cache)
            if disk is not None:
                obj = cpu.get_blocking(key)
                if obj is not None:
                    try:
                        disk.submit_put_task(key, obj)
                    finally:
                        obj.ref_count_down()
                    if self.deterministic:
                        self._drain_disk()
            m += 1

    def _drain_disk(self, timeout_s: float = 60.0) -> None:
        """Wait (at most ``timeout_s``) until LMCache's pending disk writes are done."""
        disk = self._backends["disk"]
        if disk is None:
            return
        deadline = time.monotonic() + timeout_s
        while disk.disk_worker.put_tasks and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _store_lmcache(self, tokens: list[int], chunks: list[int], kv: KVLayers) -> None:
        """Store ``chunks`` (indices) of ``kv`` into LMCache: one store per run (LMCache's mask
        is False-prefix then True)."""
        c = self.chunk_size
        for a, b in _runs(chunks):
            mask = torch.zeros(b * c, dtype=torch.bool)
            mask[a * c:] = True
            self.lmcache.store(tokens[: b * c], mask=mask, kvcaches=kv, req_id="simkv")
        if self._backends["cpu"] is not None:         # the disk's: counted as its writes land
            self._counts["bytes_stored"]["cpu"] += len(chunks) * self.chunk_bytes

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

    def _tick(self) -> int:
        self._ref += 1
        return self._ref


def _stop_event_loops(threads: set[threading.Thread]) -> None:
    """Stop the asyncio loops LMCache started in ``threads`` and left running after a failed
    init (its storage manager's loop thread is not a daemon: the process would never exit)."""
    for thread in threads:
        args = getattr(thread, "_args", ())
        loop = next((a for a in args if isinstance(a, asyncio.AbstractEventLoop)), None)
        if loop is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)


def _runs(chunks: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of consecutive chunk indices (sorted input)."""
    runs: list[tuple[int, int]] = []
    for m in chunks:
        if runs and runs[-1][1] == m:
            runs[-1] = (runs[-1][0], m + 1)
        else:
            runs.append((m, m + 1))
    return runs


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


def _check_archive(scenario: Scenario, archive: object) -> None:
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
