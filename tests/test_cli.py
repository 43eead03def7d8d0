"""The CLI as a new user meets it: one-line errors (exit 2, no traceback) naming the file, key
or value; runs that record what they ran; output directories that are never mixed up;
Ctrl-C; no stray output; --version, plain flags, a run without -o. Each test drives the real
``simkv`` command in a subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from simkv.core.config import from_dict
from simkv.core.errors import ScenarioError
from tests.conftest import DEFAULT, ROOT, SCENARIOS, SIMKV, SMALL_TRACE, assert_user_error, simkv_cli

MEDIUM_TRACE = ROOT / "traces" / "medium.parquet"


# -- item 6: a run directory's scenario.yaml reproduces the run -------------------------------


def test_run_dir_scenario_records_trace_and_overrides(tmp_path: Path) -> None:
    # default.yaml names traces/small.parquet; run it on the medium trace with an override.
    out = tmp_path / "run"
    first = simkv_cli("run", str(DEFAULT), "--trace", str(MEDIUM_TRACE), "--set",
                      "tiers.gpu.capacity_bytes=2GiB", "-o", str(out), "--json")
    assert first.returncode == 0, first.stderr
    written = yaml.safe_load((out / "scenario.yaml").read_text())
    # relative to the run directory, so the file names no machine's directories
    assert not Path(written["trace"]).is_absolute()
    assert (out / written["trace"]).resolve() == MEDIUM_TRACE.resolve()
    assert written["tiers"]["gpu"]["capacity_bytes"] == "2GiB"
    # Re-run from the written scenario alone, from another directory.
    again = simkv_cli("run", str(out / "scenario.yaml"), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["requests"] == 20000
    for k in a:
        if k != "trace":
            assert a[k] == b[k], k


# -- item 8: user strings are printed verbatim -------------------------------------------------


def test_error_message_is_not_markup_or_emoji(tmp_path: Path) -> None:
    bad = tmp_path / "a[red]b:100:.yaml"
    bad.write_text("name: [unclosed\n")
    proc = simkv_cli("run", str(bad), "--trace", str(SMALL_TRACE))
    assert_user_error(proc, "a[red]b:100:.yaml")
    assert "💯" not in proc.stderr


def test_output_path_is_printed_verbatim(tmp_path: Path) -> None:
    out = tmp_path / "x[bold]y:100:"
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout.replace("\n", "") and "💯" not in proc.stdout


# -- item 9: outputs that cannot be written, huge capacities, broken run directories ----------


def test_out_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(f))
    assert_user_error(proc, str(f), "not a directory")
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(f / "sub"))
    assert_user_error(proc, str(f / "sub"), "cannot create")


def test_other_commands_out_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    run_dir = tmp_path / "run"
    assert simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(run_dir)).returncode == 0
    for args in (["curve", "capacity", "--trace", str(SMALL_TRACE), "--capacities", "100,200", "-o", str(f)],
                 ["report", str(run_dir), "-o", str(f)],
                 ["trace", "gen", "--requests", "10", "-o", str(f / "t.parquet")],
                 ["sweep", str(DEFAULT), "--trace", str(SMALL_TRACE), "--grid",
                  "tiers.gpu.capacity_bytes=1GiB", "-o", str(f)]):
        assert_user_error(simkv_cli(*args), str(f), "not a directory")
    assert_user_error(simkv_cli("trace", "gen", "--requests", "10", "-o", str(tmp_path)),
                      str(tmp_path), "is a directory")


def test_out_not_writable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if _writable(ro):
            pytest.skip("running as a user who can write anywhere (root)")
        proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(ro / "sub"))
        assert_user_error(proc, str(ro / "sub"))
    finally:
        ro.chmod(0o755)


def _writable(d: Path) -> bool:
    try:
        (d / ".probe").touch()
    except OSError:
        return False
    (d / ".probe").unlink()
    return True


@pytest.mark.parametrize(("override", "needle"), [("tiers.gpu.capacity_bytes=1e30", "unlimited"),
                                                  ("tiers.gpu.capacity_blocks=1e30", "out of range"),
                                                  ("tiers.disk.capacity_bytes=1e30GB", "unlimited")])
def test_capacity_beyond_the_engines_is_rejected(override: str, needle: str) -> None:
    key = override.split("=")[0]
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "--set", override,
                     "--set", f"{key.rsplit('.', 1)[0]}.capacity_bytes=null"
                     if "blocks" in key else "name=x")
    assert_user_error(proc, key, needle)


def test_unlimited_capacity_runs() -> None:
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "--json",
                     "--set", "tiers.gpu.capacity_bytes=unlimited")
    assert proc.returncode == 0, proc.stderr


def test_report_on_truncated_requests_parquet(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(out)).returncode == 0
    data = (out / "requests.parquet").read_bytes()
    (out / "requests.parquet").write_bytes(data[: len(data) // 2])
    assert_user_error(simkv_cli("report", str(out)), str(out / "requests.parquet"))


# -- item 10: validation that names the key, at load time --------------------------------------


def test_duplicate_scenario_key(tmp_path: Path) -> None:
    sc = tmp_path / "dup.yaml"
    sc.write_text("name: a\ntiers:\n  gpu: {capacity_bytes: 8GiB}\n  disk: {enabled: true}\n"
                  "  gpu: {capacity_bytes: 4GiB}\n")
    assert_user_error(simkv_cli("run", str(sc), "--trace", str(SMALL_TRACE)),
                      f"{sc}:5:", "duplicate key 'gpu'")


def test_duplicate_grid_file_key(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("ttl.params.alpha: [1, 2]\nttl.params.alpha: [3]\n")
    proc = simkv_cli("sweep", str(SCENARIOS / "three-tier-adaptive.yaml"), "--trace",
                     str(SMALL_TRACE), "--grid-file", str(grid), "-o", str(tmp_path / "s"))
    assert_user_error(proc, f"{grid}:2:", "duplicate key 'ttl.params.alpha'")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("prob", ["2", "-1"])
def test_cost_aware_reuse_prob_range(prob: str) -> None:
    proc = simkv_cli("run", str(SCENARIOS / "three-tier-adaptive.yaml"), "--trace", str(SMALL_TRACE),
                     "--set", "ttl.heuristic=cost_aware", "--set", f"ttl.params={{reuse_prob: {prob}}}")
    assert_user_error(proc, "ttl.params.reuse_prob", "[0, 1]")


def test_negative_per_class_ttl_at_load() -> None:
    proc = simkv_cli("run", str(SCENARIOS / "three-tier-adaptive.yaml"), "--trace", str(SMALL_TRACE),
                     "--set", "ttl.heuristic=per_class",
                     "--set", "ttl.params={class_ttl: {chat: -5}}")
    assert_user_error(proc, "ttl.params.class_ttl.chat", "-5")


def test_set_commas_stay_a_string() -> None:
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "--json", "--set", "name=a,b")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scenario"] == "a,b"


def test_comma_string_is_not_a_list() -> None:
    @dataclass
    class P:
        names: list[str]

    assert from_dict(P, {"names": ["a", "b"]}).names == ["a", "b"]
    with pytest.raises(ScenarioError, match=r"names: expected a list"):
        from_dict(P, {"names": "a,b"})


# -- item 11: output directories are never mixed up --------------------------------------------


def test_run_into_earlier_run_dir_removes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(out)).returncode == 0
    rep = simkv_cli("report", str(out))
    assert rep.returncode == 0, rep.stderr
    pngs = list(out.glob("*.png"))
    assert (out / "report.md").exists() and pngs
    (out / "notes.txt").write_text("mine")
    again = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(out),
                      "--set", "tiers.gpu.capacity_bytes=1GiB")
    assert again.returncode == 0, again.stderr
    assert not (out / "report.md").exists() and not any(p.exists() for p in pngs)
    assert (out / "notes.txt").read_text() == "mine"  # not the run's: left alone
    assert pq.read_metadata(out / "requests.parquet").num_rows == 3000


def test_run_refuses_a_foreign_nonempty_dir(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("x")
    t0 = time.monotonic()
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(MEDIUM_TRACE), "-o", str(tmp_path),
                     "--set", "engine=simpy")
    assert_user_error(proc, str(tmp_path), "thesis.tex", "not a simkv run directory")
    assert time.monotonic() - t0 < 60  # refused before simulating (simpy on medium takes longer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


# -- item 12: Ctrl-C ----------------------------------------------------------------------------


def test_run_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([*SIMKV, "run", str(DEFAULT), "--trace", str(MEDIUM_TRACE), "-o", str(out),
                             "--set", "engine=simpy"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # imports and trace read done; simulating (several seconds on this trace)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr and "Aborted" not in stderr
    assert not out.exists() or not any(out.iterdir())


# -- item 16c: no stray blank line ---------------------------------------------------------------


def test_successful_command_has_no_blank_stderr_line(tmp_path: Path) -> None:
    for args in (["run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(tmp_path / "r")],
                 ["trace", "stats", str(SMALL_TRACE)]):
        proc = simkv_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert "\n\n" not in "\n" + proc.stderr and not proc.stderr.startswith("\n"), repr(proc.stderr)


# -- issue 17 item 10: --version, plain flags, run without -o ------------------------------------


def test_version_prints_and_exits_0() -> None:
    from simkv import __version__

    proc = simkv_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"simkv {__version__}"


@pytest.mark.parametrize("command", [["run"], ["replay"], ["trace", "stats"], ["validate"], ["sweep"]])
def test_flags_take_no_value_in_help(command: list[str]) -> None:
    """A flag (--json, --gate, --help, ...) is shown without a value type: it takes none."""
    proc = simkv_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "<bool>" not in proc.stdout, proc.stdout
    if command[0] in ("run", "replay", "trace"):
        line = next(ln for ln in proc.stdout.splitlines() if "--json" in ln)
        assert "<" not in line, line


def test_run_without_out_says_nothing_was_saved() -> None:
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "--json")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)  # stdout stays pure JSON
    note = [ln for ln in proc.stderr.splitlines() if "nothing was saved" in ln]
    assert len(note) == 1 and "-o DIR" in note[0], proc.stderr


def test_run_with_out_does_not_say_nothing_was_saved(tmp_path: Path) -> None:
    proc = simkv_cli("run", str(DEFAULT), "--trace", str(SMALL_TRACE), "-o", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert "nothing was saved" not in proc.stderr


def test_run_says_why_a_configured_tier_served_nothing() -> None:
    proc = simkv_cli("run", str(SCENARIOS / "three-tier-adaptive.yaml"), "--trace", str(SMALL_TRACE),
                     "--set", "tiers.archive.request_latency_s=5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["archive_gets"] == 0
    (note,) = [ln for ln in proc.stderr.splitlines() if "served 0 hit tokens" in ln]
    assert note.startswith("note: the archive tier") and "load_policy if_faster" in note
