"""``simkv calibrate --engine URL`` against the real vLLM (the session's ``vllm_server``, a tiny
grid): the prefill grid as client TTFTs, its cached prefixes checked by vLLM's own
``cached_tokens``, written as a ``kind: table`` profile ``simkv run`` takes; nothing written for
what vLLM's API cannot measure. (The test that stops the server runs last: tests/conftest.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simkv.core.profiles import load_profile
from tests.conftest import VLLM_SCENARIO, VllmServer, assert_user_error, simkv_cli

pytestmark = pytest.mark.vllm


def test_calibrate_measures_vllms_prefill_grid(vllm_server: VllmServer, tmp_path: Path) -> None:
    out = tmp_path / "vllm.yaml"
    res = simkv_cli("calibrate", "--engine", vllm_server.url, "-o", str(out), "--block-size", "64",
                    "--new-tokens", "1,64", "--cached-tokens", "0,64,128", "--repeats", "1", "--warmup", "0")
    assert res.returncode == 0, res.stderr
    assert "vLLM: no tiers, no server timings" in res.stderr
    doc = yaml.safe_load(out.read_text())
    assert doc["kind"] == "table" and doc["block_size"] == 64
    assert doc["prefill"]["new_tokens"] == [1, 64] and doc["prefill"]["cached_tokens"] == [0, 64, 128]
    assert all(v > 0 for row in doc["prefill"]["seconds"] for v in row)
    assert doc["fit_error"]["prefill_rel"][0][1] is not None          # leave-one-out along cached
    # what vLLM's API cannot measure is not written, and the notes say so
    assert "cpu" not in doc["load"] and "cpu" not in doc["store"] and "request" not in doc
    assert doc["load"]["gpu"] == {"per_block_s": 0.0, "per_request_s": 0.0}
    assert "block size 32" in doc["notes"] and "not measured" in doc["notes"]
    assert "reset_prefix_cache" in doc["notes"] and "chunk_bytes" not in doc["calibration"]
    assert doc["measured_on"].startswith("vLLM 0.")
    # the profile drives the simulation of the scenario vLLM serves
    load_profile(out)
    run = simkv_cli("run", str(VLLM_SCENARIO), "-o", str(tmp_path / "sim"), "--set",
                    f"hardware.profile={out}")
    assert run.returncode == 0, run.stderr


def test_calibrate_refuses_a_block_size_vllm_cannot_cache(vllm_server: VllmServer, tmp_path: Path) -> None:
    res = simkv_cli("calibrate", "--engine", vllm_server.url, "-o", str(tmp_path / "p.yaml"),
                    "--block-size", "48")
    assert_user_error(res, "--block-size: 48 is not a multiple of vLLM's block size 32")
    assert not (tmp_path / "p.yaml").exists()
