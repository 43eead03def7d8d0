"""Mooncake trace JSONL → :class:`Trace` (``timestamp`` ms, ``input_length``,
``output_length``, ``hash_ids``; block size 512).

Lines exactly as Mooncake writes them take the fastest reader (:func:`_read_mooncake_lines`:
proven well-formed by one full-line regex, numbers cut out by offsets and cast by Arrow, in
parallel, ~1.6x faster than ``pyarrow.json``); any other line shape falls back to the shared
tiers of :func:`simkv.traces.importers.reader.read_jsonl`.
"""

from __future__ import annotations

import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simkv.core.errors import SimkvError
from simkv.traces.importers.common import block_lists, build_trace, repeat_string, require_rows, time_order
from simkv.traces.importers.reader import INT32_MAX, Field, Raw, line_bounds, read_jsonl, vouch
from simkv.traces.importers.registry import IMPORTERS, no_model, one_input
from simkv.traces.schema import Trace, first_index

MOONCAKE_BLOCK_SIZE = 512


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


def _read_mooncake_lines(path: Path, data: bytes, fields: tuple[Field, ...]) -> Raw | None:
    """Fastest Mooncake reader, for lines exactly as Mooncake writes them.

    That is ``json.dumps`` with default separators and keys in the order ``timestamp,
    input_length, output_length, hash_ids`` (a full-line regex proves it, so this accepts no
    more than JSON does). Then the numbers are cut out by offsets and cast by Arrow, in
    parallel chunks, which measured ~1.6x faster than ``pyarrow.json``. Anything else: None.
    """
    if not data or len(data) > INT32_MAX:  # Arrow string offsets are int32
        return None
    starts, ends = line_bounds(data)
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
    if not vouch(fields, cols):
        return None
    return Raw([path], np.zeros(n, np.int64), np.arange(1, n + 1), cols)


def _cpus() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


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
    return block_lists(values, lengths)


_MOONCAKE_FIELDS = (
    Field("timestamp", "float"),
    Field("input_length", "int", lo=0, hi=INT32_MAX),
    Field("output_length", "int", lo=0, hi=INT32_MAX),
    Field("hash_ids", "u64_list"),
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
    raw = read_jsonl(path, _MOONCAKE_FIELDS, canonical=_read_mooncake_lines)
    require_rows(raw, path)
    inp = raw.np("input_length", np.int64)
    n = pc.list_value_length(raw.cols["hash_ids"]).to_numpy(zero_copy_only=False)
    full, most = inp // MOONCAKE_BLOCK_SIZE, -(-inp // MOONCAKE_BLOCK_SIZE)
    bad = first_index((n < full) | (n > most))
    if bad is not None:
        raise raw.error(bad, "hash_ids", f"has {n[bad]} hash_ids but input_length={inp[bad]} "
                        f"needs {full[bad]} (full 512-token blocks) to {most[bad]} "
                        "(with the partial last block)")
    perm = time_order(raw, raw.np("timestamp"), "timestamp", sort)
    if perm is not None:
        raw, inp, n = raw.take(perm), inp[perm], n[perm]
    ts = raw.np("timestamp")
    rows = len(raw)
    return build_trace({
        "arrival_s": (ts - ts[0]) / 1000.0,
        "request_id": pa.array(raw.lines).cast(pa.string()),
        "session_id": repeat_string(rows, ""),
        "prompt_class": repeat_string(rows, "unknown"),
        "input_tokens": raw.cols["input_length"],
        "output_tokens": raw.cols["output_length"],
        "block_hashes": _drop_partial(raw.cols["hash_ids"], n > inp // MOONCAKE_BLOCK_SIZE),
    }, block_size=MOONCAKE_BLOCK_SIZE, source=f"mooncake:{path.name}", path=path)


@IMPORTERS.register("mooncake")
def _run_mooncake(inputs: list[Path], sort: bool, block_size: int | None,
                  model: str | None) -> Trace:
    no_model("mooncake", model)
    if block_size is not None and block_size != MOONCAKE_BLOCK_SIZE:
        raise SimkvError(f"mooncake traces have a fixed block size of {MOONCAKE_BLOCK_SIZE}; "
                         f"--block-size {block_size} does not apply")
    return import_mooncake(one_input("mooncake", inputs), sort=sort)
