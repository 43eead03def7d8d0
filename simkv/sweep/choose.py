"""The objective of a sweep run from the command line: checked before any cell runs, then
recorded and its winner written once the cells have finished."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from simkv.core.errors import SimkvError
from simkv.sweep.core import probe_columns, write_winner
from simkv.sweep.manifest import SweepPlan, record_objective
from simkv.sweep.winner import Constraint, Objective, Winner, resolve_column, select_winner


def parse_objective(objective: str | None, maximize: bool | None,
                    constraints: Sequence[str] = ()) -> tuple[Objective | None, list[Constraint]]:
    """The objective (``None`` without one; direction from ``maximize`` when given, else the
    metric's own) and the parsed constraints; constraints without an objective are an error."""
    cons = [Constraint.parse(c) for c in constraints]
    if cons and objective is None:
        raise SimkvError("--constraint: give an --objective to choose a winner by")
    if objective is None:
        return None, cons
    return Objective(objective, None if maximize is None else "max" if maximize else "min"), cons


def check_objective(plan: SweepPlan, objective: Objective | None,
                    constraints: Sequence[Constraint] = ()) -> None:
    """Fail now, not after every cell ran, when the objective or a constraint names no column
    of the table ``plan`` will write (:func:`probe_columns`). Nothing is checked without an
    objective, or when the probe itself fails (the cells will then report why)."""
    if objective is None:
        return
    columns = probe_columns(plan)
    if columns is None:
        return
    objective.resolve(columns)
    for c in constraints:
        resolve_column(c.metric, columns, f"--constraint {c.text!r}")


def choose_winner(out_dir: str | Path, df: pd.DataFrame, objective: Objective,
                  constraints: Sequence[Constraint] = ()) -> tuple[Winner, Path]:
    """Record the objective and constraints in ``sweep.yaml`` (``simkv report`` ranks by the
    same), remove any earlier ``winner.yaml`` (a stale winner is never left behind), then
    select the winner of ``df`` and write it; returns it and the ``winner.yaml`` path.
    :class:`NoFeasibleCell` leaves the record written and no ``winner.yaml``."""
    out = Path(out_dir)
    column, direction = objective.resolve(list(df.columns))
    record_objective(out, column, direction, constraints)
    (out / "winner.yaml").unlink(missing_ok=True)
    win = select_winner(df, objective, constraints)
    return win, write_winner(out, win)
