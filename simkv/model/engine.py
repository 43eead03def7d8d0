"""The SimPy model: GPUs serve a FIFO queue of requests; an archive worker runs beside them.

Each GPU is one process that serves requests in arrival order::

    take the next request → wait until it has arrived → look up its prefix in the tiers
        → load the hit blocks and prefill the rest (one timeout) → store its blocks

so ``TTFT = queueing + load time of the hit blocks + prefill time of the rest`` (plus, with a
table profile's ``request`` section, the worker's other time before the first token, which the
next request waits for too, and the latency outside the worker), exactly as for a FIFO
multi-server queue. Tier state changes are plain calls on the cache
(a :class:`~simkv.model.cache_base.CacheBase`: the reference tiers or the compiled ones); the
only events are an idle GPU's wait for the next arrival, the service timeout and the worker's
ticks: at most two events per request.
(A process per request with the GPUs as a ``simpy.Resource`` models the same queue with six.)
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Generator
from typing import Any

import simpy

from simkv.model.cache_base import ARCHIVE, TIER_NAMES, CacheBase


class RequestLog:
    """Per-request outcomes, indexed by the request's row in the trace (compact arrays:
    eight bytes a value, for traces of millions of requests). Per tier (``TIER_NAMES``):
    ``<tier>_blocks``, the prefix blocks it served, and ``<tier>_bytes``, the bytes it held
    after the request. ``overhead_s``: the worker's time besides load and prefill."""

    FLOATS = ("start_s", "load_s", "prefill_s", "overhead_s")
    INTS = ("prefix_blocks", *(f"{t}_blocks" for t in TIER_NAMES), *(f"{t}_bytes" for t in TIER_NAMES))

    def __init__(self, n: int) -> None:
        self.n = n
        for name in self.FLOATS:
            setattr(self, name, array("d", bytes(8 * n)))
        for name in self.INTS:
            setattr(self, name, array("q", bytes(8 * n)))


def simulate(
    cache: CacheBase,
    arrivals: list[float],
    gpus: int,
    progress: Callable[[int], Any] | None = None,
) -> tuple[RequestLog, float]:
    """Run the trace through the model; returns the per-request log and the end time."""
    env = simpy.Environment()
    log = RequestLog(len(arrivals))
    remaining = [len(arrivals)]
    all_done = env.event()
    if not arrivals:
        return log, 0.0
    queue = iter(range(len(arrivals)))  # the FIFO queue: requests in arrival order
    tier_blocks = [getattr(log, f"{t}_blocks") for t in TIER_NAMES]
    tier_bytes = [getattr(log, f"{t}_bytes") for t in TIER_NAMES]

    def gpu_server() -> Generator[simpy.Event, Any, None]:
        """One GPU: take the next request in arrival order, wait for it to arrive, serve it."""
        for r in queue:
            t = arrivals[r]
            if t > env.now:
                yield at(env, t)
            start = env.now
            plan = cache.begin(r, start)
            service = plan.load_s + plan.prefill_s
            if plan.overhead_s:
                service += plan.overhead_s
            if service > 0.0:
                yield env.timeout(service)
            cache.finish(r, plan, env.now)
            log.start_s[r] = start
            log.load_s[r] = plan.load_s
            log.prefill_s[r] = plan.prefill_s
            log.overhead_s[r] = plan.overhead_s
            log.prefix_blocks[r] = plan.prefix_blocks
            for column, value in zip(tier_blocks, plan.tier_blocks, strict=True):
                column[r] = value
            for column, value in zip(tier_bytes, cache.occupancy(), strict=True):
                column[r] = value
            remaining[0] -= 1
            if progress is not None:
                progress(1)
            if remaining[0] == 0:
                all_done.succeed()

    for _ in range(gpus):
        env.process(gpu_server())
    if cache.present[ARCHIVE]:
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


def archive_worker_loop(env: simpy.Environment, cache: CacheBase,
                        interval: float) -> Generator[simpy.Event, Any, None]:
    """Sleep ``interval`` seconds, then select and compress candidates, upload, commit."""
    while True:
        yield env.timeout(interval)
        uploads, busy = cache.archive_pass(env.now)
        cache.archive_busy_s += busy
        if busy > 0.0:
            yield env.timeout(busy)
        cache.archive_commit(uploads, env.now)
