"""Importers: Mooncake trace JSONL, LMCache lookup-hash logs and agent-call logs → :class:`Trace`.

Every importer reads JSONL through one tiered reader (:func:`_read`); the first tier that can
vouch for the whole file wins:

1. **Canonical Mooncake lines** (:func:`_read_mooncake_lines`, Mooncake only): lines exactly
   as Mooncake writes them are proven well-formed by one full-line regex, then their numbers
   are cut out by offsets and cast by Arrow, in parallel (~1.6x faster than tier 2).
2. **pyarrow.json** (:func:`_read_fast`): the whole file parsed by ``pyarrow.json.read_json``
   with an explicit schema. Both fast tiers run the vectorised :func:`_vouch` (nulls, bounds)
   and check that each line holds one object, so row ``i`` is line ``i + 1``. No per-row
   Python.
3. **Line by line** (:func:`_read_slow`): ``json.loads`` per line, checking every field with
   :func:`_check_field`. It runs whenever the fast tiers decline, and it is the only place that
   words syntax / type / range errors, naming file, line and field.

All tiers produce the same :class:`_Raw` columns; the per-format semantics (hash counts, time order,
duplicates, collisions) are then checked once, vectorised, on :class:`_Raw` with its line
numbers, and the table is built directly in the trace schema and passed to
:func:`simkv.traces.schema.validate_table`.

Rules common to all formats: blank lines are skipped, and nothing else is. Invalid JSON, a
line that is not an object, a missing/mistyped/out-of-range field, an unknown key, a
decreasing timestamp (unless ``sort``) and an input with zero requests are all
:class:`TraceError`. ``bool`` is not an integer, ``5.0`` is not an integer, JSON ``null`` is
an error for a required key and means "absent" for an optional one. A repeated key in one
object is an error too (``json.loads`` would silently keep the last).

LMCache logs: ``dtypes`` and ``shapes`` are accepted and not used; an empty ``request_id``
(LMCache writes ``""`` when it has none) falls back to ``<file name>:<line>``, and an id seen
again (LMCache may look one request up several times; each lookup is an event to its
simulator, so each is kept) gets ``#2``, ``#3``... so that ids stay unique.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from simkv.errors import SimkvError, TraceError
from simkv.traces.hashing import chain_block_hashes, hex_to_u64
from simkv.traces.schema import OPTIONAL_NAMES, Trace, trace_schema, validate_table

__all__ = [
    "IMPORTERS",
    "MOONCAKE_BLOCK_SIZE",
    "import_agent_log",
    "import_lmcache",
    "import_mooncake",
    "import_trace",
]

MOONCAKE_BLOCK_SIZE = 512
INT32_MAX = 2**31 - 1
U64_MAX = 2**64 - 1
LMCACHE_GLOB = "lookup_hashes_*.jsonl"

_SCHEMA = trace_schema(OPTIONAL_NAMES)
_BLOCKS_TYPE = _SCHEMA.field("block_hashes").type
_HEX_RE = r"^(0[xX])?[0-9a-fA-F]+$"


# --------------------------------------------------------------------------------------------
# Field specs and the two readers
# --------------------------------------------------------------------------------------------

_ARROW_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "u64_list": pa.list_(pa.uint64()),
    "str_list": pa.list_(pa.string()),
}


@dataclass(frozen=True)
class _Field:
    """One JSON key of a format.

    ``kind``: ``int`` | ``float`` | ``str`` | ``u64_list`` | ``str_list`` | ``segments``
    (``[[str, int], ...]``) | ``any`` (accepted and ignored; ``arrow`` types it for the fast
    path). ``lo``/``hi`` bound numbers (list items for ``u64_list``, token counts for
    ``segments``).
    """

    name: str
    kind: str
    required: bool = True
    lo: float | None = None
    hi: float | None = None
    arrow: pa.DataType | None = None

    @property
    def arrow_type(self) -> pa.DataType | None:
        return self.arrow if self.arrow is not None else _ARROW_TYPES.get(self.kind)


@dataclass
class _Raw:
    """Parsed rows of one or more files, in file order, before any format semantics.

    ``cols[name]`` is a ``pa.Array`` of the field's arrow type (null where an optional key was
    absent), or a Python list for ``segments``; ``src[i]`` indexes ``paths`` and ``lines[i]``
    is the 1-based line of row ``i``.
    """

    paths: list[Path]
    src: np.ndarray
    lines: np.ndarray
    cols: dict[str, Any]

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, i: int) -> str:
        return f"{self.paths[self.src[i]]}:{self.lines[i]}"

    def error(self, i: int, field: str | None, message: str) -> TraceError:
        return TraceError(self.paths[self.src[i]], message, line=int(self.lines[i]), field=field)

    def np(self, name: str, dtype: Any = None) -> np.ndarray:
        """A numeric column as NumPy (nulls must have been excluded by the caller)."""
        arr = self.cols[name].to_numpy(zero_copy_only=False)
        return arr.astype(dtype) if dtype is not None else arr

    def present(self, name: str) -> np.ndarray:
        """Mask of rows where the (optional) key was given."""
        return self.cols[name].is_valid().to_numpy(zero_copy_only=False)

    def take(self, idx: np.ndarray) -> _Raw:
        cols = {
            k: [v[i] for i in idx] if isinstance(v, list) else v.take(pa.array(idx))
            for k, v in self.cols.items()
        }
        return _Raw(self.paths, self.src[idx], self.lines[idx], cols)

    @staticmethod
    def concat(parts: list[_Raw]) -> _Raw:
        """Rows of ``parts`` one after the other (each part holds one file)."""
        paths = [p for part in parts for p in part.paths]
        base = np.cumsum([0] + [len(part.paths) for part in parts])
        src = np.concatenate([part.src + b for part, b in zip(parts, base, strict=False)])
        lines = np.concatenate([part.lines for part in parts])
        cols: dict[str, Any] = {}
        for k, v in parts[0].cols.items():
            if isinstance(v, list):
                cols[k] = [x for part in parts for x in part.cols[k]]
            else:
                cols[k] = pa.concat_arrays([part.cols[k] for part in parts])
        return _Raw(paths, src, lines, cols)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a missing, directory or unreadable path is a TraceError."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TraceError(path, "no such file") from None
    except IsADirectoryError:
        raise TraceError(path, "is a directory, expected a JSONL file") from None
    except OSError as exc:
        raise TraceError(path, f"cannot read: {exc.strerror or exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` keeps the last of repeated keys; here a repeat is an error instead."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise ValueError(f"key {dup!r} appears twice (one value would be lost)")
    return obj


def _json_lines(path: Path, data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; anything else is an error."""
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise TraceError(path, f"is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                             line=lineno) from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text, parse_constant=_reject_constant,
                             object_pairs_hook=_no_duplicate_keys)
        except ValueError as exc:
            raise TraceError(path, f"invalid JSON: {exc}", line=lineno) from None
        if not isinstance(obj, dict):
            raise TraceError(path, f"expected a JSON object, got {type(obj).__name__}",
                             line=lineno)
        yield lineno, obj


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is a subclass of int and is rejected on purpose


def _check_field(f: _Field, v: Any, fail: Callable[[str], TraceError]) -> Any:
    """Check one present, non-null value of field ``f``; return it (floats as float)."""
    if f.kind == "int":
        if not _is_int(v):
            raise fail(f"must be an integer, got {_show(v)}")
    elif f.kind == "float":
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise fail(f"must be a number, got {_show(v)}")
        try:
            v = float(v)
        except OverflowError:
            raise fail(f"number {_show(v)} is out of range") from None
        if not math.isfinite(v):
            raise fail(f"must be finite, got {v}")
    elif f.kind == "str":
        if not isinstance(v, str):
            raise fail(f"must be a string, got {_show(v)}")
    elif f.kind == "u64_list":
        if not isinstance(v, list) or not all(_is_int(x) for x in v):
            raise fail(f"must be a list of integers, got {_show(v)}")
        if v and (min(v) < 0 or max(v) > U64_MAX):
            bad = next(x for x in v if x < 0 or x > U64_MAX)
            raise fail(f"items must be in [0, 2**64-1], got {bad}")
        return v
    elif f.kind == "str_list":
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise fail(f"must be a list of strings, got {_show(v)}")
        return v
    elif f.kind == "segments":
        ok = isinstance(v, list) and all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and _is_int(s[1])
            for s in v)
        if not ok:
            raise fail(f"must be a list of [segment_id, n_tokens] pairs, got {_show(v)}")
        bad_n = [s[1] for s in v if s[1] < 0 or s[1] > INT32_MAX]
        if bad_n:
            raise fail(f"n_tokens must be in [0, {INT32_MAX}], got {bad_n[0]}")
        return [(s[0], s[1]) for s in v]
    else:  # "any"
        return v
    if f.lo is not None and v < f.lo:
        raise fail(f"must be >= {f.lo:g}, got {v}")
    if f.hi is not None and v > f.hi:
        raise fail(f"must be <= {f.hi:g}, got {v}")
    return v


def _read_slow(path: Path, data: bytes, fields: tuple[_Field, ...]) -> _Raw:
    """Line-by-line reader: the authority on per-line errors."""
    known = {f.name: f for f in fields}
    values: dict[str, list[Any]] = {f.name: [] for f in fields}
    lines: list[int] = []
    for lineno, obj in _json_lines(path, data):
        unknown = [k for k in obj if k not in known]
        if unknown:
            raise TraceError(path, f"unknown key(s) {unknown}; expected {sorted(known)}",
                             line=lineno, field=unknown[0])
        for f in fields:
            v = obj.get(f.name)
            if v is None:
                if f.required:
                    what = "is missing" if f.name not in obj else "is null"
                    raise TraceError(path, f"required key {what}", line=lineno, field=f.name)
            else:
                def fail(msg: str, _f: str = f.name, _l: int = lineno) -> TraceError:
                    return TraceError(path, msg, line=_l, field=_f)

                v = _check_field(f, v, fail)
            values[f.name].append(v)
        lines.append(lineno)
    cols: dict[str, Any] = {}
    for f in fields:
        typ = f.arrow_type
        if f.kind == "segments":
            cols[f.name] = values[f.name]
        elif f.kind != "any" and typ is not None:
            cols[f.name] = pa.array(values[f.name], type=typ)
    n = len(lines)
    return _Raw([path], np.zeros(n, np.int64), np.asarray(lines, np.int64), cols)


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``[start, end)`` byte range of every line, without its ``\\n`` or ``\\r\\n``."""
    buf = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(buf == 10)
    ends = nl if len(nl) and nl[-1] == len(buf) - 1 else np.append(nl, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    return starts, ends - cr


def _one_object_per_line(data: bytes) -> int | None:
    """Number of lines if every line is ``{...}`` with no padding (so no blank lines), else None.

    With that shape a JSON object cannot span lines (after ``}`` JSON never continues with
    ``{``), so if pyarrow finds exactly this many rows, row ``i`` is line ``i + 1``.
    """
    if not data:
        return None
    buf = np.frombuffer(data, np.uint8)
    starts, ends = _line_bounds(data)
    if np.any(ends <= starts):
        return None
    if not (np.all(buf[starts] == ord("{")) and np.all(buf[ends - 1] == ord("}"))):
        return None
    return len(starts)


def _vouch(fields: tuple[_Field, ...], cols: dict[str, pa.Array]) -> bool:
    """Vectorised version of the slow path's checks: True only if it would accept every row.

    Catches nulls in required keys or in lists, out-of-bound numbers and non-finite floats.
    It only says yes or no; the slow path words the error.
    """
    for f in fields:
        col = cols.get(f.name)
        if col is None:
            continue
        if f.required and col.null_count:
            return False
        is_list = f.kind in ("u64_list", "str_list")
        values = pc.list_flatten(col) if is_list else col
        if is_list and values.null_count:
            return False
        if f.lo is not None or f.hi is not None:
            mm = pc.min_max(values).as_py()
            if mm["min"] is not None and ((f.lo is not None and mm["min"] < f.lo)
                                          or (f.hi is not None and mm["max"] > f.hi)):
                return False
        if f.kind == "float" and pc.any(pc.invert(pc.is_finite(col))).as_py():
            return False
    return True


def _read_fast(path: Path, data: bytes, fields: tuple[_Field, ...]) -> _Raw | None:
    """``pyarrow.json`` reader; None if it cannot vouch for the whole file."""
    if any(f.arrow_type is None for f in fields):
        return None
    n_lines = _one_object_per_line(data)
    if n_lines is None:
        return None
    schema = pa.schema([(f.name, f.arrow_type) for f in fields])
    try:
        table = pj.read_json(
            pa.BufferReader(data),
            read_options=pj.ReadOptions(block_size=1 << 20),  # 1 MiB: blocks parse in parallel
            parse_options=pj.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior="error"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n_lines:
        return None
    cols = {f.name: table.column(f.name).combine_chunks() for f in fields if f.kind != "any"}
    if not _vouch(fields, cols):
        return None
    return _Raw([path], np.zeros(n_lines, np.int64), np.arange(1, n_lines + 1), cols)


def _gapped(data: bytes, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """Zero-copy strings ``data[starts[i]:ends[i]]`` at even positions; odd ones are null gaps.

    Arrow strings must be contiguous, so the bytes between two wanted ranges become a null.
    """
    n = len(starts)
    offsets = np.empty(2 * n, np.int64)
    offsets[0::2], offsets[1::2] = starts, ends
    valid = np.zeros(2 * n - 1, bool)
    valid[0::2] = True
    return pa.StringArray.from_buffers(
        2 * n - 1, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data),
        pa.py_buffer(np.packbits(valid, bitorder="little")))


def _even(arr: pa.Array) -> pa.Array:
    return arr.take(pa.array(np.arange(0, len(arr), 2)))


_UINT = "(?:0|[1-9][0-9]*)"
_NUM = "-?(?:0|[1-9][0-9]*)(?:[.][0-9]+)?"
# The canonical line cut into its literal pieces, and both regexes built from them.
_MOONCAKE_KEYS = ('{"timestamp": ', ', "input_length": ', ', "output_length": ',
                  ', "hash_ids": [')
_MOONCAKE_HEAD_COLS = (("timestamp", _NUM, pa.float64()), ("input_length", _UINT, pa.int64()),
                       ("output_length", _UINT, pa.int64()))
_MOONCAKE_LINE = ("^" + "".join(re.escape(k) + v for k, (_, v, _) in zip(
    _MOONCAKE_KEYS, _MOONCAKE_HEAD_COLS, strict=False))
    + re.escape(_MOONCAKE_KEYS[3]) + f"(?:(?:{_UINT}, )*{_UINT})?" + r"\]\}$")
_MOONCAKE_HEAD = ("^" + "".join(f"{re.escape(k)}(?P<{name}>{v})" for k, (name, v, _) in zip(
    _MOONCAKE_KEYS, _MOONCAKE_HEAD_COLS, strict=False)) + re.escape(_MOONCAKE_KEYS[3]) + "$")


def _mooncake_chunk(data: bytes, starts: np.ndarray, ends: np.ndarray
                    ) -> dict[str, pa.Array] | None:
    """Parse lines ``[starts, ends)`` of the canonical shape; None if any line differs.

    After the full-line regex has matched, everything up to ``[`` is the head (three numbers,
    extracted by a second regex) and everything between ``[`` and ``]}`` is ``id, id, ...``.
    """
    lines = _gapped(data, starts, ends)
    if not pc.all(pc.match_substring_regex(lines, _MOONCAKE_LINE)).as_py():
        return None
    bracket = starts + _even(pc.find_substring(lines, "[")).to_numpy().astype(np.int64)
    head = _even(pc.extract_regex(_gapped(data, starts, bracket + 1), _MOONCAKE_HEAD))
    cols = {name: pc.cast(head.field(name), typ) for name, _, typ in _MOONCAKE_HEAD_COLS}
    ids = pc.split_pattern(_gapped(data, bracket + 1, ends - 2), ", ")
    offsets = ids.offsets.to_numpy()  # the null gaps are empty lists: keep even rows' offsets
    offsets = np.append(offsets[0:-1:2], offsets[-1]) - offsets[0]
    # A cast fails (ArrowInvalid, the caller falls back) on overflow or on "" (an empty list).
    cols["hash_ids"] = pa.ListArray.from_arrays(pa.array(offsets),
                                                pc.cast(pc.list_flatten(ids), pa.uint64()))
    return cols


def _read_mooncake_lines(path: Path, data: bytes, fields: tuple[_Field, ...]) -> _Raw | None:
    """Fastest Mooncake reader, for lines exactly as Mooncake writes them.

    That is ``json.dumps`` with default separators and keys in the order ``timestamp,
    input_length, output_length, hash_ids`` (a full-line regex proves it, so this accepts no
    more than JSON does). Then the numbers are cut out by offsets and cast by Arrow, in
    parallel chunks, which measured ~1.6x faster than ``pyarrow.json``. Anything else: None.
    """
    if not data or len(data) > INT32_MAX:  # Arrow string offsets are int32
        return None
    starts, ends = _line_bounds(data)
    n = len(starts)
    workers = min(_cpus(), 8) if n >= 20_000 else 1
    cuts = np.linspace(0, n, workers + 1).astype(int)
    parts = [(starts[a:b], ends[a:b]) for a, b in itertools.pairwise(cuts)]
    try:
        with ThreadPoolExecutor(workers) as pool:  # Arrow kernels release the GIL
            chunks = list(pool.map(lambda p: _mooncake_chunk(data, *p), parts))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. bytes that are not UTF-8
        return None
    if any(c is None for c in chunks):
        return None
    cols = {f.name: pa.concat_arrays([c[f.name] for c in chunks]) for f in fields}
    if not _vouch(fields, cols):
        return None
    return _Raw([path], np.zeros(n, np.int64), np.arange(1, n + 1), cols)


def _cpus() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


_Reader = Callable[[Path, bytes, tuple[_Field, ...]], "_Raw | None"]


def _read(path: Path, fields: tuple[_Field, ...], fast: tuple[_Reader, ...] = (_read_fast,)
          ) -> _Raw:
    """Rows of one JSONL file: the first fast reader that vouches for it, else the slow path."""
    data = _read_bytes(path)
    for reader in fast:
        raw = reader(path, data, fields)
        if raw is not None:
            return raw
    return _read_slow(path, data, fields)


# --------------------------------------------------------------------------------------------
# Shared semantics
# --------------------------------------------------------------------------------------------


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def _require_rows(raw: _Raw, path: Path | str, what: str = "requests") -> None:
    if len(raw) == 0:
        raise TraceError(path, f"contains no {what} (only blank lines or an empty file); "
                         "a trace needs at least one request")


def _order(raw: _Raw, ts: np.ndarray, field: str, sort: bool) -> np.ndarray | None:
    """Permutation putting rows in time order (stable), or None if they already are.

    Without ``sort`` a decreasing timestamp is an error naming its line.
    """
    if len(ts) < 2:
        return None
    bad = _first(np.diff(ts) < 0)
    if bad is None:
        return None
    if not sort:
        raise raw.error(bad + 1, field, f"{field} {ts[bad + 1]:.15g} is earlier than the "
                        f"previous request's {ts[bad]:.15g} ({raw.where(bad)}); rows must be in "
                        "time order (use --sort / sort=True to sort them, stably)")
    return np.argsort(ts, kind="stable")


def _duplicate(values: list[str] | np.ndarray) -> tuple[int, int] | None:
    """``(first, second)`` rows of the first value that repeats, in row order."""
    dup = pd.Series(values, dtype=object).duplicated(keep="first").to_numpy()
    j = _first(dup)
    if j is None:
        return None
    i = next(k for k in range(j) if values[k] == values[j])
    return i, j


def _lists(values: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """A ``list<uint64 not null>`` array from flat values and per-row lengths."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > INT32_MAX:
        raise SimkvError(f"too many block hashes in one trace ({offsets[-1]:,})")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                    pa.array(values.astype(np.uint64, copy=False)),
                                    type=_BLOCKS_TYPE)


def _drop_partial(lists: pa.ListArray, drop: np.ndarray) -> pa.ListArray:
    """Remove the last item of the lists where ``drop`` is True (the partial block's hash).

    Mooncake lists hold at most one hash past ``input_length // 512`` (checked before), so
    dropping one item is all the truncation needed, and a mask is cheaper than a gather.
    """
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    lengths = np.diff(offsets) - drop
    if drop.any():
        keep = np.ones(len(values), bool)
        keep[(offsets[1:] - offsets[0] - 1)[drop]] = False
        values = values[keep]
    return _lists(values, lengths)


def _build(cols: dict[str, Any], *, block_size: int, source: str, path: Path) -> Trace:
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


def _strings(n: int, value: str) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


# --------------------------------------------------------------------------------------------
# Mooncake
# --------------------------------------------------------------------------------------------

_MOONCAKE_FIELDS = (
    _Field("timestamp", "float"),
    _Field("input_length", "int", lo=0, hi=INT32_MAX),
    _Field("output_length", "int", lo=0, hi=INT32_MAX),
    _Field("hash_ids", "u64_list"),
)


def import_mooncake(path: Path, *, sort: bool = False) -> Trace:
    """Import a Mooncake trace (JSONL: ``timestamp`` ms, ``input_length``, ``output_length``,
    ``hash_ids``), block size 512.

    ``hash_ids`` cover the trailing partial block too, so ``input_length // 512 <= len(hash_ids)
    <= ceil(input_length / 512)`` is required and the first ``input_length // 512`` are kept.
    ``arrival_s = (timestamp - timestamp_0) / 1000`` with ``timestamp_0`` the first row after
    ordering; ``request_id`` is the 1-based line number.
    """
    path = Path(path)
    raw = _read(path, _MOONCAKE_FIELDS, fast=(_read_mooncake_lines, _read_fast))
    _require_rows(raw, path)
    inp = raw.np("input_length", np.int64)
    n = pc.list_value_length(raw.cols["hash_ids"]).to_numpy(zero_copy_only=False)
    full, most = inp // MOONCAKE_BLOCK_SIZE, -(-inp // MOONCAKE_BLOCK_SIZE)
    bad = _first((n < full) | (n > most))
    if bad is not None:
        raise raw.error(bad, "hash_ids", f"has {n[bad]} hash_ids but input_length={inp[bad]} "
                        f"needs {full[bad]} (full 512-token blocks) to {most[bad]} "
                        "(with the partial last block)")
    perm = _order(raw, raw.np("timestamp"), "timestamp", sort)
    if perm is not None:
        raw, inp, n = raw.take(perm), inp[perm], n[perm]
    ts = raw.np("timestamp")
    rows = len(raw)
    return _build({
        "arrival_s": (ts - ts[0]) / 1000.0,
        "request_id": pa.array(raw.lines).cast(pa.string()),
        "session_id": _strings(rows, ""),
        "prompt_class": _strings(rows, "unknown"),
        "input_tokens": raw.cols["input_length"],
        "output_tokens": raw.cols["output_length"],
        "block_hashes": _drop_partial(raw.cols["hash_ids"], n > inp // MOONCAKE_BLOCK_SIZE),
    }, block_size=MOONCAKE_BLOCK_SIZE, source=f"mooncake:{path.name}", path=path)


# --------------------------------------------------------------------------------------------
# LMCache
# --------------------------------------------------------------------------------------------

_LMCACHE_FIELDS = (
    _Field("timestamp", "float"),
    _Field("chunk_hashes", "str_list"),
    _Field("seq_len", "int", lo=0, hi=INT32_MAX),
    _Field("chunk_size", "int", lo=1, hi=INT32_MAX),
    _Field("model_name", "str", required=False),
    _Field("request_id", "str", required=False),
    _Field("dtypes", "any", required=False, arrow=pa.list_(pa.string())),
    _Field("shapes", "any", required=False, arrow=pa.list_(pa.list_(pa.int64()))),
)


def _lmcache_files(paths: list[Path]) -> list[Path]:
    """Files in LMCache's order: each path as given, a directory as its sorted glob."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob(LMCACHE_GLOB))
            if not found:
                raise TraceError(p, f"directory has no {LMCACHE_GLOB} files")
            files.extend(found)
        else:
            files.append(p)
    return files


def _hex_to_u64(raw: _Raw, hashes: pa.ListArray) -> np.ndarray:
    """Flat uint64 values of the hex ``hashes``; non-hex strings and collisions are errors.

    Two different strings mapping to one uint64 would merge two chunks that LMCache (which
    compares the strings) keeps apart, so it is reported rather than ignored.
    """
    flat = pc.list_flatten(hashes)
    enc = flat.dictionary_encode()
    uniq = enc.dictionary

    def row_of(s: str) -> int:
        first = pc.index(flat, pa.scalar(s, pa.string())).as_py()
        return int(pc.list_parent_indices(hashes)[first].as_py())

    ok = pc.match_substring_regex(uniq, _HEX_RE).to_numpy(zero_copy_only=False)
    bad = _first(~ok)
    if bad is not None:
        s = uniq[bad].as_py()
        raise raw.error(row_of(s), "chunk_hashes", f"chunk hash {_show(s)} is not hexadecimal")
    strings = uniq.to_pylist()
    u64 = np.fromiter((hex_to_u64(s) for s in strings), dtype=np.uint64, count=len(strings))
    values, counts = np.unique(u64, return_counts=True)
    if np.any(counts > 1):
        clash = values[counts > 1][0]
        a, b = (strings[k] for k in np.flatnonzero(u64 == clash)[:2])
        ra, rb = sorted((row_of(a), row_of(b)))
        raise raw.error(rb, "chunk_hashes", f"hash collision: chunk hashes {_show(a)} and "
                        f"{_show(b)} (first at {raw.where(ra)}) both map to uint64 {clash:#x}")
    return u64[enc.indices.to_numpy(zero_copy_only=False)]


def _unique_ids(ids: list[str]) -> list[str]:
    """Repeats of an id (LMCache may look a request up more than once) get ``#2``, ``#3``…"""
    seen: dict[str, int] = {}
    out = []
    for rid in ids:
        k = seen.get(rid, 0) + 1
        seen[rid] = k
        out.append(rid if k == 1 else f"{rid}#{k}")
    return out


def import_lmcache(paths: list[Path], *, model: str | None = None, sort: bool = True) -> Trace:
    """Import LMCache lookup-hash logs, merged exactly as LMCache's cache simulator merges them.

    Files are concatenated in order (a directory contributes its sorted ``lookup_hashes_*.jsonl``),
    filtered by ``model_name == model`` when given, then stably sorted by ``timestamp`` (with
    ``sort=False`` out-of-order rows are an error instead). ``block_size = chunk_size`` (one
    value for all events); ``len(chunk_hashes) == seq_len // chunk_size``; hashes map through
    :func:`hex_to_u64`; ``arrival_s = timestamp - min(timestamp)``; ``output_tokens = 0``.
    """
    if isinstance(paths, str | Path):
        paths = [Path(paths)]
    if not paths:
        raise SimkvError("lmcache import needs at least one file or directory")
    files = _lmcache_files(paths)
    raw = _Raw.concat([_read(f, _LMCACHE_FIELDS) for f in files])
    where = files[0] if len(files) == 1 else Path(paths[0])
    _require_rows(raw, where, "lookup events")
    if model is not None:
        keep = pc.fill_null(pc.equal(raw.cols["model_name"], model), False)
        kept = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        if len(kept) == 0:
            seen = sorted(set(pc.unique(raw.cols["model_name"].drop_null()).to_pylist()))
            raise TraceError(where, f"no lookup event has model_name {model!r} "
                             f"(model names present: {seen[:10]})", field="model_name")
        raw = raw.take(kept)

    chunk = raw.np("chunk_size", np.int64)
    bad = _first(chunk != chunk[0])
    if bad is not None:
        raise raw.error(bad, "chunk_size", f"chunk_size {chunk[bad]} differs from {chunk[0]} "
                        f"at {raw.where(0)}; one trace has one block size")
    block_size = int(chunk[0])
    seq = raw.np("seq_len", np.int64)
    n = pc.list_value_length(raw.cols["chunk_hashes"]).to_numpy(zero_copy_only=False)
    bad = _first(n != seq // block_size)
    if bad is not None:
        raise raw.error(bad, "chunk_hashes", f"has {n[bad]} chunk hashes but seq_len={seq[bad]} "
                        f"// chunk_size={block_size} = {seq[bad] // block_size} full chunks")

    perm = _order(raw, raw.np("timestamp"), "timestamp", sort)
    if perm is not None:
        raw, n = raw.take(perm), n[perm]
    values = _hex_to_u64(raw, raw.cols["chunk_hashes"])

    given = raw.cols["request_id"].to_pylist()
    ids = [rid if rid else f"{raw.paths[s].name}:{ln}"
           for rid, s, ln in zip(given, raw.src, raw.lines, strict=True)]
    ts = raw.np("timestamp")
    rows = len(raw)
    cols: dict[str, Any] = {
        "arrival_s": ts - ts.min(),
        "request_id": pa.array(_unique_ids(ids), type=pa.string()),
        "session_id": _strings(rows, ""),
        "prompt_class": _strings(rows, "unknown"),
        "input_tokens": raw.cols["seq_len"],
        "output_tokens": pa.array(np.zeros(rows, np.int32)),
        "block_hashes": _lists(values, n),
    }
    if raw.cols["model_name"].null_count < rows:
        cols["model"] = raw.cols["model_name"]
    names = [f.name for f in files]
    source = "lmcache:" + names[0] + (f"+{len(names) - 1} more" if len(names) > 1 else "")
    return _build(cols, block_size=block_size, source=source, path=where)


# --------------------------------------------------------------------------------------------
# Agent log
# --------------------------------------------------------------------------------------------

_AGENT_FIELDS = (
    _Field("arrival_s", "float", required=False, lo=0),
    _Field("timestamp_ms", "float", required=False),
    _Field("request_id", "str"),
    _Field("input_tokens", "int", lo=0, hi=INT32_MAX),
    _Field("output_tokens", "int", lo=0, hi=INT32_MAX),
    _Field("prompt_segments", "segments"),
    _Field("session_id", "str", required=False),
    _Field("prompt_class", "str", required=False),
    _Field("model", "str", required=False),
    _Field("cost_per_mtok", "float", required=False, lo=0),
    _Field("reuse_prob", "float", required=False, lo=0, hi=1),
    _Field("temperature", "float", required=False, lo=0),
    _Field("tool_name", "str", required=False),
    _Field("parent_request_id", "str", required=False),
    _Field("prompt_key", "str", required=False),
)
_AGENT_STR_DEFAULTS = {"session_id": "", "prompt_class": "unknown"}


def import_agent_log(path: Path, *, block_size: int = 256, sort: bool = False) -> Trace:
    """Import an agent-call log: one JSON object per model call.

    Time is ``arrival_s`` (seconds, used as is) or ``timestamp_ms`` (``arrival_s = (t - t_0) /
    1000``), one of them on every line. ``prompt_segments`` ``[[segment_id, n_tokens], ...]``
    must sum to ``input_tokens``; ``block_hashes = chain_block_hashes(segments, block_size)``, so
    calls sharing leading segments share leading blocks. Optional schema columns are copied.
    """
    path = Path(path)
    if not _is_int(block_size) or block_size <= 0:
        raise SimkvError(f"block size must be a positive integer, got {block_size!r}")
    raw = _read(path, _AGENT_FIELDS)
    _require_rows(raw, path)

    has_a, has_t = raw.present("arrival_s"), raw.present("timestamp_ms")
    bad = _first(has_a == has_t)
    if bad is not None:
        both = "has both arrival_s and timestamp_ms" if has_a[bad] else "has no time"
        raise raw.error(bad, "arrival_s", f"{both}; give arrival_s (seconds) or timestamp_ms")
    bad = _first(has_a != has_a[0])
    if bad is not None:
        used, first = ("arrival_s", "timestamp_ms") if has_a[bad] else ("timestamp_ms",
                                                                         "arrival_s")
        raise raw.error(bad, used, f"uses {used} but {raw.where(0)} uses {first}; "
                        "use one time field throughout")
    time_field = "arrival_s" if has_a[0] else "timestamp_ms"

    segments: list[list[tuple[str, int]]] = raw.cols["prompt_segments"]
    inp = raw.np("input_tokens", np.int64)
    sums = np.fromiter((sum(n for _, n in s) for s in segments), np.int64, len(segments))
    bad = _first(sums != inp)
    if bad is not None:
        raise raw.error(bad, "prompt_segments", f"n_tokens sum to {sums[bad]} but "
                        f"input_tokens is {inp[bad]}")
    ids = raw.cols["request_id"].to_pylist()
    bad = _first(np.fromiter((not r for r in ids), bool, len(ids)))
    if bad is not None:
        raise raw.error(bad, "request_id", "request_id is empty")
    dup = _duplicate(ids)
    if dup is not None:
        raise raw.error(dup[1], "request_id", f"request_id {ids[dup[1]]!r} repeats "
                        f"{raw.where(dup[0])}; request ids must be unique")

    perm = _order(raw, raw.np(time_field), time_field, sort)
    if perm is not None:
        raw = raw.take(perm)
    t = raw.np(time_field)
    rows = len(raw)
    hashes = [chain_block_hashes(s, block_size) for s in raw.cols["prompt_segments"]]
    cols: dict[str, Any] = {
        "arrival_s": t if time_field == "arrival_s" else (t - t[0]) / 1000.0,
        "request_id": raw.cols["request_id"],
        "input_tokens": raw.cols["input_tokens"],
        "output_tokens": raw.cols["output_tokens"],
        "block_hashes": pa.array(hashes, type=_BLOCKS_TYPE),
    }
    for name, default in _AGENT_STR_DEFAULTS.items():
        cols[name] = raw.cols[name].fill_null(default)
    for name in OPTIONAL_NAMES:
        if raw.cols[name].null_count < rows:
            cols[name] = raw.cols[name]
    return _build(cols, block_size=block_size, source=f"agent:{path.name}", path=path)


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def _one_input(kind: str, inputs: list[Path]) -> Path:
    if len(inputs) != 1:
        raise SimkvError(f"{kind} import takes exactly one input file, got {len(inputs)}")
    return Path(inputs[0])


def _no_model(kind: str, model: str | None) -> None:
    if model is not None:
        raise SimkvError(f"--model applies only to lmcache imports, not {kind}")


def _run_mooncake(inputs: list[Path], sort: bool, block_size: int | None,
                  model: str | None) -> Trace:
    _no_model("mooncake", model)
    if block_size is not None and block_size != MOONCAKE_BLOCK_SIZE:
        raise SimkvError(f"mooncake traces have a fixed block size of {MOONCAKE_BLOCK_SIZE}; "
                         f"--block-size {block_size} does not apply")
    return import_mooncake(_one_input("mooncake", inputs), sort=sort)


def _run_lmcache(inputs: list[Path], sort: bool, block_size: int | None,
                 model: str | None) -> Trace:
    # LMCache's simulator always merges its logs by timestamp, so ``sort`` is implied.
    if block_size is not None:
        raise SimkvError("lmcache logs carry their block size (chunk_size); "
                         "--block-size does not apply")
    return import_lmcache(list(inputs), model=model, sort=True)


def _run_agent(inputs: list[Path], sort: bool, block_size: int | None,
               model: str | None) -> Trace:
    _no_model("agent", model)
    return import_agent_log(_one_input("agent", inputs), sort=sort,
                            block_size=256 if block_size is None else block_size)


IMPORTERS: dict[str, Callable[[list[Path], bool, int | None, str | None], Trace]] = {
    "mooncake": _run_mooncake,
    "lmcache": _run_lmcache,
    "agent": _run_agent,
}


def import_trace(kind: str, inputs: list[Path], *, sort: bool = False,
                 block_size: int | None = None, model: str | None = None) -> Trace:
    """Import ``inputs`` of format ``kind`` (a key of :data:`IMPORTERS`) as a validated trace.

    Options that do not apply to the kind are errors rather than being ignored. LMCache logs
    are always merged by timestamp (as LMCache does), whatever ``sort`` says.
    """
    importer = IMPORTERS.get(kind)
    if importer is None:
        raise SimkvError(f"unknown trace kind {kind!r}; valid kinds: {', '.join(IMPORTERS)}")
    if not inputs:
        raise SimkvError(f"{kind} import needs an input path")
    return importer([Path(p) for p in inputs], sort, block_size, model)
