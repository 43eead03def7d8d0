"""A sweep directory's manifest (``sweep.yaml`` and ``scenario.yaml``): what was swept (the
:class:`SweepPlan`), on which trace, by which code; the check that a directory holds this
sweep (a resume) or another one (refused unless overwritten); the objective and constraints
recorded for the report."""

from __future__ import annotations

import functools
import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simkv.core.errors import SimkvError
from simkv.core.fileio import atomic_write
from simkv.core.scenario import Scenario
from simkv.sweep.grid import Cell, Grid
from simkv.sweep.winner import Constraint
from simkv.traces.schema import Trace
from simkv.version import __version__


@dataclass
class SweepPlan:
    """A validated sweep: the base scenario, the trace, and every cell's resolved scenario."""

    scenario_path: Path
    base: Scenario
    trace: Trace
    grid: Grid
    cells: list[Cell]
    scenarios: dict[str, Scenario]
    overrides: tuple[str, ...] = ()
    fingerprint: str = field(default="")


def file_digest(path: Path | None) -> str:
    """SHA-256 of a file's bytes ("" for none): what a sweep's fingerprint knows of its trace."""
    if path is None:
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.cache
def code_digest() -> str:
    """A digest of simkv's own source (every ``.py`` file of the package, by relative path),
    so a sweep's fingerprint changes with the simulator's code, not only its version string:
    resuming after a code change re-runs the cells instead of reusing stale ones."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _manifest_differences(old: dict[str, Any], plan: SweepPlan, out: Path) -> list[str]:
    """What differs between an existing sweep directory's manifest and ``plan``."""
    diffs = []
    if manifest_trace(old, out) != plan.base.trace:
        diffs.append(f"trace {manifest_trace(old, out)} -> {plan.base.trace}")
    if list(old.get("set") or []) != list(plan.overrides):
        diffs.append(f"--set {old.get('set') or []} -> {list(plan.overrides)}")
    before = _flat({k: v for k, v in (old.get("scenario") or {}).items() if k != "trace"})
    now = _flat({k: v for k, v in plan.base.relative_to(out).to_dict().items() if k != "trace"})
    keys = [k for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]
    if keys:
        diffs.append(f"scenario keys {', '.join(keys)}")
    if old.get("simkv_version") != __version__:
        diffs.append(f"simkv version {old.get('simkv_version')} -> {__version__}")
    if diffs or old.get("code") == code_digest():
        return diffs or ["the trace file's contents"]
    return []  # the same sweep, run by changed simkv code


def code_changed(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds cells of this sweep made by other simkv code (they re-run)."""
    path = Path(out_dir) / "sweep.yaml"
    return path.exists() and load_manifest(out_dir).get("code") not in (None, code_digest())


def grid_differences(old: dict[str, Any], plan: SweepPlan) -> list[str]:
    """How ``plan``'s grid differs from the one a sweep manifest recorded, one ``key: old ->
    new`` per differing axis (empty: the same cells, in whatever axis or value order)."""
    recorded = old.get("grid")
    if not isinstance(recorded, dict):
        return []  # a manifest from before grids were recorded: nothing to compare
    try:
        before = Grid.from_mapping(recorded, "sweep.yaml grid")
    except SimkvError:
        return ["the recorded grid is unreadable"]
    if {c.id for c in before.cells()} == {c.id for c in plan.cells}:
        return []
    now = plan.grid.to_dict()

    def values(v: list[Any] | None) -> str:
        return ",".join(map(str, v)) if v else "(not swept)"

    return [f"{k}: {values(recorded.get(k))} -> {values(now.get(k))}"
            for k in dict.fromkeys([*recorded, *now])
            if sorted(map(str, recorded.get(k) or [])) != sorted(map(str, now.get(k) or []))]


def check_sweep_dir(plan: SweepPlan, out: Path, overwrite: bool = False, force: bool = False) -> None:
    """Refuse to run ``plan`` into a directory holding results of a different sweep (another
    base scenario, trace or --set overrides: its cell records would be discarded), naming
    what differs; with ``overwrite`` remove those results instead. A sweep of the same base
    over another grid would replace the directory's ``sweep.parquet`` and ``winner.yaml``:
    refused too, naming the differing axes, unless ``force`` (its cells are then reused). A
    resume (the same grid) goes ahead; cells of the same sweep made by other simkv code
    (:func:`code_digest`) are not reused: they all run again."""
    if not (out / "sweep.yaml").exists():
        return
    old = load_manifest(out)
    cells_dir = out / "cells"
    if not any(cells_dir.glob("*.json")):
        return
    diffs = [] if old.get("fingerprint") == plan.fingerprint else _manifest_differences(old, plan, out)
    if not diffs:
        grid = grid_differences(old, plan)
        if grid and not (force or overwrite):
            raise SimkvError(f"{out}: holds a sweep over another grid ({'; '.join(grid)}); its "
                             "sweep.parquet and winner.yaml would be replaced: use another -o "
                             "directory, or --force to re-sweep it with this grid")
        return
    if not overwrite:
        raise SimkvError(f"{out}: holds the results of a different sweep ("
                         f"{'; '.join(diffs)}); use another -o "
                         "directory, or --overwrite to discard them")
    shutil.rmtree(cells_dir)
    for name in ("sweep.parquet", "timing.json", "winner.yaml"):
        (out / name).unlink(missing_ok=True)


def write_manifest(plan: SweepPlan, out: Path) -> None:
    manifest = {
        "simkv_version": __version__,
        "scenario_path": str(plan.scenario_path),
        "trace": plan.base.relative_to(out).trace,
        "set": list(plan.overrides),
        "grid": plan.grid.to_dict(),
        "cells": len(plan.cells),
        "code": code_digest(),
        "fingerprint": plan.fingerprint,
        "scenario": plan.base.relative_to(out).to_dict(),
    }
    head = ("# simkv sweep manifest: re-run the same `simkv sweep` command with -o pointing here\n"
            "# to resume (only missing cells run). `scenario` is the resolved base scenario.\n")
    text = head + yaml.safe_dump(manifest, sort_keys=False)
    atomic_write(out / "sweep.yaml", lambda p: p.write_text(text))
    atomic_write(out / "scenario.yaml", lambda p: p.write_text(plan.base.relative_to(out).to_yaml()))


def load_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / "sweep.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimkvError(f"{path}: cannot read the sweep manifest: {exc}") from None
    if not isinstance(data, dict) or "scenario" not in data:
        raise SimkvError(f"{path}: not a simkv sweep manifest")
    return data


def record_objective(out_dir: str | Path, column: str, direction: str,
                     constraints: Sequence[Constraint] = ()) -> None:
    """Add the objective (``column:direction``) and constraints a sweep was run with to its
    ``sweep.yaml``, so ``simkv report`` ranks the cells the same way."""
    out = Path(out_dir)
    manifest = load_manifest(out)
    manifest["objective"] = f"{column}:{direction}"
    manifest["constraints"] = [c.text or f"{c.metric}{c.op}{c.value}" for c in constraints]
    text = (out / "sweep.yaml").read_text()
    head = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    atomic_write(out / "sweep.yaml", lambda p: p.write_text(head + yaml.safe_dump(manifest, sort_keys=False)))


def manifest_trace(manifest: dict[str, Any], out_dir: Path) -> str | None:
    """The absolute trace path of a sweep manifest (written relative to its directory)."""
    trace = manifest.get("trace")
    return None if trace is None else str((out_dir / trace).resolve())
