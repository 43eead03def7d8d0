"""``simkv trace gen`` as a user runs it: the same bytes as the library, a progress bar only on
a terminal, presets by name, one-line errors, and the README's tutorial leaving the checkout
clean."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from simkv.traces.generator import generate, generator_config
from simkv.traces.schema import read_trace, write_trace
from tests.conftest import ROOT

SIMKV = str(Path(sys.executable).with_name("simkv"))


def test_cli_gen(tmp_path: Path) -> None:
    out = tmp_path / "cli.parquet"
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(out), "--seed", "3",
                           "--requests", "200"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(read_trace(out)) == 200
    # Another process, same seed: the same bytes (no dependence on PYTHONHASHSEED & co.).
    again = write_trace(generate(generator_config(seed=3, n_requests=200)),
                        tmp_path / "again.parquet")
    assert out.read_bytes() == again.read_bytes()


_TERMINAL_ENV = {**os.environ, "TERM": "xterm", "COLUMNS": "100"}


def _gen_with_terminal_stderr(out: Path, *extra: str) -> tuple[str, str]:
    """Run ``simkv trace gen`` with stderr on a pseudo-terminal; return (stdout, stderr)."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([SIMKV, "trace", "gen", "-o", str(out), "--seed", "3", "--requests",
                             "200", *extra], stdout=subprocess.PIPE, stderr=secondary,
                            env=_TERMINAL_ENV)
    os.close(secondary)
    stderr = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        stderr += chunk
    stdout = proc.stdout.read() if proc.stdout else b""
    assert proc.wait() == 0, stderr
    os.close(primary)
    return stdout.decode(), stderr.decode(errors="replace")


def test_cli_gen_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    """The progress bar goes to stderr on a terminal, never to stdout, and --quiet hides it."""
    plain = subprocess.run([SIMKV, "trace", "gen", "-o", str(tmp_path / "a.parquet"), "--seed",
                            "3", "--requests", "200"], capture_output=True, text=True, check=True,
                           env=_TERMINAL_ENV)
    assert "generating" not in plain.stdout + plain.stderr
    stdout, stderr = _gen_with_terminal_stderr(tmp_path / "b.parquet")
    assert "generating" in stderr
    assert stdout == plain.stdout.replace("a.parquet", "b.parquet")
    stdout, stderr = _gen_with_terminal_stderr(tmp_path / "c.parquet", "--quiet")
    assert "generating" not in stderr
    assert stdout == plain.stdout.replace("a.parquet", "c.parquet")
    assert (tmp_path / "b.parquet").read_bytes() == (tmp_path / "a.parquet").read_bytes()


def test_cli_gen_bad_override(tmp_path: Path) -> None:
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(tmp_path / "x.parquet"),
                           "--set", "nosuch=1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "nosuch" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "x.parquet").exists()


def test_readme_tutorial_trace_gen_leaves_the_checkout_clean(tmp_path: Path) -> None:
    """The tutorial's ``trace gen`` writes outside traces/ (an ignored runs/), and what it
    writes is the canned trace the next steps read."""
    readme = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"^\.venv/bin/simkv trace gen .*$", readme, flags=re.MULTILINE)
    args = command.split()[1:]
    out = Path(args[args.index("-o") + 1])
    assert out.parts[0] == "runs", command  # runs/ is in .gitignore
    proc = subprocess.run([SIMKV, *args], cwd=tmp_path, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    canned = re.search(rf"^cmp {re.escape(str(out))} (\S+)", readme, flags=re.MULTILINE)
    assert canned, "the tutorial compares its trace with the canned one"
    assert (tmp_path / out).read_bytes() == (ROOT / canned.group(1)).read_bytes()


def test_cli_gen_preset(tmp_path: Path) -> None:
    out = tmp_path / "lh.parquet"
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(out), "--seed", "2", "--requests", "150",
                           "--preset", "long-horizon", "--set", "n_tenants=5"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    again = generate(generator_config(seed=2, n_requests=150, preset="long-horizon",
                                      overrides=["n_tenants=5"]))
    assert out.read_bytes() == write_trace(again, tmp_path / "again.parquet").read_bytes()


def test_cli_gen_unknown_preset(tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(out), "--preset", "nope"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "'nope'" in proc.stderr and "agents, long-horizon" in proc.stderr
    assert not out.exists()
