"""The trace importers by name (``simkv trace import KIND``) and the options they share.

Each format module registers an adapter ``(inputs, sort, block_size, model) -> Trace`` in
:data:`IMPORTERS`; :func:`import_trace` looks ``kind`` up there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from simkv.core.errors import SimkvError
from simkv.core.registry import Registry
from simkv.traces.schema import Trace
from simkv.traces.slicing import TraceSlice, slice_trace

Importer = Callable[[list[Path], bool, int | None, str | None], Trace]

IMPORTERS: Registry[Importer] = Registry("trace kind")


def one_input(kind: str, inputs: list[Path]) -> Path:
    if len(inputs) != 1:
        raise SimkvError(f"{kind} import takes exactly one input file, got {len(inputs)}")
    return Path(inputs[0])


def no_model(kind: str, model: str | None) -> None:
    if model is not None:
        raise SimkvError(f"--model applies only to lmcache imports, not {kind}")


def import_trace(kind: str, inputs: list[Path], *, sort: bool = False,
                 block_size: int | None = None, model: str | None = None,
                 trace_slice: TraceSlice | None = None) -> Trace:
    """Import ``inputs`` of format ``kind`` (a name in :data:`IMPORTERS`) as a validated trace,
    or the slice ``trace_slice`` of it (taken after the import: the same rows as slicing the
    whole imported trace).

    Options that do not apply to the kind are errors rather than being ignored. LMCache logs
    are always merged by timestamp (as LMCache does), whatever ``sort`` says.
    """
    if kind not in IMPORTERS:  # checked here: a trace kind is never an import path
        raise SimkvError(f"unknown trace kind {kind!r}; valid kinds: {', '.join(IMPORTERS)}")
    importer = IMPORTERS.get(kind)
    if not inputs:
        raise SimkvError(f"{kind} import needs an input path")
    return slice_trace(importer([Path(p) for p in inputs], sort, block_size, model), trace_slice)
