"""vLLM in batching mode (``hardware.scheduler: vllm``): the ``vllm serve`` argv follows the
scenario's scheduler, and what vLLM refuses is named by its key."""

from __future__ import annotations

import pytest

from simkv.errors import ScenarioError
from simkv.replay.vllm import unsupported, vllm_command
from simkv.scenario import scenario_from_dict


def scenario(**hardware):
    return scenario_from_dict({
        "block_size": 64, "load_policy": "always",
        "model": {"name": "tiny-vllm", "layers": 2, "kv_heads": 1, "head_dim": 64, "dtype_bytes": 2},
        "tiers": {"gpu": {"capacity_blocks": 128, "block_tokens": 32, "eviction": "vllm"},
                  "cpu": {"enabled": False}, "disk": {"enabled": False}},
        "hardware": {"gpus": 1, **hardware}})


def test_fifo_serves_one_request_at_a_time_whole_prompts() -> None:
    argv = vllm_command(scenario(), "m")
    assert argv[argv.index("--max-num-seqs") + 1] == "1"
    assert "--no-enable-chunked-prefill" in argv
    assert "--enable-chunked-prefill" not in argv and "--max-num-batched-tokens" not in argv


def test_the_vllm_scheduler_batches_with_the_scenarios_limits() -> None:
    argv = vllm_command(scenario(scheduler="vllm", max_num_seqs=16, max_num_batched_tokens=512), "m")
    assert argv[argv.index("--max-num-seqs") + 1] == "16"
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "512"
    assert "--enable-chunked-prefill" in argv and "--no-enable-chunked-prefill" not in argv
    # the step budget may be below the context: chunked prefill splits longer prompts
    argv = vllm_command(scenario(scheduler="vllm", max_num_seqs=4, max_num_batched_tokens=64), "m",
                        max_model_len=4064)
    assert argv[argv.index("--max-model-len") + 1] == "4064"
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "64"


def test_a_step_budget_below_the_batch_is_refused() -> None:
    sc = scenario(scheduler="vllm", max_num_seqs=256, max_num_batched_tokens=128)
    assert unsupported(sc) == [
        "hardware.max_num_batched_tokens: 128 is below hardware.max_num_seqs (256); vLLM refuses a step "
        "budget smaller than its batch (raise max_num_batched_tokens or lower max_num_seqs)"]
    with pytest.raises(ScenarioError, match=r"hardware\.max_num_batched_tokens"):
        vllm_command(sc, "m")
    assert unsupported(scenario(max_num_seqs=256, max_num_batched_tokens=128)) == []   # fifo: unused
