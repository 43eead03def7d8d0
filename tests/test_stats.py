"""Trace statistics: the infinite-cache hit rate against brute force, reuse gaps, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from simkv.traces.generator import generate, generator_config
from simkv.traces.schema import Trace, build_table, write_trace
from simkv.traces.stats import (
    _first_positions,
    _reuse_gaps,
    _seconds,
    infinite_cache_hit_blocks,
    print_stats,
    trace_stats,
)

ROOT = Path(__file__).resolve().parents[1]

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
    if total:
        expected = sum(brute_force_hits(trace)) * 4 / total
        assert s.infinite_cache_token_hit_rate == pytest.approx(expected)
    else:
        assert s.infinite_cache_token_hit_rate is None
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


def random_trace(n_req: int, pool: int, per_req: int, seed: int) -> Trace:
    """``n_req`` requests of ``per_req`` blocks drawn uniformly from ``pool`` hashes."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(2.0, n_req))
    hashes = (rng.integers(0, pool, (n_req, per_req)) * 7919 + 11).tolist()
    return make_trace([(float(a), h, 0) for a, h in zip(arrivals, hashes, strict=True)])


def test_reuse_gaps_past_int32() -> None:
    # ids * n_accesses passes 2**31 here: an int32 composite sort key wraps around.
    trace = random_trace(n_req=2_000, pool=40_000, per_req=50, seed=5)
    n = len(trace.block_ids_flat)
    assert trace.n_unique_blocks * n > 2**31
    gaps = brute_force_gaps(trace)
    assert np.sort(_reuse_gaps(trace)).tolist() == sorted(gaps)
    s = trace_stats(trace)
    assert s.reuse_gaps == len(gaps) == s.blocks - s.unique_blocks
    assert [s.reuse_gap_s_p50, s.reuse_gap_s_p90, s.reuse_gap_s_p99] == pytest.approx(
        np.percentile(gaps, [50, 90, 99]).tolist(), rel=1e-12)


def test_reuse_gaps_small_trace_and_readme(small_trace: Trace) -> None:
    gaps = brute_force_gaps(small_trace)
    s = trace_stats(small_trace)
    assert s.reuse_gaps == len(gaps) == s.blocks - s.unique_blocks
    expected = np.percentile(gaps, [50, 90, 99]).tolist()
    assert [s.reuse_gap_s_p50, s.reuse_gap_s_p90, s.reuse_gap_s_p99] == pytest.approx(
        expected, rel=1e-12)
    # traces/README.md documents these figures (small is the first column of the table)
    readme = (ROOT / "traces" / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| reuse gap p50"))
    assert row.split("|")[2].strip() == " / ".join(_seconds(g) for g in expected)
    row = next(line for line in readme.splitlines() if line.startswith("| reuse gaps"))
    assert row.split("|")[2].strip() == f"{len(gaps):,}"


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


def test_undefined_values_are_none_and_print_na(tmp_path: Path) -> None:
    """One request, no session ids, no full block: every value that divides by zero (or by a
    duration of one arrival) is None in JSON and n/a on the console, never 0."""
    from rich.console import Console

    from tests.conftest import make_trace as make_blocks_trace

    trace = make_blocks_trace([[]], tails=[0])
    s = trace_stats(trace)
    for key in ("sessions", "duration_s", "request_rate_per_s", "infinite_cache_token_hit_rate",
                "reuse_fraction", "reuse_gap_s_p50", "reuse_gap_s_p90", "reuse_gap_s_p99"):
        assert getattr(s, key) is None, key
    assert s.reuse_gaps == 0
    assert s.classes["chat"]["infinite_cache_token_hit_rate"] is None
    console = Console(record=True, width=120)
    print_stats(s, console=console)
    text = console.export_text()
    lines = {ln.split("│")[1].strip(): ln.split("│")[2].strip()
             for ln in text.splitlines() if ln.count("│") >= 3}
    assert lines["sessions"] == lines["duration"] == lines["request rate"] == "n/a"
    assert lines["infinite-cache token hit rate"] == lines["block reuse fraction"] == "n/a"
    assert lines["reuse gap p50 / p90 / p99"] == "n/a / n/a / n/a"
    assert not {"0.0 s", "0.0%", "0"} & {lines[k] for k in ("sessions", "duration",
                                                          "block reuse fraction")}

    path = write_trace(trace, tmp_path / "one.parquet")
    proc = subprocess.run([SIMKV, "trace", "stats", str(path), "--json"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["sessions"] is None and data["duration_s"] is None
    assert data["reuse_gap_s_p50"] is None and data["infinite_cache_token_hit_rate"] is None


def test_zero_duration_and_partial_sessions() -> None:
    """Two simultaneous requests: a duration of 0 s is defined, their rate is not."""
    from tests.conftest import make_trace as make_blocks_trace

    s = trace_stats(make_blocks_trace([[1], [1]], arrivals=[3.0, 3.0]))
    assert s.duration_s == 0.0
    assert s.request_rate_per_s is None
    assert s.reuse_gaps == 1 and s.reuse_gap_s_p50 == 0.0


def test_block_ids_are_first_appearance_codes_across_chunks() -> None:
    # The ids are numbered chunk by chunk through one hash table: the same ids, the same
    # hash per id and the same content hash however the rows are chunked (a sliced chunk too).
    trace = random_trace(n_req=300, pool=500, per_req=7, seed=3)
    t = trace.table
    chunked = Trace(pa.concat_tables([t.slice(0, 1), t.slice(1, 150), t.slice(151, 0), t.slice(151)]),
                    trace.block_size)
    assert chunked.table.column("block_hashes").num_chunks == 4
    index: dict[int, int] = {}
    expected = [index.setdefault(h, len(index)) for h in trace.block_hashes_flat.tolist()]
    for tr in (trace, chunked):
        assert tr.block_ids_flat.dtype == np.int32  # half the bytes of int64 codes
        assert tr.block_ids_flat.tolist() == expected
        assert tr.block_hashes_unique.tolist() == list(index)
        assert tr.n_unique_blocks == len(index)
    assert chunked.content_sha256 == trace.content_sha256
