"""Helpers of the importer tests: JSONL files, block lists, the infinite-cache hit rate, the
check that an error names its file, line and field, and an agent-log call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simkv.core.errors import TraceError
from simkv.traces.schema import Trace


def jsonl(path: Path, rows: list[Any], *, separators: tuple[str, str] | None = None) -> Path:
    """Write ``rows`` one per line; a ``str`` row is written verbatim (for broken lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r, separators=separators) for r in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def blocks(trace: Trace) -> list[list[int]]:
    return trace.table.column("block_hashes").to_pylist()


def infinite_hit_rate(trace: Trace) -> float:
    """Token hit rate with an unbounded cache, prefix semantics: a request hits the run of
    its leading blocks that appeared in any earlier request."""
    seen: set[int] = set()
    hit = 0
    for bl in blocks(trace):
        prefix = 0
        while prefix < len(bl) and bl[prefix] in seen:
            prefix += 1
        hit += prefix * trace.block_size
        seen.update(bl)
    return hit / int(trace.input_tokens.sum())


def assert_names(exc: TraceError, path: Path, line: int | None, field: str | None) -> None:
    """The error (object and message) names the file, the line and the field."""
    msg = str(exc)
    assert exc.path == str(path) and str(path) in msg
    assert exc.line == line
    if line is not None:
        assert f"{path}:{line}" in msg
    assert exc.field == field
    if field is not None:
        assert f"field '{field}'" in msg


def call(rid: str, t: float, segments: list[list[Any]], **extra: Any) -> dict[str, Any]:
    n = sum(s[1] for s in segments)
    return {"arrival_s": t, "request_id": rid, "input_tokens": n, "output_tokens": 5,
            "prompt_segments": segments, **extra}
