"""simkv sweep's runs: backends agreeing byte for byte, resumption, winners.

Runs on a generated 300-request trace (a three-tier cell takes a fraction of a second there)
and 4-cell grids; the Ray test adds Ray's start-up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from simkv.core.errors import SimkvError
from simkv.sweep import Constraint, NoFeasibleCell, select_winner, sweep, write_winner
from tests.conftest import ROOT, SIMKV, simkv_cli
from tests.sweep_helpers import GRID, GRID_ARGS, SCENARIO


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, trace_path: Path) -> Path:
    """The 4-cell grid run in-process (workers=1): the bytes every other run must match."""
    out = tmp_path_factory.mktemp("ref")
    sweep(SCENARIO, trace_path, GRID, out_dir=out, workers=1)
    return out


def parquet_bytes(out: Path) -> bytes:
    return (out / "sweep.parquet").read_bytes()


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
