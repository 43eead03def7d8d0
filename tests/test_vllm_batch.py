"""vLLM in batching mode (``hardware.scheduler: vllm``): the ``vllm serve`` argv follows the
scenario's scheduler, and what vLLM refuses is named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simkv.core.errors import ScenarioError
from simkv.core.scenario import scenario_from_dict
from simkv.replay.vllm import unsupported, vllm_command
from tests.conftest import assert_user_error, simkv_cli, start_vllm, stop_vllm


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


# -- step-time calibration (simkv calibrate --steps) ---------------------------------------

def test_the_step_fit_recovers_known_coefficients() -> None:
    from simkv_engine.calibrate import STEP_KEYS, StepPoint, fit_steps

    truth = dict(zip(STEP_KEYS, (0.011, 1.7e-4, 4.0e-4, 1.2e-6, 9.0e-8, 1.5e-5), strict=True))

    def seconds(p: int, d: int, k: int, a: int, c: int = 0) -> float:
        return sum(co * x for co, x in zip(truth.values(), (1, p, d, k, a, c), strict=True))

    grid = [(n, 0, 0, n * n) for n in (1, 16, 64, 256, 512)]
    grid += [(0, d, d * (length + 12), 0) for d in (1, 2, 4, 8, 16) for length in (64, 512, 1536)]
    points = [StepPoint(*g, seconds(*g)) for g in grid]
    cached = [(n, 0, 0, n * (n + 704), n * 704) for n in (16, 256, 512)]
    points += [StepPoint(*g[:4], seconds(*g), g[4]) for g in cached]
    grid += [g[:4] for g in cached]
    step = fit_steps(points)
    for key, value in truth.items():
        assert step[key] == pytest.approx(value, rel=1e-6)
    assert step["fit_error"]["points"] == len(grid) and step["fit_error"]["max_rel"] < 1e-9
    first = step["points"][1]
    assert first == {"prefill_tokens": 16, "decode_seqs": 0, "context_tokens": 0, "attn_tokens": 256,
                     "prefill_context_tokens": 0, "seconds": pytest.approx(seconds(16, 0, 0, 256)),
                     "fitted_s": pytest.approx(seconds(16, 0, 0, 256))}
    # no coefficient goes negative: a term the data do not need is 0, not a compensating sign
    flat = [StepPoint(*g, 0.02) for g in grid[:20]]
    step = fit_steps(flat)
    assert step["const_s"] == pytest.approx(0.02)
    assert all(step[k] == pytest.approx(0, abs=1e-12) for k in STEP_KEYS[1:])


def test_a_step_grid_too_small_to_fit_is_refused_before_measuring() -> None:
    from simkv_engine.calibrate import CalibrationError, StepPlan

    with pytest.raises(CalibrationError, match="the step grid has 4 points, the fit needs at least 5"):
        StepPlan([1, 64], [1, 2], [64]).check(4096)
    with pytest.raises(CalibrationError, match="needs 4121 tokens per sequence but the model's context"):
        StepPlan([1, 64], [1, 2, 4], [4096]).check(4095)
    with pytest.raises(CalibrationError, match="--step-cached: expected multiples of vLLM's block size 32"):
        StepPlan([1, 64], [1, 2, 4], [64], prefill_cached=[0, 48]).check(4095, 32)
    # cached prefixes multiply the prefill points: 2 x 2 + 2 x 1 = 6 points, and the longest prompt
    with pytest.raises(CalibrationError, match="needs 1088 tokens per sequence"):
        StepPlan([1, 64], [1, 2], [64], prefill_cached=[0, 1024]).check(1000, 32)
    StepPlan([1, 64], [1, 2], [64], prefill_cached=[0, 1024]).check(4095, 32)


def test_mixed_steps_are_checked_and_capped_to_one_step() -> None:
    from simkv_engine.calibrate import CalibrationError, StepPlan, step_runs

    plan = StepPlan([16, 128, 512], [1, 8], [64, 512, 1536], mixed_seqs=[4, 15], prefill_cached=[0, 256])
    plan.check(2047, 32)
    assert plan.mixed_length == 512                     # the middle --step-lengths value
    assert [plan.mixed_prefill(n, 15) for n in (16, 128, 512)] == [16, 128, 497]
    # (1 + 2 mixed) x 3 x 2 prefill points and 2 x 3 decode points, 4 runs each
    assert step_runs(plan) == 4 * (3 * 3 * 2 + 2 * 3)
    with pytest.raises(CalibrationError, match=r"--step-mixed: expected decoding sequences >= 1 and below "
                                               r"the largest --step-prefill \(512\), got \[4, 512\]"):
        StepPlan([16, 512], [1, 8], [64, 512], mixed_seqs=[4, 512]).check(2047, 32)


def test_the_latency_fit_is_a_line_in_the_streams_less_the_step_in_progress() -> None:
    """``latency_s + latency_per_stream_s · D`` recovered from samples that also hold half the
    decode step of their ``D`` streams (``K`` their KV tokens)."""
    from simkv_engine.calibrate import Latency, fit_latency

    step = {"const_s": 0.01, "per_decode_seq_s": 0.001, "per_context_token_s": 1e-6}
    lat = Latency()
    for d, k, noise in [(0, 0, 0.0), (0, 0, 0.001), (0, 0, -0.001), (4, 2000, 0.0), (4, 2100, 0.0002),
                        (4, 1900, -0.0002), (12, 6000, 0.0), (12, 6000, 0.003), (12, 6000, -0.003)]:
        wait = 0.5 * (0.01 + 0.001 * d + 1e-6 * k) if d else 0.0
        lat.streams.append(d)
        lat.context_tokens.append(k)
        lat.http_s.append(0.005 + 0.0005 * d + wait + noise)
    fit = fit_latency(lat, step)
    assert fit == {"latency_s": pytest.approx(0.005), "latency_per_stream_s": pytest.approx(0.0005)}
    # prefill-only runs alone: their median, no per-stream term
    alone = Latency([0, 0, 0], [0.004, 0.006, 0.005], [0, 0, 0])
    assert fit_latency(alone, step) == {"latency_s": pytest.approx(0.005)}
    # a negative line is clipped to >= 0, not fitted with a compensating sign
    falling = Latency([0, 8], [0.006, 0.5 * (0.01 + 0.008)], [0, 0])
    assert fit_latency(falling, step) == {"latency_s": pytest.approx(0.003), "latency_per_stream_s": 0.0}


def test_steps_need_a_vllm_engine(tmp_path) -> None:
    res = simkv_cli("calibrate", "--in-process", "scenarios/vllm-tiny.yaml", "-o", str(tmp_path / "p.yaml"),
                    "--steps")
    assert_user_error(res, "calibrate: --steps measures a vLLM server's batching; give --engine URL")


@pytest.mark.vllm
def test_calibrate_steps_measures_a_batching_vllm(tmp_path: Path) -> None:
    """The scenario's vLLM in batching mode (4 sequences, 256 tokens a step), a tiny step grid:
    a step section with every point measured (> 0), its fit and the plan. The pool is 1,024
    blocks: the mixed steps' streams decode fast on the tiny model, and in the scenario's 128
    blocks they would evict a cached prefix before the prefill after it is measured."""
    proc, url = start_vllm(tmp_path / "vllm", "--set", "hardware.scheduler=vllm", "--set",
                           "hardware.max_num_seqs=4", "--set", "hardware.max_num_batched_tokens=256",
                           "--set", "tiers.gpu.capacity_blocks=1024")
    try:
        out = tmp_path / "p.yaml"
        res = simkv_cli("calibrate", "--engine", url, "-o", str(out), "--block-size", "64",
                        "--new-tokens", "1,64", "--cached-tokens", "0,64", "--repeats", "1", "--warmup", "1",
                        "--steps", "--step-prefill", "1,128", "--step-cached", "0,64", "--step-decode", "1,4",
                        "--step-lengths", "64,512", "--step-mixed", "2",
                        "--step-tokens", "6")
    finally:
        stop_vllm(proc)
    assert res.returncode == 0, res.stderr
    assert "step fit: median error" in res.stdout
    doc = yaml.safe_load(out.read_text())
    step = doc["step"]
    assert list(step) == ["const_s", "per_prefill_token_s", "per_decode_seq_s", "per_context_token_s",
                          "prefill_attn_s", "prefill_context_attn_s", "latency_s", "latency_per_stream_s",
                          "fit_error", "points"]
    assert all(step[k] >= 0 for k in list(step)[:8]) and step["fit_error"]["points"] == 12
    got = [(p["prefill_tokens"], p["decode_seqs"], p["attn_tokens"], p["prefill_context_tokens"])
           for p in step["points"]]
    # prefill-only, decode-only, then mixed: beside 2 streams a prefill is capped at 128 - 2 tokens
    assert got == [(1, 0, 1, 0), (128, 0, 128 * 128, 0), (1, 0, 1 * 65, 64), (128, 0, 128 * 192, 128 * 64),
                   (0, 1, 0, 0), (0, 4, 0, 0), (0, 1, 0, 0), (0, 4, 0, 0),
                   (1, 2, 1, 0), (126, 2, 126 * 126, 0), (1, 2, 1 * 65, 64), (126, 2, 126 * 190, 126 * 64)]
    assert all(p["seconds"] > 0 and p["fitted_s"] >= 0 for p in step["points"])
    # the mixed points' K: their 2 streams' prompts (the middle --step-lengths, 512) and more
    assert all(p["context_tokens"] > 2 * 512 for p in step["points"][8:])
    assert "mixed steps" in doc["notes"] and "per stream decoding beside" in res.stdout
    # K: the decoding sequences' prompts and the tokens they had generated (how many depends on
    # how long the last stream took to start: at least the prompts, more for the longer ones)
    decode = [p for p in step["points"] if p["decode_seqs"] and not p["prefill_tokens"]]
    for p, length in zip(decode, (64, 64, 512, 512), strict=True):
        assert p["context_tokens"] > p["decode_seqs"] * length
    assert decode[2]["context_tokens"] > decode[0]["context_tokens"]
    assert decode[3]["context_tokens"] > decode[1]["context_tokens"]
    plan = doc["calibration"]["step"]
    assert plan["decode_lengths"] == [64, 512] and plan["prefill_cached"] == [0, 64]
    assert plan["server_prefill_times"] is True
    assert plan["mixed_seqs"] == [2] and plan["mixed_length"] == 512
    assert plan["http_s"] > 0 and "step_s = const_s" in doc["notes"]
