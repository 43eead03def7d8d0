"""simkv sweep when things fail: a failing cell is recorded (and retried only when asked), failed
cells make the sweep exit non-zero keeping the results, the workers die with the driver, and a
bad Ray address fails fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from simkv.sweep import select_winner, sweep
from tests.conftest import ROOT, SIMKV, simkv_cli
from tests.sweep_helpers import SCENARIO

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
    from simkv.core.policies.ttl import TTL_HEURISTICS

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


def test_failed_cells_exit_nonzero_keeping_results(plugin: str, trace_path: Path, tmp_path: Path) -> None:
    proc = simkv_cli("sweep", str(SCENARIO), "--trace", str(trace_path), "-o", str(tmp_path / "out"),
                     "--set", "ttl.heuristic=" + plugin, "--set", "ttl.params={ttl: 600}",
                     "--grid", "ttl.params.boom=0,1", "--workers", "1", "--objective", "token_hit_rate")
    assert proc.returncode == 1, proc.stderr
    assert "1 of 2 cells failed" in proc.stderr and "Traceback" not in proc.stderr
    df = pd.read_parquet(tmp_path / "out" / "sweep.parquet")
    assert df["status"].tolist() == ["ok", "error"]
    assert (tmp_path / "out" / "winner.yaml").exists()


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
