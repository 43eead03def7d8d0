"""The synthetic agent-trace generator: determinism, validity, shared prefixes, overrides, CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from simkv.errors import ScenarioError
from simkv.traces.generator import (
    PROMPT_CLASSES,
    GeneratorConfig,
    generate,
    generate_with_segments,
    generator_config,
)
from simkv.traces.hashing import chain_block_hashes
from simkv.traces.schema import Trace, read_trace, write_trace

SIMKV = str(Path(sys.executable).with_name("simkv"))


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


def test_cli_gen(tmp_path: Path) -> None:
    out = tmp_path / "cli.parquet"
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(out), "--seed", "3",
                           "--requests", "200"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(read_trace(out)) == 200
    # Another process, same seed: the same bytes (no dependence on PYTHONHASHSEED & co.).
    again = write_trace(generate(generator_config(seed=3, n_requests=200)),
                        tmp_path / "again.parquet")
    assert out.read_bytes() == again.read_bytes()


def test_cli_gen_bad_override(tmp_path: Path) -> None:
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(tmp_path / "x.parquet"),
                           "--set", "nosuch=1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "nosuch" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "x.parquet").exists()
