"""What a report reads: a run directory or a sweep directory, loaded and described.

A **run directory** is what :meth:`simkv.api.Result.write` writes (``summary.json``,
``requests.parquet``, ``timeline.parquet``, ``scenario.yaml``). A **sweep directory** holds
``sweep.parquet`` (one row per cell: ``cell_id``, one column per swept parameter named by its
dotted scenario key, ``status``, ``error``, then every summary metric), ``sweep.yaml`` (the
base scenario and the ``grid``) and maybe ``winner.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from simkv.core.errors import SimkvError
from simkv.core.schema import read_requests
from simkv.metrics.objectives import Objective, column_of, direction_of
from simkv.metrics.timeline import choose_bin_s

RUN_FILES = ("summary.json", "requests.parquet", "timeline.parquet", "scenario.yaml")
SWEEP_FILES = ("sweep.parquet", "sweep.yaml")


def parse_objective(text: str) -> Objective:
    """An alias (``cost_saved``, ``token_hit_rate``, ``ttft_p90``) or any summary metric,
    optionally suffixed ``:max`` / ``:min`` (default: the metric's own direction,
    :func:`simkv.metrics.objectives.direction_of`)."""
    name, _, direction = text.partition(":")
    if direction and direction not in ("max", "min"):
        raise SimkvError(f"--objective {text!r}: the direction after ':' must be max or min")
    return Objective(column_of(name), direction or direction_of(name))  # type: ignore[arg-type]


# -- run directories ---------------------------------------------------------------------------


@dataclass
class RunData:
    """One run directory, loaded: the summary, and the per-request and per-bin frames
    (``None`` when that file is absent) and the resolved scenario as a mapping."""

    path: Path
    summary: dict[str, Any]
    requests: pd.DataFrame | None
    timeline: pd.DataFrame | None
    scenario: dict[str, Any]

    @property
    def bin_s(self) -> float:
        """The timeline's bin width: the scenario's ``timeline_bin_s``, the automatic choice
        where that is null, else inferred from the timeline."""
        if self.scenario.get("timeline_bin_s") is not None:
            return float(self.scenario["timeline_bin_s"])
        if self.requests is not None:
            arrivals = self.requests["arrival_s"]
            return choose_bin_s(float(arrivals.max()) if len(arrivals) else 0.0)
        if self.timeline is not None and len(self.timeline) > 1:
            return float(self.timeline["t_s"].diff().min())
        return 60.0


def load_run(path: Path) -> RunData:
    """Read a run directory (``summary.json`` is required, the rest optional)."""
    summary = read_json(path / "summary.json")
    requests = read_requests(path / "requests.parquet") if (path / "requests.parquet").exists() else None
    timeline = _read_parquet(path / "timeline.parquet")
    scenario = read_yaml(path / "scenario.yaml") if (path / "scenario.yaml").exists() else {}
    return RunData(path, summary, requests, timeline, scenario)


# -- sweep directories -------------------------------------------------------------------------


@dataclass
class SweepData:
    """One sweep directory, loaded. ``params`` are the swept columns of ``cells``, in grid
    order; ``numeric`` maps each numeric one to its values as floats (bytes for sizes)."""

    path: Path
    cells: pd.DataFrame
    spec: dict[str, Any]
    params: list[str]
    numeric: dict[str, pd.Series]
    winner: dict[str, Any] | None

    @property
    def ok(self) -> pd.DataFrame:
        """The cells that ran (``status == 'ok'``)."""
        if "status" not in self.cells.columns:
            return self.cells
        return self.cells[self.cells["status"] == "ok"]

    @property
    def failed(self) -> pd.DataFrame:
        if "status" not in self.cells.columns:
            return self.cells.iloc[0:0]
        return self.cells[self.cells["status"] != "ok"]

    @property
    def base_scenario(self) -> str | None:
        for key in ("scenario_path", "scenario", "base_scenario", "base"):
            if isinstance(self.spec.get(key), str):
                return self.spec[key]
        return None

    @property
    def categorical(self) -> list[str]:
        return [p for p in self.params if p not in self.numeric]


def _scenario_sections() -> set[str]:
    from simkv.core.scenario import Scenario

    return {f.name for f in dataclasses.fields(Scenario)}


def swept_params(cells: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """The swept parameter columns: ``sweep.yaml``'s grid keys found in ``sweep.parquet``,
    else the dotted columns that name a scenario key (``ttl.params.alpha``)."""
    grid = spec.get("grid")
    if isinstance(grid, dict):
        keys = [str(k) for k in grid if str(k) in cells.columns]
        if keys:
            return keys
    sections = _scenario_sections()
    return [c for c in cells.columns if "." in c and c.split(".", 1)[0] in sections]


def numeric_values(column: pd.Series, key: str) -> pd.Series | None:
    """The column as floats, or ``None`` if it is not numeric. Sizes such as ``'8GiB'`` under a
    ``capacity_bytes`` key become bytes."""
    if pd.api.types.is_bool_dtype(column):
        return None
    if pd.api.types.is_numeric_dtype(column):
        return column.astype(float)
    if key.endswith("capacity_bytes"):
        from simkv.core.scenario import parse_bytes

        try:
            return column.map(lambda v: float(parse_bytes(v, key)) if v is not None else math.nan)
        except SimkvError:
            return None
    converted = pd.to_numeric(column, errors="coerce")
    if converted.notna().sum() == column.notna().sum() and column.notna().any():
        return converted.astype(float)
    return None


def load_sweep(path: Path) -> SweepData:
    """Read a sweep directory and find its swept parameters."""
    try:
        cells = pd.read_parquet(path / "sweep.parquet")
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise SimkvError(f"{path / 'sweep.parquet'}: cannot read: {exc}") from None
    spec = read_yaml(path / "sweep.yaml") if (path / "sweep.yaml").exists() else {}
    params = swept_params(cells, spec)
    numeric = {}
    for p in params:
        values = numeric_values(cells[p], p)
        if values is not None:
            numeric[p] = values
    winner = read_yaml(path / "winner.yaml") if (path / "winner.yaml").exists() else None
    return SweepData(path, cells, spec, params, numeric, winner)


# -- detection ---------------------------------------------------------------------------------


def detect(path: Path) -> Literal["run", "sweep"]:
    """Whether ``path`` is a run or a sweep directory; a :class:`SimkvError` naming the
    directory and the files expected if it is neither."""
    if not path.is_dir():
        raise SimkvError(f"{path}: no such directory (expected a run directory with "
                         f"{', '.join(RUN_FILES)} or a sweep directory with {', '.join(SWEEP_FILES)})")
    if (path / "sweep.parquet").exists():
        return "sweep"
    if (path / "summary.json").exists():
        return "run"
    raise SimkvError(f"{path}: neither a run directory (expected {', '.join(RUN_FILES)}, as "
                     f"written by 'simkv run -o') nor a sweep directory (expected "
                     f"{', '.join(SWEEP_FILES)}, as written by 'simkv sweep -o')")


def _read_parquet(path: Path) -> pd.DataFrame | None:
    """An optional Parquet file of a run directory; a truncated or corrupt one is an error
    naming the file."""
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise SimkvError(f"{path}: cannot read: {exc}") from None


def read_json(path: Path) -> dict[str, Any]:
    """A results file's JSON object, or a :class:`SimkvError` naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SimkvError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise SimkvError(f"{path}: expected a JSON object")
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """A results file's YAML mapping (empty file: ``{}``), or a :class:`SimkvError` naming the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SimkvError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise SimkvError(f"{path}: expected a YAML mapping")
    return data
