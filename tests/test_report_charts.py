"""Charts that read right and a report.md that shows what the console shows: tick decimals that
follow the spread, the overload flags, one bar per categorical value, dollar ticks read exactly,
TTLs as human durations, log axes for wide ranges, the fidelity scatter's ticks and the curve
charts' axes."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from simkv.report.markdown import write_report


def test_tick_decimals_follow_the_spread() -> None:
    from simkv.report.charts import tick_decimals

    assert tick_decimals([37.40, 37.42, 37.44, 37.46]) == 2
    assert tick_decimals([37.25, 37.5, 37.75]) == 2
    assert tick_decimals([0.0, 20.0, 40.0]) == 0
    assert tick_decimals([37.3, 37.4, 37.5]) == 1
    labels = [f"{v:.{tick_decimals([37.40, 37.41, 37.42])}f}%" for v in (37.40, 37.41, 37.42)]
    assert len(set(labels)) == 3


# -- issue 17 item 10: what the console shows, report.md shows; charts that read right -----------


def write_sweep(out: Path, grid: dict[str, list[Any]], metrics: dict[str, list[Any]]) -> Path:
    """A sweep directory in the sweep's contract with the given metric values per cell (grid
    order), for charts whose input must be exact."""
    combos = list(itertools.product(*grid.values()))
    rows = pd.DataFrame({"cell_id": [f"cell-{i:03d}" for i in range(len(combos))],
                         **{k: [c[j] for c in combos] for j, k in enumerate(grid)},
                         "status": "ok", "error": "", **metrics})
    out.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(out / "sweep.parquet", index=False)
    (out / "sweep.yaml").write_text(yaml.safe_dump({"scenario": "base.yaml", "grid": grid}))
    return out


def test_sweep_report_md_carries_the_consoles_overload_flags(tmp_path: Path) -> None:
    from simkv.metrics.format import OVERLOAD_CAPTION

    d = write_sweep(tmp_path / "s", {"hardware.gpus": [1, 2, 4]},
                    {"token_hit_rate": [0.5, 0.5, 0.5], "overload": ["gpu,disk", "disk", ""]})
    md = (write_report(d).path).read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| rank"))
    assert header.rstrip(" |").endswith("warn")
    rows = {ln.split(" | ")[1]: ln for ln in md.splitlines() if re.match(r"\| \d+ \| cell-", ln)}
    assert rows["cell-000"].endswith("| gpu, disk |") and rows["cell-001"].endswith("| disk |")
    assert rows["cell-002"].endswith("|  |")
    assert OVERLOAD_CAPTION in md
    # no overloaded cell: no column, no caption
    calm = write_sweep(tmp_path / "calm", {"hardware.gpus": [1, 2]},
                       {"token_hit_rate": [0.5, 0.6], "overload": ["", ""]})
    md = write_report(calm).path.read_text()
    assert "warn" not in md and OVERLOAD_CAPTION not in md


def test_categorical_sweep_draws_one_bar_per_value(tmp_path: Path) -> None:
    d = write_sweep(tmp_path / "s", {"tiers.gpu.eviction": ["lru", "fifo", "lfu"]},
                    {"token_hit_rate": [0.40, 0.35, 0.42]})
    rep = write_report(d)
    chart = next(c for c in rep.charts if c.name == "objective_by_value")
    assert chart.file == "objective_by_value.png" and (d / chart.file).exists()
    assert f"]({chart.file})" in rep.path.read_text()
    (ax,) = chart.figure.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fifo", "lfu", "lru"]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([35.0, 42.0, 40.0])
    assert ax.patches[1].get_linewidth() > ax.patches[0].get_linewidth()  # the best is outlined


def labels(axis: Any) -> list[str]:
    """The major tick labels of a drawn axis, only those inside its view."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_majorticklocs() if lo <= t <= hi]
    return axis.get_major_formatter().format_ticks(ticks)


def assert_exact_dollars(axis: Any) -> list[str]:
    """Every visible tick label of a drawn dollar axis is distinct and reads its tick exactly."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_majorticklocs() if lo <= t <= hi]
    shown = labels(axis)
    assert len(set(shown)) == len(shown) >= 3, shown
    read = [float(s.replace("$", "").replace(",", "")) for s in shown]
    assert read == pytest.approx(ticks, abs=1e-9), shown
    return shown


def test_dollar_ticks_in_small_steps_read_exactly(tmp_path: Path) -> None:
    """Dollars up to $0.2 (the TTL trade-off) or from $1 to $1.2 (a heatmap's colour bar): ticks
    at 0.025 steps, each label exact (not $0.03, $0.05, $0.08)."""
    ttl = [60, 600, 3600, 14400, 86400]
    d = write_sweep(tmp_path / "t", {"ttl.params.base_ttl": ttl},
                    {"token_hit_rate": [0.5] * 5, "token_hit_rate_archive": [0.01, 0.02, 0.03, 0.04, 0.05],
                     "cost_saved_dollars": [0.0, 0.1, 0.2, 0.14, 0.04],
                     "archive_storage_dollars": [0.0, 0.02, 0.06, 0.1, 0.2],
                     "archive_request_dollars": [0.01] * 5, "transfer_dollars": [0.0] * 5})
    chart = next(c for c in write_report(d, objective="cost_saved").charts if c.name == "ttl_tradeoff")
    chart.figure.canvas.draw()
    for ax in chart.figure.axes[1:]:
        assert "$0.025" in assert_exact_dollars(ax.yaxis)
    d = write_sweep(tmp_path / "h", {"ttl.params.alpha": [0.0, 1.0], "ttl.params.base_ttl": [60, 600, 3600]},
                    {"token_hit_rate": [0.5] * 6, "cost_saved_dollars": [1.0, 1.06, 1.1, 1.12, 1.16, 1.2]})
    heat = next(c for c in write_report(d, objective="cost_saved").charts if c.name == "heatmap")
    heat.figure.canvas.draw()
    assert "$1.025" in assert_exact_dollars(heat.figure.axes[1].yaxis)  # the colour bar


def test_ttl_axes_show_human_durations(tmp_path: Path) -> None:
    grid = {"ttl.params.alpha": [0.0, 1.0], "ttl.params.base_ttl": [60, 3600, 14400]}
    d = write_sweep(tmp_path / "s", grid, {"token_hit_rate": [0.1, 0.2, 0.3, 0.2, 0.3, 0.4]})
    heat = next(c for c in write_report(d).charts if c.name == "heatmap")
    ax = heat.figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 min", "1 h", "4 h"]
    assert ax.get_xlabel() == "ttl.params.base_ttl"  # no "(s)" beside "4 h"
    # one TTL swept: the line chart's axis reads the same
    one = write_sweep(tmp_path / "one", {"ttl.params.base_ttl": [60, 3600, 14400]},
                      {"token_hit_rate": [0.1, 0.2, 0.3]})
    line = next(c for c in write_report(one).charts if c.name == "objective_vs_param")
    ax = line.figure.axes[0]
    line.figure.canvas.draw()
    assert labels(ax.xaxis) == ["1 min", "1 h", "4 h"]
    assert ax.get_xscale() == "log" and "(s)" not in ax.get_xlabel()


def test_wide_capacity_sweep_has_a_log_axis(tmp_path: Path) -> None:
    d = write_sweep(tmp_path / "s", {"tiers.gpu.capacity_blocks": [20, 80, 320]},
                    {"token_hit_rate": [0.1, 0.3, 0.5]})
    chart = next(c for c in write_report(d).charts if c.name == "hit_rate_vs_capacity")
    ax = chart.figure.axes[0]
    chart.figure.canvas.draw()
    assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
    assert labels(ax.xaxis) == ["20", "80", "320"]
    narrow = write_sweep(tmp_path / "n", {"tiers.gpu.capacity_blocks": [100, 200, 400]},
                         {"token_hit_rate": [0.1, 0.3, 0.5]})
    chart = next(c for c in write_report(narrow).charts if c.name == "hit_rate_vs_capacity")
    assert chart.figure.axes[0].get_xscale() == "linear"


def test_fidelity_scatter_has_three_labelled_ticks_on_a_narrow_range(tmp_path: Path) -> None:
    from simkv.fidelity.report import ttft_scatter

    rng = __import__("numpy").random.default_rng(0)
    meas = rng.uniform(0.08, 0.12, 50)
    frame = pd.DataFrame({"sim_ttft_s": meas * 1.02, "meas_ttft_s": meas})
    chart = ttft_scatter(frame, tmp_path)
    ax = chart.figure.axes[0]
    chart.figure.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        shown = [s for s in labels(axis) if s]
        assert len(shown) >= 3 and len(set(shown)) == len(shown), shown


def test_curve_charts_share_the_duration_and_log_axes() -> None:
    """`simkv curve ttl`: TTLs in human units on round durations, no "(s)"; `simkv curve
    capacity`: a log axis from a ratio of 10, as the sweep charts."""
    from simkv.report.curves import curve_figure

    ttl = pd.DataFrame({"ttl_s": [1.0, 10.0, 60.0, 600.0, 3600.0, 14400.0],
                        "token_hit_rate": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    fig = curve_figure(ttl, "ttl_s", "ttl")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_xscale() == "log" and "(s)" not in ax.get_xlabel() and "(s," not in ax.get_xlabel()
    assert labels(ax.xaxis) == ["1 s", "10 s", "1 min", "10 min", "1 h", "4 h"]
    cap = pd.DataFrame({"capacity_blocks": [100, 400, 1500], "token_hit_rate": [0.1, 0.3, 0.5]})
    assert curve_figure(cap, "capacity_blocks", "cap").axes[0].get_xscale() == "log"
