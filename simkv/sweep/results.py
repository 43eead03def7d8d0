"""Sweep results on disk: one small JSON per finished cell, assembled into ``sweep.parquet``.

Each cell's record is written atomically (temp file + ``os.replace``) as soon as the cell
finishes, so an interrupted sweep loses at most the cells in flight. ``sweep.parquet`` is
assembled from those files in grid order and holds no wall times, so the same sweep gives
the same bytes whatever the backend, the number of workers or the interruptions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from simkv.core.fileio import atomic_write
from simkv.sweep.grid import Cell, Grid

Status = Literal["ok", "error"]
FIXED_COLUMNS = ("cell_id", "status", "error")
CLASS_PREFIX = "token_hit_rate_class_"


@dataclass
class CellRecord:
    """The outcome of one cell. ``fingerprint`` ties it to the base scenario and trace it ran
    on; ``wall_s``, ``cpu_s`` and ``traceback`` stay in the JSON, never in ``sweep.parquet``."""

    id: str
    overrides: list[list[Any]]
    fingerprint: str
    status: Status
    error: str | None = None
    summary: dict[str, Any] | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    traceback: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CellRecord:
        return cls(**json.loads(text))


def record_path(cells_dir: Path, cid: str) -> Path:
    return cells_dir / f"{cid}.json"


def write_record(cells_dir: Path, record: CellRecord) -> None:
    cells_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(record_path(cells_dir, record.id), lambda p: p.write_text(record.to_json()))


def read_record(cells_dir: Path, cid: str) -> CellRecord | None:
    """The stored record of cell ``cid``; ``None`` if absent or unreadable (it re-runs)."""
    try:
        return CellRecord.from_json(record_path(cells_dir, cid).read_text())
    except (OSError, ValueError, TypeError):
        return None


def flatten_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary with ``token_hit_rate_by_class`` spread into ``token_hit_rate_class_<name>``."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if k == "token_hit_rate_by_class" and isinstance(v, Mapping):
            for c in sorted(v):
                out[f"{CLASS_PREFIX}{c}"] = v[c]
        elif isinstance(v, Mapping | list | tuple):
            out[k] = json.dumps(v, sort_keys=True)
        else:
            out[k] = v
    return out


def _arrow_type(values: Sequence[Any]) -> pa.DataType:
    """One Arrow type for a column: bool, int64, float64 or string (mixed → string)."""
    present = [v for v in values if v is not None]
    if not present:
        return pa.float64()
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _column(values: Sequence[Any]) -> pa.Array:
    tp = _arrow_type(values)
    if tp == pa.string():
        values = [None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                  for v in values]
    elif tp == pa.float64():
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, type=tp)


def param_columns(grid: Grid, metric_names: Sequence[str]) -> dict[str, str]:
    """Grid key → its column name: the key, or ``param.<key>`` where a metric or a fixed
    column already has that name."""
    taken = set(metric_names) | set(FIXED_COLUMNS)
    return {k: (f"param.{k}" if k in taken else k) for k in grid.keys}


def build_table(grid: Grid, cells: Sequence[Cell], records: Mapping[str, CellRecord]) -> pa.Table:
    """One row per cell in grid order: ``cell_id``, the swept parameters, ``status``,
    ``error``, then every summary metric (metric order: the first ok cell's summary, any
    other keys after it, sorted)."""
    flat = [flatten_summary(records[c.id].summary or {}) if c.id in records else {} for c in cells]
    metrics: list[str] = []
    seen: set[str] = set()
    ordered = [f for f, c in zip(flat, cells, strict=True)
               if c.id in records and records[c.id].status == "ok"]
    for f in ordered[:1]:
        metrics.extend(f)
        seen.update(f)
    extra = sorted({k for f in ordered for k in f} - seen)
    metrics.extend(extra)
    names = param_columns(grid, metrics)
    cols: dict[str, list[Any]] = {"cell_id": [c.id for c in cells]}
    for i, key in enumerate(grid.keys):
        cols[names[key]] = [c.overrides[i][1] for c in cells]
    cols["status"] = [records[c.id].status if c.id in records else None for c in cells]
    cols["error"] = [records[c.id].error if c.id in records else None for c in cells]
    for m in metrics:
        cols[m] = [f.get(m) for f in flat]
    return pa.table({k: _column(v) for k, v in cols.items()})


def write_table(table: pa.Table, path: Path) -> None:
    """``sweep.parquet``, atomically; the same table always gives the same bytes."""
    atomic_write(path, lambda p: pq.write_table(table, p, compression="zstd"))
