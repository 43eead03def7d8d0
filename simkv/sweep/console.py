"""Terminal output of ``simkv sweep``: the progress bar and the table of top cells."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from simkv.metrics.format import OVERLOAD_CAPTION, fmt_metric, overload_flags
from simkv.sweep.core import SweepProgress
from simkv.sweep.winner import Constraint, Direction, Winner, resolve_column

#: Metrics every table shows (when present), after the swept parameters.
HEADLINE = ("token_hit_rate", "cost_saved_dollars", "ttft_p90_s")


@contextmanager
def sweep_progress(console: Console) -> Iterator[Callable[[SweepProgress], None]]:
    """A rich progress bar with ETA over the cells this call runs; yields the callback."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("cells", total=None, failed="")

        def update(p: SweepProgress) -> None:
            failed = f"[red]{p.failed} failed[/]" if p.failed else ""
            bar.update(task, total=p.to_run, completed=p.done, failed=failed,
                       description=f"cells ({p.total - p.to_run} done before)"
                       if p.total > p.to_run else "cells")

        yield update


def param_columns(df: pd.DataFrame) -> list[str]:
    """The swept parameters: the columns between ``cell_id`` and ``status``."""
    cols = list(df.columns)
    return cols[cols.index("cell_id") + 1 : cols.index("status")]


#: Short column headers for the headline metrics (the table must fit 80 columns).
SHORT = {"token_hit_rate": "hit rate", "cost_saved_dollars": "$ saved", "ttft_p90_s": "TTFT p90",
         "ttft_p50_s": "TTFT p50", "ttft_p99_s": "TTFT p99", "gpu_utilization": "GPU util"}


def _fmt(v: Any, metric: str | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"  # undefined (a ratio over zero), or no value: the cell failed
    if metric is not None and isinstance(v, int | float) and not isinstance(v, bool):
        return escape(fmt_metric(metric, v))
    if isinstance(v, float):
        return f"{v:.4g}"
    return escape(str(v))


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its shortest suffix of whole components that no other key ends
    with (``tiers.gpu.capacity_bytes`` → ``gpu.capacity_bytes`` beside a disk capacity)."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for i in range(len(parts) - 1, -1, -1):
            suffix = ".".join(parts[i:])
            if not any(o != k and (o == suffix or o.endswith("." + suffix)) for o in keys):
                break
        out[k] = suffix
    return out


#: Abbreviations of scenario-key words in column headers.
ABBREV = {"capacity_bytes": "cap", "capacity_blocks": "cap blocks", "eviction": "evict",
          "write_policy": "write", "heuristic": "ttl"}


def _header(label: str, width: int = 6) -> str:
    """A header broken onto lines at dots, underscores or spaces (the cells never wrap)."""
    parts = label.split(".")
    parts[-1] = ABBREV.get(parts[-1], parts[-1])
    words = ".".join(parts).replace("_", " ").replace(".", ". ").split()
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 1 + len(w) <= width:
            lines[-1] += ("" if lines[-1].endswith(".") else " ") + w
        else:
            lines.append(w)
    return escape("\n".join(lines))


def top_cells_table(df: pd.DataFrame, n: int = 10, objective: tuple[str, Direction] | None = None,
                    constraints: Sequence[Constraint] = (), winner: Winner | None = None) -> Table:
    """The best ``n`` ok cells by the objective (feasible ones first), or the first ``n``
    cells in grid order without one. Headers are short and break onto lines; cells never
    wrap, so a number is never split. An ``overload`` column (yellow) names the resources
    a cell overloads (GPU utilisation >= 1, disk writes or the archive worker behind)."""
    params = param_columns(df)
    metrics = [m for m in HEADLINE if m in df.columns]
    extra = [objective[0]] if objective else []
    extra += [resolve_column(c.metric, list(df.columns), c.text) for c in constraints]
    for m in extra:
        if m not in metrics and m not in params:
            metrics.append(m)
    rows = df
    feasible = pd.Series(True, index=df.index)
    if objective is not None:
        rows = df[df["status"] == "ok"]
        for c in constraints:
            feasible &= c.mask(df)
        key = pd.to_numeric(rows[objective[0]], errors="coerce")
        order = pd.DataFrame({"infeasible": ~feasible[rows.index],
                              "key": -key if objective[1] == "max" else key,
                              "pos": range(len(rows))}, index=rows.index)
        rows = rows.loc[order.sort_values(["infeasible", "key", "pos"]).index]
    shown = rows.head(n)
    overload = ("overload" in df.columns
                and shown["overload"].fillna("").astype(str).str.len().gt(0).any())
    title = f"top {min(n, len(rows))} of {len(df)} cells"
    if objective is not None:
        title += f" by {objective[1]} {objective[0]}"
    table = Table(title=escape(title), title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("cell", no_wrap=True)
    short = short_keys(params)
    for c in params:
        table.add_column(_header(short[c]), justify="right", no_wrap=True)
    for m in metrics:
        table.add_column(_header(SHORT.get(m, m)), justify="right", no_wrap=True)
    if overload:
        table.add_column("warn", style="yellow")
        table.caption = escape(OVERLOAD_CAPTION)
    for label, row in shown.iterrows():
        mark = "★" if winner is not None and row["cell_id"] == winner.cell_id else " "
        style = None if feasible[label] else "dim"
        values = [_fmt(row[m], m) for m in metrics]
        if row["status"] != "ok" and values:
            values[0] = f"[red]{_fmt(row['status'])}[/]"  # a failed cell has no metrics
        cells = [mark + str(row["cell_id"]), *(_fmt(row[c]) for c in params), *values]
        if overload:
            cells.append(escape(overload_flags(row["overload"])))
        table.add_row(*cells, style=style)
    return table
