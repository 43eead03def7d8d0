"""Archive billing (S3 minimum storage duration and object size) and per-request cost
attribution that adds up to the summary."""

from __future__ import annotations

import math

import pytest

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.scenario import STORAGE_CLASSES, Scenario, load_scenario
from simkv.core.tiers import SECONDS_PER_MONTH
from tests.conftest import ROOT, SMALL_TRACE, make_trace, simkv_cli
from tests.simulator_helpers import KV, scenario

THREE_TIER = ROOT / "scenarios" / "three-tier-adaptive.yaml"
OBJECT = 4 * KV // 2  # a 4-token block compressed 2x: 2 KiB stored per archive object
DAY = 86400.0
COST_KEYS = ("gpu_dollars_saved", "archive_storage_dollars", "archive_request_dollars",
             "transfer_dollars", "cost_saved_dollars")


def archived(ttl: float = 1000.0, mode: str = "fixed", engine: str = "simpy", **archive) -> Scenario:
    """Zero-time GPU (2 blocks) + disk + archive (a pass every 10 s) with a static TTL."""
    return scenario(
        engine=engine,
        gpu={"capacity_blocks": 2}, disk={"enabled": True, "capacity_blocks": 2},
        archive={"enabled": True, "interval_s": 10.0, "compression_ratio": 2.0, **archive},
        ttl={"heuristic": "static", "params": {"ttl": ttl}, "mode": mode, "scope": "archive"},
    )


def dollars(billed_bytes: int, seconds: float, storage_class: str = "standard") -> float:
    return billed_bytes * seconds / 1e9 / SECONDS_PER_MONTH * STORAGE_CLASSES[storage_class]["gb_month"]


def test_glacier_ir_object_expired_early_pays_90_days_of_128_kib() -> None:
    # block 1 uploaded at the pass at t=10, expires at t=25: 15 s of life, billed 90 days of
    # the 128 KiB minimum size; request 0 made it a candidate, so it pays storage and PUT.
    trace = make_trace([[1], [9]], arrivals=[0.0, 45.0])
    res = run(archived(ttl=15.0, storage_class="glacier_ir"), trace)
    s, r = res.summary, res.requests
    assert s["archive_puts"] == 1 and s["expirations_archive"] == 1
    storage = 128 * 1024 * 90 * DAY / 1e9 / (730 * 3600) * 0.004
    assert s["archive_storage_dollars"] == pytest.approx(storage, rel=1e-12)
    assert s["archive_request_dollars"] == pytest.approx(0.02 / 1000, rel=1e-12)
    assert s["storage_gb_hours_archive"] == pytest.approx(OBJECT * 15 / 1e9 / 3600)  # physical
    assert r["archive_storage_dollars"].tolist() == [pytest.approx(storage, rel=1e-12), 0.0]
    assert r["archive_objects"].tolist() == [1, 0]
    assert r["cost_saved_dollars"].iloc[0] == pytest.approx(-storage - 0.02 / 1000, rel=1e-12)


def test_object_living_past_the_minimum_pays_its_lifetime_and_its_own_size() -> None:
    trace = make_trace([[1], [9]], arrivals=[0.0, 45.0])
    res = run(archived(ttl=15.0, min_days=10 / DAY, min_object_bytes="1KiB"), trace)
    assert res.summary["archive_storage_dollars"] == pytest.approx(dollars(OBJECT, 15.0), rel=1e-12)


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_object_alive_at_the_end_is_billed_until_its_deadline(engine: str) -> None:
    # block 1 uploaded at the pass at t=10 with a 1000 s TTL; the run ends at 45, but the object
    # stays until 1010: the standard class (no minimum) bills 1000 s, not the 35 s in the window
    trace = make_trace([[1], [9]], arrivals=[0.0, 45.0])
    s = run(archived(engine=engine), trace).summary
    assert s["archive_puts"] == 1 and s["expirations_archive"] == 0
    assert s["archive_storage_dollars"] == pytest.approx(2048 * 1000.0 / 1e9 / (730 * 3600) * 0.023,
                                                         rel=1e-12)
    assert s["storage_gb_hours_archive"] == pytest.approx(OBJECT * 35.0 / 1e9 / 3600)  # physical
    committed = run(archived(min_days=2000 / DAY, engine=engine), trace).summary["archive_storage_dollars"]
    assert committed == pytest.approx(dollars(OBJECT, 2000.0), rel=1e-12)


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_object_that_never_expires_is_billed_to_the_end_of_the_run(engine: str) -> None:
    trace = make_trace([[1], [9]], arrivals=[0.0, 45.0])  # uploaded at 10, the run ends at 45
    s = run(archived(ttl=math.inf, engine=engine), trace).summary
    assert s["archive_storage_dollars"] == pytest.approx(dollars(OBJECT, 35.0), rel=1e-12)


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_evicted_object_is_billed_to_its_own_request(engine: str) -> None:
    # one archive slot: block 2 (request 1, uploaded at 20) evicts block 1 (request 0, from 10);
    # block 2 is alive at the end (45), billed until its deadline (1020)
    trace = make_trace([[1], [2], [9]], arrivals=[0.0, 12.0, 45.0])
    res = run(archived(capacity_blocks=1, engine=engine), trace)
    r = res.requests
    assert res.summary["evictions_archive"] == 1
    assert r["archive_storage_dollars"].tolist() == [pytest.approx(dollars(OBJECT, 10.0), rel=1e-12),
                                                      pytest.approx(dollars(OBJECT, 1000.0), rel=1e-12), 0.0]


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
@pytest.mark.parametrize(("storage_class", "seconds"), [("standard", (10.0, 1000.0)),
                                                        ("glacier_ir", (90 * DAY, 90 * DAY))])
def test_refresh_copy_is_a_new_object_charged_to_the_refreshing_request(
        engine: str, storage_class: str, seconds: tuple[float, float]) -> None:
    # uploaded at 10 for request 0; request 1 uses block 1 at 15, so the pass at 20 refreshes
    # it: the first object lived 10 s (early deletion); the copy, alive at the end (45), is
    # billed until its slid deadline (1020)
    trace = make_trace([[1], [1], [9]], arrivals=[0.0, 15.0, 45.0])
    res = run(archived(mode="sliding", storage_class=storage_class, engine=engine), trace)
    s, r = res.summary, res.requests
    assert s["archive_puts"] == 1 and s["archive_refreshes"] == 1
    size = OBJECT if storage_class == "standard" else 128 * 1024
    assert r["archive_storage_dollars"].tolist() == [
        pytest.approx(dollars(size, seconds[0], storage_class), rel=1e-12),
        pytest.approx(dollars(size, seconds[1], storage_class), rel=1e-12), 0.0]
    assert r["archive_objects"].tolist() == [1, 1, 0]


def assert_costs_add_up(res) -> None:
    """Σ per-request cost columns == the summary's, to float rounding; PUTs exactly."""
    s, r = res.summary, res.requests
    for key in COST_KEYS:
        assert r[key].sum() == pytest.approx(s[key], rel=1e-9, abs=1e-12), key
    assert (r["request_cost_dollars"] == r["archive_storage_dollars"] + r["archive_request_dollars"]
            + r["transfer_dollars"]).all()
    assert int(r["archive_objects"].sum()) == s["archive_puts"] + s["archive_refreshes"]


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
@pytest.mark.parametrize("overrides", [
    [],
    ["tiers.archive.storage_class=glacier_ir"],
    ["ttl.heuristic=reuse_prob", "ttl.params={}", "ttl.mode=fixed", "tiers.archive.storage_class=glacier_ir"],
    ["tiers.archive.storage_class=deep_archive", "tiers.archive.request_latency_s=43200",
     "tiers.archive.capacity_blocks=3000"],
    ["tiers.archive.storage_class=standard_ia", "tiers.archive.price_transfer_gb=0.09"],
])
def test_per_request_costs_add_up_to_the_summary(engine: str, overrides: list[str]) -> None:
    res = run(THREE_TIER, SMALL_TRACE, overrides=[*overrides, f"engine={engine}"])
    assert res.summary["archive_puts"] > 0
    assert_costs_add_up(res)


def test_default_scenario_costs_add_up(gen_trace) -> None:
    assert_costs_add_up(run(ROOT / "scenarios" / "default.yaml", gen_trace))


def test_three_tier_on_glacier_ir_pays_the_minimum_duration() -> None:
    """The issue's case: short TTLs on Glacier IR cost ~90 days of storage per object."""
    std = run(THREE_TIER, SMALL_TRACE).summary
    ir = run(THREE_TIER, SMALL_TRACE, overrides=["tiers.archive.storage_class=glacier_ir"]).summary
    objects = ir["archive_puts"] + ir["archive_refreshes"]  # a refresh COPY is a new object
    per_object = ir["block_bytes"] // 2 * 90 * DAY / 1e9 / SECONDS_PER_MONTH * 0.004
    # every object lives far less than 90 days in this 43-minute window
    assert ir["archive_storage_dollars"] == pytest.approx(objects * per_object, rel=1e-9)
    assert ir["archive_storage_dollars"] > max(1.0, 100 * std["archive_storage_dollars"])
    assert std["cost_saved_dollars"] > 0 > ir["cost_saved_dollars"]


def test_standard_class_bills_every_object_its_full_ttl() -> None:
    """No minimums, a fixed 1 h TTL longer than the 43-minute window, no archive capacity: every
    object, alive at the end or not, is billed exactly its TTL, more than the bytes held."""
    over = ["ttl.heuristic=static", "ttl.params={ttl: 3600}", "ttl.mode=fixed"]
    s = run(THREE_TIER, SMALL_TRACE, overrides=over).summary
    assert s["archive_puts"] > 0 and s["archive_refreshes"] == 0 and s["evictions_archive"] == 0
    per_object = s["block_bytes"] // 2 * 3600.0 / 1e9 / SECONDS_PER_MONTH * 0.023
    assert s["archive_storage_dollars"] == pytest.approx(s["archive_puts"] * per_object, rel=1e-9)
    held = s["storage_gb_hours_archive"] * 3600 / SECONDS_PER_MONTH * 0.023  # physical
    assert 0 < held < s["archive_storage_dollars"]


def test_billing_minimums_are_validated_scenario_inputs() -> None:
    sc = load_scenario(THREE_TIER, ["tiers.archive.storage_class=standard_ia"])
    assert sc.tiers.archive.min_storage_s() == 30 * DAY and sc.tiers.archive.billed_bytes(1) == 128 * 1024
    sc = sc.with_overrides(["tiers.archive.min_days=0", "tiers.archive.min_object_bytes=0"])
    assert sc.tiers.archive.min_storage_s() == 0.0 and sc.tiers.archive.billed_bytes(1) == 1
    for override, key in (("tiers.archive.min_days=-1", "tiers.archive.min_days"),
                          ("tiers.archive.min_object_bytes=12XB", "tiers.archive.min_object_bytes"),
                          ("tiers.archive.storage_class=deep_archive", "tiers.archive.request_latency_s")):
        with pytest.raises(ScenarioError, match=key):
            load_scenario(THREE_TIER, [override])


def test_cli_restore_class_without_restore_latency_is_a_one_line_error() -> None:
    proc = simkv_cli("run", str(THREE_TIER), "--set", "tiers.archive.storage_class=glacier_flexible")
    assert proc.returncode == 2 and "tiers.archive.request_latency_s" in proc.stderr
    assert "Traceback" not in proc.stderr
