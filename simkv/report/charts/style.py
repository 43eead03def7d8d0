"""The look shared by every report chart: rc settings, tier colours, figure size, saving, and
the axes and tick labels every chart uses (log when values span a decade, durations in human
units, dollar and percent ticks that never read the same).

Every chart is titled, has labelled axes with units and a legend where there is more than
one series, and is drawn at 9x5.5 inches, 130 dpi, 10-12 pt fonts so it reads at 100%.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, Formatter, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

from simkv.core.scenario import Tiers
from simkv.core.tiers import TIER_NAMES
from simkv.metrics.format import fmt_param
from simkv.report.data import SweepData

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
TIERS = TIER_NAMES
TIER_LABEL = {name: spec.label for name, spec in zip(TIER_NAMES, Tiers().specs(), strict=True)}
#: One colour per tier, in TIER_NAMES order (a palette long enough for new tiers).
TIER_COLOR = dict(zip(TIER_NAMES, ("#4C72B0", "#8172B3", "#DD8452", "#C44E52", "#55A868", "#937860",
                                   "#DA8BC3", "#8C8C8C"), strict=False))
GIB = 2**30


@dataclass
class Chart:
    """One chart of a report: its file (relative to the report), or why it was skipped."""

    name: str
    title: str
    file: str | None = None
    note: str = ""
    #: The drawn figure (for a test or a notebook to inspect its axes); ``None`` when skipped.
    figure: Figure | None = field(default=None, repr=False, compare=False)

    @property
    def skipped(self) -> bool:
        return self.file is None


def styled(fn: Callable[..., Chart]) -> Callable[..., Chart]:
    """Run a chart function under the report's rc settings."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Chart:
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


def new_figure(width: float = 9.0, height: float = 5.5) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(fig: Figure, out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=DPI)
    return f"{name}.png"


def set_title(ax: Axes, *lines: str, width: int = 80) -> None:
    """A title of one or more lines, each wrapped to ``width`` characters so it fits."""
    wrapped = [textwrap.fill(line, width, break_on_hyphens=False) for line in lines if line]
    ax.set_title("\n".join(wrapped), fontsize=12)


def legend_outside(ax: Axes) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


# -- axes and ticks shared by every chart ------------------------------------------------------

#: Values spanning at least this ratio (largest / smallest, all positive) get a log axis.
WIDE_RATIO = 10.0


def tick_decimals(ticks: Sequence[float]) -> int:
    """The fewest decimals (at most 6) that print every tick exactly, so adjacent ticks never
    read the same (``37.40, 37.42, 37.44`` → 2; ``0.025`` steps → 3; whole steps → 0)."""
    t = np.asarray(ticks, dtype=np.float64)
    t = t[np.isfinite(t)]
    steps = np.diff(np.sort(t))
    steps = steps[steps > 0]
    if not len(steps):
        return 1
    tol = 1e-6 * float(steps.min())
    for d in range(7):
        if np.all(np.abs(t - np.round(t, d)) <= tol):
            return d
    return 6


class ExactTicks(Formatter):
    """A tick formatter that prints every tick of the axis with the decimals the whole set of
    ticks needs (:func:`tick_decimals`), decided when the ticks are placed, so two ticks never
    share a label: ``$0.025, $0.050, $0.075`` rather than ``$0.03, $0.05, $0.07``."""

    def __init__(self, kind: str) -> None:  # "dollars" or "percent"
        self.kind = kind
        self.decimals = 1

    def set_locs(self, locs: Sequence[float]) -> None:
        self.locs = list(locs)
        self.decimals = tick_decimals(self.locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        if self.kind == "percent":
            return f"{x:.{self.decimals}f}%"
        return f"{'-' if x < 0 else ''}${abs(x):,.{self.decimals}f}"



def dollar_ticks(axis: Axis) -> None:
    """Dollar tick labels with as many decimals as the ticks need."""
    axis.set_major_formatter(ExactTicks("dollars"))


def percent_ticks(axis: Axis) -> None:
    """Percent tick labels (values already in %) with as many decimals as the ticks need."""
    axis.set_major_formatter(ExactTicks("percent"))


def is_duration_key(key: str) -> bool:
    """A swept key that holds seconds: a TTL (``ttl.params.base_ttl``) or a ``*_s`` setting."""
    last = key.rsplit(".", 1)[-1]
    return last.endswith("ttl") or last.endswith("_s")


def duration_label(seconds: float) -> str:
    """A duration as a tick or table shows it: ``60`` → ``1 min``, ``14400`` → ``4 h``,
    ``86400`` → ``1 d``."""
    if not math.isfinite(seconds):
        return "∞"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{fmt_param(round(seconds / size, 2))} {unit}"
    return f"{fmt_param(round(seconds, 2))} s"


#: Round durations a log time axis is ticked at: 1 s to 30 d.
ROUND_DURATIONS_S = (1, 10, 60, 600, 3600, 4 * 3600, 86400, 7 * 86400, 30 * 86400)


def duration_axis(axis: Axis, lo: float, hi: float) -> None:
    """Tick a log axis of seconds over ``[lo, hi]`` at round durations (``1 min``, ``1 h``,
    ``1 d``) when at least three fall inside, labelled by :func:`duration_label`."""
    ticks = [t for t in ROUND_DURATIONS_S if lo <= t <= hi]
    if len(ticks) >= 3:
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: duration_label(v)))


def param_tick(key: str, value: float) -> str:
    """A swept value as an axis tick: durations in human units, anything else as is."""
    return duration_label(float(value)) if is_duration_key(key) else fmt_param(value)


def is_wide(values: Sequence[float]) -> bool:
    """Whether positive ``values`` span a wide range (largest / smallest >= :data:`WIDE_RATIO`)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    return bool(len(v) > 1 and v.min() > 0 and v.max() / v.min() >= WIDE_RATIO)


def value_axis(ax: Axes, key: str, values: Sequence[float]) -> bool:
    """The x axis of a chart along swept ``values`` of ``key``: logarithmic when they span a wide
    range, one labelled tick per swept value (durations in human units); returns whether it
    is logarithmic."""
    xs = sorted({float(v) for v in values if np.isfinite(v)})
    log = is_wide(xs)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(xs) > 1 and float(np.min(np.diff(np.log10(xs)))) < 0.25:
            ax.tick_params(axis="x", labelrotation=45)
    if xs:
        ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _: param_tick(key, v) if is_duration_key(key)
        else (f"{v:,.0f}" if abs(v) >= 10 else f"{v:g}")))
    return log


def log_ticks(lo: float, hi: float, at_least: int = 3) -> list[float]:
    """At least ``at_least`` round tick values in ``[lo, hi]`` (``0 < lo < hi``) for a log axis:
    powers of ten, else 1-2-5 steps, else evenly spaced round numbers (``90, 100, 110, 120``)
    when the range is narrower than that."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1,), (1, 2, 5)):
        ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in mantissas if lo <= m * 10.0**k <= hi]
        if len(ticks) >= at_least:
            return ticks
    for nbins in range(at_least + 1, 10):
        ticks = [round(float(t), 12) for t in MaxNLocator(nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
                 if lo <= t <= hi]
        if len(ticks) >= at_least:
            return ticks
    return ticks


def readable_log_axis(axis: Axis, lo: float, hi: float) -> None:
    """A log axis over ``[lo, hi]`` with at least three labelled, plain-number ticks (the
    default locator labels one tick when the range spans less than a decade)."""
    axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


# -- the swept parameters' axes, shared by the sweep charts and the TTL trade-off ---------------


def param_label(key: str) -> str:
    """A swept key with its unit: ``tiers.gpu.capacity_bytes (GiB)``; durations carry their
    unit on each tick (``4 h``), so their label has none."""
    last = key.rsplit(".", 1)[-1]
    if last.endswith("capacity_bytes"):
        return f"{key} (GiB)"
    if last.endswith("capacity_blocks"):
        return f"{key} (blocks)"
    if is_duration_key(key):
        return key
    if last.endswith("_gbps"):
        return f"{key} (GB/s)"
    return key


def axis_values(sweep: SweepData, key: str) -> pd.Series:
    """A numeric swept column in display units (sizes in GiB)."""
    values = sweep.numeric[key]
    return values / GIB if key.endswith("capacity_bytes") else values


def others_note(sweep: SweepData, shown: list[str], how: str) -> str:
    others = [p for p in sweep.params if p not in shown and sweep.cells[p].nunique() > 1]
    return f" ({how} over {', '.join(others)})" if others else ""
