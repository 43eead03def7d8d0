"""A slice of a trace: a time window, a seeded sample of sessions or requests, the first N.

One implementation for ``simkv trace import``, ``simkv run`` and ``simkv replay``. A slice is a
subset of the trace's rows, taken in this order: the window ``start_s <= arrival_s < end_s``
(seconds on the trace's own clock), then the sample, then the first ``limit`` requests. It keeps
every kept row as it is (arrival time, ids, block hashes) and in arrival order, so its
:attr:`~simkv.traces.schema.Trace.content_sha256` is that of the same rows imported or written
on their own: ``run`` and ``replay`` of the same slice record the same ``trace_sha256`` and
``validate`` joins them.

The sample keeps ``round(fraction * units)`` units (at least one) drawn by
``numpy.random.default_rng(seed)`` without replacement: sessions (``session_id``; a request with
an empty ``session_id`` is a session of its own) or single requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from simkv.core.errors import SimkvError
from simkv.traces.schema import Trace

SampleBy = Literal["session", "request"]
SAMPLE_BY: tuple[str, ...] = ("session", "request")


@dataclass(frozen=True)
class TraceSlice:
    """Which rows of a trace to keep (``None``: no bound of that kind)."""

    limit: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    sample: float | None = None
    sample_by: SampleBy = "session"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise SimkvError(f"--limit {self.limit}: a number of requests >= 1")
        if self.sample is not None and not 0 < self.sample <= 1:
            raise SimkvError(f"--sample {self.sample:g}: a fraction in (0, 1]")
        if self.sample_by not in SAMPLE_BY:
            raise SimkvError(f"--sample-by {self.sample_by!r}: one of {', '.join(SAMPLE_BY)}")
        for name, v in (("--start", self.start_s), ("--end", self.end_s)):
            if v is not None and not np.isfinite(v):
                raise SimkvError(f"{name} {v}: a finite number of seconds")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise SimkvError(f"--end {self.end_s:g} must be later than --start {self.start_s:g}")

    @property
    def is_whole(self) -> bool:
        """True when this slice keeps every row."""
        return self.limit is None and self.start_s is None and self.end_s is None and self.sample is None

    def describe(self) -> str:
        """The slice in words, as the summaries record it (``trace_slice``)."""
        parts = []
        if self.start_s is not None or self.end_s is not None:
            lo = "" if self.start_s is None else f"{self.start_s:g}"
            hi = "" if self.end_s is None else f"{self.end_s:g}"
            parts.append(f"arrival_s in [{lo}, {hi})")
        if self.sample is not None:
            parts.append(f"sample {self.sample:g} of {self.sample_by}s (seed {self.seed})")
        if self.limit is not None:
            parts.append(f"first {self.limit} requests")
        return ", then ".join(parts) or "whole trace"


def slice_rows(trace: Trace, spec: TraceSlice) -> np.ndarray:
    """The indices (ascending: arrival order) of the rows ``spec`` keeps."""
    rows = np.arange(len(trace))
    t = trace.arrival_s
    if spec.start_s is not None:
        rows = rows[t[rows] >= spec.start_s]
    if spec.end_s is not None:
        rows = rows[t[rows] < spec.end_s]
    if spec.sample is not None and len(rows):
        import pandas as pd

        if spec.sample_by == "session":
            sessions = trace.column("session_id")[rows]
            keys = np.where(sessions == "", "\0" + pd.Series(rows).astype(str).to_numpy(), sessions)
            unit, units = pd.factorize(keys)          # in order of first appearance
        else:
            unit, units = np.arange(len(rows)), rows
        k = max(1, round(spec.sample * len(units)))
        chosen = np.random.default_rng(spec.seed).choice(len(units), k, replace=False)
        rows = rows[np.isin(unit, chosen)]
    if spec.limit is not None:
        rows = rows[:spec.limit]
    return rows


def slice_trace(trace: Trace, spec: TraceSlice | None) -> Trace:
    """The rows of ``trace`` that ``spec`` keeps, as a trace (the same object when it keeps
    all); a slice that keeps no request is a :class:`SimkvError` saying what the trace holds."""
    if spec is None or spec.is_whole:
        return trace
    rows = slice_rows(trace, spec)
    if not len(rows):
        span = (f"arrival_s {trace.arrival_s[0]:g} to {trace.arrival_s[-1]:g}" if len(trace)
                else "no request")
        raise SimkvError(f"{trace.path or 'trace'}: the slice ({spec.describe()}) keeps no request; "
                         f"the trace has {len(trace):,} requests, {span}")
    if len(rows) == len(trace):
        return trace
    return Trace(trace.table.take(rows), trace.block_size, trace.source, trace.path)
