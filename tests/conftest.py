"""Shared fixtures: canned traces, hand-made traces, and the CLI as a user runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from simkv.traces.schema import Trace, build_table

if TYPE_CHECKING:
    from simkv_engine.kvstore import KVStoreServer

ROOT = Path(__file__).resolve().parents[1]
SMALL_TRACE = ROOT / "traces" / "small.parquet"
SCENARIOS = ROOT / "scenarios"
DEFAULT = SCENARIOS / "default.yaml"
SIMKV = [sys.executable, "-m", "simkv.cli"]
#: The scenario of the session's vLLM server (``vllm_server``, for the tests marked ``vllm``).
VLLM_SCENARIO = ROOT / "scenarios" / "vllm-tiny.yaml"
START_TIMEOUT_S = 600


def make_trace(
    requests: Sequence[Sequence[int]],
    *,
    block_size: int = 4,
    arrivals: Sequence[float] | None = None,
    tails: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
) -> Trace:
    """A trace from block-hash lists: request ``i`` has ``len(requests[i]) * block_size +
    tails[i]`` input tokens and arrives at ``arrivals[i]`` (default ``i`` seconds)."""
    n = len(requests)
    arrivals = list(arrivals) if arrivals is not None else [float(i) for i in range(n)]
    tails = list(tails) if tails is not None else [0] * n
    return build_table(
        {
            "arrival_s": arrivals,
            "request_id": [f"r{i}" for i in range(n)],
            "session_id": [""] * n,
            "prompt_class": list(classes) if classes is not None else ["chat"] * n,
            "input_tokens": [len(b) * block_size + t for b, t in zip(requests, tails, strict=True)],
            "output_tokens": [1] * n,
            "block_hashes": [list(b) for b in requests],
        },
        block_size=block_size,
        source="test",
    )


def simkv_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``simkv ARGS`` in a subprocess, as a user would."""
    return subprocess.run([*SIMKV, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    """Exit ``code``, one ``error:`` line on stderr containing every needle, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="session")
def small_trace() -> Trace:
    from simkv.traces.schema import read_trace

    return read_trace(SMALL_TRACE)


@pytest.fixture(scope="session")
def gen_trace() -> Trace:
    """A short generated trace (fast to simulate with every engine)."""
    from simkv.traces.generator import generate, generator_config

    return generate(generator_config(seed=7, n_requests=400))


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 300-request trace (seed 1) in Parquet, one per test module: the sweeps' input
    (a three-tier cell takes a fraction of a second on it)."""
    from simkv.traces.generator import generate, generator_config
    from simkv.traces.schema import write_trace

    path = tmp_path_factory.mktemp("trace") / "t300.parquet"
    write_trace(generate(generator_config(seed=1, n_requests=300)), path)
    return path


# -- a real Redis-protocol server (LMCache's remote tier) ------------------------------------


@pytest.fixture(scope="session")
def kv_store() -> Iterator[KVStoreServer]:
    """A Redis-protocol server on a free loopback port for the session
    (:class:`simkv_engine.kvstore.KVStoreServer`); tests that use it empty it first."""
    from simkv_engine.kvstore import KVStoreServer

    with KVStoreServer() as server:
        yield server


# -- a real vLLM (tests marked `vllm`) --------------------------------------------------------


#: How the name of a test that stops the session's vLLM server starts (test_vllm_identity.py).
STOPS_VLLM = "test_sigterm_"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that stop the session's vLLM server last, whatever the files' order."""
    items.sort(key=lambda item: item.get_closest_marker("vllm") is not None
               and item.name.startswith(STOPS_VLLM))


def vllm_python() -> str:
    python = os.environ.get("SIMKV_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"no vLLM virtualenv at {python} (make install-vllm; make test installs it)")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VllmServer:
    url: str
    out: Path
    proc: subprocess.Popen[str]

    def reset(self) -> None:
        """Empty vLLM's prefix cache. Not LMCache's tiers: vLLM's ``LMCacheConnectorV1`` has no
        ``reset_cache`` (vLLM 0.32, LMCache 0.5.6), so a server with LMCache below is started
        afresh for each replay."""
        req = urllib.request.Request(f"{self.url}/reset_prefix_cache?reset_external=true", method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200


def start_vllm(out: Path, *args: str, timeout_s: float = START_TIMEOUT_S,
               scenario: Path = VLLM_SCENARIO) -> tuple[subprocess.Popen[str], str]:
    """``simkv engine vllm SCENARIO --serve``: the process and its URL once it says it serves."""
    port = free_port()
    proc = subprocess.Popen([*SIMKV, "engine", "vllm", str(scenario), "--serve", "--port", str(port),
                             "-o", str(out), "--python", vllm_python(),
                             "--start-timeout", str(timeout_s), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VLLM_SERVER_DEV_MODE": "1", "COLUMNS": "300"})
    assert proc.stdout is not None
    for line in proc.stdout:  # simkv gives up after --start-timeout
        if "serving at" in line:
            return proc, line.split("serving at", 1)[1].strip()
    proc.wait()
    log = out / "vllm.log"
    raise AssertionError(f"vLLM did not start: {proc.stderr.read() if proc.stderr else ''}\n"
                         + (log.read_text()[-3000:] if log.exists() else ""))


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    out = tmp_path_factory.mktemp("vllm")
    proc, url = start_vllm(out)
    yield VllmServer(url, out, proc)
    stop_vllm(proc)


def stop_vllm(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to ``simkv engine vllm --serve``: it stops vLLM and exits 0."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
