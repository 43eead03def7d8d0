"""``simkv engine vllm``: a scenario's vLLM + LMCache counterpart (LMCache's config, the exact
``vllm serve`` argv), and the settings that cannot map refused naming their key."""

from __future__ import annotations

import json

import pytest
import yaml

from simkv.core.errors import ScenarioError
from simkv.core.lmcache import lmcache_config
from simkv.core.scenario import scenario_from_dict
from simkv.replay.vllm import gpu_blocks, vllm_command
from tests.conftest import ROOT, assert_user_error, simkv_cli

PER_TOKEN = 2 * 32 * 8 * 128 * 2          # the default model (Llama-3-8B shape, bf16): 128 KiB


def scenario(**extra):
    base = {"block_size": 256, "load_policy": "always",
            "tiers": {"gpu": {"capacity_bytes": "2GiB", "eviction": "vllm"},
                      "cpu": {"enabled": True, "capacity_bytes": "48GiB"},
                      "disk": {"enabled": True, "capacity_bytes": "500GiB"}}}
    base.update(extra)
    return scenario_from_dict(base)


def test_the_tiers_map_onto_lmcache_and_vllm() -> None:
    sc = scenario()
    assert sc.model.bytes_per_token == PER_TOKEN
    assert lmcache_config(sc, "/nvme/lm") == {
        "chunk_size": 256, "local_cpu": True, "save_unfull_chunk": False, "cache_policy": "LRU",
        "max_local_cpu_size": 48.0, "max_local_disk_size": 500.0, "local_disk": "file:///nvme/lm/"}
    argv = vllm_command(sc, "m", python="/venv/bin/python")
    assert argv[:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"]
    blocks = argv[argv.index("--num-gpu-blocks-override") + 1]
    assert int(blocks) == 2 * 1024**3 // (16 * PER_TOKEN) == 1024 == gpu_blocks(sc)
    for flag in ("--enable-prompt-tokens-details", "--skip-tokenizer-init", "--kv-transfer-config"):
        assert flag in argv
    assert argv[argv.index("--max-num-seqs") + 1] == "1"
    assert argv[argv.index("--block-size") + 1] == "16"
    # the pool in engine blocks, vLLM's null block included, as the simulator's model reads it
    sc = scenario(tiers={"gpu": {"capacity_blocks": 40, "block_tokens": 32, "eviction": "vllm"},
                         "disk": {"enabled": False}})
    argv = vllm_command(sc, "m")
    assert argv[argv.index("--num-gpu-blocks-override") + 1] == "40"
    assert argv[argv.index("--block-size") + 1] == "32"
    assert "--kv-transfer-config" not in argv            # no LMCache tier: vLLM alone


def test_an_unlimited_gpu_tier_leaves_vllm_its_default() -> None:
    argv = vllm_command(scenario(tiers={"gpu": {"capacity_bytes": "unlimited", "eviction": "vllm"}}), "m")
    assert "--num-gpu-blocks-override" not in argv


@pytest.mark.parametrize(("extra", "key"), [
    ({"tiers": {"archive": {"enabled": True}}, "ttl": {"heuristic": "static"}},
     "tiers.archive.enabled"),
    ({"tiers": {"gpu": {"eviction": "lru"}}}, "tiers.gpu.eviction"),
    ({"load_policy": "if_faster"}, "load_policy"),
    ({"hardware": {"gpus": 2}}, "hardware.gpus"),
    ({"block_size": 200}, "block_size"),
])
def test_what_vllm_cannot_do_is_refused(extra, key) -> None:
    with pytest.raises(ScenarioError, match=key):
        vllm_command(scenario(**extra), "m")


def test_lmcache_refuses_two_policies_and_an_unbounded_tier() -> None:
    two = scenario(tiers={"cpu": {"enabled": True, "capacity_bytes": "1GiB", "eviction": "lru"},
                          "disk": {"enabled": True, "capacity_bytes": "1GiB", "eviction": "fifo"}})
    with pytest.raises(ScenarioError, match="differ"):
        lmcache_config(two, "/d")
    with pytest.raises(ScenarioError, match=r"tiers\.cpu\.capacity_bytes"):
        lmcache_config(scenario(tiers={"cpu": {"enabled": True, "capacity_bytes": "unlimited"}}), "/d")


def test_cli_writes_the_config_and_the_script(tmp_path) -> None:
    proc = simkv_cli("engine", "vllm", "scenarios/default.yaml", "-o", str(tmp_path / "v"),
                     "--set", "block_size=256", "--set", "load_policy=always",
                     "--set", "tiers.gpu.eviction=vllm")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load((tmp_path / "v" / "lmcache.yaml").read_text())
    assert config["chunk_size"] == 256 and config["local_disk"].startswith("file://")
    script = (tmp_path / "v" / "serve.sh").read_text()
    assert "-m vllm.entrypoints.openai.api_server" in script
    # LMCache's tiers inside vLLM: simkv's connector (a CPU copy path), the engine package on the path
    assert "SimkvLMCacheConnectorV1" in script and "simkv_engine.vllm_connector" in script
    assert f"PYTHONPATH={ROOT / 'engine'}" in script
    assert f"LMCACHE_CONFIG_FILE={(tmp_path / 'v' / 'lmcache.yaml').resolve()}" in script
    # the model folder vLLM loads with random weights: the tiny-vllm shape's config
    model = json.loads((tmp_path / "v" / "model" / "tiny-vllm" / "config.json").read_text())
    assert model["head_dim"] == 64 and model["architectures"] == ["LlamaForCausalLM"]
    assert_user_error(simkv_cli("engine", "vllm", "scenarios/four-tier.yaml", "-o", str(tmp_path / "w"),
                                "--set", "block_size=256"), "tiers.archive.enabled")


def test_a_scenario_vllm_cannot_run_names_every_setting_at_once(tmp_path) -> None:
    proc = simkv_cli("engine", "vllm", "scenarios/four-tier.yaml", "--serve", "-o", str(tmp_path),
                     "--set", "block_size=200")
    assert_user_error(proc, "tiers.archive.enabled", "tiers.gpu.eviction", "load_policy", "block_size")


def test_the_cause_of_a_failed_start_is_read_from_vllms_log() -> None:
    """vLLM's own lines (process and level prefixes), the engine core's error preferred to the API
    server's re-raise, a pydantic error with its message from the next line."""
    from simkv.replay.vllm_server import failure_cause

    core = ("(EngineCore pid=32022) ERROR 12-03 06:03:27 [core.py:1510] ValueError: To serve at least one "
            "request with the model's max seq len (2048), (0.0 GiB KV cache is needed")
    api = "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
    assert failure_cause(f"INFO starting\n{core}\nTraceback (most recent call last):\n{api}\n") == (
        "ValueError: To serve at least one request with the model's max seq len (2048), (0.0 GiB KV "
        "cache is needed")
    pydantic = ("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
                "  Value error, User-specified max_model_len (100000) is greater than the derived "
                "max_model_len [type=value_error, input_value=ArgsKwargs((), {})]\n")
    assert failure_cause(pydantic).endswith("ModelConfig: Value error, User-specified max_model_len "
                                            "(100000) is greater than the derived max_model_len")
    assert failure_cause(api) == api and failure_cause("") == "no error in the log"


def test_a_server_that_dies_after_it_was_healthy_is_one_error_naming_its_log(tmp_path) -> None:
    """The process manager behind --serve, on a stand-in process (vLLM itself is exercised by
    tests/test_vllm_identity.py): healthy → on_ready; exits on its own → VllmFailed with the
    exit status and the cause read from its log."""
    import socket
    import sys

    from simkv.replay.vllm_server import Launch, VllmFailed, serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import http.server, threading, time, sys\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        self.send_response(200); self.end_headers()\n"
            "    def log_message(self, *a): pass\n"
            f"srv = http.server.HTTPServer(('127.0.0.1', {port}), H)\n"
            "threading.Thread(target=srv.serve_forever, daemon=True).start()\n"
            "time.sleep(1.5)\n"
            "print('RuntimeError: the engine core died', flush=True)\n"
            "sys.exit(3)\n")
    ready: list[str] = []
    launch = Launch([sys.executable, "-c", code], {}, tmp_path / "vllm.log", f"http://127.0.0.1:{port}")
    with pytest.raises(VllmFailed, match=r"exited with status 3: RuntimeError: the engine core died "
                                         r"\(log: .*vllm\.log\)"):
        serve(launch, ready.append, timeout_s=30)
    assert ready == [launch.url]
