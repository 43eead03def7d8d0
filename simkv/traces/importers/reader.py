"""The JSONL reader every importer uses: lines → typed columns (:class:`Raw`), per-line errors.

:func:`read_jsonl` is tiered; the first tier that can vouch for the whole file wins:

1. **The format's canonical lines** (``canonical``; Mooncake has one,
   :func:`simkv.traces.importers.mooncake._read_mooncake_lines`): lines exactly as the
   producer writes them, proven well-formed by a full-line regex and cut by offsets.
2. **pyarrow.json** (:func:`_read_fast`): the whole file parsed by ``pyarrow.json.read_json``
   with an explicit schema. Both fast tiers run the vectorised :func:`vouch` (nulls, bounds)
   and check that each line holds one object, so row ``i`` is line ``i + 1``. No per-row
   Python.
3. **Line by line** (:func:`_read_slow`): ``json.loads`` per line, checking every field with
   :func:`_check_field`. It runs whenever the fast tiers decline, and it is the only place that
   words syntax / type / range errors, naming file, line and field.

All tiers produce the same :class:`Raw` columns. Blank lines are skipped, and nothing else is.
Invalid JSON, a line that is not an object, a missing/mistyped/out-of-range field and an
unknown key are :class:`TraceError`. ``bool`` is not an integer, ``5.0`` is not an integer,
JSON ``null`` is an error for a required key and means "absent" for an optional one. A
repeated key in one object is an error too (``json.loads`` would silently keep the last).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from simkv.core.errors import TraceError

INT32_MAX = 2**31 - 1
U64_MAX = 2**64 - 1

_ARROW_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "u64_list": pa.list_(pa.uint64()),
    "str_list": pa.list_(pa.string()),
}


@dataclass(frozen=True)
class Field:
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
class Raw:
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

    def take(self, idx: np.ndarray) -> Raw:
        cols = {
            k: [v[i] for i in idx] if isinstance(v, list) else v.take(pa.array(idx))
            for k, v in self.cols.items()
        }
        return Raw(self.paths, self.src[idx], self.lines[idx], cols)

    @staticmethod
    def concat(parts: list[Raw]) -> Raw:
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
        return Raw(paths, src, lines, cols)


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


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_int(v: Any) -> bool:
    return type(v) is int  # bool is a subclass of int and is rejected on purpose


def _check_field(f: Field, v: Any, fail: Callable[[str], TraceError]) -> Any:
    """Check one present, non-null value of field ``f``; return it (floats as float)."""
    if f.kind == "int":
        if not is_int(v):
            raise fail(f"must be an integer, got {show(v)}")
    elif f.kind == "float":
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise fail(f"must be a number, got {show(v)}")
        try:
            v = float(v)
        except OverflowError:
            raise fail(f"number {show(v)} is out of range") from None
        if not math.isfinite(v):
            raise fail(f"must be finite, got {v}")
    elif f.kind == "str":
        if not isinstance(v, str):
            raise fail(f"must be a string, got {show(v)}")
    elif f.kind == "u64_list":
        if not isinstance(v, list) or not all(is_int(x) for x in v):
            raise fail(f"must be a list of integers, got {show(v)}")
        if v and (min(v) < 0 or max(v) > U64_MAX):
            bad = next(x for x in v if x < 0 or x > U64_MAX)
            raise fail(f"items must be in [0, 2**64-1], got {bad}")
        return v
    elif f.kind == "str_list":
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise fail(f"must be a list of strings, got {show(v)}")
        return v
    elif f.kind == "segments":
        ok = isinstance(v, list) and all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and is_int(s[1])
            for s in v)
        if not ok:
            raise fail(f"must be a list of [segment_id, n_tokens] pairs, got {show(v)}")
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


def _read_slow(path: Path, data: bytes, fields: tuple[Field, ...]) -> Raw:
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
    return Raw([path], np.zeros(n, np.int64), np.asarray(lines, np.int64), cols)


def line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
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
    starts, ends = line_bounds(data)
    if np.any(ends <= starts):
        return None
    if not (np.all(buf[starts] == ord("{")) and np.all(buf[ends - 1] == ord("}"))):
        return None
    return len(starts)


def vouch(fields: tuple[Field, ...], cols: dict[str, pa.Array]) -> bool:
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


def _read_fast(path: Path, data: bytes, fields: tuple[Field, ...]) -> Raw | None:
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
    if not vouch(fields, cols):
        return None
    return Raw([path], np.zeros(n_lines, np.int64), np.arange(1, n_lines + 1), cols)



Reader = Callable[[Path, bytes, tuple[Field, ...]], "Raw | None"]


def read_jsonl(path: Path, fields: tuple[Field, ...], canonical: Reader | None = None) -> Raw:
    """Rows of one JSONL file: the first fast reader (``canonical``, then ``pyarrow.json``)
    that vouches for it, else the slow path."""
    data = _read_bytes(path)
    for reader in (_read_fast,) if canonical is None else (canonical, _read_fast):
        raw = reader(path, data, fields)
        if raw is not None:
            return raw
    return _read_slow(path, data, fields)
