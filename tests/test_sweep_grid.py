"""simkv sweep's grids and what is checked before any cell runs: grid expansion and its errors,
grid files, every cell validated first, unknown objectives, and a directory that holds another
sweep or another grid."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from simkv.core.errors import ScenarioError, SimkvError
from simkv.sweep import Grid, cell_id, plan_sweep
from simkv.traces.generator import generate, generator_config
from simkv.traces.schema import write_trace
from tests.conftest import simkv_cli
from tests.sweep_helpers import GRID, GRID_ARGS, SCENARIO

# -- grids --------------------------------------------------------------------------------


def test_grid_expansion_order_values_and_ids() -> None:
    g = Grid.from_specs(["a.b=1,2.5", "c=x,null,[1, 2]", "d=[true, false]"])
    assert g.to_dict() == {"a.b": [1, 2.5], "c": ["x", None, "[1", "2]"], "d": [True, False]}
    g = Grid.from_specs(["a.b=1,2.5", "c=x,null", "d=[true, false]"])
    cells = g.cells()
    assert len(cells) == len(g) == 8
    assert [c.index for c in cells] == list(range(8))
    # Last axis fastest.
    assert [dict(c.overrides)["d"] for c in cells[:2]] == [True, False]
    assert cells[0].overrides == (("a.b", 1), ("c", "x"), ("d", True))
    assert cells[-1].overrides == (("a.b", 2.5), ("c", None), ("d", False))
    # Ids: stable, distinct, independent of the axis order.
    assert len({c.id for c in cells}) == 8
    swapped = Grid.from_specs(["d=[true, false]", "c=x,null", "a.b=1,2.5"]).cells()
    assert {c.id for c in swapped} == {c.id for c in cells}
    assert cells[0].id == cell_id([("d", True), ("a.b", 1), ("c", "x")])
    assert len(Grid().cells()) == 1 and Grid().cells()[0].overrides == ()


def test_grid_errors() -> None:
    with pytest.raises(SimkvError, match="listed twice"):
        Grid.from_specs(["a=1,2,1"])
    with pytest.raises(SimkvError, match="swept twice"):
        Grid.from_specs(["a=1", "a=2"])
    with pytest.raises(SimkvError, match="expected key=v1,v2"):
        Grid.from_specs(["alpha"])
    with pytest.raises(SimkvError, match="empty value"):
        Grid.from_specs(["a=1,,2"])


def test_grid_file(tmp_path: Path) -> None:
    f = tmp_path / "g.yaml"
    f.write_text("ttl.params.alpha: [0.5, 2.0]\nttl.params.base_ttl: [60, 600]\n")
    assert Grid.from_file(f) == Grid.from_specs(GRID_ARGS[1::2]) == Grid.from_mapping(GRID)
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SimkvError, match="mapping"):
        Grid.from_file(tmp_path / "bad.yaml")
    with pytest.raises(SimkvError, match="no such grid file"):
        Grid.from_file(tmp_path / "missing.yaml")


def test_every_cell_is_validated_before_any_runs(trace_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"ttl\.params\.alhpa: unknown key"):
        plan_sweep(SCENARIO, trace_path, ["ttl.params.alhpa=0.5,1"])
    # The second value of the second axis is bad: caught up front, naming the first such cell.
    with pytest.raises(ScenarioError, match=r"\[ttl\.params\.alpha=1, ttl\.params\.base_ttl=-5\]"):
        plan_sweep(SCENARIO, trace_path, ["ttl.params.alpha=1,2", "ttl.params.base_ttl=60,-5"])


def test_cli_bad_key_fails_fast(tmp_path: Path, trace_path: Path) -> None:
    out = tmp_path / "out"
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out),
                     "--grid", "ttl.params.alpha=0.5,1", "--grid", "tiers.gpu.capasity_blocks=10,20")
    assert proc.returncode == 2, proc.stderr
    assert "tiers.gpu.capasity_blocks" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (out / "cells").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("ttl.params.alpha: [1, -1]\n")
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out),
                     "--grid-file", str(bad))
    assert proc.returncode == 2 and "alpha" in proc.stderr and "Traceback" not in proc.stderr


# -- validation before any cell runs; failed cells; another sweep's directory ------------------


def test_unknown_objective_or_constraint_fails_before_any_cell(trace_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for extra in (["--objective", "nosuch"], ["--objective", "cost_saved", "-c", "nosuch<1"]):
        proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out), *GRID_ARGS,
                         "--workers", "1", *extra)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "unknown metric 'nosuch'" in proc.stderr
        assert not out.exists()  # nothing ran, nothing written
    # A per-class column of the sweep table is a valid objective.
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out),
                     "--grid", "ttl.params.alpha=1,2", "--workers", "1",
                     "--objective", "token_hit_rate_class_chat")
    assert proc.returncode == 0, proc.stderr


def test_other_sweep_in_directory_is_refused(trace_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["sweep", str(SCENARIO), "-o", str(out), "--grid", "ttl.params.alpha=1,2", "--workers", "1"]
    assert simkv_cli(*args, "--trace", str(trace_path)).returncode == 0
    before = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    other = tmp_path / "other.parquet"
    write_trace(generate(generator_config(seed=2, n_requests=200)), other)
    proc = simkv_cli(*args, "--trace", str(other), "--set", "tiers.gpu.capacity_bytes=1GiB")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for needle in (str(out), "different sweep", str(other), "tiers.gpu.capacity_bytes", "--overwrite"):
        assert needle in proc.stderr.replace("\n", ""), needle
    assert {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")} == before
    # The same base with another grid (--force) reuses the cells; --overwrite discards the old sweep.
    assert simkv_cli(*args[:-4], "--grid", "ttl.params.alpha=1,3", "--workers", "1",
                     "--trace", str(trace_path), "--force").returncode == 0
    proc = simkv_cli(*args, "--trace", str(other), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "cells").glob("*.json"))) == 2
    assert pd.read_parquet(out / "sweep.parquet")["requests"].tolist() == [200, 200]
    written = yaml.safe_load((out / "scenario.yaml").read_text())["trace"]
    assert not Path(written).is_absolute() and (out / written).resolve() == other.resolve()


def test_another_grid_in_a_sweep_directory_is_refused_unless_forced(trace_path: Path,
                                                                     tmp_path: Path) -> None:
    """Re-sweeping a directory over another grid would silently replace its winner.yaml: refused
    with one line naming the directory and the differing axis; --force re-sweeps; a resume of
    the same grid (in another axis order) still goes ahead."""
    out = tmp_path / "out"
    base = ["sweep", str(SCENARIO), "-o", str(out), "--trace", str(trace_path), "--workers", "1",
            "--objective", "token_hit_rate"]
    grid = ["--grid", "ttl.params.alpha=1,2", "--grid", "ttl.params.base_ttl=60,600"]
    assert simkv_cli(*base, *grid).returncode == 0
    winner = (out / "winner.yaml").read_bytes()
    table = (out / "sweep.parquet").read_bytes()
    proc = simkv_cli(*base, "--grid", "ttl.params.alpha=1,3", "--grid", "ttl.params.base_ttl=60,600")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in (str(out), "another grid", "ttl.params.alpha: 1,2 -> 1,3", "--force"):
        assert needle in lines[0], needle
    assert "base_ttl" not in lines[0]  # only the axis that differs
    assert (out / "winner.yaml").read_bytes() == winner and (out / "sweep.parquet").read_bytes() == table
    # the same grid, axes in another order: a resume, nothing runs
    again = simkv_cli(*base, "--grid", "ttl.params.base_ttl=600,60", "--grid", "ttl.params.alpha=2,1")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "timing.json").read_text())["ran"] == []
    # --force: the new grid runs, reusing the cells it shares with the old one
    forced = simkv_cli(*base, "--grid", "ttl.params.alpha=1,3", "--grid", "ttl.params.base_ttl=60,600",
                       "--force")
    assert forced.returncode == 0, forced.stderr
    assert len(json.loads((out / "timing.json").read_text())["ran"]) == 2
    assert sorted(pd.read_parquet(out / "sweep.parquet")["ttl.params.alpha"].unique()) == [1, 3]
