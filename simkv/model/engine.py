"""The SimPy model: requests queue for the GPU; an archive worker runs beside them.

Each request is one process::

    arrive → wait for a GPU (FIFO) → look up its prefix in the tiers
           → load the hit blocks and prefill the rest (one timeout) → store its blocks

so ``TTFT = queueing + load time of the hit blocks + prefill time of the rest``. Tier
state changes are plain calls on :class:`~simkv.model.system.TieredCache`; the only events
are the arrival, the GPU grant, the service timeout and the worker's ticks, which keeps the
event count per request small.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from simkv.model.system import ARCHIVE, DISK, GPU, TieredCache


@dataclass
class RequestLog:
    """Per-request outcomes, indexed by the request's row in the trace."""

    n: int
    start_s: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    prefill_s: list[float] = field(default_factory=list)
    prefix_blocks: list[int] = field(default_factory=list)
    gpu_blocks: list[int] = field(default_factory=list)
    disk_blocks: list[int] = field(default_factory=list)
    archive_blocks: list[int] = field(default_factory=list)
    gpu_bytes: list[int] = field(default_factory=list)
    disk_bytes: list[int] = field(default_factory=list)
    archive_bytes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("start_s", "load_s", "prefill_s"):
            setattr(self, name, [0.0] * self.n)
        for name in ("prefix_blocks", "gpu_blocks", "disk_blocks", "archive_blocks",
                     "gpu_bytes", "disk_bytes", "archive_bytes"):
            setattr(self, name, [0] * self.n)


def simulate(
    cache: TieredCache,
    arrivals: list[float],
    gpus: int,
    progress: Callable[[int], Any] | None = None,
) -> tuple[RequestLog, float]:
    """Run the trace through the model; returns the per-request log and the end time."""
    env = simpy.Environment()
    gpu = simpy.Resource(env, capacity=gpus)
    log = RequestLog(len(arrivals))
    remaining = [len(arrivals)]
    all_done = env.event()
    if not arrivals:
        return log, 0.0

    def request(r: int) -> Generator[simpy.Event, Any, None]:
        with gpu.request() as slot:
            yield slot
            start = env.now
            plan = cache.begin(r, start)
            service = plan.load_s + plan.prefill_s
            if service > 0.0:
                yield env.timeout(service)
            cache.finish(r, plan, env.now)
        log.start_s[r] = start
        log.load_s[r] = plan.load_s
        log.prefill_s[r] = plan.prefill_s
        log.prefix_blocks[r] = plan.prefix_blocks
        counts = plan.tier_blocks
        log.gpu_blocks[r] = counts[GPU]
        log.disk_blocks[r] = counts[DISK]
        log.archive_blocks[r] = counts[ARCHIVE]
        log.gpu_bytes[r], log.disk_bytes[r], log.archive_bytes[r] = cache.occupancy()
        remaining[0] -= 1
        if progress is not None:
            progress(1)
        if remaining[0] == 0:
            all_done.succeed()

    def source() -> Generator[simpy.Event, Any, None]:
        for r, t in enumerate(arrivals):
            if t > env.now:
                yield at(env, t)
            env.process(request(r))

    env.process(source())
    if cache.archive is not None:
        env.process(archive_worker_loop(env, cache, cache.scenario.tiers.archive.interval_s))
    env.run(until=all_done)
    end = env.now
    cache.close(end)
    return log, end


def at(env: simpy.Environment, t: float) -> simpy.Event:
    """An event that fires at absolute time ``t``.

    SimPy only offers relative delays, and ``now + (t - now)`` can round one step past
    ``t`` (no delay reaches some float times exactly): a request would then be served after
    its own arrival time. So the arrival is pushed onto the event queue at ``t`` itself,
    as :meth:`simpy.Environment.schedule` would push it at ``now + delay``.
    """
    event = env.event()
    event._ok = True
    event._value = None
    heapq.heappush(env._queue, (t, simpy.events.NORMAL, next(env._eid), event))  # type: ignore[attr-defined]
    return event


def archive_worker_loop(env: simpy.Environment, cache: TieredCache,
                        interval: float) -> Generator[simpy.Event, Any, None]:
    """Sleep ``interval`` seconds, then select and compress candidates, upload, commit."""
    while True:
        yield env.timeout(interval)
        uploads, busy = cache.archive_pass(env.now)
        if busy > 0.0:
            yield env.timeout(busy)
        cache.archive_commit(uploads, env.now)
