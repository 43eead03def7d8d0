"""The engine registry: one place chooses the engine, and says why."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.scenario import load_scenario
from simkv.core.tiers import TIER_NAMES
from simkv.metrics import request_frame, summarize
from simkv.model.engines import ENGINES, SPEED_ORDER, RunRecord, select_engine
from simkv.model.tiers import Tier
from simkv.sweep.core import plan_sweep
from tests.conftest import ROOT, SMALL_TRACE, assert_user_error, simkv_cli

PARITY = ROOT / "scenarios" / "parity-lru.yaml"
THREE_TIER = ROOT / "scenarios" / "three-tier-adaptive.yaml"


def test_every_engine_is_registered_in_speed_order() -> None:
    assert sorted(SPEED_ORDER) == ENGINES.names()
    # The reference engine runs everything, so auto always finds one.
    assert ENGINES.get("simpy").supports(load_scenario(THREE_TIER).with_overrides(
        ["tiers.gpu.eviction=belady", "ttl.scope=all"])) is None


def test_auto_picks_the_fastest_and_says_why_the_others_were_skipped() -> None:
    assert select_engine(load_scenario(PARITY)) == ("fast", {})
    sc = load_scenario(THREE_TIER)
    assert select_engine(sc) == ("compiled", {"fast": "tiers below the GPU in use: disk, archive "
                                                       "(fast needs a single GPU tier)"})
    name, skipped = select_engine(sc.with_overrides(["ttl.scope=all"]))
    assert name == "simpy" and list(skipped) == ["fast", "compiled"]
    assert "ttl.scope is 'all'" in skipped["compiled"]


def test_summary_records_the_engine_and_the_skipped(small_trace) -> None:
    s = run(THREE_TIER, small_trace, overrides=["tiers.gpu.eviction=lfu"]).summary
    assert s["engine"] == "simpy"
    assert "compiled: tiers.gpu.eviction is 'lfu'" in s["engine_skipped"]


@pytest.mark.parametrize("engine", SPEED_ORDER)
def test_each_engine_returns_one_run_record(small_trace, engine: str) -> None:
    sc = load_scenario(PARITY)
    rec = ENGINES.get(engine).run(sc, small_trace)
    assert isinstance(rec, RunRecord) and rec.engine == engine
    assert rec.log.n == len(small_trace) and rec.end_s >= float(small_trace.arrival_s[-1])


@pytest.mark.parametrize(("scenario", "engine"), [(PARITY, "fast"), (PARITY, "compiled"),
                                                  (THREE_TIER, "compiled")])
def test_each_engine_reports_the_reference_tier_totals_from_its_own_state(small_trace, scenario,
                                                                           engine: str) -> None:
    """Every engine hands the metrics each tier's totals (bit for bit the reference's); the
    compiled cache reads them from its kernels, holding no Python tier."""
    sc = load_scenario(scenario)
    rec, ref = ENGINES.get(engine).run(sc, small_trace), ENGINES.get("simpy").run(sc, small_trace)
    assert [t.name for t in ref.tiers] == list(TIER_NAMES)
    assert any(t.present and t.insertions and t.byte_seconds for t in ref.tiers)
    assert rec.tiers == ref.tiers
    if engine == "compiled":
        assert not hasattr(rec.cache, "tiers")
        assert not any(isinstance(v, Tier) for v in vars(rec.cache).values())


@pytest.mark.parametrize(("engine", "override", "reason"), [
    ("fast", "hardware.zero_service_time=false", "fast has no clock"),
    ("compiled", "ttl.scope=all", "ttl.scope is 'all'"),
    ("compiled", "tiers.disk.eviction=lfu", "tiers.disk.eviction is 'lfu'"),
])
def test_an_engine_that_cannot_run_the_scenario_is_refused(engine: str, override: str, reason: str) -> None:
    base = PARITY if engine == "fast" else THREE_TIER
    sc = load_scenario(base).with_overrides([override, f"engine={engine}"])
    expected = rf"engine: '{engine}' cannot run this scenario: .*{re.escape(reason)}"
    with pytest.raises(ScenarioError, match=expected):
        select_engine(sc)
    assert_user_error(simkv_cli("run", str(base), "--trace", str(SMALL_TRACE), "--set", override,
                                "--set", f"engine={engine}"), "engine:", reason)


def test_a_sweep_refuses_a_cell_its_engine_cannot_run() -> None:
    with pytest.raises(ScenarioError, match=r"grid cell .*engine: 'compiled' cannot run"):
        plan_sweep(THREE_TIER, SMALL_TRACE, ["engine=compiled", "ttl.scope=archive,all"])


@pytest.mark.parametrize(("scenario", "engine"), [(PARITY, "fast"), (THREE_TIER, "compiled"),
                                                  (THREE_TIER, "simpy")])
def test_released_cache_keeps_what_the_metrics_read(small_trace, scenario, engine: str) -> None:
    """``run`` lets go of the per-block state before building the metrics (most of a
    million-request run's memory): the rows and the summary come out the same."""
    sc = load_scenario(scenario)
    rec = ENGINES.get(engine).run(sc, small_trace)
    rows = request_frame(small_trace, sc, rec.cache, rec.log)
    summary = summarize(rows, sc, rec)
    rec.cache.release()
    assert not hasattr(rec.cache, "state")
    if engine == "compiled":
        kept = {k: v.shape for k, v in vars(rec.cache).items() if isinstance(v, np.ndarray)}
        assert kept == {"archive_puts_by_request": (len(small_trace),), "_billed": (len(small_trace),),
                        "_S": rec.cache._S.shape, "_X": rec.cache._X.shape}
    again = request_frame(small_trace, sc, rec.cache, rec.log)
    pd.testing.assert_frame_equal(again, rows)
    assert summarize(again, sc, rec) == summary
