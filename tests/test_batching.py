"""vLLM's continuous batching (``hardware.scheduler: vllm``): hand-computed schedules, the
properties it shares with the FIFO model, and its errors.

Unless said, the step time is ``0.1 + 0.001·(P + D)`` seconds (analytic profile: const 0.1,
0.001 per token, no attention term): ``P`` prefill tokens, ``D`` decoding sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.profiles import StepTime, load_profile
from simkv.core.scenario import load_scenario, scenario_from_dict
from simkv.traces.schema import Trace, build_table, read_trace
from tests.conftest import ROOT, SMALL_TRACE, simkv_cli


def trace(rows: Sequence[tuple[float, int, int]], block_size: int = 4) -> Trace:
    """Rows ``(arrival, prompt tokens, output tokens)``, prompts of distinct blocks."""
    n = len(rows)
    return build_table({
        "arrival_s": [a for a, _, _ in rows],
        "request_id": [f"r{i}" for i in range(n)],
        "session_id": [""] * n,
        "prompt_class": ["chat"] * n,
        "input_tokens": [p for _, p, _ in rows],
        "output_tokens": [o for _, _, o in rows],
        "block_hashes": [[1000 * i + j for j in range(p // block_size)] for i, (_, p, _) in enumerate(rows)],
    }, block_size=block_size, source="test")


def scenario(max_num_seqs: int = 8, max_num_batched_tokens: int = 32, **gpu: Any) -> Any:
    gpu = {"block_tokens": 4, **gpu}
    if "capacity_blocks" not in gpu:
        gpu["capacity_bytes"] = "unlimited"
    tiers = {"gpu": gpu, "disk": {"enabled": False}}
    return scenario_from_dict({
        "tiers": tiers,
        "hardware": {"scheduler": "vllm", "prefill_const_s": 0.1, "prefill_per_token_s": 0.001,
                     "prefill_attn_s": 0.0, "max_num_seqs": max_num_seqs,
                     "max_num_batched_tokens": max_num_batched_tokens}})


def times(result: Any) -> dict[str, list[float]]:
    r = result.requests
    return {c: r[c].round(9).tolist() for c in ("ttft_s", "e2e_s", "queue_s", "preemptions")}


def test_a_request_alone_is_chunked_then_decodes_a_token_a_step() -> None:
    # 40 prompt tokens, budget 32: chunks of 32 (0.132 s) and 8 (0.108 s), then two decode
    # steps of 0.101 s each
    out = run(scenario(), trace([(0.0, 40, 3)]))
    r = out.requests.iloc[0]
    assert r["ttft_s"] == pytest.approx(0.24, abs=1e-12)
    assert r["e2e_s"] == pytest.approx(0.442, abs=1e-12)
    assert r["tpot_s"] == pytest.approx(0.101, abs=1e-12)
    assert r["queue_s"] == 0.0 and r["preemptions"] == 0


def test_requests_arriving_together_share_steps() -> None:
    # one step prefills both (P = 40: 0.14 s), one decodes both (D = 2: 0.102 s)
    out = run(scenario(max_num_batched_tokens=64), trace([(0.0, 20, 2), (0.0, 20, 2)]))
    assert times(out)["ttft_s"] == [0.14, 0.14]
    assert times(out)["e2e_s"] == [0.242, 0.242]


def test_running_requests_decode_first_and_a_late_prompt_is_chunked_around_them() -> None:
    # r0: 20 tokens (0.12 s), then decodes a token in every step; r1 arrives at 0.05 and gets
    # what the budget leaves: chunks of 31, 31, 31 (0.132 s each, with r0's decode) and 7
    # (0.108 s), its first token at 0.624 s, the step in which r0's fifth token comes out
    out = run(scenario(), trace([(0.0, 20, 5), (0.05, 100, 1)]))
    t = times(out)
    assert t["ttft_s"] == [0.12, round(0.624 - 0.05, 9)]
    assert t["e2e_s"] == [0.624, round(0.624 - 0.05, 9)]
    assert t["queue_s"] == [0.0, round(0.12 - 0.05, 9)]


def test_max_num_seqs_makes_the_next_request_wait_for_a_slot() -> None:
    out = run(scenario(max_num_seqs=1, max_num_batched_tokens=64), trace([(0.0, 20, 2), (0.0, 20, 2)]))
    t = times(out)
    # r0: 0.12 + 0.101; r1 is admitted when r0 finishes
    assert t["e2e_s"] == [0.221, 0.442]
    assert t["queue_s"] == [0.0, 0.221]


def test_a_request_that_cannot_get_a_block_preempts_the_last_admitted_one() -> None:
    # 6 blocks of 4 tokens (5 usable): both 8-token prompts are admitted (2 blocks each); the
    # next decode needs a third block each, one is free: r1 (admitted last) is preempted and
    # waits until r0 finishes (7 decode steps after its first token), then recomputes its
    # last token (its full blocks are found again) and decodes its remaining 6 tokens
    out = run(scenario(capacity_blocks=6, eviction="vllm"), trace([(0.0, 8, 8), (0.0, 8, 8)]))
    t = times(out)
    assert t["preemptions"] == [0, 1]
    assert t["ttft_s"] == [0.116, 0.116]
    assert t["e2e_s"][0] == pytest.approx(0.116 + 7 * 0.101, abs=1e-9)
    assert t["e2e_s"][1] == pytest.approx(0.116 + 7 * 0.101 + 0.101 + 6 * 0.101, abs=1e-9)
    assert out.summary["preemptions"] == 1


def test_prefix_hits_are_found_at_admission_and_shorten_the_prefill(tmp_path: Path) -> None:
    # r1 shares r0's two blocks and arrives after r0's first token: it prefills 4 tokens; with
    # a cost of its attention over its cached context, its n·c = 4·8 adds to its step
    tr = build_table({
        "arrival_s": [0.0, 1.0], "request_id": ["a", "b"], "session_id": ["", ""],
        "prompt_class": ["chat", "chat"], "input_tokens": [12, 12], "output_tokens": [1, 1],
        "block_hashes": [[1, 2, 3], [1, 2, 4]]}, block_size=4, source="test")
    out = run(scenario(), tr)
    assert out.requests["hit_tokens"].tolist() == [0, 8]
    assert times(out)["ttft_s"] == [0.112, 0.104]
    profile = tmp_path / "p.yaml"
    doc = yaml.safe_load((ROOT / "profiles" / "example-table.yaml").read_text())
    doc["block_size"] = 4
    doc["step"] = {"const_s": 0.1, "per_prefill_token_s": 0.001, "per_decode_seq_s": 0.001,
                   "per_context_token_s": 0.0, "prefill_attn_s": 0.0, "prefill_context_attn_s": 0.01}
    profile.write_text(yaml.safe_dump(doc))
    data = scenario().to_dict()
    data["hardware"]["profile"] = str(profile)
    sc = scenario_from_dict(data)
    assert times(run(sc, tr))["ttft_s"] == [0.112, round(0.104 + 0.01 * 4 * 8, 9)]
    # the latency outside the engine core: in TTFT and e2e, not in the engine's steps
    doc["step"]["latency_s"] = 0.005
    profile.write_text(yaml.safe_dump(doc))
    out = times(run(sc, tr))
    assert out["ttft_s"] == [0.117, 0.429] and out["e2e_s"] == [0.117, 0.429]


def test_with_sparse_arrivals_and_one_output_token_batching_equals_fifo() -> None:
    """Requests that never overlap, each prompt within one step's budget: every step prefills
    one prompt alone, so TTFT is the FIFO model's prefill (the analytic step is its formula)."""
    tr = read_trace(SMALL_TRACE)
    n = 200
    rows = tr.table.slice(0, n)
    spaced = build_table({
        "arrival_s": [100.0 * i for i in range(n)], "request_id": rows.column("request_id").to_pylist(),
        "session_id": [""] * n, "prompt_class": rows.column("prompt_class").to_pylist(),
        "input_tokens": rows.column("input_tokens").to_pylist(), "output_tokens": [1] * n,
        "block_hashes": rows.column("block_hashes").to_pylist()}, block_size=tr.block_size, source="test")
    base = ["tiers.gpu.capacity_bytes=80GiB"]
    budget = int(np.max(spaced.input_tokens))
    fifo = run(ROOT / "scenarios" / "default.yaml", spaced, overrides=base)
    vllm = run(ROOT / "scenarios" / "default.yaml", spaced, overrides=[
        *base, "hardware.scheduler=vllm", f"hardware.max_num_batched_tokens={budget}"])
    for column in ("hit_tokens", "gpu_hit_tokens", "disk_hit_tokens"):
        assert vllm.requests[column].tolist() == fifo.requests[column].tolist()
    np.testing.assert_allclose(vllm.requests["ttft_s"], fifo.requests["ttft_s"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(vllm.requests["ttft_nocache_s"], fifo.requests["ttft_nocache_s"],
                               rtol=0, atol=1e-9)
    assert vllm.requests["e2e_s"].tolist() == vllm.requests["ttft_s"].tolist()


@pytest.mark.parametrize("archive", [False, True])
def test_both_event_engines_give_the_same_rows_and_runs_repeat(archive: bool) -> None:
    sets = ["hardware.scheduler=vllm", "tiers.gpu.capacity_bytes=60GiB"]
    if not archive:
        sets.append("tiers.archive.enabled=false")
        sets += ["ttl.heuristic=none", "ttl.params={}"]
    path = ROOT / "scenarios" / "three-tier-adaptive.yaml"
    tr = read_trace(SMALL_TRACE)
    simpy = run(path, tr, overrides=[*sets, "engine=simpy"])
    compiled = run(path, tr, overrides=[*sets, "engine=compiled"])
    again = run(path, tr, overrides=[*sets, "engine=compiled"])
    assert simpy.requests.equals(compiled.requests)
    assert compiled.requests.equals(again.requests)
    assert simpy.summary["e2e_p50_s"] == compiled.summary["e2e_p50_s"]


def test_fifo_has_no_decode_columns_and_the_fast_engine_refuses_batching() -> None:
    fifo = run(ROOT / "scenarios" / "parity-lru.yaml", read_trace(SMALL_TRACE))
    assert fifo.requests["e2e_s"].isna().all() and "e2e_p50_s" not in fifo.summary
    with pytest.raises(ScenarioError, match=r"engine: 'fast' cannot run.*hardware.scheduler"):
        run(ROOT / "scenarios" / "parity-lru.yaml", read_trace(SMALL_TRACE),
            overrides=["hardware.scheduler=vllm", "engine=fast"])


def test_a_request_larger_than_the_kv_pool_is_an_error_naming_the_key_and_row() -> None:
    with pytest.raises(ScenarioError, match=r"tiers.gpu.capacity_blocks: .*trace row 1 \(request 'r1'"):
        run(scenario(capacity_blocks=5, eviction="vllm"),
            trace([(0.0, 8, 1), (1.0, 40, 1)]))


def test_the_analytic_step_is_the_prefill_formula_per_batch() -> None:
    sc = scenario_from_dict({"hardware": {"prefill_const_s": 0.03, "prefill_per_token_s": 2e-5,
                                          "prefill_attn_s": 5e-10}})
    hw = sc.hardware.time_model()
    step = hw.step_time()
    assert step(300, 0, 0, 300 * (300 + 100)) == pytest.approx(hw.prefill_s(300, 100), rel=1e-15)
    assert step(0, 1, 101, 0) == pytest.approx(hw.prefill_s(1, 100), rel=1e-15)
    zero = scenario_from_dict({"hardware": {"zero_service_time": True}}).hardware.time_model()
    assert zero.step_time() == StepTime(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _profile(tmp_path: Path, step: dict[str, Any] | None) -> Path:
    data = yaml.safe_load((ROOT / "profiles" / "example-table.yaml").read_text())
    data.pop("step", None)
    if step is not None:
        data["step"] = step
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_table_profile_needs_a_step_section_for_batching(tmp_path: Path) -> None:
    path = _profile(tmp_path, None)
    sc = scenario_from_dict({"hardware": {"profile": str(path), "scheduler": "vllm"}})
    with pytest.raises(ScenarioError, match=r"p.yaml: step: missing, but hardware.scheduler: vllm.*--steps"):
        sc.hardware.time_model().step_time()
    step = {"const_s": 0.01, "per_prefill_token_s": 1e-4, "per_decode_seq_s": 1e-3,
            "per_context_token_s": 1e-6, "prefill_attn_s": 0.0, "fit_error": {"median_rel": 0.02}}
    prof = load_profile(_profile(tmp_path, step))
    assert prof.step_time()(10, 2, 50, 0) == pytest.approx(0.01 + 1e-3 + 2e-3 + 5e-5)
    with_context = load_profile(_profile(tmp_path, {**step, "prefill_context_attn_s": 1e-7}))
    assert with_context.step_time()(10, 2, 50, 0, 7000) == pytest.approx(0.01 + 1e-3 + 2e-3 + 5e-5 + 7e-4)
    bad = dict(step, per_decode_seq_s=-1.0)
    with pytest.raises(ScenarioError, match=r"step.per_decode_seq_s: must be >= 0"):
        load_profile(_profile(tmp_path, bad))
    with pytest.raises(ScenarioError, match=r"step.const: unknown key"):
        load_profile(_profile(tmp_path, {**step, "const": 1}))


def test_bad_scheduler_keys_exit_2_naming_the_key(tmp_path: Path) -> None:
    for sets, message in ((["hardware.scheduler=batch"], "hardware.scheduler: 'batch' is not one of"),
                          (["hardware.max_num_seqs=0"], "hardware.max_num_seqs: must be > 0"),
                          (["hardware.scheduler=vllm", "hardware.gpus=2"], "hardware.gpus: 2, but")):
        args = ["run", str(ROOT / "scenarios" / "parity-lru.yaml"), "-t", str(SMALL_TRACE), "-o",
                str(tmp_path / "out")]
        for s in sets:
            args += ["--set", s]
        res = simkv_cli(*args)
        assert res.returncode == 2, res.stderr
        assert message in res.stderr and "Traceback" not in res.stderr


def test_load_scenario_accepts_the_batching_keys() -> None:
    sc = load_scenario(ROOT / "scenarios" / "parity-lru.yaml",
                       ["hardware.scheduler=vllm", "hardware.max_num_seqs=4"])
    assert (sc.hardware.scheduler, sc.hardware.max_num_seqs) == ("vllm", 4)
