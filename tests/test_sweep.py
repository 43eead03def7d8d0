"""simkv sweep: grids, backends agreeing byte for byte, resumption, failing cells, winners.

Runs on a generated 300-request trace (a three-tier cell takes a fraction of a second there)
and 4-cell grids, so the whole module stays around a minute; the Ray test adds Ray's start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from simkv.errors import ScenarioError, SimkvError
from simkv.sweep import (
    Constraint,
    Grid,
    NoFeasibleCell,
    cell_id,
    plan_sweep,
    select_winner,
    sweep,
    write_winner,
)
from simkv.traces.generator import generate, generator_config
from simkv.traces.schema import write_trace
from tests.conftest import ROOT, SIMKV, simkv_cli

SCENARIO = ROOT / "scenarios" / "three-tier-adaptive.yaml"
GRID = {"ttl.params.alpha": [0.5, 2.0], "ttl.params.base_ttl": [60, 600]}
GRID_ARGS = ["--grid", "ttl.params.alpha=0.5,2.0", "--grid", "ttl.params.base_ttl=60,600"]


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "t300.parquet"
    write_trace(generate(generator_config(seed=1, n_requests=300)), path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, trace_path: Path) -> Path:
    """The 4-cell grid run in-process (workers=1): the bytes every other run must match."""
    out = tmp_path_factory.mktemp("ref")
    sweep(SCENARIO, trace_path, GRID, out_dir=out, workers=1)
    return out


def parquet_bytes(out: Path) -> bytes:
    return (out / "sweep.parquet").read_bytes()


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


# -- backends -----------------------------------------------------------------------------


def test_sweep_table(reference: Path, trace_path: Path) -> None:
    df = pd.read_parquet(reference / "sweep.parquet")
    assert len(df) == 4
    assert list(df.columns[:5]) == ["cell_id", "ttl.params.alpha", "ttl.params.base_ttl", "status", "error"]
    assert df["ttl.params.alpha"].tolist() == [0.5, 0.5, 2.0, 2.0]
    assert df["ttl.params.base_ttl"].tolist() == [60, 600, 60, 600]
    assert (df["status"] == "ok").all() and df["error"].isna().all()
    assert {"token_hit_rate", "cost_saved_dollars", "ttft_p90_s", "token_hit_rate_class_tool"} <= set(df)
    assert "token_hit_rate_by_class" not in df
    assert "wall" not in " ".join(df.columns)
    # Each row is exactly what `run` gives for that cell.
    from simkv.api import run

    r = run(SCENARIO, trace_path, overrides=["ttl.params.alpha=2.0", "ttl.params.base_ttl=600"])
    row = df.iloc[3]
    for k, v in r.summary.items():
        if k == "token_hit_rate_by_class":
            for c, rate in v.items():
                assert row[f"token_hit_rate_class_{c}"] == rate
        else:
            assert row[k] == v, k
    manifest = yaml.safe_load((reference / "sweep.yaml").read_text())
    assert manifest["grid"] == GRID and manifest["cells"] == 4
    assert (reference / "scenario.yaml").exists() and (reference / "timing.json").exists()


def test_local_two_workers_byte_identical(reference: Path, trace_path: Path, tmp_path: Path) -> None:
    df = sweep(SCENARIO, trace_path, GRID, out_dir=tmp_path, workers=2)
    assert parquet_bytes(tmp_path) == parquet_bytes(reference)
    assert df.equals(pd.read_parquet(reference / "sweep.parquet"))
    assert json.loads((tmp_path / "timing.json").read_text())["workers"] == 2


def test_ray_backend_identical(reference: Path, trace_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed (pip install 'simkv[ray]')")
    sweep(SCENARIO, trace_path, GRID, out_dir=tmp_path, backend="ray", workers=2)
    assert parquet_bytes(tmp_path) == parquet_bytes(reference)


def test_backend_options_are_checked(trace_path: Path, tmp_path: Path) -> None:
    with pytest.raises(SimkvError, match="--backend"):
        sweep(SCENARIO, trace_path, GRID, out_dir=tmp_path, backend="dask")  # type: ignore[arg-type]
    with pytest.raises(SimkvError, match="--workers"):
        sweep(SCENARIO, trace_path, GRID, out_dir=tmp_path, workers=0)


# -- resumption ---------------------------------------------------------------------------


def test_resume_runs_only_missing_cells(reference: Path, trace_path: Path, tmp_path: Path) -> None:
    sweep(SCENARIO, trace_path, GRID, out_dir=tmp_path, workers=1)
    cells = sorted((tmp_path / "cells").glob("*.json"))
    assert len(cells) == 4
    mtimes = {p.name: p.stat().st_mtime_ns for p in cells}
    victim = cells[1]
    victim.unlink()
    time.sleep(0.01)
    sweep(SCENARIO, trace_path, GRID, out_dir=tmp_path, workers=2)
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["ran"] == [victim.stem] and timing["skipped"] == 3
    for p in cells:
        if p != victim:
            assert p.stat().st_mtime_ns == mtimes[p.name]
    assert parquet_bytes(tmp_path) == parquet_bytes(reference)
    # Nothing left to do: a re-run runs nothing and rewrites the same bytes; reordering
    # the axes finds the same cells.
    sweep(SCENARIO, trace_path, dict(reversed(GRID.items())), out_dir=tmp_path, workers=1)
    assert json.loads((tmp_path / "timing.json").read_text())["ran"] == []
    # A different base scenario does not reuse the results, nor silently discard them.
    before = parquet_bytes(tmp_path)
    with pytest.raises(SimkvError, match=r"different sweep .*ttl\.params\.max_ttl.*--overwrite"):
        sweep(SCENARIO, trace_path, GRID, out_dir=tmp_path, workers=1,
              overrides=["ttl.params.max_ttl=7200"])
    assert parquet_bytes(tmp_path) == before
    sweep(SCENARIO, trace_path, GRID, out_dir=tmp_path, workers=1, overrides=["ttl.params.max_ttl=7200"],
          overwrite=True)
    assert len(json.loads((tmp_path / "timing.json").read_text())["ran"]) == 4


def test_interrupted_cli_sweep_resumes(trace_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out), "--workers", "2",
            "--grid", "ttl.params.alpha=0.25,1,2", "--grid", "ttl.params.base_ttl=60,300,900"]
    proc = subprocess.Popen([*SIMKV, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not list((out / "cells").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    done = len(list((out / "cells").glob("*.json")))
    assert proc.returncode != 0, err
    assert 1 <= done < 9
    assert not (out / "sweep.parquet").exists()
    assert not list((out / "cells").glob(".*tmp"))  # no half-written record
    again = simkv_cli(*args)
    assert again.returncode == 0, again.stderr
    df = pd.read_parquet(out / "sweep.parquet")
    assert len(df) == 9 and (df["status"] == "ok").all()
    timing = json.loads((out / "timing.json").read_text())
    assert len(timing["ran"]) == 9 - done
    # Same bytes as an uninterrupted sweep.
    ref = tmp_path / "ref"
    sweep(SCENARIO, trace_path, [a for a in args[args.index("--grid"):] if a != "--grid"],
          out_dir=ref, workers=2)
    assert parquet_bytes(ref) == parquet_bytes(out)


# -- failing cells ------------------------------------------------------------------------

PLUGIN = '''
"""A TTL heuristic that raises when its ``boom`` parameter is set (a cell that validates but fails)."""


def maybe_fail(ctx, params):
    if params.get("boom"):
        raise RuntimeError("boom: this TTL heuristic always fails")
    return float(params.get("ttl", 600.0))
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    mod = tmp_path / "plugins"
    mod.mkdir()
    (mod / "sweep_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(mod))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mod), os.environ.get("PYTHONPATH", "")]))
    from simkv.policies.ttl import TTL_HEURISTICS

    name = "sweep_test_plugin:maybe_fail"
    TTL_HEURISTICS.get(name)  # resolves by import path, as the workers will
    return name


@pytest.mark.parametrize("workers", [1, 2])
def test_failing_cell_is_recorded(plugin: str, trace_path: Path, tmp_path: Path, workers: int) -> None:
    base = ["ttl.heuristic=" + plugin, "ttl.params={ttl: 600}"]
    grid = ["ttl.params.boom=0,1", "tiers.gpu.capacity_bytes=4GiB,8GiB"]
    df = sweep(SCENARIO, trace_path, grid, out_dir=tmp_path, workers=workers, overrides=base)
    assert df["status"].tolist() == ["ok", "ok", "error", "error"]
    assert "ttl.heuristic" in df["error"].iloc[2] and "RuntimeError: boom" in df["error"].iloc[2]
    assert df["token_hit_rate"].iloc[:2].notna().all() and df["token_hit_rate"].iloc[2:].isna().all()
    rec = json.loads(next((tmp_path / "cells").glob(f"{df['cell_id'].iloc[2]}.json")).read_text())
    assert "maybe_fail" in rec["traceback"]
    # Errored cells stay errored on resume unless asked to retry.
    sweep(SCENARIO, trace_path, grid, out_dir=tmp_path, workers=workers, overrides=base)
    assert json.loads((tmp_path / "timing.json").read_text())["ran"] == []
    sweep(SCENARIO, trace_path, grid, out_dir=tmp_path, workers=workers, overrides=base,
          retry_failed=True)
    assert sorted(json.loads((tmp_path / "timing.json").read_text())["ran"]) == \
        sorted(df["cell_id"].iloc[2:])
    # The winner is picked among the ok cells only.
    assert select_winner(df, "token_hit_rate").cell_id in set(df["cell_id"].iloc[:2])


# -- winner selection ---------------------------------------------------------------------


def _table() -> pd.DataFrame:
    return pd.DataFrame({
        "cell_id": ["a", "b", "c", "d", "e"],
        "alpha": [0.5, 1.0, 2.0, 4.0, 8.0],
        "status": ["ok", "ok", "ok", "ok", "error"],
        "error": [None, None, None, None, "boom"],
        "token_hit_rate": [0.5, 0.7, 0.7, 0.6, None],
        "cost_saved_dollars": [1.0, 3.0, 2.0, 3.0, None],
        "ttft_p90_s": [1.5, 2.5, 1.0, 1.8, None],
        "ttft_p99_s": [3.0, 4.0, 2.0, 2.5, None],
    })


def test_select_winner_objectives_and_constraints() -> None:
    df = _table()
    assert select_winner(df, "cost_saved").cell_id == "b"  # tie with d: grid order
    assert select_winner(df, "token_hit_rate").cell_id == "b"
    assert select_winner(df, "ttft_p90").cell_id == "c"  # minimised
    assert select_winner(df, "cost_saved", ["ttft_p90<2.0"]).cell_id == "d"
    assert select_winner(df, "cost_saved", ["ttft_p90 < 2.0", "token_hit_rate<=0.6"]).cell_id == "d"
    assert select_winner(df, "cost_saved", ["ttft_p99>=3"]).cell_id == "b"
    assert select_winner(df, "cost_saved", ["alpha==2"]).cell_id == "c"
    assert select_winner(df, "cost_saved", ["ttft_p90_s>2"]).cell_id == "b"
    w = select_winner(df, "ttft_p99_s", direction="min")
    assert (w.cell_id, w.column, w.direction, w.value) == ("c", "ttft_p99_s", "min", 2.0)
    assert select_winner(df, "ttft_p99").cell_id == "c"  # latencies are minimised, aliased or not
    w = select_winner(df, "cost_saved", ["ttft_p90<2.0"])
    assert w.feasible == 3 and w.row["alpha"] == 4.0 and w.position == 3


def test_select_winner_errors() -> None:
    df = _table()
    with pytest.raises(NoFeasibleCell, match=r"no feasible cell.*'ttft_p90<0.5' holds in 0"):
        select_winner(df, "cost_saved", ["ttft_p90<0.5"])
    for bad in ["ttft_p90<<2", "ttft_p90 ~ 2", "ttft_p90<fast", "<2"]:
        with pytest.raises(SimkvError, match="--constraint"):
            Constraint.parse(bad)
    with pytest.raises(SimkvError, match="unknown metric 'latency'"):
        select_winner(df, "cost_saved", ["latency<2"])
    with pytest.raises(SimkvError, match="unknown metric 'dollars'"):
        select_winner(df, "dollars")
    with pytest.raises(SimkvError, match="not numeric"):
        select_winner(df, "cost_saved", ["status<1"])
    with pytest.raises(NoFeasibleCell, match="none of the 1 cells ran"):
        select_winner(df.iloc[4:], "cost_saved")


def test_cli_winner_runs_and_infeasible_exits_2(reference: Path, trace_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out), *GRID_ARGS,
                     "--workers", "2", "--objective", "cost_saved", "--constraint", "ttft_p90<100")
    assert proc.returncode == 0, proc.stderr
    assert "winner" in proc.stdout and (out / "winner.yaml").exists()
    df = pd.read_parquet(out / "sweep.parquet")
    best = df.loc[df["cost_saved_dollars"].idxmax()]
    assert best["cell_id"] in proc.stdout
    assert parquet_bytes(out) == parquet_bytes(reference)
    # winner.yaml is a complete scenario: `simkv run` reproduces the winning cell's row.
    run = simkv_cli("run", str(out / "winner.yaml"), "--trace", str(trace_path), "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    for k in ("token_hit_rate", "cost_saved_dollars", "ttft_p90_s", "archive_puts"):
        assert summary[k] == best[k], k
    assert yaml.safe_load((out / "winner.yaml").read_text())["ttl"]["params"]["alpha"] == \
        best["ttl.params.alpha"]
    # The API does the same.
    w = select_winner(df, "cost_saved", ["ttft_p90<100"])
    assert write_winner(out, w).read_text() == (out / "winner.yaml").read_text()

    # Infeasible: results still written (resumed: nothing re-runs), exit 2 with a message,
    # and the previous winner.yaml is gone.
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out), *GRID_ARGS,
                     "--objective", "ttft_p90", "--constraint", "token_hit_rate>1.5")
    assert proc.returncode == 2
    assert "no feasible cell" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "sweep.parquet").exists() and not (out / "winner.yaml").exists()
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(out), *GRID_ARGS,
                     "--objective", "cost_saved", "--constraint", "ttft_p90<<1")
    assert proc.returncode == 2 and "ttft_p90<<1" in proc.stderr


def test_choose_winner_records_objective_and_never_leaves_a_stale_winner(reference: Path,
                                                                        tmp_path: Path) -> None:
    """The steps `simkv sweep --objective` runs after the cells, through the API."""
    from shutil import copytree

    from simkv.sweep.choose import choose_winner, parse_objective
    from simkv.sweep.manifest import load_manifest

    assert parse_objective(None, None) == (None, [])
    obj, cons = parse_objective("token_hit_rate", False, ["ttft_p90<100"])
    assert (obj.name, obj.direction, [c.text for c in cons]) == ("token_hit_rate", "min", ["ttft_p90<100"])
    with pytest.raises(SimkvError, match="--constraint: give an --objective"):
        parse_objective(None, True, ["ttft_p90<100"])

    out = copytree(reference, tmp_path / "out")
    df = pd.read_parquet(out / "sweep.parquet")
    obj, cons = parse_objective("cost_saved", None, ["ttft_p90<100"])
    win, path = choose_winner(out, df, obj, cons)
    assert win == select_winner(df, "cost_saved", ["ttft_p90<100"])
    assert path == out / "winner.yaml" and f"cell {win.cell_id} " in path.read_text()
    manifest = load_manifest(out)
    assert (manifest["objective"], manifest["constraints"]) == (f"{win.column}:max", ["ttft_p90<100"])

    obj, cons = parse_objective("ttft_p90", None, ["token_hit_rate>1.5"])
    with pytest.raises(NoFeasibleCell):
        choose_winner(out, df, obj, cons)
    assert not path.exists()
    assert load_manifest(out)["objective"] == "ttft_p90_s:min"


def test_cell_outputs(trace_path: Path, tmp_path: Path) -> None:
    sweep(SCENARIO, trace_path, ["ttl.params.alpha=1,2"], out_dir=tmp_path, workers=2, cell_outputs=True)
    dirs = [p for p in (tmp_path / "cells").iterdir() if p.is_dir()]
    assert len(dirs) == 2
    for d in dirs:
        assert {p.name for p in d.iterdir()} >= {"summary.json", "requests.parquet", "scenario.yaml"}
        assert pq.read_metadata(d / "requests.parquet").num_rows == 300


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


def test_failed_cells_exit_nonzero_keeping_results(plugin: str, trace_path: Path, tmp_path: Path) -> None:
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(tmp_path / "out"),
                     "--set", "ttl.heuristic=" + plugin, "--set", "ttl.params={ttl: 600}",
                     "--grid", "ttl.params.boom=0,1", "--workers", "1", "--objective", "token_hit_rate")
    assert proc.returncode == 1, proc.stderr
    assert "1 of 2 cells failed" in proc.stderr and "Traceback" not in proc.stderr
    df = pd.read_parquet(tmp_path / "out" / "sweep.parquet")
    assert df["status"].tolist() == ["ok", "error"]
    assert (tmp_path / "out" / "winner.yaml").exists()


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


# -- the driver's end is the workers' end; a bad Ray address fails fast ----------------------


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in _children(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_the_driver(tmp_path: Path, sig: signal.Signals) -> None:
    # Cells on the 20000-request trace take seconds each: the workers are busy when it dies.
    medium = ROOT / "traces" / "medium.parquet"
    proc = subprocess.Popen([*SIMKV, "sweep", str(SCENARIO), "--trace", str(medium),
                             "-o", str(tmp_path / "out"), "--workers", "2",
                             "--grid", "ttl.params.alpha=0.5,1,2,4", "--set", "engine=simpy"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 3:  # forkserver + 2 workers
        time.sleep(0.2)
        workers = _descendants(proc.pid)
    assert len(workers) >= 3, "the pool did not start"
    time.sleep(1.0)
    workers = _descendants(proc.pid)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _running(p)]


def test_bad_ray_address_fails_fast(trace_path: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(tmp_path / "out"),
                     "--grid", "ttl.params.alpha=1,2", "--backend", "ray", "--ray-address",
                     f"127.0.0.1:{port}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "cannot connect" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "out").exists()
