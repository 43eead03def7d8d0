"""The TTL trade-off chart of a sweep: what a longer archive TTL buys and what it costs.

For a sweep over a TTL parameter (``ttl.params.base_ttl``, ``ttl.params.ttl``, ...) with the
archive enabled, three panels share a TTL axis (logarithmic when the TTLs span a decade), one
line per value of the other swept numeric parameter (``alpha``), the best over any further ones:

* archive token hit rate (tokens served from the archive / input tokens): what the TTL buys;
* archive dollars (storage + requests + transfer): what it costs;
* cost saved (GPU dollars avoided − archive dollars): the net, with the best cell marked.

An interior maximum of the last panel is the TTL the workload should use at these prices.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from simkv.metrics.format import fmt_param
from simkv.report.charts.style import (
    Chart,
    axis_values,
    dollar_ticks,
    duration_label,
    new_figure,
    others_note,
    param_label,
    percent_ticks,
    save_png,
    styled,
    value_axis,
)
from simkv.report.data import SweepData

ARCHIVE_DOLLARS = ("archive_storage_dollars", "archive_request_dollars", "transfer_dollars")


def ttl_key(sweep: SweepData) -> str | None:
    """The swept numeric TTL parameter (the last key part ends in ``ttl``), if any."""
    for key in sweep.params:
        if (key in sweep.numeric and key.rsplit(".", 1)[-1].endswith("ttl")
                and sweep.numeric[key].nunique() > 1 and (sweep.numeric[key] > 0).all()):
            return key
    return None


@styled
def ttl_tradeoff(sweep: SweepData, out: Path) -> Chart:
    """Archive hits, archive dollars and cost saved along the swept TTL (see the module)."""
    name = "ttl_tradeoff"
    title = "TTL trade-off: archive hits, archive $, cost saved"
    key = ttl_key(sweep)
    ok = sweep.ok
    needed = ("token_hit_rate_archive", "cost_saved_dollars", *ARCHIVE_DOLLARS)
    if key is None:
        return Chart(name, title, note="no TTL parameter was swept")
    if ok.empty or any(m not in ok.columns for m in needed):
        return Chart(name, title, note="no successful cell with archive metrics")
    if not ok["token_hit_rate_archive"].fillna(0).any() and not ok["archive_request_dollars"].any():
        return Chart(name, title, note="the archive is not enabled in this sweep")
    group = next((k for k in sweep.params if k != key and k in sweep.numeric
                  and ok[k].nunique() > 1), None)
    frame = pd.DataFrame({
        "ttl": axis_values(sweep, key).loc[ok.index],
        "g": ok[group] if group else 0,
        "hits": ok["token_hit_rate_archive"].astype(float) * 100,
        "dollars": sum(ok[m].astype(float) for m in ARCHIVE_DOLLARS),
        "saved": ok["cost_saved_dollars"].astype(float),
    })
    fig = new_figure(9.0, 9.0)
    axes = fig.subplots(3, 1, sharex=True)
    panels = (("hits", "archive token hit rate (%)"), ("dollars", "archive $ (storage + requests)"),
              ("saved", "cost saved ($)"))
    for i, (g, sub) in enumerate(frame.groupby("g", sort=True)):
        # with more parameters swept, each point is the cell with the best cost saved
        best = sub.loc[sub.groupby("ttl")["saved"].idxmax()].sort_values("ttl")
        label = f"{group.rsplit('.', 1)[-1]} = {fmt_param(g)}" if group else "all cells"
        for ax, (col, _) in zip(axes, panels, strict=True):
            ax.plot(best["ttl"], best[col], marker="o", ms=5, lw=1.8, color=f"C{i}", label=label)
    top = frame.loc[frame["saved"].idxmax()]
    axes[2].plot([top["ttl"]], [top["saved"]], marker="*", ms=16, color="black", ls="none",
                 label=f"best: {duration_label(top['ttl'])}" + (f", {group.rsplit('.', 1)[-1]} = "
                                                              f"{fmt_param(top['g'])}" if group else ""))
    for ax, (col, ylabel) in zip(axes, panels, strict=True):
        log = value_axis(ax, key, frame["ttl"].unique())
        ax.set_ylabel(ylabel)
        (percent_ticks if col == "hits" else dollar_ticks)(ax.yaxis)
    axes[0].legend(loc="best")
    axes[2].legend(loc="best")
    axes[2].set_xlabel(param_label(key) + (", log scale" if log else ""))
    note = others_note(sweep, [key] + ([group] if group else []), "best cost saved")
    axes[0].set_title(title + note, fontsize=12)
    return Chart(name, title, save_png(fig, out, name), figure=fig)
