"""The real ``simkv engine serve`` command in a subprocess: it serves, drains a streaming request
on SIGTERM and exits 0; bad options and scenarios are one-line errors. Skipped where the
engine's dependencies are absent (``make install`` installs them)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("transformers", reason="the engine needs transformers (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from simkv_engine.server import bind  # noqa: E402

from tests.conftest import ROOT, SIMKV, assert_user_error  # noqa: E402
from tests.engine_server_helpers import KEY, _scenario_file, complete  # noqa: E402


def test_engine_serve_command_serves_then_drains_on_sigterm(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "1"}      # the command re-runs itself with 0
    proc = subprocess.Popen([*SIMKV, "engine", "serve", str(_scenario_file(tmp_path)), "--port", "0",
                             "--api-key", KEY, "--disk-path", str(tmp_path / "disk")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split("serving at ")[1].strip()
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            assert complete(c, {"prompt": "hello engine", "max_tokens": 2})["usage"]["completion_tokens"] == 2
            # SIGTERM while a request streams: it finishes, then the process exits 0.
            with c.stream("POST", "/v1/completions", json={"prompt": [1] * 40, "max_tokens": 64,
                                                            "stream": True}) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: {")
                proc.send_signal(signal.SIGTERM)
                rest = [ln for ln in lines if ln]
        assert len(rest) == 64 and rest[-1] == "data: [DONE]"
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "warning:" not in stderr     # loopback, with a key


def test_engine_serve_command_user_errors(tmp_path):
    sc = _scenario_file(tmp_path)
    run = lambda *args: subprocess.run([*SIMKV, "engine", "serve", *args], cwd=ROOT,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    assert_user_error(run(str(sc), "--set", "tiers.gpu.bogus=1"), "tiers.gpu.bogus")
    assert_user_error(run(str(_scenario_file(tmp_path, "no-chunk.yaml", block_size=None))), "block_size")
    assert_user_error(run(str(sc), "--log-level", "loud"), "--log-level")
    assert_user_error(run(str(sc), "--max-body", "lots"), "--max-body", "'lots' is not a size")
    assert_user_error(run(str(sc), "--max-body", "0"), "--max-body", "must be a size > 0")
    assert_user_error(run(str(sc), "--max-body", "2GiB"), "--max-body", "at most 1GiB")
    assert_user_error(run(str(sc), "--disk-path", ""), "--disk-path", "an empty path")
    assert_user_error(run(str(sc), "--read-timeout", "0"), "--read-timeout", "must be > 0")
    with bind("127.0.0.1", 0) as taken:
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_user_error(run(str(sc), "--port", port), "--port " + port, "cannot listen")
