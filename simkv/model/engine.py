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
import math
from array import array
from collections.abc import Callable, Generator
from typing import Any

import simpy

from simkv.core.errors import ScenarioError
from simkv.core.tiers import ARCHIVE, TIER_NAMES
from simkv.model.cache_base import CacheBase, Plan


class RequestLog:
    """Per-request outcomes, indexed by the request's row in the trace (compact arrays:
    eight bytes a value, for traces of millions of requests). Per tier (``TIER_NAMES``):
    ``<tier>_blocks``, the prefix blocks it served, and ``<tier>_bytes``, the bytes it held
    after the request. ``overhead_s``: the worker's time besides load and prefill.
    ``tier_tokens``: per tier, the hit tokens of each request, kept only by caches whose hits
    are not whole trace blocks (:attr:`~simkv.model.cache_base.Plan.tier_tokens`); ``None``
    otherwise (``<tier>_blocks × block_size``)."""

    FLOATS = ("start_s", "load_s", "prefill_s", "overhead_s")
    INTS = ("prefix_blocks", *(f"{t}_blocks" for t in TIER_NAMES), *(f"{t}_bytes" for t in TIER_NAMES))

    def __init__(self, n: int) -> None:
        self.n = n
        for name in self.FLOATS:
            setattr(self, name, array("d", bytes(8 * n)))
        for name in self.INTS:
            setattr(self, name, array("q", bytes(8 * n)))
        self.tier_tokens: list[array] | None = None
        self._tier_blocks = [getattr(self, f"{t}_blocks") for t in TIER_NAMES]  # for record()
        self._tier_bytes = [getattr(self, f"{t}_bytes") for t in TIER_NAMES]
        #: Kept by the batching scheduler only (``hardware.scheduler: vllm``; ``None`` under
        #: ``fifo``, which models no decode): when each request's first token and its last
        #: output token came out, and how often it was preempted (``start_s``: when it was
        #: first scheduled).
        self.first_token_s: array | None = None
        self.finish_s: array | None = None
        self.preemptions: array | None = None
        #: The batching engine's seconds in steps (``None`` under ``fifo``).
        self.busy_s: float | None = None

    def record(self, r: int, plan: Plan, occupancy: tuple[int, ...]) -> None:
        """Request ``r``'s plan (its loads, prefill, hits per tier) and the tiers' bytes after it."""
        self.load_s[r] = plan.load_s
        self.prefill_s[r] = plan.prefill_s
        self.overhead_s[r] = plan.overhead_s
        self.prefix_blocks[r] = plan.prefix_blocks
        for column, value in zip(self._tier_blocks, plan.tier_blocks, strict=True):
            column[r] = value
        if plan.tier_tokens is not None:
            self.set_tier_tokens(r, plan.tier_tokens)
        for column, value in zip(self._tier_bytes, occupancy, strict=True):
            column[r] = value

    def keep_decode(self) -> None:
        """Allocate the batching scheduler's columns (first token, finish, preemptions)."""
        n = self.n
        self.first_token_s = array("d", bytes(8 * n))
        self.finish_s = array("d", bytes(8 * n))
        self.preemptions = array("q", bytes(8 * n))

    def set_tier_tokens(self, r: int, tokens: list[int]) -> None:
        """Record request ``r``'s hit tokens per tier (TIER_NAMES order)."""
        if self.tier_tokens is None:
            self.tier_tokens = [array("q", bytes(8 * self.n)) for _ in TIER_NAMES]
        for column, value in zip(self.tier_tokens, tokens, strict=True):
            column[r] = value


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
            log.record(r, plan, cache.occupancy())
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


def archive_worker_loop(env: simpy.Environment, cache: CacheBase, interval: float,
                        skip_idle: bool = True) -> Generator[simpy.Event, Any, None]:
    """Sleep ``interval`` seconds, then select and compress candidates, upload, commit.

    Passes are periodic (each ``interval`` after the previous one committed), but the idle
    ones are skipped (unless ``skip_idle`` is false: the plain periodic worker, the
    reference the tests hold this one to): with no candidate pending, nothing can change
    before the next queued event (a request's arrival or the end of its service), so every
    pass due before it would find nothing to do (archive expiries are applied at their
    deadlines whenever they are noticed). The worker then sleeps straight to the first pass
    time at or after that event, computed as the chain of float additions the periodic worker
    would make (:func:`first_pass_at`) and scheduled at the point the periodic worker would
    have scheduled it, so the results are bit-identical and the run time grows with the
    trace's events, not with its time span.
    """
    while True:
        event = env.peek() if skip_idle and not cache.archive_pending() else math.inf
        due = env.now + interval
        if due < event < math.inf:
            yield at(env, first_pass_at(due, interval, event))
        else:
            yield env.timeout(interval)
        uploads, busy = cache.archive_pass(env.now)
        cache.archive_busy_s += busy
        if busy > 0.0:
            yield env.timeout(busy)
        cache.archive_commit(uploads, env.now)


class StalledClock(ScenarioError):
    """``t + interval_s == t``: the archive worker's clock would stop advancing at ``t``."""

    def __init__(self, t: float, interval: float) -> None:
        super().__init__(f"tiers.archive.interval_s: {interval!r} s no longer advances the "
                         f"simulated clock at t = {t:.6g} s (t + interval_s == t); raise it")


def first_pass_at(t: float, interval: float, event: float) -> float:
    """The first of ``t``, ``t ⊕ interval``, ``(t ⊕ interval) ⊕ interval``, ... that is
    ``>= event``, where ``⊕`` is IEEE float addition (SimPy's clock adds each delay to
    ``now``): bit for bit what that chain reaches, in O(1) steps per binade of ``t``
    instead of one per pass.

    Within a binade (``[2**(e-1), 2**e)``, one spacing ``u`` between floats) ``x ⊕ h``
    rounds ``x + h`` to a multiple of ``u``. After one step inside the binade the increment
    is the same for every further step (a tie rounds to an even multiple, and from an even
    one the tie goes the same way each time), so the steps that stay clear of the binade's
    top are taken at once, exactly (multiples of ``u`` below ``2**e`` are floats).
    Raises :class:`StalledClock` if the chain stops advancing before ``event``.
    """
    h = interval
    while t < event:
        t1 = t + h
        if t1 <= t:
            raise StalledClock(t, h)
        t2 = t1 + h
        t3 = t2 + h
        e = math.frexp(t1)[1]
        if t3 >= event or t1 <= 0.0 or t3 <= t2 or math.frexp(t3)[1] != e:
            t = t1
            continue
        step = t3 - t2  # the binade's increment from t2 on (exact: one binade)
        limit = min(event, math.ldexp(1.0, e) - 2 * math.ulp(t2))
        n = math.floor((limit - t2) / step) - 1  # t2 + n·step < limit, allowing for rounding
        t = t2 + n * step if n > 0 else t2
    return t
