"""vLLM's continuous batching (``hardware.scheduler: vllm``): one engine that runs a step at a time.

The engine core is the loop of vLLM's ``EngineCore.step``::

    form the step (the scheduler) → run it (the profile's step time + the loads of the
        requests it admits) → apply it: tokens computed, tokens sampled, first tokens,
        finished requests

run step by step by a compiled function (:func:`simkv.model.batch_kernel.advance`), which
stops wherever the cache acts (a lookup, a request's first token). With an archive tier the
engine is a SimPy process beside the archive worker, and SimPy's clock follows the engine's
to each of those points, so the worker's passes interleave with them in time order; without
one nothing else happens in time and the engine runs in a plain loop.

Each step is formed as vLLM v1's scheduler forms it (``vllm/v1/core/sched/scheduler.py``,
``Scheduler.schedule``, vLLM 0.32.0, chunked prefill on, FCFS):

* **running first**, in the order they were admitted: a decoding request computes 1 token, a
  request still prefilling computes the rest of its prompt, both capped by the step's token
  budget (``max_num_batched_tokens``; a prefill is chunked to what is left of it);
* **KV blocks** (``allocate_slots``): a request holds ``ceil(computed / block)`` blocks of
  ``tiers.gpu.block_tokens`` tokens; when a running request cannot get the blocks it needs,
  the last admitted running request is **preempted** (``self.running.pop()``): its blocks are
  freed and it goes back to the head of the waiting queue, to be prefilled again (prompt and
  the tokens it had generated);
* **then the waiting queue**, FCFS, while the budget lasts and fewer than ``max_num_seqs``
  requests run, and not in a step that preempted: the request's prefix-cache hit is looked
  up when it is first admitted (``cache.begin``: every tier, loads and LMCache included), it
  is prefilled from there (a chunk of what the budget leaves), and admitted only if its
  blocks fit (else it, and everything behind it, waits);
* a request whose prompt is computed samples a token at the end of that step: its **first
  token** (the cache stores its blocks then: ``cache.finish``); each later step decodes one
  more, until its ``output_tokens`` (at least 1) are out.

Not modelled (docs/system.md, "Continuous batching"): KV blocks shared between running
requests count once per request here (vLLM counts a shared prefix block once), so the model
preempts a little early when running requests share prefixes; a resumed request finds its
own computed blocks still cached (vLLM frees them to the free queue's tail, where they are
usually still found) except the last partial one; speculative decoding, priorities,
``long_prefill_token_threshold``, the async scheduler's one-step overlap, and detokenizing
and streaming outside the engine core (the metrics add the profile's ``request`` latency, as
under FIFO, and its ``step.latency_s + latency_per_stream_s · S``,
:func:`simkv.metrics.requests.output_latency_s`).

"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simkv.core.profiles import STEP_KEYS
from simkv.core.scenario import Scenario
from simkv.core.tiers import ARCHIVE
from simkv.model import batch_kernel as K
from simkv.model.cache_base import CacheBase, Plan
from simkv.model.engine import RequestLog, archive_worker_loop, at
from simkv.model.vllm_cache import check_pool_fits
from simkv.traces.schema import Trace


def kv_blocks(scenario: Scenario, trace: Trace) -> int | None:
    """Blocks of ``tiers.gpu.block_tokens`` tokens the running requests may hold (``None``:
    unbounded): vLLM's ``num_gpu_blocks`` for the GPU tier, less its null block."""
    pool = scenario.tiers.gpu.pool_blocks(scenario.model.bytes_per_token, trace.block_size)
    return None if pool is None else max(0, pool - 1)


def hit_tokens(plan: Plan, block_size: int) -> int:
    """The tokens a plan's prefix hit supplies."""
    return sum(plan.tier_tokens) if plan.tier_tokens is not None else plan.used * block_size


@dataclass
class EngineState:
    """The engine core's state as arrays, per trace row unless said (the arguments of
    :func:`~simkv.model.batch_kernel.advance`)."""

    n: int
    ctl: np.ndarray = field(init=False)
    clock: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = self.n
        self.ctl = np.zeros(6, np.int64)
        self.clock = np.zeros(2, np.float64)
        for name in ("done", "gen", "held", "hit", "preempt", "done_before", "running", "pstack",
                     "batch_r", "batch_new", "ready"):
            setattr(self, name, np.zeros(n, np.int64))
        self.looked = np.zeros(n, np.bool_)
        for name in ("pending_s", "start", "first", "finish"):
            setattr(self, name, np.zeros(n, np.float64))


def simulate_batched(
    cache: CacheBase | None,
    trace: Trace,
    scenario: Scenario,
    progress: Callable[[int], Any] | None = None,
) -> tuple[RequestLog, float]:
    """Run the trace through one continuously batching engine (see the module docstring);
    returns the per-request log (with its first-token, finish and preemption columns) and
    the end time. ``cache`` ``None``: no prefix cache (the no-cache baseline)."""
    n = len(trace)
    log = RequestLog(n)
    log.keep_decode()
    if not n:
        return log, 0.0
    hw = scenario.hardware
    profile = cache.hw if cache is not None else hw.time_model()
    step_time = profile.step_time()
    step = np.array([getattr(step_time, k) for k in STEP_KEYS], np.float64)
    block = scenario.tiers.gpu.block_tokens
    B = trace.block_size
    usable = kv_blocks(scenario, trace)
    check_pool_fits(scenario, trace, usable, block)
    st = EngineState(n)
    st.ctl[K.C_FREE] = K.UNBOUNDED if usable is None else usable
    st.ctl[K.C_LEFT] = n
    st.clock[0] = float(trace.arrival_s[0])
    arrivals = np.ascontiguousarray(trace.arrival_s, np.float64)
    prompt = np.ascontiguousarray(trace.input_tokens, np.int64)
    outputs = np.maximum(trace.output_tokens, 1).astype(np.int64)
    plans: list[Plan | None] = [None] * n

    def first_token(r: int, now: float) -> None:
        """Request ``r``'s prompt is computed: the cache stores its blocks."""
        plan = plans[r]
        plans[r] = None
        if cache is None or plan is None:
            return
        cache.finish(r, plan, now)
        log.record(r, plan, cache.occupancy())  # prefill_s: the work alone (what a hit saves)

    def advance() -> tuple[int, int]:
        """Steps until the cache must act (:func:`~simkv.model.batch_kernel.advance`)."""
        return K.advance(
            st.ctl, st.clock, arrivals, prompt, outputs, st.done, st.gen, st.held, st.hit,
            st.looked, st.pending_s, st.preempt, st.done_before, st.start, st.first, st.finish,
            st.running, st.pstack, st.batch_r, st.batch_new, st.ready, block,
            hw.max_num_seqs, hw.max_num_batched_tokens, step, cache is not None)

    def act(code: int, value: int, now: float) -> None:
        """What the cache does where the engine stopped: a lookup or first tokens."""
        assert cache is not None
        if code == K.LOOKUP:
            st.looked[value] = True
            plan = plans[value] = cache.begin(value, now)
            st.hit[value] = hit_tokens(plan, B)
            st.pending_s[value] = plan.load_s + plan.overhead_s
        else:
            for r in st.ready[:value].tolist():
                first_token(r, now)

    def engine_core() -> Generator[simpy.Event, Any, None]:
        """The engine beside the archive worker: SimPy's clock follows the engine's to each
        point where the cache acts, so the worker's passes before it run first."""
        left = n
        while True:
            code, value = advance()
            now = float(st.clock[0])
            if now > env.now:
                yield at(env, now)
            if progress is not None and st.ctl[K.C_LEFT] < left:
                progress(left - int(st.ctl[K.C_LEFT]))
            left = int(st.ctl[K.C_LEFT])
            if code == K.DONE:
                all_done.succeed()
                return
            act(code, value, now)

    if cache is not None and cache.present[ARCHIVE]:
        env = simpy.Environment()
        all_done = env.event()
        env.process(engine_core())
        env.process(archive_worker_loop(env, cache, cache.scenario.tiers.archive.interval_s))
        env.run(until=all_done)
        end = env.now
    else:  # nothing else happens in time: the engine's own loop, without SimPy's
        left = n
        while True:
            code, value = advance()
            if progress is not None and st.ctl[K.C_LEFT] < left:
                progress(left - int(st.ctl[K.C_LEFT]))
                left = int(st.ctl[K.C_LEFT])
            if code == K.DONE:
                break
            act(code, value, float(st.clock[0]))
        end = float(st.clock[0])
    if cache is not None:
        cache.close(end)
    log.start_s[:] = array_of(st.start)
    log.first_token_s[:] = array_of(st.first)  # type: ignore[index]
    log.finish_s[:] = array_of(st.finish)  # type: ignore[index]
    log.preemptions[:] = array_of(st.preempt)  # type: ignore[index]
    log.busy_s = float(st.clock[1])
    return log, end


def array_of(values: np.ndarray) -> array:
    """``values`` as the compact array of a :class:`RequestLog` column."""
    return array("q" if values.dtype.kind in "ib" else "d", values.tobytes())


def nocache_times(scenario: Scenario, trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Absolute first-token and finish times of ``trace`` through the same batching engine with
    no prefix cache at all (every prompt computed in full): the no-cache baseline's TTFT."""
    log, _ = simulate_batched(None, trace, scenario)
    assert log.first_token_s is not None and log.finish_s is not None
    return (np.frombuffer(log.first_token_s, dtype=np.float64).copy(),
            np.frombuffer(log.finish_s, dtype=np.float64).copy())
