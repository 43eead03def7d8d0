"""Trace slices and the progress bar through the ``simkv`` command: a bundled scenario's trace
resolved beside it, slices (``--start/--end/--limit``, seeded session samples) that keep the same
rows in ``trace import`` and ``run``, bad slices as one-line errors, and a progress bar only on a
terminal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEFAULT, ROOT, SCENARIOS, SIMKV, SMALL_TRACE, assert_user_error, simkv_cli

# -- issue 17 item 9: slices, scenario-relative traces, the progress bar ---------------------------


def test_a_bundled_scenario_runs_from_any_directory(tmp_path: Path) -> None:
    """Its trace is resolved beside the scenario file (as hardware.profile is); the scenario's
    hash does not depend on where it was run from."""
    here = simkv_cli("run", str(DEFAULT), "--limit", "50", "--json")
    away = simkv_cli("run", str(DEFAULT), "--limit", "50", "--json", cwd=tmp_path)
    assert away.returncode == 0, away.stderr
    a, b = json.loads(here.stdout), json.loads(away.stdout)
    assert a["scenario_sha256"] == b["scenario_sha256"] and a["trace_sha256"] == b["trace_sha256"]
    assert Path(b["trace"]).resolve() == SMALL_TRACE.resolve()


def test_a_missing_scenario_trace_says_where_it_looked(tmp_path: Path) -> None:
    scenario = yaml.safe_load(DEFAULT.read_text()) | {"trace": "data/gone.parquet"}
    (tmp_path / "sc").mkdir()
    path = tmp_path / "sc" / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    proc = simkv_cli("run", str(path), cwd=tmp_path)
    assert_user_error(proc, "data/gone.parquet", str(tmp_path / "sc" / "data" / "gone.parquet"),
                      str(tmp_path / "data" / "gone.parquet"))


def _mooncake(path: Path, n: int = 12) -> Path:
    """``n`` Mooncake rows, one a second, in three conversations that share their first block."""
    rows = [{"timestamp": 1000 * i, "input_length": 512 * (1 + i // 3) + 7, "output_length": 5,
             "hash_ids": [i % 3, *range(100 + 10 * i, 100 + 10 * i + i // 3)]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_slice_is_the_same_rows_in_trace_import_and_run(tmp_path: Path) -> None:
    """`trace import --start/--end/--limit` writes the rows `run` keeps with the same options, in
    arrival order with their block hashes: the same trace_sha256, so validate joins them."""
    from simkv.traces.schema import read_trace

    src = _mooncake(tmp_path / "m.jsonl")
    full = simkv_cli("trace", "import", "mooncake", str(src), "-o", str(tmp_path / "all.parquet"))
    assert full.returncode == 0, full.stderr
    cut = simkv_cli("trace", "import", "mooncake", str(src), "-o", str(tmp_path / "cut.parquet"),
                    "--start", "2", "--end", "9.5", "--limit", "5")
    assert cut.returncode == 0, cut.stderr
    whole, part = read_trace(tmp_path / "all.parquet"), read_trace(tmp_path / "cut.parquet")
    assert part.table.to_pylist() == whole.table.slice(2, 5).to_pylist()
    sc = SCENARIOS / "parity-lru.yaml"
    args = ["--set", "block_size=512", "--json"]
    ran = simkv_cli("run", str(sc), "--trace", str(tmp_path / "all.parquet"), "--start", "2", "--end",
                    "9.5", "--limit", "5", *args)
    direct = simkv_cli("run", str(sc), "--trace", str(tmp_path / "cut.parquet"), *args)
    a, b = json.loads(ran.stdout), json.loads(direct.stdout)
    assert a["requests"] == 5 and a["trace_sha256"] == b["trace_sha256"] == part.content_sha256
    assert a["trace_slice"] == "arrival_s in [2, 9.5), then first 5 requests" and "trace_slice" not in b


def test_a_sample_of_sessions_is_seeded_and_keeps_whole_sessions(tmp_path: Path) -> None:
    from simkv.traces.schema import read_trace
    from simkv.traces.slicing import TraceSlice, slice_trace

    whole = read_trace(SMALL_TRACE)
    one = slice_trace(whole, TraceSlice(sample=0.3, seed=7))
    again = slice_trace(whole, TraceSlice(sample=0.3, seed=7))
    other = slice_trace(whole, TraceSlice(sample=0.3, seed=8))
    assert one.content_sha256 == again.content_sha256 != other.content_sha256
    sessions = set(one.column("session_id"))
    all_sessions = whole.column("session_id")
    assert len(sessions) == round(0.3 * len(set(all_sessions)))
    kept = [i for i, s in enumerate(all_sessions) if s in sessions]   # every request of each
    assert one.table.to_pylist() == whole.table.take(kept).to_pylist()
    by_request = slice_trace(whole, TraceSlice(sample=0.1, sample_by="request", seed=7))
    assert len(by_request) == round(0.1 * len(whole))
    assert (by_request.arrival_s[1:] >= by_request.arrival_s[:-1]).all()


@pytest.mark.parametrize(("args", "needles"), [
    (["--sample", "1.5"], ["--sample", "1.5"]),
    (["--limit", "0"], ["--limit"]),
    (["--start", "10", "--end", "5"], ["--end", "--start"]),
    (["--sample", "0.5", "--sample-by", "agent"], ["--sample-by", "agent"]),
    (["--start", "1e9"], ["keeps no request", "3,000 requests"]),
])
def test_bad_slices_are_user_errors(args: list[str], needles: list[str]) -> None:
    assert_user_error(simkv_cli("run", str(DEFAULT), *args), *needles)


def _run_on_a_terminal(*args: str) -> tuple[str, str]:
    """``simkv ARGS`` with stderr on a pseudo-terminal (stdout a pipe): (stdout, stderr)."""
    import os
    import pty
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen([*SIMKV, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True,
                            env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(10)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks)
    return out, b"".join(chunks).decode(errors="replace")


def test_run_progress_bar_only_on_a_terminal_and_not_with_json() -> None:
    """The bar is drawn on a terminal's stderr, never with --json; stdout is the same either way."""
    plain = simkv_cli("run", str(DEFAULT), "--limit", "400")
    out, err = _run_on_a_terminal("run", str(DEFAULT), "--limit", "400")
    assert "simulating" in err and "simulating" not in plain.stderr
    assert out.splitlines()[:-1] == plain.stdout.splitlines()[:-1]      # the last line: wall time
    js_plain = simkv_cli("run", str(DEFAULT), "--limit", "400", "--json")
    js_out, js_err = _run_on_a_terminal("run", str(DEFAULT), "--limit", "400", "--json")
    assert "simulating" not in js_err
    assert json.loads(js_out) == json.loads(js_plain.stdout)
