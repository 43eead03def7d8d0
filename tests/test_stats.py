"""Trace statistics: the infinite-cache hit rate against brute force, reuse gaps, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simkv.traces.generator import generate, generator_config
from simkv.traces.schema import Trace, build_table, write_trace
from simkv.traces.stats import (
    _first_positions,
    infinite_cache_hit_blocks,
    print_stats,
    trace_stats,
)

SIMKV = str(Path(sys.executable).with_name("simkv"))


def make_trace(requests: list[tuple[float, list[int], int]], block_size: int = 4,
               classes: list[str] | None = None) -> Trace:
    """A trace from ``(arrival_s, block_hashes, tail_tokens)`` per request."""
    n = len(requests)
    return build_table(
        {
            "arrival_s": [a for a, _, _ in requests],
            "request_id": [f"r{i}" for i in range(n)],
            "session_id": [f"s{i % 2}" for i in range(n)],
            "prompt_class": classes or ["chat"] * n,
            "input_tokens": [len(h) * block_size + tail for _, h, tail in requests],
            "output_tokens": [1] * n,
            "block_hashes": [h for _, h, _ in requests],
        },
        block_size=block_size, source="test",
    )


def brute_force_hits(trace: Trace) -> list[int]:
    """Leading blocks of each request seen in an earlier request (a plain set)."""
    seen: set[int] = set()
    hits = []
    for hashes in trace.table.column("block_hashes").to_pylist():
        k = 0
        while k < len(hashes) and hashes[k] in seen:
            k += 1
        hits.append(k)
        seen.update(hashes)
    return hits


def brute_force_gaps(trace: Trace) -> list[float]:
    last: dict[int, float] = {}
    gaps = []
    for t, hashes in zip(trace.arrival_s.tolist(),
                         trace.table.column("block_hashes").to_pylist(), strict=True):
        for h in hashes:
            if h in last:
                gaps.append(t - last[h])
            last[h] = t
    return gaps


def test_hand_made_known_answer() -> None:
    trace = make_trace([
        (0.0, [1, 2, 3], 0),   # all new
        (1.0, [1, 2, 4], 1),   # 1, 2 hit; 4 misses; 1 tail token
        (2.0, [], 3),          # zero blocks, 3 tail tokens
        (3.0, [5, 5], 0),      # 5 first seen here: the repeat within the request is a miss
        (4.0, [5, 1, 9], 0),   # 5 (earlier request) and 1 hit, 9 misses
        (5.0, [2, 1], 0),      # full hit
        (6.0, [7, 1], 0),      # a miss first ends the prefix, though 1 is cached
    ])
    hits = infinite_cache_hit_blocks(trace)
    assert hits.tolist() == [0, 2, 0, 0, 2, 2, 0]
    assert hits.tolist() == brute_force_hits(trace)
    s = trace_stats(trace)
    assert s.input_tokens == 12 + 13 + 3 + 8 + 12 + 8 + 8
    assert s.infinite_cache_token_hit_rate == pytest.approx(6 * 4 / s.input_tokens)
    assert s.blocks == 15
    assert s.unique_blocks == 7
    assert s.reuse_fraction == pytest.approx(8 / 15)


@pytest.mark.parametrize(
    "requests",
    [
        [],
        [(0.0, [], 3)],
        [(0.0, [], 3), (1.0, [], 2)],
        [(0.0, [], 1), (0.0, [3, 4], 0), (1.0, [], 0), (2.0, [3, 4], 0), (3.0, [], 2)],
        [(0.0, [1, 1, 1], 0), (1.0, [1, 1, 1], 0)],
        [(0.0, [9], 0), (0.0, [9], 0), (0.0, [9, 8], 0), (0.0, [8, 9], 0)],
    ],
)
def test_edge_cases_match_brute_force(requests: list[tuple[float, list[int], int]]) -> None:
    trace = make_trace(requests)
    hits = infinite_cache_hit_blocks(trace)
    assert hits.tolist() == brute_force_hits(trace)
    s = trace_stats(trace)
    total = sum(len(h) * 4 + t for _, h, t in requests)
    expected = sum(brute_force_hits(trace)) * 4 / total if total else 0.0
    assert s.infinite_cache_token_hit_rate == pytest.approx(expected)
    json.dumps(s.to_dict())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_generated_traces_match_brute_force(seed: int) -> None:
    trace = generate(generator_config(seed=seed, n_requests=400,
                                      overrides=["session_rate_per_s=0.2"]))
    hits = infinite_cache_hit_blocks(trace)
    assert hits.tolist() == brute_force_hits(trace)
    s = trace_stats(trace)
    expected = sum(brute_force_hits(trace)) * trace.block_size / int(trace.input_tokens.sum())
    assert s.infinite_cache_token_hit_rate == pytest.approx(expected, rel=1e-12)
    gaps = brute_force_gaps(trace)
    assert [s.reuse_gap_s_p50, s.reuse_gap_s_p90, s.reuse_gap_s_p99] == pytest.approx(
        np.percentile(gaps, [50, 90, 99]).tolist())
    assert s.reuse_fraction == pytest.approx(len(gaps) / s.blocks)
    # Per-class numbers add up to the totals.
    assert sum(c["requests"] for c in s.classes.values()) == s.requests
    assert sum(c["input_tokens"] for c in s.classes.values()) == s.input_tokens
    hit_tokens = sum(c["infinite_cache_token_hit_rate"] * c["input_tokens"]
                     for c in s.classes.values())
    assert hit_tokens / s.input_tokens == pytest.approx(s.infinite_cache_token_hit_rate)


def test_first_positions_any_numbering() -> None:
    # first-appearance order (the Trace's numbering): the O(n) path
    assert _first_positions(np.array([0, 1, 0, 2, 1]), 3).tolist() == [0, 1, 3]
    # any other dense numbering: the np.unique fallback
    assert _first_positions(np.array([1, 0, 1, 2]), 3).tolist() == [1, 0, 3]
    assert _first_positions(np.array([], dtype=np.int64), 0).tolist() == []


def test_reuse_gaps_hand_made() -> None:
    trace = make_trace([
        (0.0, [1, 2], 0),
        (1.0, [1, 3], 0),
        (5.0, [1, 2, 2], 0),   # block 2 twice in one request: a gap of 0
    ])
    assert sorted(brute_force_gaps(trace)) == [0.0, 1.0, 4.0, 5.0]
    s = trace_stats(trace)
    assert s.reuse_gap_s_p50 == pytest.approx(2.5)
    assert s.reuse_gap_s_p90 == pytest.approx(4.7)
    assert s.reuse_gap_s_p99 == pytest.approx(4.97)
    assert s.reuse_fraction == pytest.approx(4 / 7)
    assert s.duration_s == 5.0
    assert s.sessions == 2


def test_per_class_and_print() -> None:
    trace = make_trace([(0.0, [1, 2], 0), (1.0, [1, 2, 3], 2), (2.0, [4], 0)],
                       classes=["system", "chat", "tool"])
    s = trace_stats(trace)
    assert s.classes["chat"] == {"requests": 1, "input_tokens": 14, "output_tokens": 1,
                                 "infinite_cache_token_hit_rate": pytest.approx(8 / 14)}
    assert s.classes["system"]["infinite_cache_token_hit_rate"] == 0.0
    from rich.console import Console

    console = Console(record=True, width=100)
    print_stats(s, console=console, title="t")
    text = console.export_text()
    assert "infinite-cache token hit rate" in text
    assert "per prompt class" in text
    assert f"{s.infinite_cache_token_hit_rate:.1%}" in text


def test_cli_stats(tmp_path: Path) -> None:
    path = write_trace(generate(generator_config(seed=4, n_requests=300)),
                       tmp_path / "t.parquet")
    proc = subprocess.run([SIMKV, "trace", "stats", str(path)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "infinite-cache token hit rate" in proc.stdout
    proc = subprocess.run([SIMKV, "trace", "stats", str(path), "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["requests"] == 300
    assert 0.0 < data["infinite_cache_token_hit_rate"] < 1.0
    assert set(data["classes"]) <= {"chat", "tool", "rag", "system"}


def test_cli_stats_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run([SIMKV, "trace", "stats", str(tmp_path / "nope.parquet")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
