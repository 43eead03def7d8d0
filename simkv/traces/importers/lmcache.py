"""LMCache lookup-hash logs (``lookup_hashes_*.jsonl``) → :class:`Trace`, merged as LMCache's
cache simulator merges them.

``dtypes`` and ``shapes`` are accepted and not used; an empty ``request_id`` (LMCache writes
``""`` when it has none) falls back to ``<file name>:<line>``, and an id seen again (LMCache
may look one request up several times; each lookup is an event to its simulator, so each is
kept) gets ``#2``, ``#3``... so that ids stay unique.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simkv.core.errors import SimkvError, TraceError
from simkv.traces.hashing import hex_to_u64
from simkv.traces.importers.common import block_lists, build_trace, repeat_string, require_rows, time_order
from simkv.traces.importers.reader import INT32_MAX, Field, Raw, read_jsonl, show
from simkv.traces.importers.registry import IMPORTERS
from simkv.traces.schema import Trace, first_index

LMCACHE_GLOB = "lookup_hashes_*.jsonl"
_HEX_RE = r"^(0[xX])?[0-9a-fA-F]+$"


_LMCACHE_FIELDS = (
    Field("timestamp", "float"),
    Field("chunk_hashes", "str_list"),
    Field("seq_len", "int", lo=0, hi=INT32_MAX),
    Field("chunk_size", "int", lo=1, hi=INT32_MAX),
    Field("model_name", "str", required=False),
    Field("request_id", "str", required=False),
    Field("dtypes", "any", required=False, arrow=pa.list_(pa.string())),
    Field("shapes", "any", required=False, arrow=pa.list_(pa.list_(pa.int64()))),
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


def _hex_to_u64(raw: Raw, hashes: pa.ListArray) -> np.ndarray:
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
    bad = first_index(~ok)
    if bad is not None:
        s = uniq[bad].as_py()
        raise raw.error(row_of(s), "chunk_hashes", f"chunk hash {show(s)} is not hexadecimal")
    strings = uniq.to_pylist()
    u64 = np.fromiter((hex_to_u64(s) for s in strings), dtype=np.uint64, count=len(strings))
    values, counts = np.unique(u64, return_counts=True)
    if np.any(counts > 1):
        clash = values[counts > 1][0]
        a, b = (strings[k] for k in np.flatnonzero(u64 == clash)[:2])
        ra, rb = sorted((row_of(a), row_of(b)))
        raise raw.error(rb, "chunk_hashes", f"hash collision: chunk hashes {show(a)} and "
                        f"{show(b)} (first at {raw.where(ra)}) both map to uint64 {clash:#x}")
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
    raw = Raw.concat([read_jsonl(f, _LMCACHE_FIELDS) for f in files])
    where = files[0] if len(files) == 1 else Path(paths[0])
    require_rows(raw, where, "lookup events")
    if model is not None:
        keep = pc.fill_null(pc.equal(raw.cols["model_name"], model), False)
        kept = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        if len(kept) == 0:
            seen = sorted(set(pc.unique(raw.cols["model_name"].drop_null()).to_pylist()))
            raise TraceError(where, f"no lookup event has model_name {model!r} "
                             f"(model names present: {seen[:10]})", field="model_name")
        raw = raw.take(kept)

    chunk = raw.np("chunk_size", np.int64)
    bad = first_index(chunk != chunk[0])
    if bad is not None:
        raise raw.error(bad, "chunk_size", f"chunk_size {chunk[bad]} differs from {chunk[0]} "
                        f"at {raw.where(0)}; one trace has one block size")
    block_size = int(chunk[0])
    seq = raw.np("seq_len", np.int64)
    n = pc.list_value_length(raw.cols["chunk_hashes"]).to_numpy(zero_copy_only=False)
    bad = first_index(n != seq // block_size)
    if bad is not None:
        raise raw.error(bad, "chunk_hashes", f"has {n[bad]} chunk hashes but seq_len={seq[bad]} "
                        f"// chunk_size={block_size} = {seq[bad] // block_size} full chunks")

    perm = time_order(raw, raw.np("timestamp"), "timestamp", sort)
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
        "session_id": repeat_string(rows, ""),
        "prompt_class": repeat_string(rows, "unknown"),
        "input_tokens": raw.cols["seq_len"],
        "output_tokens": pa.array(np.zeros(rows, np.int32)),
        "block_hashes": block_lists(values, n),
    }
    if raw.cols["model_name"].null_count < rows:
        cols["model"] = raw.cols["model_name"]
    names = [f.name for f in files]
    source = "lmcache:" + names[0] + (f"+{len(names) - 1} more" if len(names) > 1 else "")
    return build_trace(cols, block_size=block_size, source=source, path=where)


@IMPORTERS.register("lmcache")
def _run_lmcache(inputs: list[Path], sort: bool, block_size: int | None,
                 model: str | None) -> Trace:
    # LMCache's simulator always merges its logs by timestamp, so ``sort`` is implied.
    if block_size is not None:
        raise SimkvError("lmcache logs carry their block size (chunk_size); "
                         "--block-size does not apply")
    return import_lmcache(list(inputs), model=model, sort=True)
