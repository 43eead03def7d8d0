"""Trace statistics: size, token mix, reuse, and the hit rate of an infinite prefix cache.

Everything is vectorised over the flat block arrays of :class:`~simkv.traces.schema.Trace`
(``block_ids_flat``, ``block_offsets``), so a million-request trace takes seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from simkv.traces.schema import Trace


def _first_positions(ids: np.ndarray, n_unique: int) -> np.ndarray:
    """Position in ``ids`` of the first occurrence of each dense id ``0..n_unique-1``.

    ``Trace.block_ids_flat`` numbers ids in order of first appearance, so the first
    occurrences are exactly where the running maximum grows: O(n), no sort. Any other
    dense numbering falls back to ``np.unique``.
    """
    if len(ids) == 0:
        return np.empty(0, dtype=np.int64)
    running = np.maximum.accumulate(ids)
    grows = np.empty(len(ids), dtype=bool)
    grows[0] = True
    np.greater(running[1:], running[:-1], out=grows[1:])
    first = np.flatnonzero(grows)
    if len(first) == n_unique and np.array_equal(ids[first], np.arange(n_unique)):
        return first
    _, first = np.unique(ids, return_index=True)
    return first.astype(np.int64)


def infinite_cache_hit_blocks(trace: Trace) -> np.ndarray:
    """Per request, the number of leading blocks an infinite prefix cache would hit.

    Block ``j`` of request ``r`` (flat positions ``offsets[r] <= j < offsets[r+1]``) is a hit
    iff its id occurred at a flat position before ``offsets[r]``, i.e. in an earlier request
    (a block first seen within the same request is a miss, even when repeated there):

        hit[j] = first_pos[id[j]] < offsets[r]

    and the request's hit prefix is its run of leading hits, ending at the first miss:

        hit_blocks[r] = min({j - offsets[r] : not hit[j]} ∪ {n_blocks[r]})
    """
    offsets = trace.block_offsets
    ids = trace.block_ids_flat
    n_req = len(offsets) - 1
    out = np.zeros(n_req, dtype=np.int64)
    if len(ids) == 0:
        return out
    first_pos = _first_positions(ids, trace.n_unique_blocks)
    starts, ends = offsets[:-1], offsets[1:]
    hit = first_pos[ids] < np.repeat(starts, ends - starts)
    # Position of each miss, or "past the end" for hits; the first miss of each request is
    # a segmented minimum. reduceat misbehaves on empty segments (it returns the element at
    # the start), so it runs over the non-empty requests only: consecutive non-empty starts
    # delimit exactly one request's blocks each.
    n = len(ids)
    miss_at = np.where(hit, n, np.arange(n, dtype=np.int64))
    nonempty = ends > starts
    first_miss = np.minimum.reduceat(miss_at, starts[nonempty])
    out[nonempty] = np.minimum(first_miss, ends[nonempty]) - starts[nonempty]
    return out


def _reuse_gaps(trace: Trace) -> np.ndarray:
    """Seconds between successive accesses of the same block (one per non-first access).

    A million-request trace has ~70M accesses: the key below is sorted and turned into the
    order in place, and no more than three arrays of that length are alive at once.
    """
    ids = trace.block_ids_flat
    if len(ids) < 2:
        return np.empty(0, dtype=np.float64)
    n = len(ids)
    # Group accesses by id, in trace order within an id. Sorting the unique composite key
    # id·n + position is a plain (SIMD) sort, faster than a stable argsort of the ids. The
    # key is built in int64: the ids are int32, and id·n passes 2**31 on any sizeable trace.
    if trace.n_unique_blocks < np.iinfo(np.int64).max // n:
        order = ids.astype(np.int64)
        order *= n
        for lo in range(0, n, _CHUNK):
            order[lo:lo + _CHUNK] += np.arange(lo, min(lo + _CHUNK, n), dtype=np.int64)
        order.sort()
        same = np.empty(n - 1, dtype=bool)
        for lo in range(0, n - 1, _CHUNK):
            sorted_ids = order[lo:lo + _CHUNK + 1] // n
            np.equal(sorted_ids[1:], sorted_ids[:-1], out=same[lo:lo + _CHUNK])
        np.remainder(order, n, out=order)  # key -> position
    else:  # pragma: no cover - needs > 3e9 block accesses
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        same = sorted_ids[1:] == sorted_ids[:-1]
    sorted_t = np.repeat(trace.arrival_s, np.diff(trace.block_offsets))[order]
    del order
    gaps = np.diff(sorted_t)
    del sorted_t
    return gaps[same]


#: Rows per step of the chunked loops of :func:`_reuse_gaps`.
_CHUNK = 1 << 22


def _pct(values: np.ndarray, qs: list[float]) -> list[float | None]:
    """Percentiles (linear interpolation); all ``None`` (undefined) for an empty array."""
    if len(values) == 0:
        return [None] * len(qs)
    return [float(v) for v in np.percentile(values, qs)]


def _ratio(num: float, den: float) -> float | None:
    """``num / den``, or ``None`` (undefined) when ``den`` is 0."""
    return float(num) / float(den) if den else None


@dataclass
class TraceStats:
    """Summary of a trace. ``to_dict()`` is JSON-ready (plain ints, floats, dicts, ``None``).

    A value whose definition divides by zero or needs what the trace lacks is ``None``
    (undefined, printed ``n/a``), never 0.

    * ``sessions``: distinct non-empty ``session_id`` values (``None`` if every one is empty).
    * ``duration_s`` = last arrival − first arrival (``None`` for one request);
      ``request_rate_per_s`` = requests / duration_s (``None`` unless duration_s > 0).
    * ``infinite_cache_token_hit_rate`` = Σ_r hit_blocks[r] · block_size / Σ_r input_tokens[r]
      (see :func:`infinite_cache_hit_blocks`; tail tokens are always misses): the ceiling any
      finite cache can reach on this trace under prefix semantics.
    * ``reuse_fraction`` = (blocks − unique_blocks) / blocks: accesses to a block seen before.
    * ``reuse_gaps``: the number of those re-accesses (= blocks − unique_blocks), each with the
      gap since the previous access of its block; ``reuse_gap_s_*`` are percentiles of the gaps
      (0 when the repeat is within one request).
    * ``classes``: per prompt class, ``requests``, ``input_tokens``, ``output_tokens`` and its
      own ``infinite_cache_token_hit_rate``.
    """

    requests: int
    sessions: int | None
    duration_s: float | None
    request_rate_per_s: float | None
    input_tokens: int
    output_tokens: int
    mean_input_tokens: float | None
    p50_input_tokens: float | None
    p99_input_tokens: float | None
    blocks: int
    unique_blocks: int
    block_size: int
    infinite_cache_token_hit_rate: float | None
    reuse_fraction: float | None
    reuse_gaps: int
    reuse_gap_s_p50: float | None
    reuse_gap_s_p90: float | None
    reuse_gap_s_p99: float | None
    classes: dict[str, dict[str, int | float | None]] = field(default_factory=dict)
    source: str = "unknown"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trace_stats(trace: Trace) -> TraceStats:
    """Compute :class:`TraceStats` for ``trace`` (vectorised; no per-block Python loop).

    ``infinite_cache_token_hit_rate = Σ hit_blocks · block_size / Σ input_tokens``.
    """
    n = len(trace)
    arrival = trace.arrival_s
    inp = trace.input_tokens
    out = trace.output_tokens
    bs = trace.block_size
    hit_tokens = infinite_cache_hit_blocks(trace) * bs
    total_in = int(inp.sum())
    blocks = len(trace.block_ids_flat)
    unique = trace.n_unique_blocks
    gaps = _reuse_gaps(trace)
    gap_p50, gap_p90, gap_p99 = _pct(gaps, [50, 90, 99])
    in_p50, in_p99 = _pct(inp, [50, 99])
    duration = float(arrival[-1] - arrival[0]) if n > 1 else None

    sessions = pd.Series(trace.table.column("session_id").to_numpy(zero_copy_only=False))
    n_sessions = int(sessions[sessions != ""].nunique()) or None

    classes: dict[str, dict[str, int | float | None]] = {}
    if n:
        frame = pd.DataFrame({
            "cls": trace.table.column("prompt_class").to_numpy(zero_copy_only=False),
            "inp": inp, "out": out, "hit": hit_tokens,
        })
        for name, g in frame.groupby("cls", sort=True):
            cls_in = int(g["inp"].sum())
            classes[str(name)] = {
                "requests": len(g),
                "input_tokens": cls_in,
                "output_tokens": int(g["out"].sum()),
                "infinite_cache_token_hit_rate": _ratio(g["hit"].sum(), cls_in),
            }

    return TraceStats(
        requests=n,
        sessions=n_sessions,
        duration_s=duration,
        request_rate_per_s=_ratio(n, duration) if duration else None,
        input_tokens=total_in,
        output_tokens=int(out.sum()),
        mean_input_tokens=float(inp.mean()) if n else None,
        p50_input_tokens=in_p50,
        p99_input_tokens=in_p99,
        blocks=blocks,
        unique_blocks=unique,
        block_size=bs,
        infinite_cache_token_hit_rate=_ratio(hit_tokens.sum(), total_in),
        reuse_fraction=_ratio(blocks - unique, blocks),
        reuse_gaps=len(gaps),
        reuse_gap_s_p50=gap_p50,
        reuse_gap_s_p90=gap_p90,
        reuse_gap_s_p99=gap_p99,
        classes=classes,
        source=trace.source,
    )


NA = "n/a"


def _seconds(s: float | None) -> str:
    if s is None:
        return NA
    if s < 120:
        return f"{s:,.1f} s"
    if s < 7200:
        return f"{s / 60:,.1f} min"
    return f"{s / 3600:,.2f} h"


def _fmt(value: float | None, spec: str) -> str:
    """``format(value, spec)``, or ``n/a`` for an undefined value."""
    return NA if value is None else format(value, spec)


def print_stats(stats: TraceStats, console: Console | None = None,
                title: str | None = None) -> None:
    """Print the stats as a two-column table, then a per-class table."""
    console = console or Console()
    t = Table(title=title or "trace stats", show_header=False, title_justify="left")
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("source", escape(stats.source)),
        ("requests", f"{stats.requests:,}"),
        ("sessions", _fmt(stats.sessions, ",")),
        ("duration", _seconds(stats.duration_s)),
        ("request rate", f"{stats.request_rate_per_s:,.2f} /s" if stats.request_rate_per_s
         is not None else NA),
        ("input tokens", f"{stats.input_tokens:,}"),
        ("output tokens", f"{stats.output_tokens:,}"),
        ("input tokens mean / p50 / p99",
         f"{_fmt(stats.mean_input_tokens, ',.0f')} / {_fmt(stats.p50_input_tokens, ',.0f')} / "
         f"{_fmt(stats.p99_input_tokens, ',.0f')}"),
        ("block size", f"{stats.block_size:,} tokens"),
        ("blocks (accesses)", f"{stats.blocks:,}"),
        ("unique blocks", f"{stats.unique_blocks:,}"),
        ("infinite-cache token hit rate", _fmt(stats.infinite_cache_token_hit_rate, ".1%")),
        ("block reuse fraction", _fmt(stats.reuse_fraction, ".1%")),
        ("reuse gaps (re-accesses)", f"{stats.reuse_gaps:,}"),
        ("reuse gap p50 / p90 / p99",
         f"{_seconds(stats.reuse_gap_s_p50)} / {_seconds(stats.reuse_gap_s_p90)} / "
         f"{_seconds(stats.reuse_gap_s_p99)}"),
    ]
    for name, value in rows:
        t.add_row(name, value)
    console.print(t)

    if not stats.classes:
        return
    c = Table(title="per prompt class", title_justify="left")
    for name, justify in (("class", "left"), ("requests", "right"), ("% requests", "right"),
                          ("input tokens", "right"), ("% tokens", "right"),
                          ("inf-cache hit rate", "right")):
        c.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name, v in stats.classes.items():
        c.add_row(
            escape(name),
            f"{v['requests']:,}",
            _fmt(_ratio(v["requests"], stats.requests), ".1%"),
            f"{v['input_tokens']:,}",
            _fmt(_ratio(v["input_tokens"], stats.input_tokens), ".1%"),
            _fmt(v["infinite_cache_token_hit_rate"], ".1%"),
        )
    console.print(c)
