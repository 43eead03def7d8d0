"""The trace of :mod:`simkv.traces.generator`: the calls of the generative process
(:mod:`simkv.traces.generator.process`) hashed and assembled into a trace, part by part, in
row groups whose bytes do not depend on the part size."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from simkv.traces.generator.config import GeneratorConfig
from simkv.traces.generator.process import _Call, _Session, _Workload
from simkv.traces.hashing import chain_block_hashes
from simkv.traces.schema import REQUIRED_FIELDS, ROW_GROUP_ROWS, Trace, build_table, validate_table

_BLOCK_HASHES_TYPE = next(f.type for f in REQUIRED_FIELDS if f.name == "block_hashes")


def _part(cfg: GeneratorConfig, calls: list[_Call],
          segments: list[list[tuple[str, int]]] | None = None) -> pa.Table:
    """The rows of ``calls`` as a table of the trace schema, hashing each session's context
    once per part, up to its longest call in the part (a session whose calls span parts
    is hashed again, further); a session is dropped once all its calls are written.

    ``segments``, if given, receives each call's prompt as its list of segments.
    """
    bs = cfg.block_size
    longest: dict[_Session, int] = {}
    for call in calls:
        longest[call.session] = max(longest.get(call.session, 0), call.n_segments)
    for session, n_segments in longest.items():
        if n_segments > session.hashed:
            session.hashes = np.asarray(chain_block_hashes(session.segments[:n_segments], bs),
                                        dtype=np.uint64)
            session.hashed = n_segments
    n_blocks = np.fromiter((c.input_tokens // bs for c in calls), dtype=np.int64,
                           count=len(calls))
    offsets = np.zeros(len(calls) + 1, dtype=np.int32)
    np.cumsum(n_blocks, out=offsets[1:])
    blocks = np.concatenate([c.session.hashes[:k] for c, k in zip(calls, n_blocks.tolist(),
                                                                 strict=True)]
                            or [np.zeros(0, np.uint64)])
    if segments is not None:
        segments.extend(c.session.segments[: c.n_segments] for c in calls)
    for call in calls:
        call.session.unwritten -= 1
        if not call.session.unwritten:  # all its calls written: free its prompt
            call.session.segments, call.session.hashes = [], blocks[:0]

    def column(name: str) -> list[Any]:
        return [getattr(c, name) for c in calls]

    columns: dict[str, Any] = {
        "arrival_s": np.asarray(column("arrival_s"), dtype=np.float64),
        "request_id": column("request_id"),
        "session_id": column("session_id"),
        "prompt_class": column("prompt_class"),
        "input_tokens": np.asarray(column("input_tokens"), dtype=np.int32),
        "output_tokens": np.asarray(column("output_tokens"), dtype=np.int32),
        "block_hashes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(blocks),
                                                 type=_BLOCK_HASHES_TYPE),
        "model": [cfg.model] * len(calls),
        "tool_name": column("tool_name"),
        "parent_request_id": column("parent_request_id"),
        "prompt_key": column("prompt_key"),
    }
    return build_table(columns, block_size=bs, source=_source(cfg)).table


#: Rows generated and hashed at a time; the progress callback is called once per part.
PART_ROWS = 1 << 14


def _source(cfg: GeneratorConfig) -> str:
    return f"simkv-gen:seed={cfg.seed}"


def _build(cfg: GeneratorConfig, segments: list[list[tuple[str, int]]] | None = None,
           progress: Callable[[int], None] | None = None) -> Trace:
    """Generate ``cfg``'s trace part by part; the parts are joined into chunks of
    ``ROW_GROUP_ROWS`` rows, one per Parquet row group, so the file's bytes do not depend on
    the part size."""
    cfg.check()
    work = _Workload(cfg)
    calls = work.calls()
    parts: list[pa.Table] = []
    chunks: list[pa.Table] = []
    while batch := list(itertools.islice(calls, PART_ROWS)):
        parts.append(_part(cfg, batch, segments))
        if progress is not None:
            progress(len(batch))
        if sum(len(p) for p in parts) >= ROW_GROUP_ROWS:
            joined = pa.concat_tables(parts).combine_chunks()
            chunks.append(joined.slice(0, ROW_GROUP_ROWS))
            parts = [joined.slice(ROW_GROUP_ROWS)] if len(joined) > ROW_GROUP_ROWS else []
    if parts:
        chunks.append(pa.concat_tables(parts).combine_chunks())
    return validate_table(pa.concat_tables(chunks), block_size=cfg.block_size, source=_source(cfg))


def generate(cfg: GeneratorConfig, progress: Callable[[int], None] | None = None) -> Trace:
    """Generate the trace of ``cfg``: same configuration, same bytes through ``write_trace``.

    ``progress(n)``, if given, is called as each ``n`` more requests are generated.
    """
    return _build(cfg, progress=progress)


def generate_with_segments(cfg: GeneratorConfig) -> tuple[Trace, list[list[tuple[str, int]]]]:
    """Like :func:`generate`, plus each request's prompt as its list of segments.

    For tests and debugging: ``chain_block_hashes(segments[i], block_size)`` equals row
    ``i``'s ``block_hashes``.
    """
    segments: list[list[tuple[str, int]]] = []
    return _build(cfg, segments), segments
