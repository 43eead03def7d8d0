"""Which way is better for every summary metric: the one table that sweeps, winner selection
and reports rank by; and the constraints (``metric OP number``) they filter cells by.

An objective names a summary metric, or one of the short :data:`ALIASES`; its direction is
:func:`direction_of` the metric unless the user overrides it. Lower is better for latencies
(``ttft_*``, ``e2e_*``, ``tpot_*``, queue, load and prefill times), for what the system
spends (archive, request and transfer dollars, bytes stored, evictions, expirations, PUTs and
GETs) and for load (utilisation, write demand, preemptions); higher is better for the rest:
hit rates and ratios, throughput, what the cache saves (``cost_saved_dollars``,
``gpu_seconds_saved``, ``tokens_avoided``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from simkv.core.errors import SimkvError
from simkv.metrics.format import metric_label

Direction = Literal["max", "min"]

#: Short names accepted by ``--objective`` → summary column.
ALIASES: dict[str, str] = {
    "cost_saved": "cost_saved_dollars",
    "token_hit_rate": "token_hit_rate",
    "ttft_p50": "ttft_p50_s",
    "ttft_p90": "ttft_p90_s",
    "ttft_p99": "ttft_p99_s",
}

_LOWER_PREFIXES = ("ttft_", "e2e_", "tpot_", "preemptions", "queue_", "load_", "prefill_",
                   "evictions", "expirations", "storage_", "archive_storage", "archive_request",
                   "archive_puts", "archive_gets", "archive_refreshes", "archive_skipped", "archive_upload",
                   "archive_worker", "disk_write", "insertions", "hydrations", "offloads")
_LOWER_NAMES = frozenset({"transfer_dollars", "request_cost_dollars", "gpu_utilization",
                          "gpu_busy_s", "gpus_suggested", "makespan_s", "duration_s"})


def column_of(name: str) -> str:
    """The summary column an objective name means (an alias, or the name itself)."""
    return ALIASES.get(name, name)


def direction_of(metric: str) -> Direction:
    """``'min'`` if lower values of ``metric`` (an alias or a summary column) are better, else
    ``'max'``."""
    column = column_of(metric)
    if column in _LOWER_NAMES or column.startswith(_LOWER_PREFIXES):
        return "min"
    return "max"


@dataclass(frozen=True)
class Objective:
    """What to rank cells by: ``name`` (an alias or a summary column) and the direction that is
    better (``None``: the metric's own, :func:`direction_of`). Sweeps' winners, ``--objective``
    and reports all take this one."""

    name: str
    direction: Direction | None = None

    def __post_init__(self) -> None:
        if self.direction not in (None, "max", "min"):
            raise SimkvError(f"objective {self.name!r}: direction must be 'max' or 'min', "
                             f"got {self.direction!r}")

    @property
    def metric(self) -> str:
        """The summary column it names."""
        return column_of(self.name)

    @property
    def better(self) -> Direction:
        """``max`` or ``min``: the direction given, else the metric's own."""
        return self.direction or direction_of(self.name)

    @property
    def label(self) -> str:
        return f"{metric_label(self.metric)} ({'higher' if self.better == 'max' else 'lower'} is better)"

    def best(self, values: pd.Series) -> float:
        return float(values.max() if self.better == "max" else values.min())

    def resolve(self, columns: Sequence[str]) -> tuple[str, Direction]:
        """The column of ``columns`` it names (:func:`resolve_column`) and its direction."""
        column = resolve_column(self.name, columns, f"--objective {self.name}")
        return column, self.direction or direction_of(column)


# -- constraints ------------------------------------------------------------------------------

OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt,
}
_CONSTRAINT = re.compile(r"\s*([A-Za-z_][\w.:\-]*)\s*(<=|>=|==|<|>)\s*(\S.*?)\s*")


def resolve_column(name: str, columns: Sequence[str], what: str) -> str:
    """An alias, a column, or a column with its ``_s`` unit suffix left off (``ttft_p99``)."""
    if name in ALIASES:
        column = ALIASES[name]
        if column in columns:
            return column
        raise SimkvError(f"{what}: the sweep table has no {column!r} column (did any cell "
                         "run successfully?)")
    if name in columns:
        return name
    if f"{name}_s" in columns:
        return f"{name}_s"
    raise SimkvError(f"{what}: unknown metric {name!r} (aliases: {', '.join(ALIASES)}; "
                     "or any numeric column of sweep.parquet, e.g. token_hit_rate_gpu)")


@dataclass(frozen=True)
class Constraint:
    """``metric OP value``, parsed from text such as ``'ttft_p90<2.0'``."""

    metric: str
    op: str
    value: float
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = _CONSTRAINT.fullmatch(text)
        if not m:
            raise SimkvError(f"--constraint {text!r}: expected METRIC OP NUMBER with OP one of "
                             "< <= > >= == (e.g. 'ttft_p90<2.0')")
        metric, op, raw = m.groups()
        try:
            value = float(raw)
        except ValueError:
            raise SimkvError(f"--constraint {text!r}: {raw!r} is not a number") from None
        return cls(metric, op, value, text.strip())

    def mask(self, df: pd.DataFrame) -> pd.Series:
        """Which rows satisfy the constraint (missing values never do)."""
        column = resolve_column(self.metric, list(df.columns), f"--constraint {self.text!r}")
        values = pd.to_numeric(df[column], errors="coerce")
        if values.notna().sum() == 0 and df[column].notna().any():
            raise SimkvError(f"--constraint {self.text!r}: column {column!r} is not numeric")
        return OPERATORS[self.op](values, self.value).fillna(False).astype(bool)
