"""What every format does after reading: row checks on :class:`Raw` and the trace table.

The per-format semantics (hash counts, time order, duplicates, collisions) are checked once,
vectorised, on :class:`Raw` with its line numbers; then the table is built directly in the
trace schema (:func:`build_trace`) and passed to :func:`simkv.traces.schema.validate_table`.
A decreasing timestamp (unless ``sort``) and an input with zero requests are
:class:`TraceError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from simkv.core.errors import SimkvError, TraceError
from simkv.traces.importers.reader import INT32_MAX, Raw
from simkv.traces.schema import OPTIONAL_NAMES, Trace, first_index, trace_schema, validate_table

BLOCKS_TYPE = trace_schema(OPTIONAL_NAMES).field("block_hashes").type


def require_rows(raw: Raw, path: Path | str, what: str = "requests") -> None:
    if len(raw) == 0:
        raise TraceError(path, f"contains no {what} (only blank lines or an empty file); "
                         "a trace needs at least one request")


def time_order(raw: Raw, ts: np.ndarray, field: str, sort: bool) -> np.ndarray | None:
    """Permutation putting rows in time order (stable), or None if they already are.

    Without ``sort`` a decreasing timestamp is an error naming its line.
    """
    if len(ts) < 2:
        return None
    bad = first_index(np.diff(ts) < 0)
    if bad is None:
        return None
    if not sort:
        raise raw.error(bad + 1, field, f"{field} {ts[bad + 1]:.15g} is earlier than the "
                        f"previous request's {ts[bad]:.15g} ({raw.where(bad)}); rows must be in "
                        "time order (use --sort / sort=True to sort them, stably)")
    return np.argsort(ts, kind="stable")


def first_duplicate(values: list[str] | np.ndarray) -> tuple[int, int] | None:
    """``(first, second)`` rows of the first value that repeats, in row order."""
    dup = pd.Series(values, dtype=object).duplicated(keep="first").to_numpy()
    j = first_index(dup)
    if j is None:
        return None
    i = next(k for k in range(j) if values[k] == values[j])
    return i, j


def block_lists(values: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """A ``list<uint64 not null>`` array from flat values and per-row lengths."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > INT32_MAX:
        raise SimkvError(f"too many block hashes in one trace ({offsets[-1]:,})")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                    pa.array(values.astype(np.uint64, copy=False)),
                                    type=BLOCKS_TYPE)


def build_trace(cols: dict[str, Any], *, block_size: int, source: str, path: Path) -> Trace:
    """Assemble the canonical table (optional columns only where given) and validate it."""
    optional = tuple(n for n in OPTIONAL_NAMES if n in cols)
    schema = trace_schema(optional)
    arrays = []
    for f in schema:
        col = cols[f.name]
        if not isinstance(col, pa.Array):
            col = pa.array(col, type=f.type)
        arrays.append(col if col.type == f.type else col.cast(f.type))  # in range: checked
    table = pa.Table.from_arrays(arrays, schema=schema)
    return validate_table(table, block_size=block_size, source=source, path=path)


def repeat_string(n: int, value: str) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)
