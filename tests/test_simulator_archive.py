"""The simulator's archive tier: deep misses hydrate, expired objects are never served, the
storage integral, archive passes that skip idle time and follow the requests, and the pass clock
(``first_pass_at``) that reproduces the chain of float additions."""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.scenario import Scenario, scenario_from_dict
from simkv.model.engine import StalledClock, archive_worker_loop, first_pass_at
from tests.conftest import make_trace
from tests.simulator_helpers import KV, scenario


def archive_scenario(**ttl) -> Scenario:
    return scenario(
        gpu={"capacity_blocks": 2},
        disk={"enabled": True, "capacity_blocks": 2},
        archive={"enabled": True, "interval_s": 10.0, "compression_ratio": 2.0},
        ttl={"heuristic": "static", "params": {"ttl": ttl.get("ttl", 1000.0)},
             "mode": ttl.get("mode", "fixed"), "scope": "archive"},
    )


def test_deep_miss_fetches_from_archive_and_hydrates() -> None:
    # blocks 1,2 archived at t=10, evicted from GPU and disk by 3,4 and 5,6; re-used at t=30
    trace = make_trace([[1, 2], [3, 4], [5, 6], [1, 2]], arrivals=[0, 15, 16, 30])
    res = run(archive_scenario(), trace)
    r, s = res.requests, res.summary
    assert r["archive_hit_tokens"].tolist() == [0, 0, 0, 8]
    assert s["archive_gets"] == 2 and s["hydrations"] == 2 and s["archive_puts"] >= 2
    assert s["storage_peak_bytes_archive"] >= 2 * 2 * 4 * KV // 2
    assert s["archive_storage_dollars"] > 0 and s["archive_request_dollars"] > 0


def test_expired_archive_objects_are_never_served() -> None:
    trace = make_trace([[1, 2], [3, 4], [5, 6], [1, 2]], arrivals=[0, 15, 16, 30])
    res = run(archive_scenario(ttl=15.0), trace)  # uploaded at 10, expire at 25 < 30
    assert res.requests["archive_hit_tokens"].iloc[3] == 0
    assert res.summary["expirations_archive"] >= 2


def test_archive_storage_integral_exact() -> None:
    trace = make_trace([[1, 2], [9]], arrivals=[0.0, 40.0])
    res = run(archive_scenario(ttl=15.0), trace)
    # blocks 1,2 uploaded at t=10 (zero-time worker) and expire at t=25; block 9 never
    # reaches a pass before the end (t=40)
    per_object = 4 * KV // 2
    assert res.summary["storage_gb_hours_archive"] == pytest.approx(2 * per_object * 15 / 1e9 / 3600)
    assert res.summary["expirations_archive"] == 2


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
@pytest.mark.parametrize(("interval", "zero_time", "mode"), [
    (1.0, True, "fixed"), (3.0, True, "sliding"), (0.7, False, "sliding"), (10.0, False, "fixed")])
def test_skipping_idle_archive_passes_changes_nothing(monkeypatch, gen_trace, engine, interval,
                                                      zero_time, mode) -> None:
    # Integer arrivals on a grid of integer pass times make passes and requests coincide, so
    # the order of simultaneous events matters too; every output must be bit-identical.
    arrivals = np.floor(gen_trace.arrival_s * 3.0)
    trace = make_trace([[int(h) for h in gen_trace.block_hashes_flat[lo:hi]]
                        for lo, hi in zip(gen_trace.block_offsets[:-1], gen_trace.block_offsets[1:],
                                          strict=True)][:200], block_size=gen_trace.block_size,
                       arrivals=arrivals[:200].tolist())
    sc = scenario_from_dict({
        "tiers": {"gpu": {"capacity_blocks": 64}, "disk": {"enabled": True, "capacity_blocks": 128},
                  "archive": {"enabled": True, "interval_s": interval}},
        "ttl": {"heuristic": "adaptive", "params": {"base_ttl": 20.0, "alpha": 1.0, "min_ttl": 5.0,
                                                    "max_ttl": 200.0}, "mode": mode},
        "hardware": {"zero_service_time": zero_time}, "engine": engine})
    skipped = run(sc, trace)
    periodic_worker = functools.partial(archive_worker_loop, skip_idle=False)  # a pass every interval
    monkeypatch.setattr("simkv.model.engine.archive_worker_loop", periodic_worker)
    periodic = run(sc, trace)
    pd.testing.assert_frame_equal(skipped.requests, periodic.requests, check_exact=True)
    pd.testing.assert_frame_equal(skipped.timeline, periodic.timeline, check_exact=True)
    drop = ("wall_s", "sim_wall_s")
    assert ({k: v for k, v in skipped.summary.items() if k not in drop}
            == {k: v for k, v in periodic.summary.items() if k not in drop})
    assert skipped.summary["archive_puts"] > 0


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_archive_passes_follow_the_requests_not_the_time_span(monkeypatch, engine) -> None:
    # 50 requests over 1e8 s with a pass every 60 s: 1.7 million periodic passes, nearly all
    # idle. Only the passes with candidates (and the first idle one after them) may run.
    from simkv.model.cache_base import CacheBase

    calls = [0]
    original = CacheBase.archive_pass

    def counted(self, now):
        calls[0] += 1
        assert calls[0] <= 1000, "idle archive passes are not skipped"
        return original(self, now)

    monkeypatch.setattr(CacheBase, "archive_pass", counted)
    trace = make_trace([[i % 5, 10 + i % 3] for i in range(50)],
                       arrivals=np.linspace(0.0, 1e8, 50).tolist())
    sc = replace(archive_scenario(ttl=1e7), engine=engine)
    res = run(sc, trace)
    assert calls[0] <= 2 * 50
    assert res.summary["archive_puts"] > 0 and res.summary["requests"] == 50


def repeated_addition(t: float, h: float, event: float) -> float:
    while t < event:
        t += h
    return t


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-6, 1e4), st.floats(1e-6, 1e3), st.integers(0, 20000))
def test_first_pass_at_is_the_chain_of_float_additions(t0: float, h: float, steps: int) -> None:
    event = t0 + steps * h
    assert first_pass_at(t0, h, event) == repeated_addition(t0, h, event)


@pytest.mark.parametrize("exponent", [-3, 0, 7, 20])
@pytest.mark.parametrize("half_ulps", [3, 5, 7, 2049])
def test_first_pass_at_rounds_ties_like_the_clock(exponent: int, half_ulps: int) -> None:
    # an interval of an odd number of half ulps: every addition is a tie, rounded to even
    t0 = math.ldexp(1.0, exponent) + 3 * math.ulp(math.ldexp(1.0, exponent))
    h = half_ulps * math.ulp(t0) / 2
    event = t0 + 30000 * h
    assert first_pass_at(t0, h, event) == repeated_addition(t0, h, event)


def test_an_interval_below_the_clock_resolution_is_an_error() -> None:
    with pytest.raises(StalledClock, match=r"tiers\.archive\.interval_s"):
        first_pass_at(1.0, 1e-9, 1e300)
    with pytest.raises(StalledClock):  # half an ulp: one tie rounds up to even, the next stays
        first_pass_at(1.0 + math.ulp(1.0), math.ulp(1.0) / 2, 2.0)
    trace = make_trace([[1], [2]], arrivals=[0.0, 1e6])
    sc = scenario_from_dict({**archive_scenario().to_dict(), "tiers": {
        **archive_scenario().to_dict()["tiers"], "archive": {"enabled": True, "interval_s": 1e-9}}})
    with pytest.raises(ScenarioError, match=r"tiers.archive.interval_s: 1e-09 s would take 1e\+15"):
        run(sc, trace)
