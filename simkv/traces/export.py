"""Export a trace to other tools' formats: LMCache lookup events (the parity test and the
benchmarks feed LMCache's simulator) and Mooncake / aiperf ``mooncake_trace`` JSONL."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simkv.core.errors import SimkvError
from simkv.core.fileio import atomic_write, make_dir
from simkv.traces.prompts import mix64
from simkv.traces.schema import Trace

MOONCAKE_BLOCK_SIZE = 512  # the format's convention; simkv's importer reads only this


def to_lmcache_events(trace: Trace) -> list[dict[str, Any]]:
    """The trace as LMCache lookup events (``chunk_hashes`` as 16-digit hex, ``seq_len``,
    ``chunk_size``, ``timestamp``), the input of ``lmcache.tools.cache_simulator``."""
    hashes = trace.block_hashes_flat.tolist()
    offsets = trace.block_offsets.tolist()
    tokens = trace.input_tokens.tolist()
    arrivals = trace.arrival_s.tolist()
    return [
        {
            "timestamp": arrivals[r],
            "chunk_hashes": [f"{h:016x}" for h in hashes[offsets[r]:offsets[r + 1]]],
            "seq_len": tokens[r],
            "chunk_size": trace.block_size,
        }
        for r in range(len(trace))
    ]


def _merge_key(m: int) -> np.uint64:
    d = hashlib.blake2b(f"simkv-mooncake-merge:{m}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(d, "little"))


def _rank(counts: np.ndarray) -> np.ndarray:
    """``0..counts[0]-1, 0..counts[1]-1, ...``: each item's index within its request."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def mooncake_hash_ids(trace: Trace, block_size: int = MOONCAKE_BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Per request, the ``hash_ids`` of a Mooncake line: ``(flat ids, per-request counts)``.

    With ``block_size == trace.block_size`` the full blocks keep their hashes. A multiple
    ``m × trace.block_size`` merges each run of ``m`` blocks into one id, ``fold(mix64(acc ^
    h_i))`` over the run (a request's trailing blocks that do not fill a merged block go into
    the partial block). Anything else cannot be expressed (a block cannot be split): an error.
    Mooncake readers (aiperf) expect the trailing partial block to have an id too
    (``ceil(input_length / block_size)`` ids): it gets one of its own per request,
    ``blake2b_64(content_sha256 || request_id)``, since the trace says those tokens are never
    shared (simkv's importer drops that id again). Any collision of the new ids with each
    other or with the block ids is an error (never expected with 64-bit ids).
    """
    B = trace.block_size
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise SimkvError(f"--block-size must be a positive integer, got {block_size!r}")
    if block_size % B:
        raise SimkvError(f"the trace's block size {B} does not divide the export block size "
                         f"{block_size}: blocks can only be merged (into a multiple of {B}), "
                         "never split")
    m = block_size // B
    inp = trace.input_tokens
    full = inp // block_size
    flat = trace.block_hashes_flat
    off = trace.block_offsets
    if m == 1:
        merged = flat
    else:
        idx = off[:-1].repeat(full) + _rank(full) * m
        acc = np.full(len(idx), _merge_key(m))
        for j in range(m):
            acc = mix64(acc ^ flat[idx + j])
        merged = acc
        rows = np.stack([flat[idx + j] for j in range(m)], axis=1)
        if len(np.unique(merged)) != len(np.unique(rows, axis=0)):
            raise SimkvError("merging blocks gave two different runs the same id (a 64-bit "
                             "collision); export at the trace's own block size")
    partial = inp % block_size != 0
    ids = trace.table.column("request_id").to_pylist()
    base = trace.content_sha256.encode() + b"\0mooncake-tail\0"
    tails = np.array([int.from_bytes(hashlib.blake2b(base + ids[r].encode(), digest_size=8).digest(),
                                     "little") for r in np.flatnonzero(partial)], dtype=np.uint64)
    if len(tails) and (len(np.unique(tails)) != len(tails) or np.isin(tails, merged).any()):
        raise SimkvError("a partial block's id collides with another id (a 64-bit collision)")
    counts = full + partial
    out = np.empty(int(counts.sum()), np.uint64)
    starts = np.cumsum(counts) - counts
    body = np.repeat(starts, full) + _rank(full)
    out[body] = merged
    out[(starts + full)[partial]] = tails
    return out, counts


def mooncake_lines(trace: Trace, block_size: int = MOONCAKE_BLOCK_SIZE, *,
                   dense_ids: bool = False) -> str:
    """The trace as Mooncake JSONL, one line per request in trace order, exactly as Mooncake
    writes it (``json.dumps`` separators, keys ``timestamp, input_length, output_length,
    hash_ids``): ``timestamp`` is ``round(arrival_s × 1000)`` integer milliseconds,
    ``hash_ids`` from :func:`mooncake_hash_ids`. ``dense_ids`` renumbers the ids 0, 1, ... in
    order of first appearance (as published Mooncake traces are), keeping which are equal.
    ``request_id``, ``session_id``, ``prompt_class`` and the optional columns are not part of
    the format and are dropped (simkv's importer numbers the lines 1, 2, ...)."""
    ids, counts = mooncake_hash_ids(trace, block_size)
    if dense_ids:
        ids = pd.factorize(ids)[0].astype(np.uint64)
    ts = np.rint(trace.arrival_s * 1000.0).astype(np.int64).tolist()
    inp, outp = trace.input_tokens.tolist(), trace.output_tokens.tolist()
    text = ids.astype(str)
    ends = np.cumsum(counts).tolist()
    lines, start = [], 0
    for r, end in enumerate(ends):
        lines.append(f'{{"timestamp": {ts[r]}, "input_length": {inp[r]}, "output_length": '
                     f'{outp[r]}, "hash_ids": [{", ".join(text[start:end])}]}}\n')
        start = end
    return "".join(lines)


def write_mooncake(trace: Trace, path: str | Path, block_size: int = MOONCAKE_BLOCK_SIZE, *,
                   dense_ids: bool = False) -> Path:
    """Write :func:`mooncake_lines` to ``path`` atomically."""
    path = Path(path)
    if path.is_dir():
        raise SimkvError(f"{path}: is a directory (give the JSONL file to write)")
    text = mooncake_lines(trace, block_size, dense_ids=dense_ids)
    make_dir(path.parent, "directory of the export")
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
