"""One-pass exact curves: token hit rate vs. LRU capacity, and vs. a sliding static TTL.

Both curves are exact, not estimates: each point equals what ``simkv run`` reports in the
matching zero-service-time configuration (and, for capacity, LMCache's cache simulator).

**Capacity** (``scenarios/parity-lru.yaml`` with ``tiers.gpu.capacity_blocks=C``). A request
looks up its prefix, then touches every one of its blocks in prompt order (move to MRU, or
insert at MRU evicting the LRU block). Since every block is touched, LRU's inclusion property
holds: after each request the tier holds exactly the ``C`` most recently touched distinct
blocks. So with

    rank(r, i) = #distinct blocks touched after block i's last touch, before request r
                 (inf for a first reference; touches of request r itself do not count:
                 the lookup happens before them)

block ``i`` is resident at request ``r``'s lookup iff ``rank < C``, and the hit prefix is
``#{i : runmax_i < C}`` with ``runmax_i = max(rank_0..rank_i)`` (prefix semantics: the
running maximum is non-decreasing, so the blocks under ``C`` are a prefix). Hence

    hit_tokens(C)     = block_size * #{(r, i) : runmax(r, i) < C}
    token_hit_rate(C) = hit_tokens(C) / sum(input_tokens)

One pass with a Fenwick tree over access positions computes every ``runmax`` (O(N log N) for
N block references); its histogram answers any capacity in O(1).

**Sliding TTL** (``ttl.heuristic=static``, ``ttl.mode=sliding``, ``ttl.scope=all``, GPU tier
unlimited). With zero service time each request is looked up and stored at one instant, its
clock time ``t_r``; every block it references gets the deadline ``t_r + T``, and an entry with
``deadline <= now`` is gone. So block ``i`` hits iff ``prev_i + T > t_r`` (float addition, as
the simulator computes it), ``prev_i`` being the clock time of the previous *other* request
that referenced it (-inf for a first reference). Since ``x -> fl(x + T)`` is monotone, the
prefix condition over ``i`` reduces to the running minimum ``m_i = min(prev_0..prev_i)``:

    hit_tokens(T) = block_size * #{(r, i) : fl(m(r, i) + T) > t_r}

(that is ``gap < T`` with ``gap = t_r - m``, up to rounding that this form reproduces).
``t_r`` is the request's arrival time: the simulator serves a zero-time request exactly then.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from simkv.core.errors import SimkvError
from simkv.jit import njit
from simkv.traces.schema import Trace

#: The scenario whose configuration the curves reproduce (with the overrides named above).
CURVE_SCENARIO = "scenarios/parity-lru.yaml"
#: ``runmax`` of a reference that misses at every capacity (a cold block at or before it).
INF_RANK = np.iinfo(np.int64).max
GIB = 2**30


# -- capacity ----------------------------------------------------------------------------


@njit(cache=True)
def _runmax_ranks(ids: np.ndarray, offsets: np.ndarray, n_unique: int) -> np.ndarray:
    """Per block reference: the running maximum along its prompt of the LRU stack distance
    at the request's lookup (``INF_RANK`` from the first cold block on).

    A Fenwick tree over access positions marks each block's latest touch; the distance of
    block ``b`` last touched at ``p`` is the number of marks after ``p``, i.e.
    ``n_marked - prefix(p)``. A request's lookups all read the tree before its touches
    update it, so repeats within a request see the previous request's state.
    """
    n = ids.shape[0]
    tree = np.zeros(n + 1, np.int64)
    last = np.full(n_unique, -1, np.int64)
    out = np.empty(n, np.int64)
    n_marked = 0
    inf = np.iinfo(np.int64).max
    for r in range(offsets.shape[0] - 1):
        lo = offsets[r]
        hi = offsets[r + 1]
        runmax = 0
        for j in range(lo, hi):
            if runmax == inf:
                out[j] = inf
                continue
            p = last[ids[j]]
            if p < 0:
                runmax = inf
            else:
                s = 0
                k = p + 1
                while k > 0:
                    s += tree[k]
                    k -= k & -k
                rank = n_marked - s
                if rank > runmax:
                    runmax = rank
            out[j] = runmax
        for j in range(lo, hi):
            b = ids[j]
            p = last[b]
            if p >= 0:
                k = p + 1
                while k <= n:
                    tree[k] -= 1
                    k += k & -k
            else:
                n_marked += 1
            k = j + 1
            while k <= n:
                tree[k] += 1
                k += k & -k
            last[b] = j
    return out


def runmax_ranks(trace: Trace) -> np.ndarray:
    """``runmax(r, i)`` for every block reference of ``trace``, flat in trace order
    (``int64`` max for references that miss at any capacity)."""
    return _runmax_ranks(np.ascontiguousarray(trace.block_ids_flat),
                         np.ascontiguousarray(trace.block_offsets, dtype=np.int64),
                         int(trace.n_unique_blocks))


@dataclass(frozen=True)
class CapacityHistogram:
    """The whole capacity curve of a trace: ``cum_blocks[k] = #{(r, i) : runmax < k}``
    for ``k = 0..n_unique`` (a capacity above ``n_unique`` hits what ``n_unique`` does)."""

    cum_blocks: np.ndarray
    block_size: int
    input_tokens: int

    @property
    def n_unique(self) -> int:
        return len(self.cum_blocks) - 1

    def hit_blocks(self, capacities: Iterable[int] | np.ndarray) -> np.ndarray:
        """Hit-prefix blocks summed over the trace, per capacity (O(1) each)."""
        c = _check_values(capacities, "capacities", integer=True).astype(np.int64)
        return self.cum_blocks[np.minimum(c, self.n_unique)]

    def curve(self, capacities: Iterable[int] | np.ndarray) -> pd.DataFrame:
        """Columns ``capacity_blocks``, ``token_hit_rate``, ``hit_tokens``."""
        c = _check_values(capacities, "capacities", integer=True).astype(np.int64)
        hit = self.hit_blocks(c) * self.block_size
        return pd.DataFrame({"capacity_blocks": c, "token_hit_rate": _rates(hit, self.input_tokens),
                             "hit_tokens": hit})


def capacity_curve_all(trace: Trace) -> CapacityHistogram:
    """One pass over ``trace``; the result answers every capacity (see the module doc)."""
    ranks = runmax_ranks(trace)
    n_unique = trace.n_unique_blocks
    counts = np.bincount(ranks[ranks < n_unique], minlength=n_unique)
    cum = np.zeros(n_unique + 1, np.int64)
    np.cumsum(counts, out=cum[1:])
    return CapacityHistogram(cum, trace.block_size, int(trace.input_tokens.sum()))


def capacity_curve(trace: Trace, capacities: Iterable[int] | np.ndarray | None = None) -> pd.DataFrame:
    """Token hit rate of a single LRU tier of each capacity (blocks), from one pass.

    Equals ``run(parity-lru, trace, overrides=[tiers.gpu.capacity_blocks=C])`` at every
    ``C`` (capacity 0 caches nothing) and LMCache's ``simulate`` for ``C >= 1`` chunks.
    Default capacities: :func:`default_capacities`.
    """
    if capacities is None:
        capacities = default_capacities(trace)
    return capacity_curve_all(trace).curve(capacities)


def default_capacities(trace: Trace, n: int = 30) -> np.ndarray:
    """``n`` capacities log-uniform from ~1% to 100% of the trace's unique blocks
    (rounded, deduplicated)."""
    u = trace.n_unique_blocks
    if u == 0:
        return np.array([0], np.int64)
    return np.unique(np.rint(np.geomspace(max(1.0, 0.01 * u), u, n)).astype(np.int64))


# -- TTL ------------------------------------------------------------------------------------


@njit(cache=True)
def _runmin_prev(ids: np.ndarray, offsets: np.ndarray, clock: np.ndarray,
                 n_unique: int) -> np.ndarray:
    """Per block reference: running minimum along its prompt of the clock time of the
    previous other request that referenced the block (``-inf`` if none)."""
    last = np.full(n_unique, -np.inf)
    out = np.empty(ids.shape[0], np.float64)
    for r in range(offsets.shape[0] - 1):
        lo = offsets[r]
        hi = offsets[r + 1]
        m = np.inf
        for j in range(lo, hi):
            p = last[ids[j]]
            if p < m:
                m = p
            out[j] = m
        t = clock[r]
        for j in range(lo, hi):
            last[ids[j]] = t
    return out


@dataclass(frozen=True)
class TTLProfile:
    """Per block reference: ``now`` (its request's clock) and ``m`` (the running minimum of
    previous-reference times); ``hit(T) = fl(m + T) > now``."""

    now: np.ndarray
    m: np.ndarray
    block_size: int
    input_tokens: int

    def hit_blocks(self, ttls: Iterable[float] | np.ndarray) -> np.ndarray:
        t = _check_values(ttls, "ttls", integer=False)
        return np.array([np.count_nonzero(self.m + x > self.now) for x in t.tolist()], np.int64)

    def curve(self, ttls: Iterable[float] | np.ndarray) -> pd.DataFrame:
        """Columns ``ttl_s``, ``token_hit_rate``, ``hit_tokens``."""
        t = _check_values(ttls, "ttls", integer=False).astype(np.float64)
        hit = self.hit_blocks(t) * self.block_size
        return pd.DataFrame({"ttl_s": t, "token_hit_rate": _rates(hit, self.input_tokens),
                             "hit_tokens": hit})

    def gaps(self) -> np.ndarray:
        """``now - m``: the running-max inter-reference gap per reference (inf if cold)."""
        return self.now - self.m


def ttl_profile(trace: Trace) -> TTLProfile:
    """One pass over ``trace`` for :func:`ttl_curve`."""
    clock = np.ascontiguousarray(trace.arrival_s, dtype=np.float64)
    offsets = np.ascontiguousarray(trace.block_offsets, dtype=np.int64)
    m = _runmin_prev(np.ascontiguousarray(trace.block_ids_flat), offsets,
                     clock, int(trace.n_unique_blocks))
    now = np.repeat(clock, np.diff(offsets))
    return TTLProfile(now, m, trace.block_size, int(trace.input_tokens.sum()))


def ttl_curve(trace: Trace, ttls: Iterable[float] | np.ndarray | None = None) -> pd.DataFrame:
    """Token hit rate under a sliding static TTL of each value (seconds), GPU tier unlimited.

    Equals ``run(parity-lru, trace, overrides=ttl_overrides(T))`` at every ``T``.
    Default TTLs: :func:`default_ttls`.
    """
    if ttls is None:
        ttls = default_ttls(trace)
    return ttl_profile(trace).curve(ttls)


def ttl_overrides(ttl: float) -> list[str]:
    """The ``--set`` overrides of ``scenarios/parity-lru.yaml`` that :func:`ttl_curve` models."""
    return ["tiers.gpu.capacity_blocks=null", "tiers.gpu.capacity_bytes=unlimited",
            "ttl.heuristic=static", f"ttl.params.ttl={float(ttl)!r}", "ttl.mode=sliding",
            "ttl.scope=all"]


def default_ttls(trace: Trace, n: int = 30) -> np.ndarray:
    """``n`` TTLs log-spaced from 1 s to the trace's duration (deduplicated)."""
    a = trace.arrival_s
    duration = float(a[-1] - a[0]) if len(a) else 0.0
    if duration <= 1.0:
        return np.array([1.0])
    return np.unique(np.geomspace(1.0, duration, n))


# -- shared helpers ---------------------------------------------------------------------------


def _rates(hit_tokens: np.ndarray, input_tokens: int) -> np.ndarray:
    """``hit / input`` as the run summary computes it (NaN, undefined, when the trace has no
    input token: the summary's ``None``)."""
    if not input_tokens:
        return np.full(len(hit_tokens), np.nan)
    return np.array([float(h) / float(input_tokens) for h in hit_tokens.tolist()])


def _check_values(values: Iterable[float] | np.ndarray, option: str, *, integer: bool) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    if arr.ndim != 1:
        raise SimkvError(f"{option}: expected a flat list of numbers")
    if arr.size and not np.issubdtype(arr.dtype, np.number):
        raise SimkvError(f"{option}: expected numbers, got {arr.tolist()!r}")
    for v in arr.tolist():
        if not math.isfinite(v) or v < 0:
            raise SimkvError(f"{option}: {v!r} must be a finite number >= 0")
        if integer and v != int(v):
            raise SimkvError(f"{option}: {v!r} is not a whole number of blocks")
    return arr


def parse_values(text: str, option: str, *, integer: bool) -> list[float] | list[int]:
    """Parse a comma-separated CLI list (``--capacities 1000,5e4``, ``--ttls 10,60.5``);
    raise a :class:`SimkvError` naming ``option`` and the bad entry."""
    out: list = []
    for raw in text.split(","):
        s = raw.strip()
        if not s:
            raise SimkvError(f"{option}: empty entry in {text!r}")
        try:
            v = float(s)
        except ValueError:
            raise SimkvError(f"{option}: {s!r} is not a number (in {text!r})") from None
        if not math.isfinite(v) or v < 0:
            raise SimkvError(f"{option}: {s!r} must be a finite number >= 0 (in {text!r})")
        if integer:
            if not v.is_integer():
                raise SimkvError(f"{option}: {s!r} is not a whole number of blocks (in {text!r})")
            out.append(int(s) if s.isdigit() else int(v))
        else:
            out.append(v)
    return out
