"""The worked TTL study of the README: on the canned long-horizon trace the archive TTL is a
real trade-off (archive hits and archive dollars rise with it, cost saved peaks inside the
grid), and a storage class with a 30-day minimum makes every archive upload a loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from simkv.api import run

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "long-horizon-archive.yaml"
TRACE = ROOT / "traces" / "long-horizon.parquet"
TTLS = (60, 600, 3600, 14400, 86400)


@pytest.fixture(scope="module")
def cells() -> dict[int, dict]:
    return {ttl: run(SCENARIO, TRACE, overrides=["ttl.params.alpha=0",
                                                 f"ttl.params.base_ttl={ttl}"]).summary
            for ttl in TTLS}


def test_archive_hits_and_dollars_rise_with_the_ttl(cells: dict[int, dict]) -> None:
    hits = [cells[t]["token_hit_rate_archive"] for t in TTLS]
    storage = [cells[t]["archive_storage_dollars"] for t in TTLS]
    assert hits == sorted(hits) and hits[-1] > 2 * hits[0]
    assert storage == sorted(storage) and storage[-1] > 10 * storage[0]
    assert max(hits) > 0.01  # the archive serves more than 1% of tokens in the best cells


def test_cost_saved_has_an_interior_optimum(cells: dict[int, dict]) -> None:
    saved = {t: cells[t]["cost_saved_dollars"] for t in TTLS}
    best = max(saved, key=saved.__getitem__)
    assert best not in (TTLS[0], TTLS[-1])
    assert (max(saved.values()) - min(saved.values())) / max(saved.values()) > 0.10


def test_the_gpu_keeps_up_in_every_cell(cells: dict[int, dict]) -> None:
    assert all(0 < c["gpu_utilization"] < 1 and c["overload"] == "" for c in cells.values())


def test_a_30_day_minimum_makes_the_archive_a_loss() -> None:
    s = run(SCENARIO, TRACE, overrides=["ttl.params.alpha=0", "ttl.params.base_ttl=14400",
                                        "tiers.archive.storage_class=standard_ia"]).summary
    assert s["archive_storage_dollars"] > s["gpu_dollars_saved"]
    assert s["cost_saved_dollars"] < 0
