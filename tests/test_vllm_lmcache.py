"""LMCache's CPU and disk tiers under a real vLLM server on the CPU, through simkv's KV connector
(``simkv_engine.vllm_connector``): a prompt sent again is served from LMCache (vLLM's own prefix
cache is off), and the continued prefill's logprobs equal the full prefill's.

The model is a tiny Llama with seeded random weights written here (vLLM's ``dummy`` weights give
near-uniform logits, which would hide wrong KV); a control prompt that differs in its first token
shows the logprobs depend on the prefix's KV."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from simkv.core.lmcache import lmcache_config
from simkv.core.scenario import scenario_from_dict
from simkv.replay.vllm import LMCACHE_CONNECTOR
from simkv.replay.vllm_server import Launch, Server, VllmFailed
from tests.conftest import ROOT, free_port, vllm_python

CHUNK, VLLM_BLOCK = 64, 32
#: The tiny Llama's shape (head_dim 64: vLLM's CPU attention takes 32, 64, 80, ...).
MODEL = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1024,
         "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
         "max_position_embeddings": 2048, "rope_theta": 10000.0, "torch_dtype": "bfloat16",
         "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
PROMPT = [(7 * i + 11) % 1000 + 3 for i in range(3 * CHUNK + 8)]   # 3 full chunks + 8 tokens

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A safetensors checkpoint of the tiny Llama with seeded N(0, 0.2) weights, unit norms."""
    torch = pytest.importorskip("torch")
    safetensors = pytest.importorskip("safetensors.torch")
    out = tmp_path_factory.mktemp("tiny-llama")
    (out / "config.json").write_text(json.dumps(MODEL))
    m = MODEL
    h, hd, inter, vocab = m["hidden_size"], m["head_dim"], m["intermediate_size"], m["vocab_size"]
    shapes = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h)}
    for i in range(m["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (m["num_attention_heads"] * hd, h),
                   p + "self_attn.k_proj.weight": (m["num_key_value_heads"] * hd, h),
                   p + "self_attn.v_proj.weight": (m["num_key_value_heads"] * hd, h),
                   p + "self_attn.o_proj.weight": (h, m["num_attention_heads"] * hd),
                   p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                   p + "mlp.down_proj.weight": (h, inter)}
    g = torch.Generator().manual_seed(0)
    tensors = {name: (0.2 * torch.randn(shape, generator=g)).to(torch.bfloat16)
               for name, shape in shapes.items()}
    norms = ["model.norm.weight"] + [f"model.layers.{i}.{n}.weight" for i in range(m["num_hidden_layers"])
                                     for n in ("input_layernorm", "post_attention_layernorm")]
    tensors |= {name: torch.ones(h, dtype=torch.bfloat16) for name in norms}
    safetensors.save_file(tensors, str(out / "model.safetensors"))
    return out


@contextmanager
def vllm_server(model: Path, lmcache: dict, work: Path, timeout_s: float = 300.0) -> Iterator[str]:
    """vLLM's OpenAI server on the CPU with the connector and LMCache configured by ``lmcache``;
    vLLM's prefix cache off, so every reused token is LMCache's. Yields the base URL. Started and
    stopped by ``simkv engine vllm --serve``'s process manager (the real weights and the prefix
    cache off are what that command does not do)."""
    config = work / "lmcache.yaml"
    config.write_text(yaml.safe_dump(lmcache))
    port = free_port()
    argv = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--skip-tokenizer-init", "--no-enable-prefix-caching", "--enable-prompt-tokens-details",
            "--block-size", str(VLLM_BLOCK), "--max-model-len", "1024", "--dtype", "bfloat16",
            "--enforce-eager", "--max-num-seqs", "1", "--num-gpu-blocks-override", "40",
            "--host", "127.0.0.1", "--port", str(port), "--kv-transfer-config", json.dumps(LMCACHE_CONNECTOR)]
    env = {"PYTHONHASHSEED": "0", "LMCACHE_CONFIG_FILE": str(config), "LMCACHE_TRACK_USAGE": "false",
           "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT / "engine")}
    launch = Launch(argv, env, work / "vllm.log", f"http://127.0.0.1:{port}")
    with Server(launch) as server:
        try:
            server.wait_healthy(timeout_s)
        except VllmFailed as exc:
            pytest.fail(f"{exc}; its log ends:\n{launch.log.read_text(errors='replace')[-3000:]}")
        yield launch.url


def complete(url: str, prompt: list[int]) -> dict:
    """Four greedy tokens with their top-5 logprobs; the usage's cached tokens."""
    body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 5,
            "return_tokens_as_token_ids": True}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        out = json.load(r)
    logprobs = out["choices"][0]["logprobs"]
    return {"cached": out["usage"]["prompt_tokens_details"]["cached_tokens"],
            "tokens": logprobs["tokens"], "logprobs": logprobs["token_logprobs"],
            "top": logprobs["top_logprobs"]}


def external_tokens(url: str) -> float:
    """vLLM's count of prompt tokens loaded through the KV connector."""
    with urllib.request.urlopen(url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith('vllm:prompt_tokens_by_source_total{') and "external_kv_transfer" in line:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("vLLM's /metrics: no prompt_tokens_by_source_total{source=external_kv_transfer}")


def assert_same_logits(warm: dict, cold: dict) -> None:
    assert warm["tokens"] == cold["tokens"]
    for w, c in zip(warm["top"], cold["top"], strict=True):
        assert w.keys() == c.keys()
        assert all(abs(w[k] - c[k]) <= 1e-4 for k in c), (w, c)


def check_served_from_lmcache(url: str) -> None:
    """Cold, then warm from LMCache (its 3 full chunks; the 8-token tail is recomputed), then the
    control: the same prompt with another first token is a miss and its logprobs differ."""
    cold = complete(url, PROMPT)
    assert cold["cached"] == 0
    before = external_tokens(url)
    warm = complete(url, PROMPT)
    assert warm["cached"] == 3 * CHUNK
    assert external_tokens(url) - before == 3 * CHUNK
    assert_same_logits(warm, cold)
    other = complete(url, [PROMPT[0] + 1, *PROMPT[1:]])
    assert other["cached"] == 0
    assert max(abs(a - b) for a, b in zip(other["logprobs"], cold["logprobs"], strict=True)) > 1e-2


def _scenario(cpu: dict, disk: dict) -> dict:
    return {"block_size": CHUNK, "tiers": {"gpu": {"capacity_bytes": "unlimited"}, "cpu": cpu, "disk": disk}}


def test_a_prompt_reloaded_from_lmcache_cpu_tier_gives_the_full_prefills_logprobs(
        checkpoint: Path, tmp_path: Path) -> None:
    sc = scenario_from_dict(_scenario({"enabled": True, "capacity_bytes": "64MiB"}, {"enabled": False}))
    with vllm_server(checkpoint, lmcache_config(sc, str(tmp_path / "unused")), tmp_path) as url:
        check_served_from_lmcache(url)


def test_a_prompt_reloaded_from_lmcache_disk_tier_gives_the_full_prefills_logprobs(
        checkpoint: Path, tmp_path: Path) -> None:
    """Disk only (LMCache's ``local_cpu: false``: its CPU memory stages transfers, keeps nothing),
    so every hit is read back from the chunk files."""
    disk = tmp_path / "disk"
    disk.mkdir()
    sc = scenario_from_dict(_scenario({"enabled": False}, {"enabled": True, "capacity_bytes": "64MiB"}))
    config = lmcache_config(sc, str(disk)) | {"max_local_cpu_size": 0.01}   # the staging buffer
    assert config["local_cpu"] is False
    with vllm_server(checkpoint, config, tmp_path) as url:
        check_served_from_lmcache(url)
        deadline = time.monotonic() + 30                # LMCache writes chunk files asynchronously
        while len(list(disk.iterdir())) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(disk.iterdir())) == 6           # 3 chunks each of PROMPT and the control
