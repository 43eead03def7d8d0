"""The slice options ``trace import``, ``run`` and ``replay`` share (:mod:`simkv.traces.slicing`),
added to a command by :func:`slice_options`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from simkv.traces.slicing import TraceSlice

#: The options as command parameters: ``(name, annotation, default)``, in TraceSlice's order.
_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("limit", Annotated[int | None, typer.Option(
        "--limit", help="Keep only the first N requests (after --start/--end and --sample).")], None),
    ("start", Annotated[float | None, typer.Option(
        "--start", help="Keep requests arriving at or after this many seconds (the trace's clock).")],
     None),
    ("end", Annotated[float | None, typer.Option(
        "--end", help="Keep requests arriving before this many seconds (the trace's clock).")], None),
    ("sample", Annotated[float | None, typer.Option(
        "--sample", help="Keep this fraction (0-1] of the sessions (or requests, --sample-by), "
        "drawn with --sample-seed.")], None),
    ("sample_by", Annotated[str, typer.Option(
        "--sample-by", help="What --sample draws: session (a request without a session_id is its "
        "own) or request.")], "session"),
    ("sample_seed", Annotated[int, typer.Option("--sample-seed", help="Seed of --sample.")], 0),
)


def slice_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` the slice options; it receives them as one ``trace_slice`` keyword
    (a :class:`TraceSlice`, or ``None`` for the whole trace)."""
    sig = inspect.signature(command, eval_str=True)
    params = [p for p in sig.parameters.values() if p.name != "trace_slice"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
               for name, annotation, default in _OPTIONS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        spec = TraceSlice(*(kwargs.pop(name) for name, _, _ in _OPTIONS))
        return command(*args, trace_slice=None if spec.is_whole else spec, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
