"""``fidelity.md``, ``fidelity.json`` and the charts of a validation: simulated vs measured TTFT
(scatter, log axes, y = x), the CDF of per-request relative TTFT errors, and per-tier hit rates
side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import PercentFormatter

from simkv.core.tiers import TIER_NAMES
from simkv.fidelity.compare import request_rel_errors
from simkv.metrics.format import fmt_num, fmt_pct, fmt_seconds
from simkv.report.charts.style import (
    TIER_COLOR,
    TIER_LABEL,
    Chart,
    new_figure,
    readable_log_axis,
    save_png,
    set_title,
    styled,
)
from simkv.report.markdown import md_table, shown_path

# -- charts ------------------------------------------------------------------------------------


@styled
def ttft_scatter(frame: Any, out: Path) -> Chart:
    name, title = "ttft_scatter", "Simulated vs measured TTFT per request"
    s, m = frame["sim_ttft_s"].to_numpy(float), frame["meas_ttft_s"].to_numpy(float)
    ok = (s > 0) & (m > 0)
    if not ok.any():
        return Chart(name, title, note="no request has a positive TTFT on both sides")
    fig = new_figure(7.5, 6.5)
    ax = fig.subplots()
    ax.scatter(m[ok] * 1000, s[ok] * 1000, s=8, alpha=0.5, color=TIER_COLOR["gpu"],
               label=f"{ok.sum():,} requests")
    lo, hi = min(s[ok].min(), m[ok].min()) * 1000, max(s[ok].max(), m[ok].max()) * 1000
    ax.plot([lo, hi], [lo, hi], color="black", ls="--", lw=1.2, label="y = x (exact)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, at least three of them
        readable_log_axis(axis, lo, hi)
    ax.set_xlabel("measured TTFT (ms, log scale)")
    ax.set_ylabel("simulated TTFT (ms, log scale)")
    set_title(ax, title, f"{(~ok).sum():,} requests with a zero TTFT left out" if (~ok).any() else "")
    ax.legend(loc="upper left")
    return Chart(name, title, save_png(fig, out, name), figure=fig)


@styled
def ttft_error_cdf(frame: Any, out: Path) -> Chart:
    name, title = "ttft_error_cdf", "Per-request relative TTFT error (simulated − measured) / measured"
    e = request_rel_errors(frame["sim_ttft_s"].to_numpy(float), frame["meas_ttft_s"].to_numpy(float))
    e = np.sort(e[~np.isnan(e)])
    if not len(e):
        return Chart(name, title, note="every measured TTFT is 0")
    fig = new_figure()
    ax = fig.subplots()
    ax.step(e * 100, np.arange(1, len(e) + 1) / len(e), where="post", lw=1.8, color=TIER_COLOR["gpu"],
            label=f"{len(e):,} requests; median {np.median(e):+.2%}")
    for x in (-5, 5):
        ax.axvline(x, color="grey", ls=":", lw=1)
    ax.axvline(0, color="black", lw=1)
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_xlabel("relative TTFT error (%; dotted: ±5%)")
    ax.set_ylabel("requests with error ≤ x (%)")
    set_title(ax, title)
    ax.legend(loc="lower right")
    return Chart(name, title, save_png(fig, out, name), figure=fig)


@styled
def tier_hits(fig_data: dict[str, Any], out: Path) -> Chart:
    name, title = "tier_hits", "Token hit rate by tier: simulated vs measured"
    tiers = [t for t in TIER_NAMES if any(fig_data["by_tier"][t][k] for k in ("sim", "measured"))]
    if not tiers:
        return Chart(name, title, note="no hits on either side")
    if all(fig_data["by_tier"][t]["measured"] is None for t in TIER_NAMES):
        return Chart(name, title, note="the measured side reports no tiers (vLLM's cached_tokens is a "
                                       "total): hits are compared by total only")
    fig = new_figure()
    ax = fig.subplots()
    x = np.arange(len(tiers))
    w = 0.38
    for off, key, hatch, alpha in ((-w / 2, "sim", "", 0.95), (w / 2, "measured", "//", 0.55)):
        vals = [(fig_data["by_tier"][t][key] or 0.0) * 100 for t in tiers]
        bars = ax.bar(x + off, vals, w, color=[TIER_COLOR[t] for t in tiers], alpha=alpha, hatch=hatch,
                      edgecolor="black", label="simulated" if key == "sim" else "measured")
        ax.bar_label(bars, fmt="%.1f%%", fontsize=9)
    ax.set_xticks(x, [TIER_LABEL[t] for t in tiers])
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_ylabel("share of input tokens served from the tier (%)")
    set_title(ax, title)
    ax.legend(loc="upper right")
    return Chart(name, title, save_png(fig, out, name), figure=fig)


# -- markdown ----------------------------------------------------------------------------------


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.2f} pp"


def _rel(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2%}"


def markdown(data: dict[str, Any], charts: list[Chart]) -> str:
    """The validation as Markdown (figures as in ``fidelity.json``)."""
    sim, meas = data["sim"], data["measured"]
    req = data["requests"]
    lines = ["# Simulator fidelity", "",
             f"Simulated: `{shown_path(sim['dir'])}`; measured: `{shown_path(meas['dir'])}`; "
             f"trace_sha256 `{sim['trace_sha256'][:16]}…`.", ""]
    if sim["scenario_sha256"] != meas["scenario_sha256"]:
        lines += [f"**Different scenarios compared on purpose** (--ignore-scenario): "
                  f"`{sim['scenario_sha256'][:16]}…` vs `{meas['scenario_sha256'][:16]}…`.", ""]
    lines += [f"{req['compared']:,} requests compared; {req['failed']:,} failed in the measured run "
              f"(left out), {req['only_sim']:,} only simulated, {req['only_measured']:,} only measured.", ""]
    if data["failed_examples"]:
        lines += ["Failed requests (first): " + "; ".join(
            f"`{f['request_id']}`: {f['error']}" for f in data["failed_examples"]), ""]

    where = {"cpu": "a small model replayed on a shared CPU", "gpu": "a real-size model replayed on a GPU"}
    lines += ["## Targets", "", f"The `{data['target_set']}` targets (`--targets {data['target_set']}`: "
              f"{where.get(data['target_set'], data['target_set'])}); n/a: the figure is not known on "
              "both sides (e.g. the e2e latency of a `fifo` simulation, which models no decode), "
              "never a failure. `--gate` exits 1 when one fails.", ""]
    lines.append(md_table(["target", "value", "limit", "result"],
                          [[t["label"], t["shown"], t["limit_shown"],
                            "n/a" if t["pass"] is None else ("pass" if t["pass"] else "**FAIL**")]
                           for t in data["targets"]], ["l", "r", "r", "l"]))
    lines.append("")

    hr = data["hit_rate"]
    tot = hr["total"]
    rows = [["total", fmt_pct(tot["sim"]), fmt_pct(tot["measured"]), _pp(tot["error"])]]
    rows += [[f"from {t}", fmt_pct(v["sim"]), fmt_pct(v["measured"]), _pp(v["error"])]
             for t, v in hr["by_tier"].items()]
    rows += [[f"class {c} ({v['requests']:,})", fmt_pct(v["sim"]), fmt_pct(v["measured"]), _pp(v["error"])]
             for c, v in hr["by_class"].items()]
    lines += ["## Token hit rate", "", "Σ hit tokens / Σ input tokens of the compared requests; "
              "error = simulated − measured.", "",
              md_table(["", "simulated", "measured", "error"], rows, ["l", "r", "r", "r"]), ""]

    tt = data["ttft_s"]
    rows = []
    for scope, block in [("all", tt["overall"]), *[(f"class {c}", v) for c, v in tt["by_class"].items()]]:
        for p in ("p50", "p90", "p99"):
            rows.append([scope, p, fmt_seconds(block[p]["sim"]), fmt_seconds(block[p]["measured"]),
                         _rel(block[p]["rel_error"])])
    pr = data["ttft_per_request"]
    lines += ["## TTFT", "", "Percentiles of each side; error = (simulated − measured) / measured.", "",
              md_table(["requests", "percentile", "simulated", "measured", "error"], rows,
                       ["l", "l", "r", "r", "r"]), "",
              f"Per request, e = (simulated − measured) / measured over {pr['requests']:,} requests "
              f"({pr['undefined']:,} with a zero measured TTFT left out): median |e| "
              f"{fmt_num(pr['median_abs_rel_error'], '.2%')}, p90 |e| "
              f"{fmt_num(pr['p90_abs_rel_error'], '.2%')}, "
              f"max |e| {fmt_num(pr['max_abs_rel_error'], '.2%')}, median e (bias) "
              f"{_rel(pr['median_rel_error'])}.", ""]

    rows = [[name, p, fmt_seconds(data[col]["overall"][p]["sim"]),
             fmt_seconds(data[col]["overall"][p]["measured"]), _rel(data[col]["overall"][p]["rel_error"])]
            for name, col in (("e2e", "e2e_s"), ("TPOT", "tpot_s")) for p in ("p50", "p90", "p99")]
    lines += ["## End-to-end latency and TPOT", "",
              f"Arrival → last output token (e2e, over {data['e2e_s']['requests']:,} requests) and the "
              f"mean time per output token after the first (TPOT, over {data['tpot_s']['requests']:,} "
              "requests with more than one output token), where both sides know them; a `fifo` "
              "simulation models no decode (n/a).", "",
              md_table(["latency", "percentile", "simulated", "measured", "error"], rows,
                       ["l", "l", "r", "r", "r"]), ""]

    ag, dv = data["hits"], data["divergence"]
    if ag.get("per_tier", True):
        agree = (f"{ag['identical']:,} of {ag['requests']:,} requests hit exactly the same tokens in every "
                 f"tier ({fmt_pct(ag['identical_fraction'])}); {ag['total_identical']:,} the same total. "
                 "Requests differing per tier: " + ", ".join(
                     f"{t} {n:,}" for t, n in ag["differing_by_tier"].items() if n is not None) + ".")
    else:
        agree = (f"{ag['identical']:,} of {ag['requests']:,} requests hit the same total hit tokens "
                 f"({fmt_pct(ag['identical_fraction'])}). The measured side reports no tiers (a replay "
                 "through vLLM: `cached_tokens` is a total), so hits are compared by total only.")
    lines += ["## Per-request hits", "", agree, ""]
    unit = dv["hit_unit_tokens"]
    lines += [f"Hits come in units of {unit['sim']} tokens simulated and {unit['measured']} measured "
              f"(gcd of the nonzero hit counts; block size {dv['block_size']}, chunk size "
              f"{dv['chunk_size'] or 'not recorded'})." + (
                  " **The measured unit is not a multiple of the block size: the engine caches in "
                  "other chunks than the simulator's blocks.**"
                  if unit["measured"] and dv["block_size"] and unit["measured"] % dv["block_size"] else ""),
              "", f"Block-level diagnosis from {data['trace_note']}.", ""]
    if dv["first"]:
        rows = []
        for d in dv["first"]:
            tiers = ", ".join(f"{t['tier']} {t['sim']:,} vs {t['measured']:,}" for t in d["tiers"])
            extra = f"block {d['block']}" if "block" in d else ""
            if "stored_by" in d:
                extra += f", stored by `{d['stored_by']}`"
            if "write_not_landed" in d:
                wl = d["write_not_landed"]
                extra += (f"; arrived {fmt_seconds(wl['gap_s'])} after it on the {wl['missed_on']} "
                          f"side, the {wl['tier']} write takes {fmt_seconds(wl['write_s'])}")
            rows.append([f"`{d['request_id']}`", fmt_seconds(d["arrival_s"]), tiers, d["cause"], extra])
        lines += ["First requests whose hits diverge (tier: simulated vs measured tokens):", "",
                  md_table(["request", "arrival", "tiers", "likely cause", "where"], rows), "",
                  "Causes over all " f"{dv['requests']:,} diverging requests: "
                  + ", ".join(f"{k} {v:,}" for k, v in sorted(dv["causes"].items())) + ".", "",
                  "What each cause can and cannot tell:", ""]
        from simkv.fidelity.diagnose import CAUSES

        lines += [f"- **{k}**: {v}" for k, v in CAUSES.items() if k in dv["causes"]] + [""]
    for c in charts:
        lines += [f"### {c.title}", "", f"![{c.title}]({c.file})" if c.file else f"Not drawn: {c.note}", ""]
    return "\n".join(lines)
