"""The agent-log importer: shared prompt prefixes from named segments, millisecond timestamps
and sorting, and bad lines that name file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simkv.core.errors import TraceError
from simkv.traces.hashing import chain_block_hashes
from simkv.traces.importers import import_agent_log
from tests.importer_helpers import assert_names, blocks, call, jsonl


def test_agent_log_shared_prefix(tmp_path: Path) -> None:
    sys_seg = ["sys:coder:v3", 600]
    path = jsonl(tmp_path / "agent.jsonl", [
        call("c1", 0.0, [sys_seg, ["tools:coder", 300], ["sess-1:turn-1", 200]],
             session_id="sess-1", prompt_class="system", model="llama-8b", tool_name="grep",
             cost_per_mtok=0.5),
        call("c2", 1.5, [sys_seg, ["tools:coder", 300], ["sess-2:turn-1", 250]],
             session_id="sess-2", parent_request_id="c1", reuse_prob=0.25, temperature=0.7,
             prompt_key="k"),
        call("c3", 2.0, [["sys:other", 600], ["tools:coder", 300]]),
    ])
    trace = import_agent_log(path, block_size=256)
    t = trace.table
    b1, b2, b3 = blocks(trace)
    assert len(b1) == 1100 // 256 and len(b2) == 1150 // 256 and len(b3) == 900 // 256
    assert b1[:3] == b2[:3]  # 900 shared tokens = 3 full blocks
    assert b1[3] != b2[3]
    assert b1[0] != b3[0]  # another system prompt shares nothing
    assert b1 == chain_block_hashes([("sys:coder:v3", 600), ("tools:coder", 300),
                                     ("sess-1:turn-1", 200)], 256)
    assert t.column("session_id").to_pylist() == ["sess-1", "sess-2", ""]
    assert t.column("prompt_class").to_pylist() == ["system", "unknown", "unknown"]
    assert t.column("model").to_pylist() == ["llama-8b", None, None]
    assert t.column("reuse_prob").to_pylist() == [None, 0.25, None]
    assert t.column("parent_request_id").to_pylist() == [None, "c1", None]
    assert trace.source == "agent:agent.jsonl" and trace.block_size == 256


def test_agent_log_timestamp_ms_and_sort(tmp_path: Path) -> None:
    rows = [{**call("a", 0, [["s", 10]]), "timestamp_ms": 5000},
            {**call("b", 0, [["s", 10]]), "timestamp_ms": 2000},
            {**call("c", 0, [["s", 10]]), "timestamp_ms": 5000}]
    for r in rows:
        del r["arrival_s"]
    path = jsonl(tmp_path / "agent.jsonl", rows)
    with pytest.raises(TraceError) as ei:
        import_agent_log(path)
    assert_names(ei.value, path, 2, "timestamp_ms")
    trace = import_agent_log(path, sort=True)
    assert trace.table.column("request_id").to_pylist() == ["b", "a", "c"]
    assert trace.table.column("arrival_s").to_pylist() == [0.0, 3.0, 3.0]


AGENT_BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("sum", {**call("x", 1, [["s", 10]]), "input_tokens": 11}, "prompt_segments", "sum to 10"),
    ("unknown", {**call("x", 1, [["s", 10]]), "latency": 3}, "latency", "unknown key"),
    ("segment-shape", call("x", 1, [["s", 10, 1]]), "prompt_segments", "pairs"),
    ("both-times", {**call("x", 1, [["s", 10]]), "timestamp_ms": 5}, "arrival_s", "both"),
    ("no-time", {k: v for k, v in call("x", 1, [["s", 1]]).items() if k != "arrival_s"},
     "arrival_s", "no time"),
    ("mixed-times", {**{k: v for k, v in call("x", 1, [["s", 1]]).items() if k != "arrival_s"},
                     "timestamp_ms": 5}, "timestamp_ms", "one time field"),
    ("dup-id", call("a", 1, [["s", 10]]), "request_id", "repeats"),
    ("negative-arrival", call("x", -1, [["s", 10]]), "arrival_s", ">= 0"),
    ("reuse-prob", call("x", 1, [["s", 10]], reuse_prob=2), "reuse_prob", "<= 1"),
    ("bad-model", call("x", 1, [["s", 10]], model=3), "model", "string"),
]


@pytest.mark.parametrize(("row", "field", "fragment"),
                         [c[1:] for c in AGENT_BAD], ids=[c[0] for c in AGENT_BAD])
def test_agent_log_bad_line(tmp_path: Path, row: dict[str, Any], field: str,
                            fragment: str) -> None:
    path = jsonl(tmp_path / "agent.jsonl", [call("a", 0.5, [["s", 10]]), row])
    with pytest.raises(TraceError) as ei:
        import_agent_log(path)
    assert_names(ei.value, path, 2, field)
    assert fragment in str(ei.value)
