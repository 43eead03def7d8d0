"""Parity with LMCache's own cache simulator: single LRU tier, no TTL, zero service time.

simkv's token hit rate must equal ``lmcache.tools.cache_simulator.simulator.simulate`` exactly,
on any trace and capacity, with both of simkv's engines.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkv.api import run
from simkv.traces.export import to_lmcache_events
from tests.conftest import ROOT, make_trace, simkv_cli

simulator = pytest.importorskip(
    "lmcache.tools.cache_simulator.simulator",
    reason="LMCache is the parity reference: `make install` installs it (pip install --no-deps lmcache)",
)

PARITY = ROOT / "scenarios" / "parity-lru.yaml"
BPC = 1 << 20  # any positive kv_bytes_per_chunk: capacity in chunks = bytes // BPC


def lmcache_rate(trace, capacity_blocks: int) -> float:
    return simulator.simulate(to_lmcache_events(trace), capacity_blocks * BPC, BPC, fast=True)[
        "token_hit_rate"
    ]


def simkv_rate(trace, capacity_blocks: int, engine: str) -> float:
    overrides = [f"tiers.gpu.capacity_blocks={capacity_blocks}", f"engine={engine}"]
    return run(PARITY, trace, overrides=overrides).summary["token_hit_rate"]


@pytest.mark.parametrize("capacity", [1, 7, 100, 1000, 5000, 20000, 10**7])
def test_small_trace_parity_both_engines(small_trace, capacity: int) -> None:
    expected = lmcache_rate(small_trace, capacity)
    assert simkv_rate(small_trace, capacity, "fast") == expected
    assert simkv_rate(small_trace, capacity, "simpy") == expected


def test_lmcache_slow_path_agrees_too(gen_trace) -> None:
    events = to_lmcache_events(gen_trace)
    slow = simulator.simulate(events, 300 * BPC, BPC, fast=False)["token_hit_rate"]
    assert simkv_rate(gen_trace, 300, "fast") == slow


requests_st = st.lists(
    st.lists(st.integers(min_value=0, max_value=12), min_size=0, max_size=10), min_size=1, max_size=40
)


@settings(max_examples=120, deadline=None)
@given(requests=requests_st, capacity=st.integers(min_value=1, max_value=20),
       tails=st.data())
def test_random_traces_parity(requests, capacity, tails) -> None:
    """Random traces with heavy reuse, repeated blocks within a request, empty requests
    and tail tokens: both engines equal LMCache exactly."""
    tail = tails.draw(st.lists(st.integers(0, 3), min_size=len(requests), max_size=len(requests)))
    trace = make_trace(requests, tails=tail)
    expected = lmcache_rate(trace, capacity)
    if not trace.input_tokens.sum():
        expected = None  # 0/0: LMCache reports 0.0, simkv "undefined" (None)
    assert simkv_rate(trace, capacity, "fast") == expected
    assert simkv_rate(trace, capacity, "simpy") == expected


def test_cli_summary_matches_lmcache(tmp_path, small_trace) -> None:
    """The check users run: simkv run parity-lru --set capacity_blocks=N -o DIR."""
    for n in (500, 4000):
        out = tmp_path / f"cap{n}"
        proc = simkv_cli("run", str(PARITY), "--trace", str(ROOT / "traces" / "small.parquet"),
                         "--set", f"tiers.gpu.capacity_blocks={n}", "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["token_hit_rate"] == lmcache_rate(small_trace, n)
