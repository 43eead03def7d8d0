"""One direction per metric for sweeps, winners and reports; the objective and constraints a
sweep ran with are recorded and reused by its report; a sweep's fingerprint covers the code."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from simkv.metrics.objectives import ALIASES, direction_of
from simkv.report.data import parse_objective
from simkv.report.markdown import write_report
from simkv.sweep import manifest, sweep
from simkv.sweep.winner import Constraint, Objective
from simkv.traces.generator import generate, generator_config
from simkv.traces.schema import write_trace
from tests.conftest import ROOT, simkv_cli

SCENARIO = ROOT / "scenarios" / "default.yaml"


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "t300.parquet"
    write_trace(generate(generator_config(seed=2, n_requests=300)), path)
    return path


@pytest.mark.parametrize(("metric", "direction"), [
    ("token_hit_rate", "max"), ("token_hit_rate_disk", "max"), ("cost_saved_dollars", "max"),
    ("gpu_seconds_saved", "max"), ("tokens_avoided", "max"), ("block_hit_ratio", "max"),
    ("ttft_p99_s", "min"), ("ttft_p99", "min"), ("ttft_nocache_p50_s", "min"),
    ("archive_storage_dollars", "min"), ("transfer_dollars", "min"), ("evictions_gpu", "min"),
    ("storage_mean_bytes_disk", "min"), ("gpu_utilization", "min"), ("archive_puts", "min"),
    ("e2e_p90_s", "min"), ("tpot_p50_s", "min"), ("queue_p90_s", "min"), ("preemptions", "min"),
    ("throughput_requests_per_s", "max"), ("throughput_output_tokens_per_s", "max"),
])
def test_every_metric_has_one_direction(metric: str, direction: str) -> None:
    assert direction_of(metric) == direction
    # the sweep's winner and the report agree on it
    column = ALIASES.get(metric, metric)
    assert Objective(metric).resolve([column]) == (column, direction)
    assert parse_objective(metric).direction == direction


def test_ttft_p99_objective_minimises_in_sweep_and_report(trace_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out),
                     "--grid", "tiers.gpu.capacity_bytes=1GiB,4GiB,16GiB", "--workers", "1",
                     "--objective", "ttft_p99", "--constraint", "token_hit_rate>0.05")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_parquet(out / "sweep.parquet")
    best = df.loc[df["ttft_p99_s"].idxmin(), "cell_id"]
    assert f"winner {best}" in " ".join(proc.stdout.split())
    spec = yaml.safe_load((out / "sweep.yaml").read_text())
    assert spec["objective"] == "ttft_p99_s:min"
    assert spec["constraints"] == ["token_hit_rate>0.05"]
    rep = write_report(out)  # no --objective: the sweep's own
    assert rep.objective is not None
    assert (rep.objective.metric, rep.objective.direction) == ("ttft_p99_s", "min")
    text = (out / "report.md").read_text()
    assert "TTFT p99 (s) (lower is better)" in text and "`token_hit_rate>0.05`" in text
    first_row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert best in first_row


def test_report_ranks_only_cells_that_meet_the_constraints(trace_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    sweep(SCENARIO, trace_path, {"tiers.gpu.capacity_bytes": ["1GiB", "16GiB"]}, out_dir=out, workers=1)
    df = pd.read_parquet(out / "sweep.parquet")
    worst = df.loc[df["token_hit_rate"].idxmin()]
    manifest.record_objective(out, "token_hit_rate", "min", [
        Constraint.parse(f"token_hit_rate>{worst['token_hit_rate'] + 1e-9}")])
    write_report(out)
    text = (out / "report.md").read_text()
    assert "(1 of 2 successful cells satisfy them)" in text
    assert worst["cell_id"] not in text.split("## Top", 1)[1].split("## Charts", 1)[0]


def test_resume_after_a_code_change_reruns_every_cell(trace_path: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    grid = {"tiers.gpu.capacity_bytes": ["1GiB", "4GiB"]}
    sweep(SCENARIO, trace_path, grid, out_dir=tmp_path, workers=1)
    sweep(SCENARIO, trace_path, grid, out_dir=tmp_path, workers=1)
    assert json.loads((tmp_path / "timing.json").read_text())["ran"] == []  # a plain resume
    assert not manifest.code_changed(tmp_path)
    monkeypatch.setattr(manifest, "code_digest", lambda: "another-build")
    assert manifest.code_changed(tmp_path)
    sweep(SCENARIO, trace_path, grid, out_dir=tmp_path, workers=1)  # not refused, not reused
    assert len(json.loads((tmp_path / "timing.json").read_text())["ran"]) == 2


def test_code_digest_follows_the_source() -> None:
    assert len(manifest.code_digest()) == 16
    manifest.code_digest.cache_clear()
    assert manifest.code_digest() == manifest.code_digest()


def test_sweep_report_names_the_overrides_and_warns_when_nothing_saves(tmp_path: Path) -> None:
    pd.DataFrame({"cell_id": ["a", "b"], "ttl.params.base_ttl": [60, 600], "status": ["ok", "ok"],
                  "error": [None, None], "cost_saved_dollars": [-1.5, -2.0],
                  "token_hit_rate": [0.4, 0.5]}).to_parquet(tmp_path / "sweep.parquet")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "scenario": {}, "set": ["tiers.archive.storage_class=standard_ia"],
        "grid": {"ttl.params.base_ttl": [60, 600]}, "objective": "cost_saved_dollars:max"}))
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "`tiers.archive.storage_class=standard_ia`" in text
    assert "No cell saves money" in text
