"""The charts of a run report: occupancy and hit rate over time, TTFT CDF, cost waterfall,
hit rate by class and tier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from simkv.core.tiers import HELD_BILLS
from simkv.metrics.format import fmt_dollars, fmt_pct, fmt_seconds
from simkv.report.charts.style import (
    GIB,
    TIER_COLOR,
    TIER_LABEL,
    TIERS,
    Chart,
    dollar_ticks,
    legend_outside,
    new_figure,
    save_png,
    set_title,
    styled,
)
from simkv.report.data import RunData


def _time_scale(max_s: float) -> tuple[float, str]:
    """Divisor and unit for a time axis spanning ``max_s`` seconds."""
    if max_s <= 300:
        return 1.0, "s"
    if max_s <= 5 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _tier_capacity_bytes(run: RunData, tier: str) -> float | None:
    """A tier's configured capacity in bytes, from the run's resolved scenario."""
    if tier == "archive" or not run.scenario:
        return None
    try:
        from simkv.core.scenario import scenario_from_dict

        sc = scenario_from_dict(run.scenario)
    except Exception:  # an older or hand-edited scenario.yaml: no capacity line
        return None
    t = getattr(sc.tiers, tier)
    if tier != "gpu" and not getattr(t, "enabled", True):
        return None
    blocks = t.blocks(int(run.summary.get("block_bytes", 1)))
    return None if blocks is None else float(blocks) * run.summary.get("block_bytes", 1)


# -- run charts --------------------------------------------------------------------------------


@styled
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
    tiers = [t for t in TIERS if f"{t}_held_bytes" in tl.columns and tl[f"{t}_held_bytes"].max() > 0]

    fig = new_figure(9.0, 6.8 if tiers else 4.5)
    if tiers:
        ax_occ, ax_hit = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1])
        peaks = [float(tl[f"{t}_held_bytes"].max()) for t in tiers]
        log = max(peaks) / max(min(peaks), 1.0) > 20
        for t in tiers:
            x = (tl["t_s"].to_numpy() + bin_s) / div
            y = tl[f"{t}_held_bytes"].to_numpy() / GIB
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
        legend_outside(ax_occ)
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
    legend_outside(ax_hit)
    fig.suptitle(f"{title}: {run.summary.get('scenario', '')}")
    return Chart(name, title, save_png(fig, out, name), figure=fig)


@styled
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

    fig = new_figure()
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
    return Chart(name, title, save_png(fig, out, name), figure=fig)


@styled
def cost_breakdown(run: RunData, out: Path) -> Chart:
    """A waterfall from the GPU dollars saved, minus the archive's storage, request and
    transfer dollars and each held bill (the remote store's DRAM), to the net cost saved."""
    name, title = "cost_breakdown", "Cost breakdown"
    s = run.summary
    if "cost_saved_dollars" not in s:
        return Chart(name, title, note="no costs in this run (a replay measures hits and TTFTs only)")
    gpu = float(s.get("gpu_dollars_saved", 0.0))
    parts = [("GPU time saved", gpu)]
    for key, label in (("archive_storage_dollars", "archive storage"),
                       ("archive_request_dollars", "archive PUT/GET"),
                       ("transfer_dollars", "retrieval + transfer"),
                       *((f"{t}_storage_dollars", f"{t} {bill}") for t, bill in HELD_BILLS.items())):
        if float(s.get(key, 0.0)) != 0.0:
            parts.append((label, -float(s[key])))
    net = float(s.get("cost_saved_dollars", sum(v for _, v in parts)))
    if all(v == 0 for _, v in parts) and net == 0:
        return Chart(name, title, note="all cost terms are 0 (zero service time, no archive)")

    fig = new_figure()
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
    dollar_ticks(ax.yaxis)
    ax.set_ylabel("US dollars ($)")
    gpu_s = float(s.get("gpu_seconds_saved", 0.0))
    rate = run.scenario.get("hardware", {}).get("gpu_cost_per_hour") if run.scenario else None
    dur = fmt_seconds(float(s.get("duration_s", 0.0)))
    detail = f"GPU time saved {gpu_s:,.0f} s" + (f" at ${rate:g}/h" if rate is not None else "")
    detail += ("; no storage costs (no archive or remote tier), so net = GPU $ saved" if len(parts) == 1
               else "; green adds to the saving, red subtracts")
    set_title(ax, f"{title} over the {dur} trace: {s.get('scenario', '')}", detail)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(axis="x", visible=False)
    return Chart(name, title, save_png(fig, out, name), figure=fig)


def _bar_label(ax: Axes, x: float, y: float, text: str, *, above: bool) -> None:
    ax.annotate(text, xy=(x, y), xytext=(0, 4 if above else -4), textcoords="offset points",
                ha="center", va="bottom" if above else "top", fontsize=10)


@styled
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
    if len(classes) <= 2:  # one class (or none) beside "all": the bars would repeat each other
        only = f"every request is of class {classes[0]!r}" if len(classes) == 2 else "no prompt class"
        return Chart(name, title, note=f"{only} in this trace; the hit rate by tier is in the "
                                       "headline metrics")

    fig = new_figure()
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
        legend_outside(ax)
    return Chart(name, title, save_png(fig, out, name), figure=fig)


def run_charts(run: RunData, out: Path) -> list[Chart]:
    """Every chart of a run report, in report order."""
    return [occupancy_and_hit_rate(run, out), ttft_cdf(run, out), cost_breakdown(run, out),
            hit_rate_breakdown(run, out)]
