"""One-pass curves against the simulator (and LMCache's), point by point, exactly (==)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkv.api import run
from simkv.core.errors import SimkvError
from simkv.core.scenario import load_scenario
from simkv.curves import (
    capacity_curve,
    capacity_curve_all,
    default_capacities,
    default_ttls,
    parse_values,
    ttl_curve,
    ttl_overrides,
)
from simkv.report.curves import run_curve
from simkv.traces.export import to_lmcache_events
from simkv.traces.schema import Trace, validate_table
from tests.conftest import ROOT, SMALL_TRACE, make_trace

PARITY = load_scenario(ROOT / "scenarios" / "parity-lru.yaml")
SIMKV = str(Path(sys.executable).with_name("simkv"))
BPC = 1 << 20  # LMCache kv_bytes_per_chunk: C blocks = C * BPC bytes

# Hand-made traces: repeats inside a request, zero-block requests (tail tokens only),
# a block repeated right after its first reference, requests at the same instant.
HAND = [
    make_trace([[1, 2, 3], [1, 2, 4], [1, 1, 5], [], [2, 3], [3, 3, 3], [1, 2, 4, 6]],
               tails=[1, 0, 2, 3, 0, 1, 0]),
    make_trace([[5, 5], [5], [6, 5, 5, 7], [7, 6], [], [5, 6, 7, 8]],
               arrivals=[0.0, 0.0, 1.0, 1.0, 2.5, 4.0], tails=[0, 2, 0, 0, 3, 1]),
    make_trace([[1], [2], [3], [1], [2], [3], [4], [1]], arrivals=[0, 1, 2, 3, 3, 5, 8, 13]),
]


def same(curve_rate: float, run_rate: float | None) -> bool:
    """A curve point equals the run's token hit rate; NaN in the curve is the run's None
    (undefined: the trace has no input token)."""
    if run_rate is None:
        return math.isnan(curve_rate)
    return curve_rate == run_rate


def sim_capacity(trace: Trace, capacity: int, engine: str = "auto") -> float | None:
    return run(PARITY, trace, overrides=[f"tiers.gpu.capacity_blocks={capacity}",
                                         f"engine={engine}"]).summary["token_hit_rate"]


def sim_ttl(trace: Trace, ttl: float) -> float | None:
    return run(PARITY, trace, overrides=ttl_overrides(ttl)).summary["token_hit_rate"]


@pytest.fixture(scope="module")
def canned() -> Trace:
    """The canned small trace, else a generated one of the same kind."""
    if SMALL_TRACE.exists():
        from simkv.traces.schema import read_trace

        return read_trace(SMALL_TRACE)
    from simkv.traces.generator import generate, generator_config

    return generate(generator_config(seed=3, n_requests=1500))


# -- capacity -------------------------------------------------------------------------------


def test_capacity_curve_equals_run_on_canned_trace(canned: Trace) -> None:
    u = canned.n_unique_blocks
    grid = [0, 1, 2, 50, 400, 1500, 5000, u // 2, u, 10 * u]
    df = capacity_curve(canned, grid)
    assert list(df.columns) == ["capacity_blocks", "token_hit_rate", "hit_tokens"]
    for c, rate in zip(grid, df["token_hit_rate"], strict=True):
        assert same(rate, sim_capacity(canned, c)), f"capacity {c}"
    assert df["token_hit_rate"].is_monotonic_increasing  # LRU inclusion: no Belady anomaly


@pytest.mark.parametrize("trace", HAND, ids=["repeats", "same-instant", "cyclic"])
def test_capacity_curve_equals_both_engines_on_hand_traces(trace: Trace) -> None:
    capacities = list(range(trace.n_unique_blocks + 2))
    df = capacity_curve(trace, capacities)
    for c, rate in zip(capacities, df["token_hit_rate"], strict=True):
        assert same(rate, sim_capacity(trace, c, "fast")), f"capacity {c}"
        assert same(rate, sim_capacity(trace, c, "simpy")), f"capacity {c}"


def test_capacity_zero_and_hand_computed_values() -> None:
    # [1,2,3] [1,2,4] [1,1,5]: at capacity 1 nothing survives a whole request; at 3 the
    # second request hits 1,2 (2 blocks), the third hits 1,1 (block 1 twice) = 4 blocks.
    tr = make_trace([[1, 2, 3], [1, 2, 4], [1, 1, 5]])
    df = capacity_curve(tr, [0, 1, 3, 100])
    assert df["hit_tokens"].tolist() == [0, 0, 4 * 4, 4 * 4]
    assert df["token_hit_rate"].iloc[0] == 0.0


def test_histogram_answers_any_capacity(canned: Trace) -> None:
    hist = capacity_curve_all(canned)
    caps = np.arange(0, canned.n_unique_blocks + 5, 997)
    assert hist.curve(caps).equals(capacity_curve(canned, caps))
    assert hist.hit_blocks([10**9])[0] == hist.cum_blocks[-1]


def test_capacity_curve_equals_lmcache(gen_trace: Trace, canned: Trace) -> None:
    sim = pytest.importorskip("lmcache.tools.cache_simulator.simulator",
                              reason="LMCache is the parity reference (pip install --no-deps lmcache)")
    for trace, grid in [(gen_trace, [1, 2, 10, 50, 200, 500, 1000, 2500, 6000, 10**5]),
                        (canned, [1, 700, 4000])]:
        events = to_lmcache_events(trace)
        df = capacity_curve(trace, grid)
        for c, rate in zip(grid, df["token_hit_rate"], strict=True):
            expected = sim.simulate(events, c * BPC, BPC, fast=True)["token_hit_rate"]
            assert rate == expected, f"capacity {c}"
    for trace in HAND:
        events = to_lmcache_events(trace)
        caps = list(range(1, trace.n_unique_blocks + 2))
        for c, rate in zip(caps, capacity_curve(trace, caps)["token_hit_rate"], strict=True):
            assert rate == sim.simulate(events, c * BPC, BPC, fast=True)["token_hit_rate"]


# -- TTL ------------------------------------------------------------------------------------


def test_ttl_curve_equals_run_on_generated_trace(gen_trace: Trace) -> None:
    gen_trace = validate_table(gen_trace.table.slice(0, 200), block_size=gen_trace.block_size)
    a = gen_trace.arrival_s
    gaps = np.diff(a)
    exact = [float(gaps[gaps > 0][3]), float(a[50] - a[10])]  # exact inter-arrival gaps
    ttls = [0.0, 0.5, *exact, 5.0, 60.0, 1e4]
    df = ttl_curve(gen_trace, ttls)
    assert list(df.columns) == ["ttl_s", "token_hit_rate", "hit_tokens"]
    for t, rate in zip(ttls, df["token_hit_rate"], strict=True):
        assert same(rate, sim_ttl(gen_trace, t)), f"ttl {t}"
    assert df["token_hit_rate"].iloc[0] == 0.0


@pytest.mark.parametrize("trace", HAND, ids=["repeats", "same-instant", "cyclic"])
def test_ttl_curve_strict_boundary_on_hand_traces(trace: Trace) -> None:
    a = trace.arrival_s
    gaps = sorted({float(y - x) for x in a for y in a if y >= x})  # every exact gap, 0 included
    ttls = sorted({*gaps, *(g + 1e-9 for g in gaps), *(max(g - 1e-9, 0.0) for g in gaps), 1e6})
    df = ttl_curve(trace, ttls)
    for t, rate in zip(ttls, df["token_hit_rate"], strict=True):
        assert same(rate, sim_ttl(trace, t)), f"ttl {t}"


def test_ttl_hand_computed_values() -> None:
    # Block 1 at t=0 and t=3: a hit iff 3 < T (strict). Block 2 repeats inside request 1
    # only: never a hit (the lookup precedes the request's own stores).
    tr = make_trace([[1], [2, 2], [1]], arrivals=[0.0, 1.0, 3.0])
    assert ttl_curve(tr, [3.0, 3.5])["hit_tokens"].tolist() == [0, 4]


def test_ttl_curve_at_float_awkward_arrivals() -> None:
    """``55.49368547185474 + (125.30838949638745 - 55.49368547185474)`` rounds one step past
    the second arrival; the simulator must still serve that request at its arrival time, and
    the curve must agree at a TTL that lands between the two values."""
    a0, a1 = 55.49368547185474, 125.30838949638745
    assert a0 + (a1 - a0) != a1
    tr = make_trace([[1], [1]], arrivals=[a0, a1])
    res = run(ROOT / "scenarios" / "parity-lru.yaml", tr, overrides=ttl_overrides(10.0))
    assert res.requests["queue_s"].tolist() == [0.0, 0.0]
    ttl = math.nextafter(a1 - a0, math.inf)
    assert same(ttl_curve(tr, [ttl])["token_hit_rate"][0], sim_ttl(tr, ttl))


# -- random traces --------------------------------------------------------------------------


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    n = draw(st.integers(1, 14))
    blocks = draw(st.lists(st.lists(st.integers(0, 7), max_size=6), min_size=n, max_size=n))
    steps = draw(st.lists(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]),
                                    st.floats(0.0, 30.0, allow_nan=False)),
                          min_size=n, max_size=n))
    tails = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return make_trace(blocks, arrivals=np.cumsum(steps).tolist(), tails=tails)


@settings(max_examples=40, deadline=None)
@given(trace=traces(), data=st.data())
def test_random_traces_both_curves(trace: Trace, data: st.DataObject) -> None:
    caps = data.draw(st.lists(st.integers(0, trace.n_unique_blocks + 1), min_size=1, max_size=3))
    for c, rate in zip(caps, capacity_curve(trace, caps)["token_hit_rate"], strict=True):
        assert same(rate, sim_capacity(trace, c)), f"capacity {c}"
    a = trace.arrival_s
    pairs = st.tuples(st.integers(0, len(a) - 1), st.integers(0, len(a) - 1))
    exact = pairs.map(lambda ij: abs(float(a[ij[1]] - a[ij[0]])))
    ttls = data.draw(st.lists(st.one_of(exact, st.floats(0.0, 100.0)), min_size=1, max_size=3))
    for t, rate in zip(ttls, ttl_curve(trace, ttls)["token_hit_rate"], strict=True):
        assert same(rate, sim_ttl(trace, t)), f"ttl {t}"


# -- defaults, input checks, CLI ---------------------------------------------------------------


def test_defaults(canned: Trace) -> None:
    caps = default_capacities(canned)
    u = canned.n_unique_blocks
    assert 25 <= len(caps) <= 30 and caps[-1] == u and caps[0] == round(0.01 * u)
    assert np.all(np.diff(caps) > 0)
    ttls = default_ttls(canned)
    assert len(ttls) == 30 and ttls[0] == 1.0
    assert ttls[-1] == pytest.approx(canned.arrival_s[-1] - canned.arrival_s[0])


def test_bad_values() -> None:
    assert parse_values("1000, 5e3", "--capacities", integer=True) == [1000, 5000]
    for bad, word in [("10,x", "'x'"), ("-5", "'-5'"), ("1.5", "'1.5'"), ("1,,2", "empty")]:
        with pytest.raises(SimkvError, match="--capacities") as err:
            parse_values(bad, "--capacities", integer=True)
        assert word in str(err.value)
    with pytest.raises(SimkvError, match=r"--ttls.*'nan'"):
        parse_values("nan", "--ttls", integer=False)
    with pytest.raises(SimkvError, match="capacities"):
        capacity_curve(HAND[0], [-1])
    with pytest.raises(SimkvError, match="ttls"):
        ttl_curve(HAND[0], [float("inf")])


def test_cli_writes_csv_and_png(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    proc = subprocess.run([SIMKV, "curve", "capacity", "--trace", str(SMALL_TRACE),
                           "--capacities", "100,1000,5000", "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out / "curve.csv")
    assert df["capacity_blocks"].tolist() == [100, 1000, 5000]
    assert {"token_hit_rate", "hit_tokens"} <= set(df.columns)
    assert (out / "curve.png").stat().st_size > 10_000
    assert "token hit rate" in proc.stdout


def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([SIMKV, "curve", "capacity", "--trace", str(SMALL_TRACE),
                           "--capacities", "10,x", "-o", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert "--capacities" in proc.stderr and "'x'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_curve_errors_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(SimkvError, match=r"--trace.*missing\.parquet"):
        run_curve("ttl", tmp_path / "missing.parquet", None, tmp_path)
    with pytest.raises(SimkvError, match=r"--ttls: '-1'"):
        run_curve("ttl", SMALL_TRACE, "5,-1", tmp_path)
    with pytest.raises(SimkvError, match="capacity"):
        run_curve("sizes", SMALL_TRACE, None, tmp_path)

