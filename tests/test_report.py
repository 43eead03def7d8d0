"""``simkv report``: charts and report.md from run and sweep directories, clean errors for what
is not one, the timeline's bins, and the hint for a configured tier that serves nothing."""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from simkv.api import run
from simkv.report.data import load_sweep, parse_objective, swept_params
from simkv.report.markdown import top_cells, write_report
from simkv.traces.schema import Trace
from tests.conftest import ROOT, simkv_cli

THREE_TIER = ROOT / "scenarios" / "three-tier-adaptive.yaml"
PARITY = ROOT / "scenarios" / "parity-lru.yaml"
RUN_CHARTS = ("occupancy_hit_rate.png", "ttft_cdf.png", "cost_breakdown.png", "hit_rate_by_class_tier.png")


def png_size(path: Path) -> tuple[int, int]:
    """Width and height in pixels from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def make_sweep_dir(out: Path, scenario: Path, trace: Trace, grid: dict[str, list[Any]],
                   fail: frozenset[int] = frozenset()) -> Path:
    """A sweep directory in the sweep's contract, from plain ``run()`` calls: cells whose
    index is in ``fail`` are recorded as errors without running."""
    rows = []
    for i, combo in enumerate(itertools.product(*grid.values())):
        row: dict[str, Any] = {"cell_id": f"cell-{i:03d}", **dict(zip(grid, combo, strict=True))}
        if i in fail:
            row.update(status="error", error="ScenarioError: made to fail by the test")
        else:
            sets = [f"{k}={v}" for k, v in zip(grid, combo, strict=True)]
            summary = run(scenario, trace, overrides=sets).summary
            row.update(status="ok", error="")
            row.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "sweep.parquet", index=False)
    (out / "sweep.yaml").write_text(yaml.safe_dump({"scenario": str(scenario), "grid": grid}))
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, gen_trace: Trace) -> Path:
    """A run with every tier, an archive and costs."""
    return run(THREE_TIER, gen_trace).write(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def ttl_sweep(tmp_path_factory: pytest.TempPathFactory, gen_trace: Trace) -> Path:
    """alpha x base_ttl x GPU capacity (as sizes), one failed cell."""
    grid = {"ttl.params.alpha": [0.0, 2.0], "ttl.params.base_ttl": [60, 600],
            "tiers.gpu.capacity_bytes": ["2GiB", "8GiB"]}
    return make_sweep_dir(tmp_path_factory.mktemp("sweep"), THREE_TIER, gen_trace, grid, fail=frozenset({7}))


def test_run_report_writes_every_chart_and_embeds_them(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = simkv_cli("report", str(run_dir), "-o", str(out))
    assert res.returncode == 0, res.stderr
    md = (out / "report.md").read_text()
    for name in RUN_CHARTS:
        assert (out / name).exists(), name
        assert f"]({name})" in md, f"report.md does not embed {name}"
        width, height = png_size(out / name)
        assert width >= 8 * 120 and height >= 4.5 * 120, (name, width, height)
    assert "## Headline metrics" in md
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['token_hit_rate']:.2%}" in md
    assert "cost saved" in md


def test_run_report_skips_charts_that_do_not_apply(gen_trace: Trace, tmp_path: Path) -> None:
    """Zero service time: every TTFT and every dollar is 0, so those charts are skipped."""
    d = run(PARITY, gen_trace).write(tmp_path / "parity")
    rep = write_report(d)
    drawn = {c.file for c in rep.charts if c.file}
    assert drawn == {"occupancy_hit_rate.png", "hit_rate_by_class_tier.png"}
    assert not (d / "ttft_cdf.png").exists() and not (d / "cost_breakdown.png").exists()
    md = (d / "report.md").read_text()
    assert "Not drawn" in md and "zero service time" in md


def test_a_replay_report_shows_what_was_not_measured_as_na(run_dir: Path, tmp_path: Path) -> None:
    """A replay's summary (``simkv replay``) has hits and TTFTs but no simulated duration, costs
    or occupancy: its report says n/a for those, never $0 or 0 s, and keeps the CPU tier's hits."""
    import shutil

    d = tmp_path / "replay"
    shutil.copytree(run_dir, d)
    (d / "timeline.parquet").unlink()
    full = json.loads((run_dir / "summary.json").read_text())
    keep = ("scenario", "trace", "trace_source", "trace_sha256", "scenario_sha256", "simkv_version",
            "requests", "block_size", "hit_tokens", "token_hit_rate", "token_hit_rate_by_class",
            "block_hit_ratio", "request_full_hit_ratio", "request_any_hit_ratio",
            *(f"token_hit_rate_{t}" for t in ("gpu", "cpu", "disk", "archive")),
            *(f"ttft_p{p}_s" for p in (50, 90, 99)))
    s = {k: full[k] for k in keep if k in full} | {"engine": "replay", "requests_failed": 0,
                                                    "token_hit_rate_cpu": 0.125}
    (d / "summary.json").write_text(json.dumps(s))
    rep = write_report(d)
    md = (d / "report.md").read_text()
    assert md.startswith("# simkv replay report")
    assert "measured by a replay" in md and "0 s simulated" not in md
    assert "| cost saved | n/a |" in md and "$0" not in md and "| GPU time saved |" not in md
    assert "cpu 12.50%" in md
    assert not (d / "cost_breakdown.png").exists()
    assert any(c.name == "cost_breakdown" and "replay" in c.note for c in rep.charts)


def test_sweep_report_heatmap_capacity_chart_and_top_cells(ttl_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = simkv_cli("report", str(ttl_sweep), "-o", str(out), "--objective", "cost_saved", "--top", "3")
    assert res.returncode == 0, res.stderr
    assert (out / "heatmap.png").exists() and (out / "hit_rate_vs_capacity.png").exists()
    md = (out / "report.md").read_text()
    assert "](heatmap.png)" in md and "](hit_rate_vs_capacity.png)" in md
    assert "## Top 3 cells by cost saved ($)" in md
    cells = pd.read_parquet(ttl_sweep / "sweep.parquet")
    ok = cells[cells["status"] == "ok"].sort_values("cost_saved_dollars", ascending=False)
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \| cell-", line)]
    assert [r.split(" | ")[1] for r in rows] == list(ok["cell_id"][:3])
    assert "## Failed cells" in md and "cell-007" in md and "made to fail" in md


def test_capacity_chart_has_one_line_per_policy(gen_trace: Trace, tmp_path: Path) -> None:
    grid = {"tiers.gpu.capacity_blocks": [20, 80, 320], "tiers.gpu.eviction": ["lru", "fifo"]}
    d = make_sweep_dir(tmp_path / "cap", PARITY, gen_trace, grid)
    rep = write_report(d, tmp_path / "out")
    files = {c.name: c for c in rep.charts}
    assert files["hit_rate_vs_capacity"].file == "hit_rate_vs_capacity.png"
    assert files["heatmap"].skipped  # one numeric key: no heatmap, and it says so
    assert "fewer than two numeric" in (tmp_path / "out" / "report.md").read_text()
    best = top_cells(load_sweep(d), parse_objective("token_hit_rate"), 1)
    assert int(best["tiers.gpu.capacity_blocks"].iloc[0]) == 320


def test_swept_params_from_grid_else_dotted_columns() -> None:
    cells = pd.DataFrame({"cell_id": ["a"], "ttl.params.alpha": [1.0], "tiers.gpu.eviction": ["lru"],
                          "token_hit_rate_by_class.chat": [0.5], "token_hit_rate": [0.5]})
    assert swept_params(cells, {"grid": {"tiers.gpu.eviction": ["lru"]}}) == ["tiers.gpu.eviction"]
    assert swept_params(cells, {}) == ["ttl.params.alpha", "tiers.gpu.eviction"]


def test_objective_aliases() -> None:
    assert parse_objective("cost_saved") == parse_objective("cost_saved_dollars:max")
    assert parse_objective("ttft_p90").metric == "ttft_p90_s"
    assert parse_objective("ttft_p90").direction == "min"
    assert parse_objective("token_hit_rate").direction == "max"


def test_bad_directory_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    res = simkv_cli("report", str(tmp_path))
    assert res.returncode == 2
    assert str(tmp_path) in res.stderr
    assert "summary.json" in res.stderr and "sweep.parquet" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_directory_is_a_clean_error(tmp_path: Path) -> None:
    res = simkv_cli("report", str(tmp_path / "nope"))
    assert res.returncode == 2 and "no such directory" in res.stderr and "Traceback" not in res.stderr


def test_timeline_bins_follow_the_trace_duration() -> None:
    from simkv.metrics.timeline import ROUND_BINS_S, choose_bin_s

    assert choose_bin_s(45 * 3600) == 600  # 270 bins instead of 2,700 at 60 s
    assert choose_bin_s(59 * 60) == 15
    for span in (150.0, 3000.0, 2e4, 45 * 3600.0, 9 * 86400.0):
        w = choose_bin_s(span)
        assert w in ROUND_BINS_S and 100 <= math.ceil(span / w) <= 300
    assert choose_bin_s(10.0) == 1.0


def test_by_class_chart_is_skipped_for_a_classless_trace(tmp_path: Path) -> None:
    from tests.conftest import make_trace

    trace = make_trace([[1, 2], [1, 2, 3], [1, 2]], classes=["chat"] * 3)
    d = run(PARITY, trace).write(tmp_path / "run")
    rep = write_report(d)
    chart = next(c for c in rep.charts if c.name == "hit_rate_by_class_tier")
    assert chart.skipped and not (d / "hit_rate_by_class_tier.png").exists()
    assert "every request is of class 'chat'" in chart.note
    assert chart.note in rep.path.read_text()


# -- issue 17 item 10: a configured tier that serves nothing says why ------------------------------

SMALL = ROOT / "traces" / "small.parquet"


def test_an_archive_slower_than_recomputing_says_so_with_its_numbers(tmp_path: Path) -> None:
    """if_faster with a 5 s archive request latency: 0 GETs; the hint compares the archive's
    load time per block with the prefill time per block, both from the time model."""
    from simkv.metrics.format import fmt_seconds
    from simkv.report.tiers import idle_tier_hints, time_model

    hints = {}
    for latency in (5, 10):
        res = run(THREE_TIER, SMALL, overrides=[f"tiers.archive.request_latency_s={latency}"])
        s = res.summary
        assert s["archive_puts"] > 0 and s["archive_gets"] == 0 and s["token_hit_rate_archive"] == 0
        (hint,) = idle_tier_hints(s, res.scenario)
        blocks = int(s["input_tokens"] / s["requests"] // s["block_size"])
        model = time_model(res.scenario, s["block_size"])
        load, prefill = model.load_s("archive", blocks) / blocks, model.prefill_s(blocks) / blocks
        assert load > prefill
        assert f"{s['archive_puts']:,} PUTs (0 GETs)" in hint and "if_faster" in hint
        assert f"takes {fmt_seconds(load)} per block" in hint
        assert f"recomputing takes {fmt_seconds(prefill)} per block" in hint
        hints[latency] = hint
    assert hints[5] != hints[10]  # the numbers, not a fixed sentence
    d = res.write(tmp_path / "run")
    md = write_report(d).path.read_text()
    assert "A configured tier served nothing" in md and "recomputing takes" in md


def test_an_archive_whose_ttl_expires_everything_says_so() -> None:
    from simkv.report.tiers import idle_tier_hints

    res = run(THREE_TIER, SMALL, overrides=["load_policy=always", "ttl.heuristic=static",
                                            "ttl.params={ttl: 0.001}", "ttl.mode=fixed"])
    s = res.summary
    (hint,) = idle_tier_hints(s, res.scenario)
    assert f"{s['expirations_archive']:,} of its blocks expired" in hint and "TTL" in hint


def test_tiers_that_serve_hits_get_no_hint(tmp_path: Path) -> None:
    from simkv.report.tiers import idle_tier_hints

    res = run(THREE_TIER, SMALL)
    s = res.summary
    assert s["token_hit_rate_disk"] > 0 and s["token_hit_rate_archive"] > 0
    assert idle_tier_hints(s, res.scenario) == []
    assert "A configured tier served nothing" not in write_report(res.write(tmp_path / "r")).path.read_text()
