"""Ratios over zero are undefined: ``None`` in summary.json, ``n/a`` wherever they are shown.

A trace whose prompts are all shorter than a block (here: 0 tokens) is valid data, but its
token hit rate is 0/0; reporting 0.0% would read as "the cache never hits".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simkv.api import run
from simkv.traces.schema import Trace, write_trace
from tests.conftest import ROOT, make_trace, simkv_cli

UNDEFINED_WITH_NO_TOKENS = ("token_hit_rate", "token_hit_rate_gpu", "token_hit_rate_disk",
                            "token_hit_rate_archive", "block_hit_ratio")


def zero_token_trace() -> Trace:
    return make_trace([[], [], []], arrivals=[0.0, 1.0, 2.0], classes=["chat", "tool", "chat"])


@pytest.mark.parametrize(("scenario", "engine"), [
    ("scenarios/default.yaml", "simpy"),
    ("scenarios/default.yaml", "compiled"),
    ("scenarios/parity-lru.yaml", "fast"),
])
def test_zero_token_trace_summary(scenario: str, engine: str) -> None:
    s = run(ROOT / scenario, zero_token_trace(), overrides=["block_size=null", f"engine={engine}"]).summary
    assert s["engine"] == engine
    for key in UNDEFINED_WITH_NO_TOKENS:
        assert s[key] is None, key
    assert s["token_hit_rate_by_class"] == {"chat": None, "tool": None}
    # defined: three requests, none with a block, so none hit
    assert s["request_any_hit_ratio"] == 0.0
    assert s["request_full_hit_ratio"] == 0.0
    json.dumps(s, allow_nan=False)


def test_single_instant_trace_rates_are_undefined() -> None:
    """Zero service time and one arrival at t=0: a 0 s simulated window has no per-second rate."""
    tr = make_trace([[1, 2]], arrivals=[0.0])
    s = run(ROOT / "scenarios/parity-lru.yaml", tr, overrides=["block_size=null"]).summary
    assert s["duration_s"] == 0.0
    assert s["evictions_per_s_gpu"] is None and s["storage_mean_bytes_gpu"] is None
    assert s["token_hit_rate"] == 0.0  # 8 tokens, none hit: a real 0


def test_summary_percentiles_of_nothing_are_undefined() -> None:
    from simkv.metrics.summary import _percentiles
    from simkv.metrics.summary import ratio as _ratio

    assert _percentiles(np.array([]), "ttft") == {"ttft_p50_s": None, "ttft_p90_s": None,
                                                  "ttft_p99_s": None}
    assert _ratio(0, 0) is None and _ratio(3, 0) is None
    assert _ratio(0, 4) == 0.0


def test_zero_token_trace_cli_run_report_curve(tmp_path: Path) -> None:
    trace = write_trace(zero_token_trace(), tmp_path / "zero.parquet")
    out = tmp_path / "run"
    proc = simkv_cli("run", "scenarios/default.yaml", "--trace", str(trace), "-o", str(out),
                     "--set", "block_size=null")
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if "token hit rate" in ln)
    assert "n/a" in row and "%" not in row
    assert "n/a" in next(ln for ln in proc.stdout.splitlines() if "block hit ratio" in ln)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["token_hit_rate"] is None
    timeline = pd.read_parquet(out / "timeline.parquet")
    assert timeline["token_hit_rate"].isna().all()

    proc = simkv_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| token hit rate |"))
    assert "n/a" in row and "%" not in row
    by_class = next(ln for ln in md.splitlines() if ln.startswith("| token hit rate by class"))
    assert "chat n/a" in by_class and "tool n/a" in by_class

    proc = simkv_cli("curve", "capacity", "--trace", str(trace), "-o", str(tmp_path / "curve"))
    assert proc.returncode == 0, proc.stderr
    curve = pd.read_csv(tmp_path / "curve" / "curve.csv")
    assert curve["token_hit_rate"].isna().all()
    assert "n/a" in proc.stdout


def test_sweep_table_shows_na(tmp_path: Path) -> None:
    from rich.console import Console

    from simkv.sweep.console import top_cells_table

    df = pd.DataFrame({"cell_id": ["c0", "c1"], "ttl.params.ttl": [60, 600],
                       "status": ["ok", "ok"], "error": [None, None],
                       "token_hit_rate": [None, 0.5], "ttft_p90_s": [0.1, 0.2]})
    console = Console(record=True, width=160)
    console.print(top_cells_table(df, objective=("token_hit_rate", "max")))
    text = console.export_text()
    assert "n/a" in text and "50.00%" in text
