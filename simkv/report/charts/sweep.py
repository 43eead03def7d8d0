"""The charts of a sweep report: the objective heatmap, hit rate vs capacity, the objective
along one swept parameter, the objective per value of categorical parameters."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from simkv.metrics.format import fmt_dollars, is_fraction, metric_label
from simkv.report.charts.style import (
    Chart,
    axis_values,
    dollar_ticks,
    new_figure,
    others_note,
    param_label,
    param_tick,
    percent_ticks,
    save_png,
    set_title,
    styled,
    value_axis,
)
from simkv.report.charts.tradeoff import ttl_tradeoff
from simkv.report.data import Objective, SweepData


def _is_capacity(key: str) -> bool:
    return key.rsplit(".", 1)[-1].startswith("capacity")


def heatmap_keys(sweep: SweepData) -> tuple[str, str] | None:
    """The two numeric swept keys of the heatmap: ``alpha`` and ``base_ttl`` if swept, else
    the first two numeric keys, capacities last."""

    def rank(k: str) -> int:
        last = k.rsplit(".", 1)[-1]
        return 0 if last in ("alpha", "base_ttl") else (2 if _is_capacity(k) else 1)

    keys = [k for k in sweep.numeric if sweep.numeric[k].nunique() > 1]
    keys = sorted(keys, key=lambda k: (rank(k), sweep.params.index(k)))
    if len(keys) < 2:
        return None
    a, b = keys[0], keys[1]
    # alpha down the side, base_ttl along the bottom, whatever the grid order
    return (a, b) if not (a.endswith("base_ttl") and b.endswith("alpha")) else (b, a)


def _best_over(objective: Objective) -> str:
    return "max" if objective.direction == "max" else "min"


@styled
def objective_heatmap(sweep: SweepData, objective: Objective, out: Path) -> Chart:
    """The objective over two numeric swept parameters, each cell annotated; the best cell
    is outlined. With more parameters swept, each cell shows the best over the rest."""
    name = "heatmap"
    title = f"{_cap(metric_label(objective.metric))} heatmap"
    keys = heatmap_keys(sweep)
    if keys is None:
        return Chart(name, title, note="fewer than two numeric parameters were swept")
    ykey, xkey = keys
    ok = sweep.ok
    if ok.empty or objective.metric not in ok.columns:
        return Chart(name, title, note="no successful cell")
    frame = pd.DataFrame({"y": axis_values(sweep, ykey).loc[ok.index],
                          "x": axis_values(sweep, xkey).loc[ok.index],
                          "v": ok[objective.metric].astype(float)})
    grid = frame.pivot_table(index="y", columns="x", values="v", aggfunc=_best_over(objective))
    allx = sorted(axis_values(sweep, xkey).dropna().unique())
    ally = sorted(axis_values(sweep, ykey).dropna().unique())
    grid = grid.reindex(index=ally, columns=allx)
    values = grid.to_numpy(dtype=float)
    # grid points where some cell failed (or lacks the metric): their value, if any, is
    # the best of the cells that did run, and is starred
    bad = ~sweep.cells.index.isin(ok.index) | sweep.cells[objective.metric].isna()
    failed = (pd.DataFrame({"y": axis_values(sweep, ykey), "x": axis_values(sweep, xkey), "bad": bad})
              .groupby(["y", "x"])["bad"].any().unstack().reindex(index=ally, columns=allx)
              .fillna(False).to_numpy(dtype=bool))
    shown = values * 100 if is_fraction(objective.metric) else values

    ny, nx = values.shape
    fig = new_figure(max(8.0, 0.85 * nx + 3.2), max(5.0, 0.5 * ny + 2.4))
    ax = fig.subplots()
    finite = shown[np.isfinite(shown)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = matplotlib.colormaps["viridis" if objective.direction == "max" else "viridis_r"].copy()
    norm = None
    if vmin < 0 < vmax:
        cmap = matplotlib.colormaps["RdBu"].copy()
        norm = TwoSlopeNorm(vcenter=0.0, vmin=vmin, vmax=vmax)
    cmap.set_bad("#dddddd")
    img = ax.imshow(np.ma.masked_invalid(shown), origin="lower", aspect="auto", cmap=cmap, norm=norm,
                    vmin=None if norm else vmin, vmax=None if norm else vmax)
    cb = fig.colorbar(img, ax=ax, pad=0.02)
    cb.set_label(objective.label)
    if objective.metric.endswith("_dollars"):
        dollar_ticks(cb.ax.yaxis)
    decimals = _percent_decimals(vmax - vmin)
    if is_fraction(objective.metric):
        percent_ticks(cb.ax.yaxis)
    best_value = objective.best(pd.Series(values[np.isfinite(values)])) if finite.size else math.nan
    for i in range(ny):
        for j in range(nx):
            v = values[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=10, color="#555555")
                continue
            rgba = img.cmap(img.norm(shown[i, j]))
            lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
            star = "*" if failed[i, j] else ""
            ax.text(j, i, _cell_text(objective.metric, v, decimals) + star, ha="center", va="center",
                    fontsize=10, color="black" if lum > 0.5 else "white")
            if v == best_value:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    xticks = [param_tick(xkey, v) for v in allx]
    ax.set_xticks(range(nx), xticks, rotation=45 if nx > 8 or max(map(len, xticks)) > 8 else 0,
                  ha="right" if nx > 8 else "center")
    ax.set_yticks(range(ny), [param_tick(ykey, v) for v in ally])
    ax.set_xlabel(param_label(xkey))
    ax.set_ylabel(param_label(ykey))
    ax.grid(False)
    note = others_note(sweep, [xkey, ykey], "best")
    legend = "red outline: best; grey: failed or missing"
    if (failed & np.isfinite(values)).any():
        legend += "; *: some cells of this point failed"
    set_title(ax, f"{_cap(metric_label(objective.metric))} over {ykey} × {xkey}",
           _cap(note.strip(" ()")), legend)
    return Chart(name, title, save_png(fig, out, name), figure=fig)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _percent_decimals(spread_pct: float) -> int:
    """Decimals that tell the cells of a heatmap apart: one more than the spread's first
    significant digit needs (1 to 4)."""
    if not spread_pct > 0:
        return 1
    return int(min(4, max(1, math.ceil(-math.log10(spread_pct)) + 1)))


def _cell_text(metric: str, v: float, decimals: int = 1) -> str:
    if is_fraction(metric):
        return f"{v * 100:.{decimals}f}%"
    if metric.endswith("_dollars"):
        return fmt_dollars(v)
    if metric.endswith("_s"):
        return f"{v:.3g}"
    return f"{v:.3g}"


def capacity_keys(sweep: SweepData) -> tuple[str, str | None] | None:
    """The swept capacity key (GPU first) and the swept eviction-policy key, if any."""
    caps = [k for k in sweep.numeric if _is_capacity(k) and sweep.numeric[k].nunique() > 1]
    if not caps:
        return None
    caps.sort(key=lambda k: (not k.startswith("tiers.gpu."), sweep.params.index(k)))
    policies = [k for k in sweep.categorical if k.endswith(".eviction")]
    policies.sort(key=lambda k: (not k.startswith("tiers.gpu."), sweep.params.index(k)))
    return caps[0], (policies[0] if policies else None)


@styled
def hit_rate_vs_capacity(sweep: SweepData, out: Path, metric: str = "token_hit_rate") -> Chart:
    """Token hit rate against the swept capacity, one line per eviction policy."""
    name, title = "hit_rate_vs_capacity", "Token hit rate vs capacity"
    keys = capacity_keys(sweep)
    if keys is None:
        return Chart(name, title, note="no capacity parameter was swept")
    cap, policy = keys
    ok = sweep.ok
    if ok.empty or metric not in ok.columns:
        return Chart(name, title, note=f"no successful cell with {metric}")
    frame = pd.DataFrame({"x": axis_values(sweep, cap).loc[ok.index],
                          "g": ok[policy].astype(str) if policy else "all",
                          "v": ok[metric].astype(float) * 100})
    fig = new_figure()
    ax = fig.subplots()
    for i, (group, sub) in enumerate(frame.groupby("g", sort=True)):
        line = sub.groupby("x")["v"].max().sort_index()
        ax.plot(line.index, line.to_numpy(), marker="o", ms=5, lw=1.8, color=f"C{i}",
                label=f"{policy} = {group}" if policy else "all cells")
    log = value_axis(ax, cap, frame["x"].dropna().unique())
    ax.set_ylim(bottom=0)
    percent_ticks(ax.yaxis)
    ax.set_xlabel(param_label(cap) + (", log scale" if log else ""))
    ax.set_ylabel(metric_label(metric))
    note = others_note(sweep, [cap] + ([policy] if policy else []), "best")
    set_title(ax, f"{title}{' per eviction policy' if policy else ''}", _cap(note.strip(" ()")))
    if policy:
        ax.legend(loc="lower right")
    return Chart(name, title, save_png(fig, out, name), figure=fig)


@styled
def objective_vs_param(sweep: SweepData, objective: Objective, out: Path) -> Chart:
    """For a sweep over one numeric parameter (other than capacity): the objective along it,
    one line per value of a swept categorical parameter."""
    name = "objective_vs_param"
    title = f"{_cap(metric_label(objective.metric))} vs the swept parameter"
    keys = [k for k in sweep.numeric if sweep.numeric[k].nunique() > 1]
    if len(keys) != 1 or _is_capacity(keys[0]):
        return Chart(name, title, note="applies to a sweep over one numeric parameter")
    key = keys[0]
    ok = sweep.ok
    if ok.empty or objective.metric not in ok.columns:
        return Chart(name, title, note="no successful cell")
    group = next((c for c in sweep.categorical if ok[c].nunique() > 1), None)
    scale = 100 if is_fraction(objective.metric) else 1
    frame = pd.DataFrame({"x": axis_values(sweep, key).loc[ok.index],
                          "g": ok[group].astype(str) if group else "all",
                          "v": ok[objective.metric].astype(float) * scale})
    fig = new_figure()
    ax = fig.subplots()
    for i, (g, sub) in enumerate(frame.groupby("g", sort=True)):
        line = sub.groupby("x")["v"].agg(_best_over(objective)).sort_index()
        ax.plot(line.index, line.to_numpy(), marker="o", ms=5, lw=1.8, color=f"C{i}",
                label=f"{group} = {g}" if group else "all cells")
    if is_fraction(objective.metric):
        percent_ticks(ax.yaxis)
    elif objective.metric.endswith("_dollars"):
        dollar_ticks(ax.yaxis)
    log = value_axis(ax, key, frame["x"].dropna().unique())
    ax.set_xlabel(param_label(key) + (", log scale" if log else ""))
    ax.set_ylabel(objective.label)
    note = others_note(sweep, [key] + ([group] if group else []), "best")
    set_title(ax, f"{_cap(metric_label(objective.metric))} vs {key}", _cap(note.strip(" ()")))
    if group:
        ax.legend(loc="best")
    return Chart(name, f"{_cap(metric_label(objective.metric))} vs {key}", save_png(fig, out, name),
                 figure=fig)


@styled
def objective_by_value(sweep: SweepData, objective: Objective, out: Path) -> Chart:
    """For a sweep over categorical parameters only (``tiers.gpu.eviction=lru,fifo``): one bar
    per value of each, the best cell over the other parameters, the best bar outlined."""
    name = "objective_by_value"
    title = f"{_cap(metric_label(objective.metric))} per swept value"
    keys = [k for k in sweep.categorical if sweep.cells[k].nunique() > 1]
    if not keys or any(sweep.numeric[k].nunique() > 1 for k in sweep.numeric):
        return Chart(name, title, note="applies to a sweep over categorical parameters only")
    ok = sweep.ok
    if ok.empty or objective.metric not in ok.columns:
        return Chart(name, title, note="no successful cell")
    scale = 100 if is_fraction(objective.metric) else 1
    fig = new_figure(9.0, 1.0 + 4.0 * len(keys))
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        values = (ok[objective.metric].astype(float) * scale).groupby(ok[key].astype(str), sort=True)
        best = values.agg(_best_over(objective))
        bars = ax.bar(range(len(best)), best.to_numpy(), width=0.6,
                      color=[f"C{i}" for i in range(len(best))])
        decimals = _percent_decimals(float(best.max() - best.min()))
        ax.bar_label(bars, [_cell_text(objective.metric, v / scale, decimals) for v in best], fontsize=10)
        top = int(np.argmax(best.to_numpy()) if objective.direction == "max" else np.argmin(best.to_numpy()))
        bars[top].set_edgecolor("red")
        bars[top].set_linewidth(2.5)
        ax.set_xticks(range(len(best)), list(best.index))
        ax.set_xlabel(key)
        ax.set_ylabel(objective.label)
        if is_fraction(objective.metric):
            percent_ticks(ax.yaxis)
        elif objective.metric.endswith("_dollars"):
            dollar_ticks(ax.yaxis)
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(axis="x", visible=False)
        note = others_note(sweep, [key], "best")
        set_title(ax, f"{_cap(metric_label(objective.metric))} per {key}",
                  _cap(note.strip(" ()")) + ("; " if note else "") + "red outline: best")
    return Chart(name, title, save_png(fig, out, name), figure=fig)


def sweep_charts(sweep: SweepData, objective: Objective, out: Path) -> list[Chart]:
    """Every chart of a sweep report, in report order."""
    return [objective_heatmap(sweep, objective, out), ttl_tradeoff(sweep, out),
            hit_rate_vs_capacity(sweep, out), objective_vs_param(sweep, objective, out),
            objective_by_value(sweep, objective, out)]
