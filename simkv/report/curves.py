"""``simkv curve``: a trace's curve computed by :mod:`simkv.curves` (:func:`run_curve`), written
as ``curve.csv`` and ``curve.png`` and shown as a console table.

The numbers come from :mod:`simkv.curves`; this module only runs it on the command's inputs,
writes and shows them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from simkv.core.errors import SimkvError
from simkv.core.fileio import atomic_write, make_dir
from simkv.curves import GIB, capacity_curve, parse_values, ttl_curve
from simkv.traces.schema import Trace

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table


@dataclass(frozen=True)
class CurveRun:
    """What ``simkv curve`` computed and wrote."""

    kind: str
    df: pd.DataFrame
    trace: Trace
    block_bytes: int
    csv: Path
    png: Path


def run_curve(kind: str, trace: str | Path | None, values: str | None, out_dir: str | Path,
              scenario: str | Path | None = None) -> CurveRun:
    """Compute the ``capacity`` or ``ttl`` curve of a trace and write ``curve.csv`` and
    ``curve.png`` into ``out_dir`` (:func:`write_curve`).

    ``values`` is the comma-separated list given to ``--capacities`` / ``--ttls`` (``None``:
    the defaults). ``scenario`` supplies the trace when ``trace`` is ``None`` and the model
    shape, hence the bytes per block (``block_size * model.bytes_per_token``) of the GiB axis;
    its tiers are not used: the curve is that of :data:`~simkv.curves.CURVE_SCENARIO`'s configuration.
    """
    from simkv.api import resolve_trace
    from simkv.core.scenario import Scenario, load_scenario

    option = {"capacity": "--capacities", "ttl": "--ttls"}.get(kind)
    if option is None:
        raise SimkvError(f"curve: unknown kind {kind!r} (expected 'capacity' or 'ttl')")
    parsed = parse_values(values, option, integer=kind == "capacity") if values is not None else None
    sc = load_scenario(scenario) if scenario is not None else Scenario()
    if trace is not None and not Path(trace).exists():
        raise SimkvError(f"--trace: {str(trace)!r}: no such file")
    if trace is None and sc.trace is None:
        raise SimkvError("--trace: missing (pass --trace, or a --scenario with a 'trace' key)")
    tr = resolve_trace(sc, trace, Path(scenario) if scenario is not None else None)
    block_bytes = tr.block_size * sc.model.bytes_per_token
    if kind == "capacity":
        df = capacity_curve(tr, parsed)
        df.insert(1, "capacity_gib", df["capacity_blocks"] * block_bytes / GIB)
    else:
        df = ttl_curve(tr, parsed)
    name = tr.path.name if tr.path is not None else "trace"
    csv, png = write_curve(kind, df, Path(out_dir), name, block_bytes)
    return CurveRun(kind, df, tr, block_bytes, csv, png)


def write_curve(kind: str, df: pd.DataFrame, out_dir: Path, trace_name: str,
                block_bytes: int) -> tuple[Path, Path]:
    """Write ``df`` (a ``capacity`` or ``ttl`` curve of the trace ``trace_name``) as
    ``out_dir/curve.csv`` and ``out_dir/curve.png``; return both paths."""
    if kind == "capacity":
        x, title = "capacity_blocks", f"Token hit rate vs. LRU capacity — {trace_name}"
    else:
        x, title = "ttl_s", f"Token hit rate vs. sliding TTL (unlimited tier) — {trace_name}"
    out_dir = make_dir(out_dir)
    csv = out_dir / "curve.csv"
    atomic_write(csv, lambda tmp: df.to_csv(tmp, index=False))
    png = plot_curve(df, x, out_dir / "curve.png", title,
                     block_bytes=block_bytes if kind == "capacity" else None)
    return csv, png


def curve_table(run: CurveRun) -> Table:
    """The curve as a rich table (one row per point)."""
    from rich.table import Table

    df = run.df
    table = Table(title=f"{run.kind} curve: {len(run.trace):,} requests, "
                        f"{run.trace.n_unique_blocks:,} unique blocks")
    if run.kind == "capacity":
        table.add_column("capacity (blocks)", justify="right")
        table.add_column("capacity (GiB)", justify="right")
    else:
        table.add_column("TTL (s)", justify="right")
    table.add_column("token hit rate", justify="right")
    table.add_column("hit tokens", justify="right")
    for row in df.itertuples(index=False):
        rate = "n/a" if math.isnan(row.token_hit_rate) else f"{row.token_hit_rate:.2%}"
        hits = f"{row.hit_tokens:,}"
        if run.kind == "capacity":
            table.add_row(f"{row.capacity_blocks:,}", f"{row.capacity_gib:,.2f}", rate, hits)
        else:
            table.add_row(f"{row.ttl_s:,.4g}", rate, hits)
    return table


def curve_figure(df: pd.DataFrame, x: str, title: str, block_bytes: int | None = None) -> Figure:
    """Token hit rate (%) against ``x`` (``capacity_blocks`` or ``ttl_s``).

    Markers at the computed points; a log x-axis when the points span a decade or more
    (:func:`simkv.report.charts.style.is_wide`, as every report chart); TTLs in human units
    (``1 min``, ``4 h``); for capacity, a GiB axis on top when ``block_bytes`` is given.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    from simkv.report.charts.style import duration_axis, duration_label, is_wide

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 and v == int(v) else f"{v:,g}")

    xs = df[x].to_numpy(dtype=float)
    ys = df["token_hit_rate"].to_numpy(dtype=float) * 100.0
    fig = Figure(figsize=(8, 5), dpi=130)
    ax = fig.subplots()
    ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5)
    pos = xs[xs > 0]
    log = is_wide(pos)
    if log:
        ax.set_xscale("log")
    if x == "capacity_blocks":
        ax.xaxis.set_major_formatter(plain)
        ax.set_xlabel("GPU tier capacity (blocks" + (", log scale)" if log else ")"))
        if block_bytes:
            sec = ax.secondary_xaxis("top", functions=(lambda b: b * block_bytes / GIB,
                                                       lambda g: g * GIB / block_bytes))
            sec.set_xlabel(f"GPU tier capacity (GiB, {block_bytes / 2**20:g} MiB per block)")
            sec.xaxis.set_major_formatter(plain)
    else:
        if log:
            duration_axis(ax.xaxis, float(pos.min()), float(pos.max()))
        else:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: duration_label(v)))
        ax.set_xlabel("TTL (sliding" + (", log scale)" if log else ")"))
    ax.set_ylabel("Token hit rate (%)")
    ax.set_ylim(0, max(100.0, float(ys.max()) if len(ys) else 100.0))
    ax.set_title(title)
    ax.grid(True, which="major", linestyle="--", alpha=0.5)
    fig.tight_layout()
    return fig


def plot_curve(df: pd.DataFrame, x: str, path: str | Path, title: str,
               block_bytes: int | None = None) -> Path:
    """:func:`curve_figure` saved as a PNG at ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    curve_figure(df, x, title, block_bytes).savefig(out)
    return out
