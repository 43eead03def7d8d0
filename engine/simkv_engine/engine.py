"""The engine's tiered prefix walk: our GPU prefix cache, then LMCache (CPU, then disk), then
prefill of the rest, configured by the same scenario file the simulator reads.

Tiers (from the scenario):

- ``block_size`` is the chunk size (LMCache's ``chunk_size``); only full chunks are cached,
  the tail of a prompt never is.
- ``tiers.gpu``: :class:`GPUPrefixCache`, KV chunks in device memory keyed by LMCache's chunk
  hash (a hash of the whole prefix up to the chunk's end), capacity ``capacity_bytes //
  chunk_bytes`` chunks of the hosted model, evicted by the scenario's policy from
  ``simkv.core.policies.eviction``.
- ``tiers.cpu`` / ``tiers.disk``: LMCache's ``LocalCPUBackend`` / ``LocalDiskBackend`` with
  those capacities and LMCache's own eviction (``cache_policy``, the tiers' ``eviction`` name
  when LMCache has it). LMCache writes every stored chunk through to disk.
- ``tiers.remote``: LMCache's ``RemoteBackend`` on a Redis-protocol server (``remote_url``),
  every key written with ``tiers.remote.ttl_s`` (:class:`~simkv_engine.lmcache_tiers.RemoteTier`).

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
simulator's own rule (:func:`simkv.core.tiers.best_cut`) on the scenario's hardware
profile and the scenario's model size: the same cut the simulator makes for that prefix.

Requests are served one at a time (a lock; the archive worker takes it to read the tiers).

After :meth:`KVEngine.serve`, :meth:`KVEngine.decode` generates greedily over the prompt's KV
(generated tokens are not stored).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
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

from simkv.core.errors import ScenarioError
from simkv.core.lmcache import GIB, STAGING_BYTES, lmcache_gib, lmcache_policy
from simkv.core.policies.eviction import EVICTION_POLICIES
from simkv.core.policies.state import PolicyState
from simkv.core.scenario import Scenario
from simkv.core.tiers import archived_bytes, best_cut
from simkv_engine import lmcache_glue
from simkv_engine.archive import ArchiveOptions, ArchiveWorker
from simkv_engine.archive_tier import ArchiveTier, check_archive
from simkv_engine.backends import GPUTier, TierBackend
from simkv_engine.connector import HFKVConnector
from simkv_engine.engine_types import LOCAL_TIERS, TIERS, EngineError, RequestResult
from simkv_engine.engine_usage import EngineUsage
from simkv_engine.gpu_cache import GPUPrefixCache
from simkv_engine.integrity import check_disk_folder, install_log_filters, lmcache_alloc_failures
from simkv_engine.kvstore import remote_tier_options
from simkv_engine.lmcache_tiers import LMCacheTiers
from simkv_engine.models import KVShape, kv_shape_of
from simkv_engine.tier_io import TierIO, Timer
from simkv_engine.tier_walk import TierWalk

__all__ = ["LOCAL_TIERS", "TIERS", "EngineError", "GPUPrefixCache", "KVEngine", "RequestResult"]

log = logging.getLogger(__name__)


class KVEngine(TierWalk, TierIO, ArchiveTier, EngineUsage):
    """A model, our GPU prefix cache and LMCache's standalone engine, for one scenario.

    ``disk_path``: the folder of LMCache's disk backend (required when ``tiers.disk`` is
    enabled). ``staging_bytes``: LMCache's host buffer when ``tiers.cpu`` is off (LMCache
    allocates every chunk it stores or reads there first, so it must hold one request's chunks).
    ``archive``: where the archive lives (required when ``tiers.archive`` is enabled; a string
    is a location, see :class:`~simkv_engine.archive.ArchiveOptions`). ``deterministic``: every
    request's LMCache disk writes are done, in order, before it returns (one disk I/O thread
    and a wait), so the tiers' contents and eviction order depend on the requests alone, not on
    thread timing (the trace clock's mode; see docs/system.md, "Simulation vs the real engine");
    the remote store's puts, too, have landed. ``remote_url``: the Redis-protocol server
    (redis://HOST:PORT) of ``tiers.remote`` (required when it is enabled; see engine/README.md).
    Call :meth:`close` (or use it as a context manager) to drain the archive worker and
    release LMCache.

    Its parts: the tier walk (:class:`~simkv_engine.tier_walk.TierWalk`), the loads and stores
    (:class:`~simkv_engine.tier_io.TierIO`), the archive tier
    (:class:`~simkv_engine.archive_tier.ArchiveTier`) and the counters, health and clears
    (:class:`~simkv_engine.engine_usage.EngineUsage`), all over ``tiers``: one list of
    :class:`~simkv_engine.backends.TierBackend`, fastest first, absent tiers left out (the GPU
    cache's, LMCache's CPU and disk backends' from :mod:`simkv_engine.lmcache_tiers`, the
    archive's). LMCache's internals only through :mod:`simkv_engine.lmcache_glue`.
    """

    def __init__(self, scenario: Scenario, model: PreTrainedModel, *, disk_path: str | Path | None = None,
                 staging_bytes: int = STAGING_BYTES, archive: ArchiveOptions | str | Path | None = None,
                 deterministic: bool = False, remote_url: str | None = None) -> None:
        if scenario.block_size is None:
            raise ScenarioError("block_size: the engine's chunk size; set it (e.g. --set block_size=256)")
        if scenario.tiers.disk.enabled and scenario.tiers.disk.write_policy != "write_through":
            raise ScenarioError("tiers.disk.write_policy: LMCache writes every stored chunk through to "
                                "disk; the engine supports write_through only")
        if scenario.tiers.archive.enabled:
            check_archive(scenario, archive)
        policy = lmcache_policy(scenario, remote=True)
        remote_options = remote_tier_options(scenario, remote_url)
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
            archived = archived_bytes(self._block_bytes, self._hw.compression_ratio(scenario))
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
        #: The tiers, fastest first (absent ones left out): every tier operation goes through them.
        self.tiers: list[TierBackend] = [GPUTier(self.gpu_cache, self.chunk_size, self.chunk_bytes)]

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
            cache_policy=policy,
            lmcache_instance_id=self.instance_id,
            save_unfull_chunk=False,
            extra_config={**remote_options.pop("extra_config", {}),
                          **({"disk_io_threads": 1} if deterministic else {})} or None,
            **remote_options,
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
            lmcache_glue.stop_event_loops(set(threading.enumerate()) - threads)
            raise EngineError("LMCache's engine is not healthy after init (see LMCache's log above)")
        self.lmcache: LMCacheEngine = lmc
        #: LMCache's own backend objects by tier (``None``: off), under the tiers' adapters.
        self._backends = lmcache_glue.local_backends(lmc)
        if not cpu.enabled:
            self._backends["cpu"] = None   # LMCache's CPU backend is then only its allocator
        try:
            self.tiers += LMCacheTiers(lmc, self._backends, self.chunk_size, self.chunk_bytes,
                                       remote_url).tiers()
        except BaseException:
            self.close()
            raise
        if scenario.tiers.archive.enabled:
            try:
                self._start_archive(archive)  # type: ignore[arg-type]
            except BaseException:
                self.close()
                raise

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

    # -- serving ------------------------------------------------------------------------------
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
        prompt = self._prompt(tokens)
        sources = self._walk(prompt)
        if self._cut:
            k, _, _ = best_cut([TIERS.index(t.name) for t in sources], n, c, self._hw, self._transfers)
            sources = sources[:k]

        self._touch(prompt, sources)
        with Timer(self.device) as load:
            hit, kv, hydrate_s = self._load(prompt, sources)
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
        with Timer(self.device) as prefill, torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                             logits_to_keep=0 if all_logits else 1)
        logits = out.logits[0]

        with Timer(self.device) as store:
            self._store(prompt, sources, out.past_key_values)
        if self.deterministic:
            self._drain()
        if self.policy is not None:   # the simulator's events: the request, then its chunks
            self._lm_keys.update(zip(prompt.hashes, prompt.keys, strict=True))
            self.policy.accessed(np.array(prompt.hashes, np.uint64), self.policy.request(prompt_class, n))

        hits = dict.fromkeys(TIERS, 0)
        for tier in sources:
            hits[tier.name] += c
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

