"""The engines, in one registry: which scenarios each can run, and one run record they all return.

* ``fast``: a compiled replay without a clock (:mod:`simkv.model.fast`) for a single LRU GPU
  tier, no TTL, zero service time (the setting of LMCache's simulator);
* ``compiled``: the event-driven model over compiled tiers (:mod:`simkv.model.compiled`):
  LRU/FIFO tiers (the CPU tier included), archive-only TTLs;
* ``simpy``: the event-driven model (:mod:`simkv.model.engine`) over the reference tiers
  (:mod:`simkv.model.system`): every policy and TTL scope, and vLLM's prefix cache
  (``tiers.gpu.eviction: vllm``, :mod:`simkv.model.vllm_cache`).

The event engines run the trace through the FIFO queue (:mod:`simkv.model.engine`) or, with
``hardware.scheduler: vllm``, through vLLM's continuous batching (:mod:`simkv.model.batching`).

They give the same results where they apply (the parity tests hold them to it).
:func:`select_engine` is the one place that chooses: ``engine: auto`` takes the first engine
of :data:`SPEED_ORDER` that supports the scenario and records why the faster ones could not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from simkv.core.errors import ScenarioError
from simkv.core.registry import Registry
from simkv.core.scenario import Scenario
from simkv.core.tiers import GPU, TIER_NAMES
from simkv.model.batching import simulate_batched
from simkv.model.cache_base import CacheBase
from simkv.model.compiled import CompiledTieredCache
from simkv.model.engine import RequestLog, simulate
from simkv.model.fast import lru_prefix_hits
from simkv.model.system import TieredCache
from simkv.model.tiers import StorageMeter, TierStats
from simkv.model.vllm_cache import VllmCache
from simkv.traces.schema import Trace

Progress = Callable[[int], Any] | None


@dataclass
class RunRecord:
    """What an engine hands to the metrics: the per-request log, the cache whose constants
    and counters the metrics read, the end of the simulation (seconds) and each tier's totals
    (TIER_NAMES order), which every engine produces from its own state at the end of the run."""

    engine: str
    log: RequestLog
    cache: CacheBase
    end_s: float
    tiers: list[TierStats]


class Engine(Protocol):
    def supports(self, scenario: Scenario) -> str | None:
        """``None`` if this engine can run ``scenario``, else the reason it cannot."""

    def run(self, scenario: Scenario, trace: Trace, progress: Progress = None) -> RunRecord: ...


ENGINES: Registry[Engine] = Registry("engine")
#: Fastest first: the order ``engine: auto`` tries them in.
SPEED_ORDER = ("fast", "compiled", "simpy")


class FastEngine:
    """The clock-free compiled replay of a single LRU GPU tier."""

    def supports(self, sc: Scenario) -> str | None:
        t = sc.tiers
        below = [name for name, on in zip(TIER_NAMES[1:], t.present()[1:], strict=True) if on]
        if below:
            return f"tiers below the GPU in use: {', '.join(below)} (fast needs a single GPU tier)"
        if t.gpu.eviction != "lru":
            return f"tiers.gpu.eviction is {t.gpu.eviction!r} (fast needs lru)"
        if sc.ttl.heuristic != "none":
            return "a TTL heuristic is set (fast needs ttl.heuristic: none)"
        if not sc.hardware.zero_service_time:
            return "hardware.zero_service_time is false (fast has no clock)"
        if sc.hardware.scheduler != "fifo":
            return f"hardware.scheduler is {sc.hardware.scheduler!r} (fast has no steps)"
        return None

    def run(self, scenario: Scenario, trace: Trace, progress: Progress = None) -> RunRecord:
        """The compiled single-LRU replay, filling the same log and tier totals as the SimPy model."""
        cache = TieredCache(scenario, trace)  # the constants and counters only: its tiers stay unused
        n = len(trace)
        capacity = cache.capacity[GPU]
        hits, sizes, inserted, evictions = lru_prefix_hits(
            trace.block_ids_flat, trace.block_offsets,
            capacity if capacity is not None else trace.n_unique_blocks, trace.n_unique_blocks)
        arrival = trace.arrival_s
        end = float(arrival[-1]) if n else 0.0
        log = RequestLog(n)
        log.start_s = arrival.tolist()
        log.prefix_blocks = log.gpu_blocks = hits.tolist()
        occupancy = sizes * cache.block_bytes
        log.gpu_bytes = occupancy.tolist()
        # Replay the byte meter at the requests that changed the occupancy, as the SimPy
        # model does, so both engines produce the same floating-point integral.
        meter = StorageMeter()
        changed = np.flatnonzero(np.diff(sizes, prepend=0))
        for t, occ in zip(arrival[changed].tolist(), occupancy[changed].tolist(), strict=True):
            meter.change(t, occ - meter.bytes)
        meter.close(end)
        gpu = TierStats(TIER_NAMES[GPU], True, int(inserted.sum()), int(evictions), 0,
                        meter.byte_seconds, meter.peak)
        if progress is not None:
            progress(n)
        return RunRecord("fast", log, cache, end, [gpu, *map(TierStats, TIER_NAMES[GPU + 1:])])


class EventEngine:
    """The SimPy model over the reference tiers (``simpy``) or the compiled ones (``compiled``)."""

    def __init__(self, name: str, cache_type: type[CacheBase]) -> None:
        self.name, self.cache_type = name, cache_type

    def supports(self, sc: Scenario) -> str | None:
        if self.cache_type is TieredCache:
            return None
        return CompiledTieredCache.unsupported(sc)

    def run(self, scenario: Scenario, trace: Trace, progress: Progress = None) -> RunRecord:
        cache_type = self.cache_type
        if cache_type is TieredCache and scenario.tiers.gpu.eviction == "vllm":
            cache_type = VllmCache  # the reference tiers with vLLM's prefix cache as the GPU tier
        cache = cache_type(scenario, trace)
        if scenario.hardware.scheduler == "vllm":
            log, end = simulate_batched(cache, trace, scenario, progress)
        else:
            log, end = simulate(cache, trace.arrival_s.tolist(), scenario.hardware.gpus, progress)
        return RunRecord(self.name, log, cache, end, cache.tier_stats())


ENGINES.add("fast", FastEngine())
ENGINES.add("compiled", EventEngine("compiled", CompiledTieredCache))
ENGINES.add("simpy", EventEngine("simpy", TieredCache))


def select_engine(scenario: Scenario) -> tuple[str, dict[str, str]]:
    """The engine to run ``scenario`` with, and why each faster engine was skipped (for
    ``engine: auto``). An explicit engine that cannot run it is a :class:`ScenarioError`
    naming ``engine`` and the reason."""
    name = scenario.engine
    if name != "auto":
        reason = ENGINES.get(name, "engine").supports(scenario)
        if reason is not None:
            raise ScenarioError(f"engine: {name!r} cannot run this scenario: {reason}")
        return name, {}
    skipped: dict[str, str] = {}
    for name in SPEED_ORDER:
        reason = ENGINES.get(name).supports(scenario)
        if reason is None:
            return name, skipped
        skipped[name] = reason
    raise AssertionError("the simpy engine runs every scenario")
