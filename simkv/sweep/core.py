"""``sweep()``: run a scenario over a grid of overrides, resumably, and collect one row per cell.

The output directory holds:

* ``sweep.yaml``: the scenario file, trace, ``--set`` overrides, grid and fingerprint (what
  to re-run to resume or reproduce), and ``scenario.yaml``: the resolved base scenario;
* ``cells/<id>.json``: one record per finished cell, written as the cell finishes;
  ``cells/<id>/`` the cell's full :class:`simkv.api.Result` with ``cell_outputs``;
* ``sweep.parquet``: one row per cell in grid order (see :mod:`simkv.sweep.results`);
* ``timing.json``: wall times (kept out of ``sweep.parquet`` so that stays deterministic);
* ``winner.yaml``: written by :func:`write_winner`.

A cell counts as done when its record exists and was made from the same base scenario and
trace (the fingerprint); errored cells re-run only with ``retry_failed``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from simkv.api import resolve_trace, run
from simkv.core.errors import ScenarioError, SimkvError
from simkv.core.fileio import atomic_write
from simkv.core.scenario import Scenario, load_scenario, scenario_from_dict
from simkv.model.engines import select_engine
from simkv.sweep import backends, manifest
from simkv.sweep.grid import GridLike, as_grid
from simkv.sweep.manifest import (
    SweepPlan,
    check_sweep_dir,
    file_digest,
    load_manifest,
    manifest_trace,
    write_manifest,
)
from simkv.sweep.results import (
    CLASS_PREFIX,
    FIXED_COLUMNS,
    CellRecord,
    build_table,
    flatten_summary,
    param_columns,
    read_record,
    write_record,
    write_table,
)
from simkv.sweep.winner import Winner
from simkv.traces.schema import Trace
from simkv.version import __version__

Backend = Literal["local", "ray"]


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep. ``workers``: processes (local) or CPUs of the local Ray instance;
    default all available cores; ``1`` runs the local sweep in this process."""

    backend: Backend = "local"
    workers: int | None = None
    ray_address: str | None = None
    cell_outputs: bool = False
    retry_failed: bool = False
    overwrite: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.backend not in ("local", "ray"):
            raise SimkvError(f"--backend: {self.backend!r} is not one of 'local', 'ray'")
        if self.workers is not None and self.workers < 1:
            raise SimkvError(f"--workers: must be >= 1, got {self.workers}")
        if self.ray_address and self.backend != "ray":
            raise SimkvError("--ray-address: only with --backend ray")


@dataclass(frozen=True)
class SweepProgress:
    """Reported before the first cell and after each: ``done`` of ``to_run`` cells ran in
    this call (``failed`` of them errored); ``total`` cells are in the grid."""

    total: int
    to_run: int
    done: int = 0
    failed: int = 0
    record: CellRecord | None = None


def _check_cell(sc: Scenario, trace: Trace | None) -> None:
    """What :func:`simkv.api.run` would reject before simulating."""
    select_engine(sc)
    if trace is not None and sc.block_size is not None and sc.block_size != trace.block_size:
        raise ScenarioError(f"block_size: scenario says {sc.block_size} but the trace "
                            f"{trace.path or ''} has block_size {trace.block_size}")


def plan_sweep(scenario: str | Path, trace: str | Path | None = None, grid: GridLike = (),
               overrides: Sequence[str] = ()) -> SweepPlan:
    """Load and validate everything before any cell runs: a bad key or value in any cell
    raises a :class:`ScenarioError` naming the cell and the key."""
    scenario_path = Path(scenario)
    base = load_scenario(scenario_path, list(overrides))
    g = as_grid(grid)
    if "trace" in g.keys:
        raise SimkvError("--grid trace: a sweep runs on one trace; run one sweep per trace")
    cells = g.cells()
    scenarios: dict[str, Scenario] = {}
    for cell in cells:
        try:
            sc = base.with_overrides(list(cell.overrides))  # type: ignore[arg-type]
            _check_cell(sc, None)
        except ScenarioError as exc:
            raise ScenarioError(f"grid cell [{cell.label()}]: {exc}") from None
        scenarios[cell.id] = sc
    tr = resolve_trace(base, trace, scenario_path)
    for cell in cells:
        try:
            _check_cell(scenarios[cell.id], tr)
        except ScenarioError as exc:
            raise ScenarioError(f"grid cell [{cell.label()}]: {exc}") from None
    digest = hashlib.sha256("\n".join([__version__, manifest.code_digest(), base.to_yaml(),
                                       file_digest(tr.path)]).encode())
    # The written scenario.yaml names the trace the sweep runs on (absolute: it re-runs from
    # any directory), not the scenario file's default; the fingerprint above predates this.
    base = replace(base, trace=str(Path(tr.path).resolve()) if tr.path else None)
    return SweepPlan(scenario_path, base, tr, g, cells, scenarios, tuple(overrides),
                     digest.hexdigest()[:16])


def probe_columns(plan: SweepPlan, n_requests: int = 50) -> list[str] | None:
    """The columns ``sweep.parquet`` will have, from the base scenario run on the first
    ``n_requests`` of the trace (and every prompt class of the whole trace), so an objective
    or a constraint naming no column fails before any cell runs. ``None`` if the probe
    itself fails (the cells will then report why)."""
    tr = plan.trace
    head = Trace(tr.table.slice(0, n_requests), tr.block_size, tr.source, tr.path)
    try:
        summary = run(replace(plan.base, engine="simpy"), head).summary
    except Exception:
        return None
    classes = {str(c) for c in tr.column("prompt_class").tolist()}
    metrics = list(flatten_summary(summary)) + [f"{CLASS_PREFIX}{c}" for c in sorted(classes)]
    return [*FIXED_COLUMNS, *param_columns(plan.grid, metrics).values(), *metrics]


def _is_done(rec: CellRecord | None, plan: SweepPlan, opts: SweepOptions, cells_dir: Path) -> bool:
    if rec is None or rec.fingerprint != plan.fingerprint:
        return False
    if rec.status != "ok":
        return not opts.retry_failed
    return not opts.cell_outputs or (cells_dir / rec.id / "summary.json").exists()


def run_plan(plan: SweepPlan, out_dir: str | Path, opts: SweepOptions | None = None,
             progress: Callable[[SweepProgress], Any] | None = None) -> pd.DataFrame:
    """Run the cells of ``plan`` not done yet, then assemble and write ``sweep.parquet``."""
    opts = opts or SweepOptions()
    out = Path(out_dir)
    cells_dir = out / "cells"
    if opts.backend == "ray" and opts.ray_address:
        backends.probe_ray_address(opts.ray_address)  # before anything is written
    if out.exists() and not out.is_dir():
        raise SimkvError(f"{out}: exists and is not a directory (the sweep directory)")
    check_sweep_dir(plan, out, opts.overwrite, opts.force)
    try:
        cells_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimkvError(f"{out}: cannot create the sweep directory: {exc.strerror or exc}") from None
    write_manifest(plan, out)
    # sweep.parquet exists only for a finished sweep of the current grid.
    (out / "sweep.parquet").unlink(missing_ok=True)

    todo = [c for c in plan.cells if not _is_done(read_record(cells_dir, c.id), plan, opts, cells_dir)]
    tasks = [backends.CellTask(plan.base, c, plan.fingerprint, opts.cell_outputs) for c in todo]
    state = SweepProgress(total=len(plan.cells), to_run=len(todo))
    if progress is not None:
        progress(state)

    def on_done(outcome: backends.CellOutcome) -> None:
        nonlocal state
        rec = outcome.record
        if outcome.result is not None:
            outcome.result.write(cells_dir / rec.id)
        write_record(cells_dir, rec)
        state = replace(state, done=state.done + 1, failed=state.failed + (rec.status != "ok"),
                        record=rec)
        if progress is not None:
            progress(state)

    t0 = time.perf_counter()
    workers = min(opts.workers or backends.available_cpus(), max(len(tasks), 1))
    if tasks and opts.backend == "ray":
        backends.run_ray(tasks, plan.trace, opts.workers, opts.ray_address, on_done)
    elif tasks and workers == 1:
        backends.run_inline(tasks, plan.trace, on_done)
    elif tasks:
        backends.run_pool(tasks, plan.trace, workers, on_done)
    wall = time.perf_counter() - t0

    records = {c.id: r for c in plan.cells if (r := read_record(cells_dir, c.id)) is not None}
    table = build_table(plan.grid, plan.cells, records)
    write_table(table, out / "sweep.parquet")
    timing = {
        "backend": opts.backend,
        "workers": workers if opts.backend == "local" else opts.workers,
        "wall_s": wall,
        "ran": [c.id for c in todo],
        "skipped": len(plan.cells) - len(todo),
        "cell_wall_s": {cid: r.wall_s for cid, r in records.items()},
        "cell_cpu_s": {cid: r.cpu_s for cid, r in records.items()},
    }
    atomic_write(out / "timing.json", lambda p: p.write_text(json.dumps(timing, indent=1) + "\n"))
    return table.to_pandas()


def sweep(
    scenario: str | Path,
    trace: str | Path | None = None,
    grid: GridLike = (),
    *,
    out_dir: str | Path,
    backend: Backend = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    overrides: Sequence[str] = (),
    cell_outputs: bool = False,
    retry_failed: bool = False,
    overwrite: bool = False,
    progress: Callable[[SweepProgress], Any] | None = None,
    force: bool = False,
) -> pd.DataFrame:
    """Simulate ``trace`` under ``scenario`` for every cell of ``grid`` and return the
    sweep table (also written to ``out_dir/sweep.parquet``).

    ``grid``: a :class:`Grid`, a mapping ``key → values`` or ``key=v1,v2`` strings;
    ``overrides``: ``--set`` style overrides of the base scenario. Cells already done in
    ``out_dir`` are not run again (errored ones only with ``retry_failed``); ``out_dir``
    holding another sweep's results is refused unless ``overwrite``, and one holding a sweep
    of the same base over another grid unless ``force``.
    """
    opts = SweepOptions(backend, workers, ray_address, cell_outputs, retry_failed, overwrite, force)
    plan = plan_sweep(scenario, trace, grid, overrides)
    return run_plan(plan, out_dir, opts, progress)


def cell_scenario(out_dir: str | Path, cid: str) -> Scenario:
    """The full resolved scenario of cell ``cid`` of the sweep in ``out_dir``, with ``trace``
    set to the trace the sweep ran on."""
    manifest = load_manifest(out_dir)
    rec = read_record(Path(out_dir) / "cells", cid)
    if rec is None:
        raise SimkvError(f"{out_dir}: no record of cell {cid}")
    base = scenario_from_dict(manifest["scenario"])
    sc = base.with_overrides([(k, v) for k, v in rec.overrides])  # type: ignore[misc]
    return replace(sc, trace=manifest_trace(manifest, Path(out_dir)) or sc.trace)


def write_winner(out_dir: str | Path, winner: Winner) -> Path:
    """Write ``out_dir/winner.yaml``: the winning cell's full scenario, ready for
    ``simkv run`` and the GPU replay, with a comment header saying why it won."""
    sc = cell_scenario(out_dir, winner.cell_id)
    rec = read_record(Path(out_dir) / "cells", winner.cell_id)
    params = ", ".join(f"{k}={json.dumps(v)}" for k, v in (rec.overrides if rec else []))
    lines = [
        f"# simkv sweep winner: cell {winner.cell_id} ({params or 'base scenario'})",
        f"# objective: {winner.direction} {winner.column} = {winner.value:.6g}"
        f" (best of {winner.feasible} feasible cells)",
    ]
    if winner.constraints:
        lines.append("# constraints: " + ", ".join(c.text or f"{c.metric}{c.op}{c.value}"
                                                   for c in winner.constraints))
    path = Path(out_dir) / "winner.yaml"
    text = "\n".join(lines) + "\n" + sc.relative_to(out_dir).to_yaml()
    atomic_write(path, lambda p: p.write_text(text))
    return path
