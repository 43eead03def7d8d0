"""The look shared by every report chart: rc settings, tier colours, figure size, saving.

Every chart is titled, has labelled axes with units and a legend where there is more than
one series, and is drawn at 9x5.5 inches, 130 dpi, 10-12 pt fonts so it reads at 100%.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from simkv.model.system import TIER_NAMES

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
TIER_LABEL = {"gpu": "GPU (HBM)", "cpu": "CPU (host RAM)", "disk": "disk (NVMe)", "archive": "archive (S3)"}
TIER_COLOR = {"gpu": "#4C72B0", "cpu": "#8172B3", "disk": "#DD8452", "archive": "#55A868"}
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
