"""The slice options ``trace import``, ``run`` and ``replay`` share (:mod:`simkv.traces.slicing`)."""

from __future__ import annotations

from typing import Annotated

import typer

from simkv.traces.slicing import TraceSlice

LimitOpt = Annotated[int | None, typer.Option(
    "--limit", help="Keep only the first N requests (after --start/--end and --sample).")]
StartOpt = Annotated[float | None, typer.Option(
    "--start", help="Keep requests arriving at or after this many seconds (the trace's clock).")]
EndOpt = Annotated[float | None, typer.Option(
    "--end", help="Keep requests arriving before this many seconds (the trace's clock).")]
SampleOpt = Annotated[float | None, typer.Option(
    "--sample", help="Keep this fraction (0-1] of the sessions (or requests, --sample-by), "
    "drawn with --sample-seed.")]
SampleByOpt = Annotated[str, typer.Option(
    "--sample-by", help="What --sample draws: session (a request without a session_id is its "
    "own) or request.")]
SampleSeedOpt = Annotated[int, typer.Option("--sample-seed", help="Seed of --sample.")]


def trace_slice(limit: int | None, start: float | None, end: float | None, sample: float | None,
                sample_by: str, seed: int) -> TraceSlice | None:
    """The slice the options ask for; ``None`` for the whole trace."""
    spec = TraceSlice(limit, start, end, sample, sample_by, seed)  # type: ignore[arg-type]
    return None if spec.is_whole else spec
