"""The tier specs: one ordered list with a kind each, and the list form of a scenario's ``tiers``
(the mapping form keeps working, and both build the same scenario)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.scenario import Scenario, load_scenario, scenario_from_dict
from simkv.core.scenario.tiers import (
    HELD_BILLED,
    HELD_BILLS,
    TIER_KINDS,
    TTL_SCOPES,
    ArchiveTier,
    CPUTier,
    DiskTier,
    GPUTier,
    RemoteTier,
    Tiers,
    TTLScope,
)
from simkv.core.schema import REQUEST_COLUMNS
from simkv.core.tiers import TIER_NAMES
from simkv.model.engines import select_engine
from simkv.report.console import summary_table
from tests.conftest import SCENARIOS, SMALL_TRACE, assert_user_error, make_trace, simkv_cli
from tests.simulator_helpers import scenario as sim_scenario
from tests.test_console import render

LISTED = [{"kind": "device", "capacity_bytes": "8GiB", "eviction": "lru"},
          {"kind": "disk", "capacity_bytes": "32GiB", "write_policy": "write_through", "eviction": "lru"},
          {"kind": "archive", "interval_s": 30, "codec": "zstd", "compression_ratio": 2.0,
           "storage_class": "standard", "request_latency_s": 0.03}]


def _write(tmp_path: Path, tiers: Any, name: str = "listed.yaml") -> Path:
    doc = yaml.safe_load((SCENARIOS / "three-tier-adaptive.yaml").read_text())
    doc["tiers"] = tiers
    doc["trace"] = str(SMALL_TRACE)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_every_tier_spec_has_its_kind_in_tier_order() -> None:
    specs = Tiers().specs()
    assert [type(s) for s in specs] == [GPUTier, CPUTier, DiskTier, RemoteTier, ArchiveTier]
    assert TIER_KINDS == tuple(s.kind for s in specs) == ("device", "host", "disk", "remote", "archive")
    assert len(TIER_KINDS) == len(TIER_NAMES)
    # in use: the device always, the others when enabled (the defaults: disk only)
    assert Tiers().present() == (True, False, True, False, False)
    on = Tiers(cpu=CPUTier(enabled=True), disk=DiskTier(enabled=False))
    assert on.present() == (True, True, False, False, False)


def test_the_list_form_builds_the_scenario_the_mapping_builds(tmp_path: Path) -> None:
    mapping = load_scenario(SCENARIOS / "three-tier-adaptive.yaml")
    listed = load_scenario(_write(tmp_path, LISTED))
    assert listed.tiers == mapping.tiers
    assert listed.to_dict()["tiers"] == mapping.to_dict()["tiers"]    # written back as the mapping
    got, want = run(listed, SMALL_TRACE).summary, run(mapping, SMALL_TRACE).summary
    assert got == want and got["archive_puts"] > 0


def test_a_tier_not_listed_is_off_and_a_listed_one_on_unless_it_says_so() -> None:
    sc = scenario_from_dict({"tiers": [{"kind": "host", "capacity_blocks": 10}, {"kind": "remote"}]})
    assert sc.tiers.remote == RemoteTier(enabled=True)
    assert sc.tiers.cpu == CPUTier(enabled=True, capacity_blocks=10)
    assert sc.tiers.gpu == GPUTier()                        # the device keeps its defaults
    assert not sc.tiers.disk.enabled and not sc.tiers.archive.enabled
    off = scenario_from_dict({"tiers": [{"kind": "device"}, {"kind": "disk", "enabled": False}]})
    assert off.tiers.present() == (True, False, False, False, False)


def test_set_overrides_address_a_listed_tier_by_name(tmp_path: Path) -> None:
    sc = load_scenario(_write(tmp_path, LISTED),
                       ["tiers.disk.capacity_blocks=7", "tiers.disk.capacity_bytes=null"])
    assert sc.tiers.disk.capacity_blocks == 7 and sc.tiers.disk.enabled


@pytest.mark.parametrize(("tiers", "message"), [
    ([{"kind": "nvme"}], "tiers[0].kind: 'nvme' is not a tier kind (expected one of "
                         "['device', 'host', 'disk', 'remote', 'archive'])"),
    ([{"kind": "device"}, {"capacity_blocks": 3}], "tiers[1].kind: missing (expected one of"),
    ([{"kind": "disk"}, {"kind": "host"}], "tiers[1].kind: 'host' after 'disk': list the tiers fastest "
                                           "first (device, host, disk, remote, archive)"),
    ([{"kind": "disk"}, {"kind": "disk"}], "tiers[1].kind: 'disk' after 'disk' again"),
    (["disk"], "tiers[0]: a tier is a mapping with a kind"),
    ([{"kind": "disk", "speed": 3}], "tiers.disk.speed: unknown key"),
])
def test_a_bad_tier_list_is_an_error_naming_the_entry(tmp_path: Path, tiers: Any, message: str) -> None:
    path = _write(tmp_path, tiers)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    with pytest.raises(ScenarioError, match=r"^tiers"):
        scenario_from_dict({"tiers": tiers})


def test_the_cli_reports_a_bad_tier_list_without_a_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"kind": "device"}, {"kind": "ssd"}])
    assert_user_error(simkv_cli("run", str(path)), str(path), "tiers[1].kind: 'ssd' is not a tier kind")


def test_the_default_scenario_is_unchanged() -> None:
    assert Scenario().tiers == scenario_from_dict({}).tiers == scenario_from_dict({"tiers": {}}).tiers


def test_ttl_scope_takes_the_tiers_whose_spec_lets_the_heuristic_govern_them() -> None:
    assert get_args(TTLScope) == TTL_SCOPES == ("remote", "archive", "all")
    with pytest.raises(ScenarioError, match=r"ttl\.scope: 'remote' but tiers\.remote\.enabled is false"):
        scenario_from_dict({"ttl": {"heuristic": "static", "scope": "remote"}})


def test_a_tier_billed_for_what_it_holds_gets_its_column_summary_key_and_report_row() -> None:
    assert HELD_BILLED == ("remote",) and HELD_BILLS == {"remote": "DRAM"}
    assert "remote_storage_dollars" in REQUEST_COLUMNS
    res = run(sim_scenario(remote={"enabled": True, "ttl_s": 10}), make_trace([[0], [0]]))
    billed = res.requests["remote_storage_dollars"]
    assert billed.tolist() == pytest.approx([4096 / 1e9 * 10 / 3600 * 0.0156, 0.0])  # 10 s of one key
    assert res.summary["remote_storage_dollars"] == pytest.approx(float(billed.sum()))
    assert "remote $ (DRAM)" in "\n".join(render(summary_table(res.summary), width=120))


def test_the_simulator_takes_a_tiers_ttl_and_rewrites_from_its_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference cache reads a tier's behaviour from its spec's hooks, not its name: give the
    disk a key TTL and rewrites and it expires and rewrites as the remote tier does."""
    trace = make_trace([[0], [1], [0], [1]], arrivals=[0, 100, 200, 400])
    sc = sim_scenario(gpu={"capacity_blocks": 1}, disk={"enabled": True})
    before = run(sc, trace).summary
    assert (before["expirations_disk"], before["disk_writes"]) == (0, 2)
    monkeypatch.setattr(DiskTier, "key_ttl_s", lambda self: 250.0)
    monkeypatch.setattr(DiskTier, "rewrites", True)
    res = run(sc, trace)
    # block 0 written at 0 expires at 250 (after its hit at 200), block 1 written at 100 at 350:
    # r3 misses it and writes it again
    assert res.requests["disk_hit_tokens"].tolist() == [0, 0, 4, 0]
    assert (res.summary["expirations_disk"], res.summary["disk_writes"]) == (2, 3)
    name, skipped = select_engine(replace(sc, engine="auto"))
    assert name == "simpy" and "tiers.disk has its own key TTL" in skipped["compiled"]
