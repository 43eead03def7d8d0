"""Agent-call logs (one JSON object per model call, prompts as segments) → :class:`Trace`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from simkv.core.errors import SimkvError
from simkv.traces.hashing import chain_block_hashes
from simkv.traces.importers.common import BLOCKS_TYPE, build_trace, first_duplicate, require_rows, time_order
from simkv.traces.importers.reader import INT32_MAX, Field, is_int, read_jsonl
from simkv.traces.importers.registry import IMPORTERS, no_model, one_input
from simkv.traces.schema import OPTIONAL_NAMES, Trace, first_index

_AGENT_FIELDS = (
    Field("arrival_s", "float", required=False, lo=0),
    Field("timestamp_ms", "float", required=False),
    Field("request_id", "str"),
    Field("input_tokens", "int", lo=0, hi=INT32_MAX),
    Field("output_tokens", "int", lo=0, hi=INT32_MAX),
    Field("prompt_segments", "segments"),
    Field("session_id", "str", required=False),
    Field("prompt_class", "str", required=False),
    Field("model", "str", required=False),
    Field("cost_per_mtok", "float", required=False, lo=0),
    Field("reuse_prob", "float", required=False, lo=0, hi=1),
    Field("temperature", "float", required=False, lo=0),
    Field("tool_name", "str", required=False),
    Field("parent_request_id", "str", required=False),
    Field("prompt_key", "str", required=False),
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
    if not is_int(block_size) or block_size <= 0:
        raise SimkvError(f"block size must be a positive integer, got {block_size!r}")
    raw = read_jsonl(path, _AGENT_FIELDS)
    require_rows(raw, path)

    has_a, has_t = raw.present("arrival_s"), raw.present("timestamp_ms")
    bad = first_index(has_a == has_t)
    if bad is not None:
        both = "has both arrival_s and timestamp_ms" if has_a[bad] else "has no time"
        raise raw.error(bad, "arrival_s", f"{both}; give arrival_s (seconds) or timestamp_ms")
    bad = first_index(has_a != has_a[0])
    if bad is not None:
        used, first = ("arrival_s", "timestamp_ms") if has_a[bad] else ("timestamp_ms",
                                                                         "arrival_s")
        raise raw.error(bad, used, f"uses {used} but {raw.where(0)} uses {first}; "
                        "use one time field throughout")
    time_field = "arrival_s" if has_a[0] else "timestamp_ms"

    segments: list[list[tuple[str, int]]] = raw.cols["prompt_segments"]
    inp = raw.np("input_tokens", np.int64)
    sums = np.fromiter((sum(n for _, n in s) for s in segments), np.int64, len(segments))
    bad = first_index(sums != inp)
    if bad is not None:
        raise raw.error(bad, "prompt_segments", f"n_tokens sum to {sums[bad]} but "
                        f"input_tokens is {inp[bad]}")
    ids = raw.cols["request_id"].to_pylist()
    bad = first_index(np.fromiter((not r for r in ids), bool, len(ids)))
    if bad is not None:
        raise raw.error(bad, "request_id", "request_id is empty")
    dup = first_duplicate(ids)
    if dup is not None:
        raise raw.error(dup[1], "request_id", f"request_id {ids[dup[1]]!r} repeats "
                        f"{raw.where(dup[0])}; request ids must be unique")

    perm = time_order(raw, raw.np(time_field), time_field, sort)
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
        "block_hashes": pa.array(hashes, type=BLOCKS_TYPE),
    }
    for name, default in _AGENT_STR_DEFAULTS.items():
        cols[name] = raw.cols[name].fill_null(default)
    for name in OPTIONAL_NAMES:
        if raw.cols[name].null_count < rows:
            cols[name] = raw.cols[name]
    return build_trace(cols, block_size=block_size, source=f"agent:{path.name}", path=path)


@IMPORTERS.register("agent")
def _run_agent(inputs: list[Path], sort: bool, block_size: int | None,
               model: str | None) -> Trace:
    no_model("agent", model)
    return import_agent_log(one_input("agent", inputs), sort=sort,
                            block_size=256 if block_size is None else block_size)
