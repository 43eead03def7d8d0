"""vLLM's scheduler, a step at a time, as one compiled function (:func:`advance`).

The engine core of :mod:`simkv.model.batching` without the cache: :func:`advance` forms each
step as vLLM v1's ``Scheduler.schedule`` does, charges the profile's step time, applies the
step (tokens computed and sampled, first tokens, finished requests) and moves its own clock,
until the next moment the cache must act, where it returns:

* ``LOOKUP``, ``r``: the step being formed reaches request ``r`` at the head of the waiting
  queue, never looked up; the caller looks it up at ``clock[0]`` (``cache.begin``), stores its
  hit tokens and the seconds its loads add to a step (``hit[r]``, ``pending_s[r]``), sets
  ``looked[r]`` and calls again, which forms the same step from the start (nothing of a step
  is committed before every request it admits has been looked up);
* ``FIRST_TOKENS``, ``m``: the step just run gave ``m`` requests their first token
  (``ready[:m]``, in batch order) at ``clock[0]``; the caller stores their blocks
  (``cache.finish``), then calls again;
* ``DONE``: every request finished (the last at ``clock[0]``).

``clock[0]`` is the engine's clock, ``clock[1]`` the seconds it has spent in steps. State
lives in the arrays the caller passes (:class:`~simkv.model.batching.EngineState`);
``ctl`` holds the scalars (indices ``C_*``). The waiting queue is the stack of preempted
requests (``pstack``, the most recently preempted first: vLLM prepends each) followed by the
requests that arrived and were never admitted, trace rows ``ctl[C_WHEAD] .. ctl[C_ARRIVED]``
(admission is first come, first served).
"""

from __future__ import annotations

import numpy as np

from simkv.jit import njit

DONE, LOOKUP, FIRST_TOKENS = 0, 1, 2
#: ``ctl`` indices: next trace row to arrive, head of the never-admitted queue, running
#: requests, preempted requests waiting, free KV blocks, requests not finished.
C_ARRIVED, C_WHEAD, C_NRUN, C_NPS, C_FREE, C_LEFT = range(6)
#: ``ctl[C_FREE]`` of an unbounded pool.
UNBOUNDED = 1 << 62


@njit(cache=True)
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@njit(cache=True)
def advance(ctl: np.ndarray, clock: np.ndarray, arrivals: np.ndarray, prompt: np.ndarray,
            outputs: np.ndarray, done: np.ndarray, gen: np.ndarray, held: np.ndarray,
            hit: np.ndarray, looked: np.ndarray, pending_s: np.ndarray, preempt: np.ndarray,
            done_before: np.ndarray, start: np.ndarray, first: np.ndarray, finish: np.ndarray,
            running: np.ndarray, pstack: np.ndarray, batch_r: np.ndarray, batch_new: np.ndarray,
            ready: np.ndarray, block: int, max_seqs: int, max_tokens: int,
            step: np.ndarray, cache: bool) -> tuple[int, int]:
    """Run steps until the cache must act (see the module docstring); returns ``(code, r)``.
    ``cache`` false: there is none (no lookups, nothing stored): run to the end."""
    n = arrivals.shape[0]
    c0, cp, cd, ck, ca, cc = step[0], step[1], step[2], step[3], step[4], step[5]
    while True:
        if ctl[C_LEFT] == 0:
            return DONE, 0
        now = clock[0]
        while ctl[C_ARRIVED] < n and arrivals[ctl[C_ARRIVED]] <= now:
            ctl[C_ARRIVED] += 1
        nrun = ctl[C_NRUN]
        if nrun == 0 and ctl[C_NPS] == 0 and ctl[C_WHEAD] == ctl[C_ARRIVED]:
            clock[0] = arrivals[ctl[C_ARRIVED]]  # idle until the next arrival
            continue
        free = ctl[C_FREE]

        # -- the running requests, in admission order: 1 token to decode, or the rest of a
        # prompt (prefill chunk), within the token budget; preempt from the back if blocks lack
        budget = max_tokens
        m = 0
        need_all = 0
        extra = 0.0  # the loads of the requests the step admits
        for i in range(nrun):
            if budget <= 0:
                break
            r = running[i]
            new = min(prompt[r] + gen[r] - done[r], budget)
            need_all += _cdiv(done[r] + new, block) - held[r]
            budget -= new
        preempted = need_all > free
        if preempted:
            budget = max_tokens
            i = 0
            while i < nrun and budget > 0:
                r = running[i]
                new = min(prompt[r] + gen[r] - done[r], budget)
                need = _cdiv(done[r] + new, block) - held[r]
                while need > free:
                    nrun -= 1
                    victim = running[nrun]
                    free += held[victim]
                    held[victim] = 0
                    done[victim] = 0
                    preempt[victim] += 1
                    pstack[ctl[C_NPS]] = victim
                    ctl[C_NPS] += 1
                    if victim == r:
                        break
                if i >= nrun:
                    break
                held[r] += need
                free -= need
                batch_r[m] = r
                batch_new[m] = new
                m += 1
                budget -= new
                i += 1
            ctl[C_NRUN] = nrun
        else:
            budget = max_tokens
            for i in range(nrun):
                if budget <= 0:
                    break
                r = running[i]
                new = min(prompt[r] + gen[r] - done[r], budget)
                held[r] = _cdiv(done[r] + new, block)
                batch_r[m] = r
                batch_new[m] = new
                budget -= new
                m += 1
            free -= need_all

            # -- then the waiting queue (not in a step that preempted): first come, first
            # served, while budget, sequences and blocks last; formed tentatively, committed
            # once every request it admits has been looked up
            admitted = 0
            ps = ctl[C_NPS]
            head = ctl[C_WHEAD]
            tb = budget
            tfree = free
            while tb > 0 and nrun + admitted < max_seqs:
                if ps > 0:
                    r = pstack[ps - 1]
                    cached = max(hit[r], (done_before[r] // block) * block)
                elif head < ctl[C_ARRIVED]:
                    r = head
                    if not looked[r]:
                        if cache:
                            return LOOKUP, r
                        looked[r] = True
                    cached = hit[r]
                else:
                    break
                tokens = prompt[r] + gen[r]
                cached = min(cached, tokens - 1)
                new = min(tokens - cached, tb)
                need = _cdiv(cached + new, block)
                if need > tfree:
                    break
                tfree -= need
                tb -= new
                admitted += 1
                if ps > 0:
                    ps -= 1
                else:
                    head += 1
            # commit the admissions
            for _ in range(admitted):
                if ctl[C_NPS] > 0:
                    ctl[C_NPS] -= 1
                    r = pstack[ctl[C_NPS]]
                    cached = max(hit[r], (done_before[r] // block) * block)
                else:
                    r = ctl[C_WHEAD]
                    ctl[C_WHEAD] += 1
                    cached = hit[r]
                    start[r] = now
                    extra += pending_s[r]
                tokens = prompt[r] + gen[r]
                cached = min(cached, tokens - 1)
                new = min(tokens - cached, budget)
                need = _cdiv(cached + new, block)
                done[r] = cached
                held[r] = need
                free -= need
                budget -= new
                running[nrun] = r
                nrun += 1
                batch_r[m] = r
                batch_new[m] = new
                m += 1
            ctl[C_NRUN] = nrun
        ctl[C_FREE] = free

        # -- the step's time: prefill tokens, decoding sequences, their context, attention,
        # the prefills' context
        p = 0.0
        d = 0.0
        k = 0.0
        a = 0.0
        context = 0.0
        for j in range(m):
            r = batch_r[j]
            new = batch_new[j]
            c = done[r]
            if gen[r] > 0 and c == prompt[r] + gen[r] - 1:
                d += 1.0
                k += c + 1.0
            else:
                p += new
                a += new * (new + c)
                context += new * c
        seconds = c0 + cp * p + cd * d + ck * k + ca * a + cc * context + extra
        now = now + seconds
        clock[0] = now
        clock[1] += seconds

        # -- apply it: tokens computed; a prompt done samples a token
        nready = 0
        finished = 0
        for j in range(m):
            r = batch_r[j]
            done[r] += batch_new[j]
            done_before[r] = done[r]
            if done[r] == prompt[r] + gen[r]:
                gen[r] += 1
                if gen[r] == 1:
                    first[r] = now
                    ready[nready] = r
                    nready += 1
                if gen[r] >= outputs[r]:
                    finish[r] = now
                    ctl[C_FREE] += held[r]
                    held[r] = 0
                    ctl[C_LEFT] -= 1
                    finished += 1
        if finished:
            kept = 0
            for i in range(ctl[C_NRUN]):
                r = running[i]
                if gen[r] < outputs[r]:
                    running[kept] = r
                    kept += 1
            ctl[C_NRUN] = kept
        if nready and cache:
            return FIRST_TOKENS, nready
