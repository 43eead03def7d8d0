"""The synthetic agent-trace generator: determinism, validity, shared prefixes, overrides, and
the timing of a session's calls (long pauses, scheduled agents, a diurnal cycle)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from simkv.core.errors import ScenarioError
from simkv.traces import schema
from simkv.traces.generator import (
    PROMPT_CLASSES,
    GeneratorConfig,
    generate,
    generate_with_segments,
    generator_config,
    workload,
)
from simkv.traces.hashing import chain_block_hashes
from simkv.traces.schema import Trace, read_trace, write_trace


@pytest.fixture(scope="module")
def trace() -> Trace:
    return generate(generator_config(seed=7, n_requests=1500))


def _rows(trace: Trace) -> list[dict]:
    return trace.table.to_pylist()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    cfg = generator_config(seed=11, n_requests=600)
    a = write_trace(generate(cfg), tmp_path / "a.parquet")
    b = write_trace(generate(cfg), tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()


def test_different_seed_different_trace(tmp_path: Path) -> None:
    a = write_trace(generate(generator_config(seed=1, n_requests=300)), tmp_path / "a.parquet")
    b = write_trace(generate(generator_config(seed=2, n_requests=300)), tmp_path / "b.parquet")
    assert a.read_bytes() != b.read_bytes()
    assert not read_trace(a).table.equals(read_trace(b).table)


def test_written_trace_validates(tmp_path: Path, trace: Trace) -> None:
    back = read_trace(write_trace(trace, tmp_path / "t.parquet"))
    assert len(back) == 1500
    assert back.block_size == 256
    assert back.source == "simkv-gen:seed=7"
    assert back.table.equals(trace.table)
    assert set(back.table.column_names) >= {"model", "tool_name", "parent_request_id",
                                            "prompt_key"}


def test_requests_sorted_unique_and_named(trace: Trace) -> None:
    rows = _rows(trace)
    arrivals = [r["arrival_s"] for r in rows]
    assert arrivals == sorted(arrivals)
    ids = [r["request_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"s\d+-t\d+-c\d+", i) for i in ids)
    assert all(r["request_id"].startswith(r["session_id"] + "-") for r in rows)


def test_classes_and_optional_columns(trace: Trace) -> None:
    rows = _rows(trace)
    assert {r["prompt_class"] for r in rows} == set(PROMPT_CLASSES)
    for r in rows:
        assert (r["tool_name"] is not None) == (r["prompt_class"] == "tool")
        assert r["model"] == GeneratorConfig().model
        assert re.fullmatch(r"[a-z0-9]+@(v\d+|system)", r["prompt_key"])
        if r["prompt_class"] == "system":  # one-off: no parent, no session history
            assert r["parent_request_id"] is None
            assert r["prompt_key"].endswith("@system")
        if r["prompt_class"] == "tool":
            assert r["parent_request_id"] is not None


def test_context_capped(trace: Trace) -> None:
    assert int(trace.input_tokens.max()) <= GeneratorConfig().max_context_tokens
    small = generate(generator_config(seed=1, n_requests=300,
                                      overrides=["max_context_tokens=12000"]))
    assert int(small.input_tokens.max()) <= 12000


def test_same_agent_type_shares_system_prompt_blocks(trace: Trace) -> None:
    first_block: dict[str, set[int]] = {}
    for r in _rows(trace):
        if r["block_hashes"]:
            agent = r["prompt_key"].split("@")[0]
            first_block.setdefault(agent, set()).add(r["block_hashes"][0])
    assert len(first_block) >= 3
    for agent, firsts in first_block.items():
        assert len(firsts) == 1, agent
    assert len(set().union(*first_block.values())) == len(first_block)  # types differ


def test_later_call_extends_parent_prefix(trace: Trace) -> None:
    rows = _rows(trace)
    by_id = {r["request_id"]: r for r in rows}
    checked = 0
    for r in rows:
        parent = r["parent_request_id"]
        if parent is None:
            continue
        p = by_id[parent]  # the parent precedes the child, so it is in the trace
        assert p["arrival_s"] < r["arrival_s"]
        assert p["session_id"] == r["session_id"]
        assert r["block_hashes"][: len(p["block_hashes"])] == p["block_hashes"]
        assert len(r["block_hashes"]) >= len(p["block_hashes"])
        checked += 1
    assert checked > len(rows) // 2


def test_block_hashes_are_chain_of_segments() -> None:
    cfg = generator_config(seed=5, n_requests=400)
    trace, segments = generate_with_segments(cfg)
    rows = _rows(trace)
    assert len(segments) == len(rows)
    for i in range(0, len(rows), 7):
        assert sum(n for _, n in segments[i]) == rows[i]["input_tokens"]
        assert chain_block_hashes(segments[i], cfg.block_size) == rows[i]["block_hashes"]
    # The sliced-per-session fast path gives exactly what generate() gives.
    assert trace.table.equals(generate(cfg).table)


def test_parts_and_row_groups_do_not_change_the_trace(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator makes the trace part by part (sessions spanning parts are hashed again)
    and joins the parts into one chunk per row group: neither changes a byte."""
    cfg = generator_config(seed=0, n_requests=1200, preset="long-horizon")
    whole = generate(cfg)
    monkeypatch.setattr(workload, "PART_ROWS", 70)
    monkeypatch.setattr(workload, "ROW_GROUP_ROWS", 256)
    monkeypatch.setattr(schema, "ROW_GROUP_ROWS", 256)
    trace, segments = generate_with_segments(cfg)
    assert trace.table.equals(whole.table)
    assert [c.num_chunks for c in trace.table.columns] == [5] * trace.table.num_columns
    rows = _rows(trace)
    for i in range(0, len(rows), 13):
        assert chain_block_hashes(segments[i], cfg.block_size) == rows[i]["block_hashes"]
    one_chunk = Trace(trace.table.combine_chunks(), trace.block_size, trace.source)
    a = write_trace(trace, tmp_path / "parts.parquet")
    b = write_trace(one_chunk, tmp_path / "one.parquet")
    assert pq.ParquetFile(a).num_row_groups == 5
    assert a.read_bytes() == b.read_bytes()


def test_overrides_apply() -> None:
    cfg = generator_config(seed=2, n_requests=200,
                           overrides=["rag_prob=0", "block_size=128", "model=m-x"])
    assert (cfg.seed, cfg.n_requests, cfg.rag_prob, cfg.block_size) == (2, 200, 0.0, 128)
    t = generate(cfg)
    assert len(t) == 200
    assert t.block_size == 128
    classes = set(t.table.column("prompt_class").to_pylist())
    assert "rag" not in classes
    assert set(t.table.column("model").to_pylist()) == {"m-x"}
    # --set wins over the flags, applied last.
    assert generator_config(n_requests=5, overrides=["n_requests=9"]).n_requests == 9


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("nosuch=1", "nosuch"),
        ("rag_prob=1.5", "rag_prob"),
        ("rag_prob=abc", "rag_prob"),
        ("n_requests=0", "n_requests"),
        ("n_requests=2.5", "n_requests"),
        ("block_size=-4", "block_size"),
        ("turns_mean=0.5", "turns_mean"),
        ("session_rate_per_s=0", "session_rate_per_s"),
        ("seed=-1", "seed"),
    ],
)
def test_bad_override_names_key(override: str, key: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(key)):
        generator_config(overrides=[override])


def test_impossible_context_cap_is_an_error() -> None:
    with pytest.raises(ScenarioError, match="max_context_tokens"):
        generate(generator_config(n_requests=10, overrides=["max_context_tokens=100"]))


def _session_calls(trace: Trace) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = {}
    for r in _rows(trace):
        calls.setdefault(r["session_id"], []).append(r)
    return calls


def test_long_pauses() -> None:
    cfg = generator_config(seed=3, n_requests=300, overrides=[
        "pause_prob=1", "tool_turn_prob=0", "batch_prob=0", "pause_min_s=100", "pause_max_s=5000"])
    decode = (cfg.answer_tokens * 50) / cfg.decode_tokens_per_s  # a generous bound on decode time
    checked = 0
    for calls in _session_calls(generate(cfg)).values():
        for a, b in itertools.pairwise(calls):
            assert 100 <= b["arrival_s"] - a["arrival_s"] <= 5000 + decode
            checked += 1
    assert checked > 100


def test_scheduled_agents_resume_after_a_period() -> None:
    cfg = generator_config(seed=3, n_requests=300, overrides=[
        "scheduled_prob=1", "tool_turn_prob=0", "batch_prob=0", "schedule_period_s=3600",
        "schedule_jitter_s=60", "session_rate_per_s=0.005"])
    decode = (cfg.answer_tokens * 50) / cfg.decode_tokens_per_s
    checked = 0
    for calls in _session_calls(generate(cfg)).values():
        for a, b in itertools.pairwise(calls):
            assert 3600 - 60 * 6 <= b["arrival_s"] - a["arrival_s"] <= 3600 + 60 * 6 + decode
            checked += 1
    assert checked > 50


def test_diurnal_cycle_concentrates_arrivals_near_the_peak() -> None:
    cfg = generator_config(seed=5, n_requests=3000, overrides=[
        "session_rate_per_s=0.002", "diurnal_amplitude=1", "diurnal_peak_s=43200"])
    starts = np.asarray([calls[0]["arrival_s"] for calls in _session_calls(generate(cfg)).values()])
    assert starts.max() - starts.min() > 3 * 86400
    hour = (starts % 86400) / 3600
    near = int(np.sum(np.abs(hour - 12) < 6))
    # Rate 1 + cos: the half-day around the peak expects (π + 2) / (π − 2) ≈ 4.5x the other.
    assert near > 3 * (len(starts) - near)
