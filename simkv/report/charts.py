"""PNG charts for ``simkv report``: matplotlib on the Agg canvas, no pyplot global state.

Every chart is titled, has labelled axes with units and a legend where there is more than
one series, and is drawn at 9x5.5 inches, 130 dpi, 10-12 pt fonts so it reads at 100%.
A chart that does not apply (no archive, zero service time, nothing swept) is skipped
with the reason, never drawn empty.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from simkv.report.data import (
    Objective,
    RunData,
    SweepData,
    fmt_dollars,
    fmt_param,
    fmt_pct,
    fmt_seconds,
    is_fraction,
    metric_label,
)

DPI = 130
RC: dict[str, Any] = {
    "text.parse_math": False,  # dollar amounts in titles and labels are not TeX
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "figure.titlesize": 13,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
TIERS = ("gpu", "disk", "archive")
TIER_LABEL = {"gpu": "GPU (HBM)", "disk": "disk (NVMe)", "archive": "archive (S3)"}
TIER_COLOR = {"gpu": "#4C72B0", "disk": "#DD8452", "archive": "#55A868"}
GIB = 2**30


@dataclass
class Chart:
    """One chart of a report: its file (relative to the report), or why it was skipped."""

    name: str
    title: str
    file: str | None = None
    note: str = ""

    @property
    def skipped(self) -> bool:
        return self.file is None


def _styled(fn: Callable[..., Chart]) -> Callable[..., Chart]:
    """Run a chart function under the report's rc settings."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Chart:
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


def _figure(width: float = 9.0, height: float = 5.5) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=DPI)
    return f"{name}.png"


def _time_scale(max_s: float) -> tuple[float, str]:
    """Divisor and unit for a time axis spanning ``max_s`` seconds."""
    if max_s <= 300:
        return 1.0, "s"
    if max_s <= 5 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _title(ax: Axes, *lines: str, width: int = 80) -> None:
    """A title of one or more lines, each wrapped to ``width`` characters so it fits."""
    wrapped = [textwrap.fill(line, width, break_on_hyphens=False) for line in lines if line]
    ax.set_title("\n".join(wrapped), fontsize=12)


def _legend_outside(ax: Axes) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _tier_capacity_bytes(run: RunData, tier: str) -> float | None:
    """A tier's configured capacity in bytes, from the run's resolved scenario."""
    if tier == "archive" or not run.scenario:
        return None
    try:
        from simkv.scenario import scenario_from_dict

        sc = scenario_from_dict(run.scenario)
    except Exception:  # an older or hand-edited scenario.yaml: no capacity line
        return None
    t = getattr(sc.tiers, tier)
    if tier != "gpu" and not getattr(t, "enabled", True):
        return None
    blocks = t.blocks(int(run.summary.get("block_bytes", 1)))
    return None if blocks is None else float(blocks) * run.summary.get("block_bytes", 1)


# -- run charts --------------------------------------------------------------------------------


@_styled
def occupancy_and_hit_rate(run: RunData, out: Path) -> Chart:
    """Bytes per tier over time (top) and the token hit rate per time bin, split by the tier
    that served the hits (bottom), both over arrival time."""
    name, title = "occupancy_hit_rate", "Tier occupancy and token hit rate over time"
    tl = run.timeline
    if tl is None or tl.empty:
        return Chart(name, title, note="no timeline.parquet (or it is empty)")
    bin_s = run.bin_s
    idx = np.round(tl["t_s"].to_numpy() / bin_s).astype(np.int64)
    full = np.arange(idx.min(), idx.max() + 1)
    div, unit = _time_scale(float(full[-1] + 1) * bin_s)
    edges = np.append(full, full[-1] + 1) * bin_s / div
    tiers = [t for t in TIERS if f"{t}_bytes" in tl.columns and tl[f"{t}_bytes"].max() > 0]

    fig = _figure(9.0, 6.8 if tiers else 4.5)
    if tiers:
        ax_occ, ax_hit = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1])
        peaks = [float(tl[f"{t}_bytes"].max()) for t in tiers]
        log = max(peaks) / max(min(peaks), 1.0) > 20
        for t in tiers:
            x = (tl["t_s"].to_numpy() + bin_s) / div
            y = tl[f"{t}_bytes"].to_numpy() / GIB
            if log:
                y = np.where(y > 0, y, np.nan)
            ax_occ.plot(x, y, marker="o", ms=3, color=TIER_COLOR[t], label=TIER_LABEL[t])
            cap = _tier_capacity_bytes(run, t)
            if cap:
                ax_occ.axhline(cap / GIB, color=TIER_COLOR[t], ls=":", lw=1.2,
                               label=f"{TIER_LABEL[t]} capacity ({cap / GIB:.3g} GiB)")
        if log:
            ax_occ.set_yscale("log")
            ax_occ.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax_occ.yaxis.set_minor_formatter(NullFormatter())
            ax_occ.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax_occ.set_ylim(bottom=0)
        ax_occ.set_ylabel("occupancy (GiB" + (", log scale)" if log else ")"))
        ax_occ.set_title("bytes held per tier at the end of each bin")
        _legend_outside(ax_occ)
    else:
        ax_hit = fig.subplots()

    per_bin = tl.assign(_i=idx).set_index("_i").reindex(full)
    tokens = per_bin["input_tokens"].fillna(0).to_numpy(dtype=float)
    base = np.zeros(len(full))
    hit_tiers = [t for t in TIERS if f"{t}_hit_tokens" in per_bin.columns
                 and per_bin[f"{t}_hit_tokens"].fillna(0).sum() > 0]
    if hit_tiers:
        for t in hit_tiers:
            part = np.divide(per_bin[f"{t}_hit_tokens"].fillna(0).to_numpy(dtype=float), tokens,
                             out=np.zeros(len(full)), where=tokens > 0) * 100
            ax_hit.stairs(base + part, edges, baseline=base, fill=True, alpha=0.85,
                          color=TIER_COLOR[t], label=f"hits from {t}")
            base = base + part
    else:
        rate = per_bin["token_hit_rate"].fillna(0).to_numpy(dtype=float) * 100
        ax_hit.stairs(rate, edges, fill=True, alpha=0.85, color=TIER_COLOR["gpu"], label="hit rate")
        base = rate
    whole = run.summary.get("token_hit_rate", 0.0)
    overall = 0.0 if whole is None else float(whole) * 100  # None: no input token at all
    if whole is not None:
        ax_hit.axhline(overall, color="black", ls="--", lw=1.2, label=f"whole run ({overall:.1f}%)")
    ax_hit.set_ylim(0, min(100.0, max(float(base.max()), overall) * 1.15 + 2))
    ax_hit.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax_hit.set_ylabel("token hit rate (%)")
    ax_hit.set_xlabel(f"time since trace start ({unit}; requests binned by arrival, "
                      f"{fmt_seconds(bin_s)} bins)")
    ax_hit.set_title("token hit rate per bin, by serving tier")
    ax_hit.set_xlim(edges[0], edges[-1])
    _legend_outside(ax_hit)
    fig.suptitle(f"{title}: {run.summary.get('scenario', '')}")
    return Chart(name, title, _save(fig, out, name))


@_styled
def ttft_cdf(run: RunData, out: Path) -> Chart:
    """Empirical CDF of the time to first token with the cache and without it (same trace,
    same queue), with p50 / p90 / p99 marked."""
    name, title = "ttft_cdf", "TTFT distribution with and without the cache"
    req = run.requests
    if req is None or req.empty or "ttft_s" not in req.columns:
        return Chart(name, title, note="no requests.parquet with ttft_s")
    series = {"with cache": req["ttft_s"].to_numpy(dtype=float)}
    if "ttft_nocache_s" in req.columns:
        series["without cache"] = req["ttft_nocache_s"].to_numpy(dtype=float)
    allv = np.concatenate(list(series.values()))
    if not np.any(allv > 0):
        return Chart(name, title, note="every TTFT is 0 (zero service time): nothing to plot")
    positive = allv[allv > 0]
    lo, hi = float(np.percentile(positive, 1)), float(positive.max())
    log = bool(np.all(allv > 0)) and hi / max(lo, 1e-12) >= 100
    scale, unit = (1000.0, "ms") if hi < 1 else (1.0, "s")

    fig = _figure()
    ax = fig.subplots()
    colors = {"with cache": "#4C72B0", "without cache": "#C44E52"}
    markers = {50: "o", 90: "s", 99: "^"}
    for label, v in series.items():
        v = np.sort(v) * scale
        y = np.arange(1, len(v) + 1) / len(v)
        pct = np.percentile(v, list(markers))
        text = " · ".join(f"p{p} {fmt_seconds(q / scale)}" for p, q in zip(markers, pct, strict=True))
        ax.step(v, y, where="post", color=colors[label], lw=1.8, label=f"{label}: {text}")
        for (p, m), q in zip(markers.items(), pct, strict=True):
            ax.plot([q], [p / 100], marker=m, ms=8, color=colors[label], mec="white", zorder=3)
    for p in markers:
        ax.axhline(p / 100, color="grey", ls=":", lw=1)
        ax.annotate(f"p{p}", xy=(1.0, p / 100), xycoords=("axes fraction", "data"),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=10)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_xlim(left=0)
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_xlabel(f"time to first token ({unit}{', log scale' if log else ''}; queueing included)")
    ax.set_ylabel("requests with TTFT ≤ x (%)")
    ax.set_title(f"{title}: {run.summary.get('scenario', '')}")
    ax.legend(loc="lower right")
    return Chart(name, title, _save(fig, out, name))


@_styled
def cost_breakdown(run: RunData, out: Path) -> Chart:
    """A waterfall from the GPU dollars saved, minus the archive's storage, request and
    transfer dollars, to the net cost saved."""
    name, title = "cost_breakdown", "Cost breakdown"
    s = run.summary
    gpu = float(s.get("gpu_dollars_saved", 0.0))
    parts = [("GPU time saved", gpu)]
    for key, label in (("archive_storage_dollars", "archive storage"),
                       ("archive_request_dollars", "archive PUT/GET"),
                       ("transfer_dollars", "retrieval + transfer")):
        if float(s.get(key, 0.0)) != 0.0:
            parts.append((label, -float(s[key])))
    net = float(s.get("cost_saved_dollars", sum(v for _, v in parts)))
    if all(v == 0 for _, v in parts) and net == 0:
        return Chart(name, title, note="all cost terms are 0 (zero service time, no archive)")

    fig = _figure()
    ax = fig.subplots()
    running = 0.0
    labels: list[str] = []
    levels: list[float] = [0.0]
    for i, (label, v) in enumerate(parts):
        ax.bar(i, v, bottom=running, color="#55A868" if v >= 0 else "#C44E52", width=0.55)
        _bar_label(ax, i, max(running, running + v) if v >= 0 else min(running, running + v),
                   ("+" if v > 0 else "") + fmt_dollars(v), above=v >= 0)
        ax.plot([i + 0.3, i + 0.7], [running + v] * 2, color="grey", lw=1)
        running += v
        labels.append(label)
        levels.append(running)
    ax.bar(len(parts), net, color="#4C72B0", width=0.55)
    _bar_label(ax, len(parts), net, fmt_dollars(net), above=net >= 0)
    labels.append("net cost saved")
    levels.append(net)
    span = max(levels) - min(levels) or max(abs(net), 1e-12)
    ax.axhline(0, color="black", lw=0.8)
    lo, hi = min(levels), max(levels)
    ax.set_ylim(lo - 0.12 * span if lo < 0 else 0, hi + 0.12 * span)
    ax.set_xticks(range(len(labels)), labels)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_dollars(v)))
    ax.set_ylabel("US dollars ($)")
    gpu_s = float(s.get("gpu_seconds_saved", 0.0))
    rate = run.scenario.get("hardware", {}).get("gpu_cost_per_hour") if run.scenario else None
    dur = fmt_seconds(float(s.get("duration_s", 0.0)))
    detail = f"GPU time saved {gpu_s:,.0f} s" + (f" at ${rate:g}/h" if rate is not None else "")
    detail += ("; no archive costs (no archive tier), so net = GPU $ saved" if len(parts) == 1
               else "; green adds to the saving, red subtracts")
    _title(ax, f"{title} over the {dur} trace: {s.get('scenario', '')}", detail)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(axis="x", visible=False)
    return Chart(name, title, _save(fig, out, name))


def _bar_label(ax: Axes, x: float, y: float, text: str, *, above: bool) -> None:
    ax.annotate(text, xy=(x, y), xytext=(0, 4 if above else -4), textcoords="offset points",
                ha="center", va="bottom" if above else "top", fontsize=10)


@_styled
def hit_rate_breakdown(run: RunData, out: Path) -> Chart:
    """Token hit rate per prompt class and overall, each bar stacked by the serving tier."""
    name, title = "hit_rate_by_class_tier", "Token hit rate by prompt class and tier"
    s = run.summary
    req = run.requests
    if req is not None and not req.empty:
        cols = ["input_tokens"] + [f"{t}_hit_tokens" for t in TIERS if f"{t}_hit_tokens" in req.columns]
        g = req.groupby("prompt_class", sort=True)[cols].sum()
        g.loc["all"] = g.sum()
        tiers = [t for t in TIERS if f"{t}_hit_tokens" in g.columns and g.loc["all", f"{t}_hit_tokens"] > 0]
        rates = {t: g[f"{t}_hit_tokens"] / g["input_tokens"].where(g["input_tokens"] > 0) * 100
                 for t in tiers}
        share = g["input_tokens"] / g.loc["all", "input_tokens"] * 100
    elif isinstance(s.get("token_hit_rate_by_class"), dict):
        by = dict(sorted(s["token_hit_rate_by_class"].items()))
        by["all"] = s.get("token_hit_rate", 0.0)
        tiers = ["gpu"]
        rates = {"gpu": pd.Series(by, dtype=float) * 100}
        share = None
    else:
        return Chart(name, title, note="no requests.parquet and no token_hit_rate_by_class")
    classes = list(next(iter(rates.values())).index) if rates else []
    if not tiers or not classes:
        return Chart(name, title, note="no token was served from any tier")

    fig = _figure()
    ax = fig.subplots()
    x = np.arange(len(classes))
    base = np.zeros(len(classes))
    for t in tiers:
        v = rates[t].fillna(0).to_numpy(dtype=float)
        overall = s.get(f"token_hit_rate_{t}", v[-1] / 100)
        ax.bar(x, v, bottom=base, width=0.65, color=TIER_COLOR[t],
               label=f"from {TIER_LABEL[t]}: {fmt_pct(overall)} overall" if share is not None
               else "all tiers")
        base = base + v
    for xi, total in zip(x, base, strict=True):
        ax.annotate(f"{total:.1f}%", xy=(xi, total), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=10)
    ticks = [("all classes" if c == "all" else f"{c}\n{share[c]:.0f}% of tokens") if share is not None
             else str(c) for c in classes]
    ax.set_xticks(x, ticks)
    ax.get_xticklabels()[-1].set_fontweight("bold")
    ax.axvline(len(classes) - 1.5, color="grey", lw=0.8)
    ax.set_ylim(0, min(100.0, float(base.max()) * 1.18 + 2))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_ylabel("token hit rate (% of the class's input tokens)")
    ax.set_xlabel("prompt class")
    ax.set_title(f"{title}: {s.get('scenario', '')}")
    ax.grid(axis="x", visible=False)
    if len(tiers) > 1 or share is not None:
        _legend_outside(ax)
    return Chart(name, title, _save(fig, out, name))


def run_charts(run: RunData, out: Path) -> list[Chart]:
    """Every chart of a run report, in report order."""
    return [occupancy_and_hit_rate(run, out), ttft_cdf(run, out), cost_breakdown(run, out),
            hit_rate_breakdown(run, out)]


# -- sweep charts ------------------------------------------------------------------------------


def param_label(key: str) -> str:
    """A swept key with its unit: ``ttl.params.base_ttl (s)``."""
    last = key.rsplit(".", 1)[-1]
    if last.endswith("capacity_bytes"):
        return f"{key} (GiB)"
    if last.endswith("capacity_blocks"):
        return f"{key} (blocks)"
    if last.endswith("ttl") or last.endswith("_s"):
        return f"{key} (s)"
    if last.endswith("_gbps"):
        return f"{key} (GB/s)"
    return key


def _axis_values(sweep: SweepData, key: str) -> pd.Series:
    """A numeric swept column in display units (sizes in GiB)."""
    values = sweep.numeric[key]
    return values / GIB if key.endswith("capacity_bytes") else values


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


def _others_note(sweep: SweepData, shown: list[str], how: str) -> str:
    others = [p for p in sweep.params if p not in shown and sweep.cells[p].nunique() > 1]
    return f" ({how} over {', '.join(others)})" if others else ""


@_styled
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
    frame = pd.DataFrame({"y": _axis_values(sweep, ykey).loc[ok.index],
                          "x": _axis_values(sweep, xkey).loc[ok.index],
                          "v": ok[objective.metric].astype(float)})
    grid = frame.pivot_table(index="y", columns="x", values="v", aggfunc=_best_over(objective))
    allx = sorted(_axis_values(sweep, xkey).dropna().unique())
    ally = sorted(_axis_values(sweep, ykey).dropna().unique())
    grid = grid.reindex(index=ally, columns=allx)
    values = grid.to_numpy(dtype=float)
    # grid points where some cell failed (or lacks the metric): their value, if any, is
    # the best of the cells that did run, and is starred
    bad = ~sweep.cells.index.isin(ok.index) | sweep.cells[objective.metric].isna()
    failed = (pd.DataFrame({"y": _axis_values(sweep, ykey), "x": _axis_values(sweep, xkey), "bad": bad})
              .groupby(["y", "x"])["bad"].any().unstack().reindex(index=ally, columns=allx)
              .fillna(False).to_numpy(dtype=bool))
    shown = values * 100 if is_fraction(objective.metric) else values

    ny, nx = values.shape
    fig = _figure(max(8.0, 0.85 * nx + 3.2), max(5.0, 0.5 * ny + 2.4))
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
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_dollars(v)))
    decimals = _percent_decimals(vmax - vmin)
    if is_fraction(objective.metric):
        cb.ax.yaxis.set_major_formatter(PercentFormatter(decimals=decimals))
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
    ax.set_xticks(range(nx), [fmt_param(v) for v in allx],
                  rotation=45 if nx > 8 or max(len(fmt_param(v)) for v in allx) > 5 else 0,
                  ha="right" if nx > 8 else "center")
    ax.set_yticks(range(ny), [fmt_param(v) for v in ally])
    ax.set_xlabel(param_label(xkey))
    ax.set_ylabel(param_label(ykey))
    ax.grid(False)
    note = _others_note(sweep, [xkey, ykey], "best")
    legend = "red outline: best; grey: failed or missing"
    if (failed & np.isfinite(values)).any():
        legend += "; *: some cells of this point failed"
    _title(ax, f"{_cap(metric_label(objective.metric))} over {ykey} × {xkey}",
           _cap(note.strip(" ()")), legend)
    return Chart(name, title, _save(fig, out, name))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _percent_decimals(spread_pct: float) -> int:
    """Decimals that tell the cells of a heatmap apart: one more than the spread's first
    significant digit needs (1 to 4)."""
    if not spread_pct > 0:
        return 1
    return int(min(4, max(1, math.ceil(-math.log10(spread_pct)) + 1)))


def tick_decimals(ticks: Sequence[float]) -> int:
    """The fewest decimals (at most 6) that print every tick exactly, so adjacent ticks never
    read the same (``37.40, 37.42, 37.44`` → 2; ``0.25`` steps → 2; whole steps → 0)."""
    t = np.asarray(ticks, dtype=np.float64)
    steps = np.diff(np.sort(t))
    steps = steps[steps > 0]
    if not len(steps):
        return 1
    tol = 1e-6 * float(steps.min())
    for d in range(7):
        if np.all(np.abs(t - np.round(t, d)) <= tol):
            return d
    return 6


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


@_styled
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
    frame = pd.DataFrame({"x": _axis_values(sweep, cap).loc[ok.index],
                          "g": ok[policy].astype(str) if policy else "all",
                          "v": ok[metric].astype(float) * 100})
    fig = _figure()
    ax = fig.subplots()
    for i, (group, sub) in enumerate(frame.groupby("g", sort=True)):
        line = sub.groupby("x")["v"].max().sort_index()
        ax.plot(line.index, line.to_numpy(), marker="o", ms=5, lw=1.8, color=f"C{i}",
                label=f"{policy} = {group}" if policy else "all cells")
    xs = np.sort(frame["x"].dropna().unique())
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() >= 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
        crowded = len(xs) > 1 and float(np.min(np.diff(np.log10(xs)))) < 0.25
        if crowded:
            ax.tick_params(axis="x", labelrotation=45)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_xlabel(param_label(cap))
    ax.set_ylabel(metric_label(metric))
    note = _others_note(sweep, [cap] + ([policy] if policy else []), "best")
    _title(ax, f"{title}{' per eviction policy' if policy else ''}", _cap(note.strip(" ()")))
    if policy:
        ax.legend(loc="lower right")
    return Chart(name, title, _save(fig, out, name))


@_styled
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
    frame = pd.DataFrame({"x": _axis_values(sweep, key).loc[ok.index],
                          "g": ok[group].astype(str) if group else "all",
                          "v": ok[objective.metric].astype(float) * scale})
    fig = _figure()
    ax = fig.subplots()
    for i, (g, sub) in enumerate(frame.groupby("g", sort=True)):
        line = sub.groupby("x")["v"].agg(_best_over(objective)).sort_index()
        ax.plot(line.index, line.to_numpy(), marker="o", ms=5, lw=1.8, color=f"C{i}",
                label=f"{group} = {g}" if group else "all cells")
    decimals = tick_decimals(ax.get_yticks())
    if is_fraction(objective.metric):
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=decimals))
    elif objective.metric.endswith("_dollars"):
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:,.{decimals}f}"))
    ax.set_xlabel(param_label(key))
    ax.set_ylabel(objective.label)
    note = _others_note(sweep, [key] + ([group] if group else []), "best")
    _title(ax, f"{_cap(metric_label(objective.metric))} vs {key}", _cap(note.strip(" ()")))
    if group:
        ax.legend(loc="best")
    return Chart(name, f"{_cap(metric_label(objective.metric))} vs {key}", _save(fig, out, name))


def sweep_charts(sweep: SweepData, objective: Objective, out: Path) -> list[Chart]:
    """Every chart of a sweep report, in report order."""
    from simkv.report.tradeoff import ttl_tradeoff  # it builds on this module's helpers

    return [objective_heatmap(sweep, objective, out), ttl_tradeoff(sweep, out),
            hit_rate_vs_capacity(sweep, out), objective_vs_param(sweep, objective, out)]

