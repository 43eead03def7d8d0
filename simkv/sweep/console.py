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


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"  # undefined (a ratio over zero), or no value: the cell failed
    if isinstance(v, float):
        return f"{v:.4g}"
    return escape(str(v))


def top_cells_table(df: pd.DataFrame, n: int = 10, objective: tuple[str, Direction] | None = None,
                    constraints: Sequence[Constraint] = (), winner: Winner | None = None) -> Table:
    """The best ``n`` ok cells by the objective (feasible ones first), or the first ``n``
    cells in grid order without one."""
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
    title = f"top {min(n, len(rows))} of {len(df)} cells"
    if objective is not None:
        title += f" by {objective[1]} {objective[0]}"
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("cell", no_wrap=True)
    for c in params:
        table.add_column(escape(c), justify="right", overflow="fold")
    table.add_column("status")
    for m in metrics:
        table.add_column(escape(m), justify="right", overflow="fold")
    for label, row in rows.head(n).iterrows():
        mark = "★" if winner is not None and row["cell_id"] == winner.cell_id else ""
        style = None if feasible[label] else "dim"
        status = row["status"] if row["status"] == "ok" else f"[red]{_fmt(row['status'])}[/]"
        table.add_row(mark, str(row["cell_id"]), *(_fmt(row[c]) for c in params), status,
                      *(_fmt(row[m]) for m in metrics), style=style)
    return table
