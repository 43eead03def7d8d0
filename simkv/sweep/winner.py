"""Winner selection: the best ``ok`` cell of a sweep under constraints.

An objective is an alias (``cost_saved``, ``token_hit_rate``, ``ttft_p90``) or any numeric
column of ``sweep.parquet`` with a direction; a constraint is ``metric OP number`` with OP one
of ``< <= > >= ==``. Ties go to the cell that comes first in grid order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from simkv.core.errors import SimkvError
from simkv.metrics.objectives import Constraint, Direction, Objective, resolve_column


class NoFeasibleCell(SimkvError):
    """No ``ok`` cell satisfies every constraint."""


@dataclass(frozen=True)
class Winner:
    """The chosen cell: its row of ``sweep.parquet`` and what it was chosen by."""

    cell_id: str
    position: int
    column: str
    direction: Direction
    value: float
    row: dict[str, Any]
    feasible: int
    constraints: tuple[Constraint, ...] = ()


def _as_constraints(items: Sequence[str | Constraint]) -> tuple[Constraint, ...]:
    return tuple(c if isinstance(c, Constraint) else Constraint.parse(c) for c in items)


def select_winner(df: pd.DataFrame, objective: str | Objective,
                  constraints: Sequence[str | Constraint] = (),
                  direction: Direction | None = None) -> Winner:
    """The best ``ok`` row of ``df`` (a sweep's table, in grid order) that satisfies every
    constraint; ties go to the earliest row. :class:`NoFeasibleCell` if there is none."""
    obj = objective if isinstance(objective, Objective) else Objective(objective, direction)
    cons = _as_constraints(constraints)
    column, dirn = obj.resolve(list(df.columns))
    values = pd.to_numeric(df[column], errors="coerce")
    if values.notna().sum() == 0 and df[column].notna().any():
        raise SimkvError(f"--objective {obj.name}: column {column!r} is not numeric")
    ok = (df["status"] == "ok").fillna(False).astype(bool) if "status" in df else values.notna()
    feasible = ok & values.notna()
    for c in cons:
        feasible &= c.mask(df)
    if not feasible.any():
        raise NoFeasibleCell(_infeasible_message(df, ok, cons))
    rows = np.flatnonzero(feasible.to_numpy())
    candidates = values.to_numpy(dtype=float)[rows]
    k = int(np.argmax(candidates) if dirn == "max" else np.argmin(candidates))  # first on ties
    position = int(rows[k])
    row = {str(c): _plain(v) for c, v in df.iloc[position].items()}
    return Winner(str(row.get("cell_id", position)), position, column, dirn,
                  float(candidates[k]), row, len(rows), cons)


def _plain(v: Any) -> Any:
    """NumPy/pandas scalars as Python values, missing as ``None``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):
        v = v.item()
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _infeasible_message(df: pd.DataFrame, ok: pd.Series, cons: Sequence[Constraint]) -> str:
    n_ok = int(ok.sum())
    if n_ok == 0:
        return f"no feasible cell: none of the {len(df)} cells ran successfully"
    parts = []
    for c in cons:
        column = resolve_column(c.metric, list(df.columns), f"--constraint {c.text!r}")
        vals = pd.to_numeric(df.loc[ok, column], errors="coerce")
        n = int(c.mask(df)[ok].sum())
        lo, hi = vals.min(), vals.max()
        parts.append(f"'{c.text}' holds in {n} ({column} ranges {lo:.6g} .. {hi:.6g})")
    return (f"no feasible cell: of {n_ok} successful cells, none satisfies every constraint: "
            + "; ".join(parts))
