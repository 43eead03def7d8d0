"""The trace format: one Parquet file per trace, one row per request, sorted by arrival.

This module is the single place the schema is written down. Every
importer builds its table through :func:`build_table`, every reader goes through
:func:`read_trace`, and both end in :func:`validate_table`, so a trace that loads is a trace
that obeys the contract:

* at least one row;
* every column of its canonical type, or one of the same family that casts losslessly (a
  number stored as a string is an error);
* ``arrival_s`` finite, in ``[0, MAX_ARRIVAL_S]`` and non-decreasing;
* ``request_id`` non-empty and unique;
* ``input_tokens`` and ``output_tokens`` >= 0;
* ``len(block_hashes) == input_tokens // block_size`` (the tail is never cached).

The :class:`Trace` itself, with its file-metadata keys, is in :mod:`simkv.traces.trace`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simkv.core.errors import SimkvError, TraceError
from simkv.core.fileio import atomic_write, make_dir
from simkv.core.scenario.tiers import MAX_BLOCK_SIZE
from simkv.traces.trace import META_BLOCK_SIZE, META_SCHEMA_VERSION, META_SOURCE, SCHEMA_VERSION, Trace

#: The latest arrival a trace may have, in seconds from its start (about 31.7 years): the
#: simulated clock keeps sub-microsecond resolution up to it (ulp(1e9) ≈ 1.2e-7 s), so
#: service times and TTLs still add to arrival times.
MAX_ARRIVAL_S = 1e9

REQUIRED_FIELDS: tuple[pa.Field, ...] = (
    pa.field("arrival_s", pa.float64(), nullable=False),
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("prompt_class", pa.string(), nullable=False),
    pa.field("input_tokens", pa.int32(), nullable=False),
    pa.field("output_tokens", pa.int32(), nullable=False),
    pa.field("block_hashes", pa.list_(pa.field("item", pa.uint64(), nullable=False)), nullable=False),
)

OPTIONAL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("model", pa.string()),
    pa.field("cost_per_mtok", pa.float64()),
    pa.field("reuse_prob", pa.float64()),
    pa.field("temperature", pa.float64()),
    pa.field("tool_name", pa.string()),
    pa.field("parent_request_id", pa.string()),
    pa.field("prompt_key", pa.string()),
)

REQUIRED_NAMES = tuple(f.name for f in REQUIRED_FIELDS)
OPTIONAL_NAMES = tuple(f.name for f in OPTIONAL_FIELDS)
_FIELDS = {f.name: f for f in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)}


def trace_schema(optional: tuple[str, ...] = (), metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    """The Arrow schema of a trace with the given optional columns (in canonical order)."""
    extra = [f for f in OPTIONAL_FIELDS if f.name in optional]
    return pa.schema([*REQUIRED_FIELDS, *extra], metadata=metadata)


def build_table(
    columns: dict[str, Any],
    *,
    block_size: int,
    source: str,
    path: str | Path | None = None,
) -> Trace:
    """Build and validate a trace from plain columns (lists or arrays), in the canonical schema.

    ``columns`` must hold every required column; optional columns are kept when present.
    Unknown columns are an error rather than being dropped silently.
    """
    unknown = sorted(set(columns) - set(_FIELDS))
    if unknown:
        raise TraceError(path, f"unknown column(s) {unknown}", field=unknown[0])
    missing = [n for n in REQUIRED_NAMES if n not in columns]
    if missing:
        raise TraceError(path, "required column is missing", field=missing[0])
    optional = tuple(n for n in OPTIONAL_NAMES if n in columns)
    schema = trace_schema(optional, _metadata(block_size, source))
    arrays = []
    for f in schema:
        try:
            arrays.append(pa.array(columns[f.name], type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
            raise TraceError(path, f"cannot convert to {f.type}: {exc}", field=f.name) from None
    table = pa.Table.from_arrays(arrays, schema=schema)
    return validate_table(table, block_size=block_size, source=source, path=path)


def _metadata(block_size: int, source: str) -> dict[bytes, bytes]:
    return {
        META_BLOCK_SIZE: str(block_size).encode(),
        META_SOURCE: source.encode(),
        META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
    }


def first_index(mask: np.ndarray) -> int | None:
    """Index of the first True in ``mask`` (the first bad row), or None if there is none."""
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def _kind(t: pa.DataType) -> str:
    """A type's family: ``number``, ``string``, ``list<KIND>``, ``null``, else its name."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = t.value_type
        return "list<integer>" if pa.types.is_integer(inner) else f"list<{_kind(inner)}>"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def _conform(table: pa.Table, path: str | Path | None) -> pa.Table:
    """Cast every known column to its canonical type (losslessly) and order the columns.

    Only within a family (a number to a number, a string to a string, a list of integers to a
    list of integers): a number stored as text is an error, not parsed, since it means the
    file was written wrong and other columns may be too.
    """
    names = table.column_names
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise TraceError(path, f"column {dup!r} appears {names.count(dup)} times (one would be "
                         "ignored)", field=dup)
    unknown = [n for n in names if n not in _FIELDS]
    if unknown:
        raise TraceError(path, f"unknown column(s) {unknown}", field=unknown[0])
    for n in REQUIRED_NAMES:
        if n not in names:
            raise TraceError(path, "required column is missing", field=n)
    optional = tuple(n for n in OPTIONAL_NAMES if n in names)
    arrays = []
    for f in trace_schema(optional):
        col = table.column(f.name)
        if col.type != f.type and _kind(col.type) not in (_kind(f.type), "null"):
            hint = "; store numbers as numbers, not text" if _kind(col.type) == "string" else ""
            raise TraceError(path, f"has type {col.type}, expected {f.type}{hint}", field=f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise TraceError(
                    path, f"has type {col.type}, expected {f.type}: {exc}", field=f.name
                ) from None
        if not f.nullable and col.null_count:
            row = first_index(col.is_null().to_numpy(zero_copy_only=False))
            raise TraceError(path, "is null", row=row, field=f.name)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=trace_schema(optional))


def validate_table(
    table: pa.Table,
    *,
    block_size: int,
    source: str = "unknown",
    path: str | Path | None = None,
) -> Trace:
    """Check a table against the trace contract; return it as a :class:`Trace` or raise.

    Raises :class:`TraceError` naming the first offending row and field.
    """
    if (isinstance(block_size, bool) or not isinstance(block_size, int)
            or not 0 < block_size <= MAX_BLOCK_SIZE):
        raise TraceError(path, f"block_size must be an integer in [1, 2**24], got {block_size!r}",
                         field="block_size")
    table = _conform(table, path)
    if table.num_rows == 0:
        raise TraceError(path, "has no requests (0 rows); a trace needs at least one request")

    arrival = table.column("arrival_s").to_numpy()
    bad = first_index(~np.isfinite(arrival) | (arrival < 0) | (arrival > MAX_ARRIVAL_S))
    if bad is not None:
        raise TraceError(path, f"arrival_s must be finite, >= 0 and <= {MAX_ARRIVAL_S:.0e} "
                         f"(seconds from the trace's start), got {arrival[bad]}",
                         row=bad, field="arrival_s")
    if len(arrival) > 1:
        bad = first_index(np.diff(arrival) < 0)
        if bad is not None:
            raise TraceError(
                path,
                f"arrival_s decreases ({arrival[bad]} then {arrival[bad + 1]}); traces are sorted by arrival",
                row=bad + 1, field="arrival_s",
            )

    ids = table.column("request_id")
    empty = first_index(pc.equal(pc.utf8_length(ids), 0).to_numpy(zero_copy_only=False))
    if empty is not None:
        raise TraceError(path, "request_id is empty", row=empty, field="request_id")
    dup = pd.Series(ids.to_numpy(zero_copy_only=False)).duplicated()
    bad = first_index(dup.to_numpy())
    if bad is not None:
        raise TraceError(path, f"request_id {ids[bad].as_py()!r} is not unique", row=bad,
                         field="request_id")

    for name in ("input_tokens", "output_tokens"):
        values = table.column(name).to_numpy()
        bad = first_index(values < 0)
        if bad is not None:
            raise TraceError(path, f"{name} must be >= 0, got {values[bad]}", row=bad, field=name)

    n_blocks = pc.list_value_length(table.column("block_hashes")).to_numpy(zero_copy_only=False)
    input_tokens = table.column("input_tokens").to_numpy().astype(np.int64)
    expected = input_tokens // block_size
    bad = first_index(n_blocks != expected)
    if bad is not None:
        raise TraceError(
            path,
            f"has {n_blocks[bad]} hashes but input_tokens={input_tokens[bad]} "
            f"// block_size={block_size} requires {expected[bad]}",
            row=bad, field="block_hashes",
        )
    return Trace(table=table.replace_schema_metadata(_metadata(block_size, source)),
                 block_size=block_size, source=source,
                 path=Path(path) if path is not None else None)


def read_trace(path: str | Path) -> Trace:
    """Read and validate a Parquet trace."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
        # Row group by row group: reading the whole file at once needs scratch memory about
        # the size of the table again (0.8 GiB more at a million requests).
        groups = [pf.read_row_group(i) for i in range(pf.num_row_groups)]
        table = pa.concat_tables(groups) if groups else pf.read()
        del groups
    except FileNotFoundError:
        raise TraceError(path, "no such file") from None
    except IsADirectoryError:
        raise TraceError(path, "is a directory, expected a Parquet file") from None
    except (OSError, pa.ArrowException) as exc:
        raise TraceError(path, f"cannot read as Parquet: {' '.join(str(exc).split())}") from None
    meta = table.schema.metadata or {}
    raw = meta.get(META_BLOCK_SIZE)
    if raw is None:
        raise TraceError(path, "file metadata lacks 'block_size'", field="block_size")
    if not re.fullmatch(rb"[0-9]{1,20}", raw):
        raise TraceError(path, f"file metadata 'block_size' is not an integer: {raw[:40]!r}",
                         field="block_size")
    block_size = int(raw)
    version = meta.get(META_SCHEMA_VERSION, b"1")
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        raise TraceError(path, f"schema_version {version.decode(errors='replace')!r} is not "
                         f"supported (this simkv reads up to {SCHEMA_VERSION})",
                         field="schema_version")
    source = meta.get(META_SOURCE, b"unknown").decode(errors="replace")
    trace = validate_table(table, block_size=block_size, source=source, path=path)
    pa.default_memory_pool().release_unused()  # return the reader's scratch buffers
    return trace


#: Rows per Parquet row group of a written trace.
ROW_GROUP_ROWS = 1 << 17


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write a trace as Parquet, atomically (temp file + rename). Same trace → same bytes."""
    path = Path(path)
    if path.is_dir():
        raise SimkvError(f"{path}: is a directory (give the Parquet file to write)")
    make_dir(path.parent, "directory of the trace")
    table = trace.table.replace_schema_metadata(trace.metadata())
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd",
                                                  row_group_size=ROW_GROUP_ROWS))
    return path
