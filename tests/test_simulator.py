"""The tiered model: tiers, write policies, the CPU tier, load policy, TTFT, TTLs, the engines'
agreement, determinism, and the CLI's ``run``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from simkv.api import run
from simkv.core.policies.eviction import LRU
from simkv.core.scenario import load_scenario
from simkv.core.tiers import ARCHIVE, CPU, DISK, GPU, REMOTE, TIER_NAMES
from simkv.metrics.requests import fifo_start_times
from simkv.model import kernels as K
from simkv.model import tier_kernels as T
from simkv.model.system import TieredCache
from simkv.model.tiers import Tier
from tests.conftest import SCENARIOS, SMALL_TRACE, make_trace, simkv_cli
from tests.simulator_helpers import scenario

# -- tiers -------------------------------------------------------------------------------


def test_tier_storage_integral_is_exact_with_lazy_expiry() -> None:
    tier = Tier("t", LRU(), capacity_blocks=2, stored_bytes_per_block=100)
    tier.insert(1, now=0.0, ref=0, deadline=5.0)
    tier.insert(2, now=2.0, ref=1, deadline=100.0)
    tier.expire(now=50.0)  # block 1 expired at 5.0, noticed at 50.0
    assert 1 not in tier and 2 in tier and tier.expirations == 1
    tier.meter.close(10.0)
    # 100 B over [0, 2) + 200 B over [2, 5) + 100 B over [5, 10)
    assert tier.meter.byte_seconds == pytest.approx(100 * 2 + 200 * 3 + 100 * 5)
    assert tier.meter.peak == 200


def test_tier_never_exceeds_capacity_and_zero_capacity_stores_nothing() -> None:
    tier = Tier("t", LRU(), capacity_blocks=3, stored_bytes_per_block=1)
    for b in range(10):
        tier.insert(b, now=float(b), ref=b)
        assert len(tier) <= 3
    assert tier.evictions == 7 and sorted(tier.members) == [7, 8, 9]
    empty = Tier("t", LRU(), capacity_blocks=0, stored_bytes_per_block=1)
    assert empty.insert(1, 0.0, 0) == [] and 1 not in empty


def test_fixed_deadline_is_not_extended_sliding_is() -> None:
    for sliding, expected in ((False, 10.0), (True, 17.0)):
        tier = Tier("t", LRU(), None, 1, sliding=sliding)
        tier.insert(1, 0.0, 0, deadline=10.0)
        tier.insert(1, 7.0, 1, deadline=17.0)
        assert tier.deadline[1] == expected


# -- the cache system --------------------------------------------------------------------


def test_prefix_semantics_and_tails() -> None:
    # request 2 shares blocks 1,2 then diverges; block 4 is present but after the miss.
    trace = make_trace([[1, 2, 3, 4], [4], [1, 2, 9, 4]], tails=[1, 0, 3])
    res = run(scenario(gpu={"capacity_blocks": 100}), trace)
    req = res.requests
    assert req["hit_blocks"].tolist() == [0, 1, 2]
    assert req["hit_tokens"].tolist() == [0, 4, 8]
    assert res.summary["token_hit_rate"] == 12 / (17 + 4 + 19)
    assert res.summary["request_any_hit_ratio"] == pytest.approx(2 / 3)
    assert res.summary["request_full_hit_ratio"] == pytest.approx(1 / 3)


def test_write_through_vs_offload_on_evict() -> None:
    trace = make_trace([[1, 2], [3, 4], [1, 2]])
    wt = run(scenario(gpu={"capacity_blocks": 2}, disk={"enabled": True, "capacity_blocks": 10,
                                                          "write_policy": "write_through"}), trace)
    oe = run(scenario(gpu={"capacity_blocks": 2}, disk={"enabled": True, "capacity_blocks": 10,
                                                          "write_policy": "offload_on_evict"}), trace)
    # write-through writes every computed block; offload writes only what the GPU evicts
    assert wt.summary["disk_writes"] == 4 and wt.summary["offloads"] == 0
    assert oe.summary["disk_writes"] == 4 and oe.summary["offloads"] == 4
    for res in (wt, oe):
        assert res.requests["disk_hit_tokens"].tolist() == [0, 0, 8]
    # after request 2 blocks 1,2 were offloaded from the GPU to disk: both see the disk hit
    small_disk = run(scenario(gpu={"capacity_blocks": 2}, disk={
        "enabled": True, "capacity_blocks": 2, "write_policy": "offload_on_evict"}), trace)
    assert small_disk.requests["disk_hit_tokens"].tolist() == [0, 0, 8]


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
@pytest.mark.parametrize("eviction", ["lru", "fifo"])
def test_cpu_tier_serves_hits_and_evicts_by_its_policy(engine: str, eviction: str) -> None:
    # GPU holds 1 block, CPU 2, no disk; write-through copies every computed block to CPU.
    # r2's CPU hit on 0 is an access: under LRU r3's copy of 2 evicts 1, so r4 finds 0 in
    # the CPU tier; under FIFO it evicts 0 (copied first) and r4 misses. r5's 1 is gone in both.
    trace = make_trace([[0], [1], [0], [2], [0], [1]], arrivals=[0, 100, 200, 300, 400, 500])
    sc = scenario(gpu={"capacity_blocks": 1}, cpu={"enabled": True, "capacity_blocks": 2,
                                                   "eviction": eviction,
                                                   "read_gbps": 4.096e-6, "latency_s": 0.5},
                  engine=engine, hardware={"zero_service_time": False})
    res = run(sc, trace)
    req, s = res.requests, res.summary
    lru = eviction == "lru"
    assert s["engine"] == engine
    assert req["cpu_hit_tokens"].tolist() == [0, 0, 4, 0, 4 if lru else 0, 0]
    assert req["gpu_hit_tokens"].sum() == 0 and req["disk_hit_tokens"].sum() == 0
    assert req["cpu_loaded_bytes"].tolist() == [0, 0, 4096, 0, 4096 if lru else 0, 0]
    # load = latency_s + 4096 B / (4.096e-6 GB/s) = 0.5 + 1.0 s for one CPU block
    assert req["load_s"].tolist() == [0.0, 0.0, 1.5, 0.0, 1.5 if lru else 0.0, 0.0]
    assert s["token_hit_rate_cpu"] == (8 if lru else 4) / 24
    assert s["cpu_writes"] == (4 if lru else 5) and s["evictions_cpu"] == (2 if lru else 3)
    assert req["cpu_held_bytes"].tolist() == [4096, 8192, 8192, 8192, 8192, 8192]


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_offload_on_evict_goes_gpu_to_cpu_to_disk(engine: str) -> None:
    trace = make_trace([[1], [2], [3], [1], [3]])
    res = run(scenario(gpu={"capacity_blocks": 1}, cpu={"enabled": True, "capacity_blocks": 1},
                       disk={"enabled": True, "capacity_blocks": 10, "write_policy": "offload_on_evict"},
                       engine=engine), trace)
    req, s = res.requests, res.summary
    # r1: GPU evicts 1 to CPU; r2: 2 to CPU, whose victim 1 goes to disk; r3: 1 from disk
    # (3 to CPU, 2 to disk); r4: 3 from CPU (1 to CPU, its victim 3 to disk)
    assert req["disk_hit_tokens"].tolist() == [0, 0, 0, 4, 0]
    assert req["cpu_hit_tokens"].tolist() == [0, 0, 0, 0, 4]
    assert s["cpu_writes"] == 4 and s["disk_writes"] == 3 and s["offloads"] == 7


def test_cpu_tier_runs_compiled_and_is_off_by_default() -> None:
    sc = load_scenario(SCENARIOS / "three-tier-adaptive.yaml")
    assert not sc.tiers.cpu.enabled and TieredCache(sc, make_trace([[1]])).cpu is None
    trace = make_trace([[1, 2], [1, 2, 3]])
    res = run(sc.with_overrides(["tiers.cpu.enabled=true", "trace=null"]), trace)
    assert res.summary["engine"] == "compiled"
    assert (T.GPU, T.CPU, T.DISK, T.ARCHIVE) == (GPU, CPU, DISK, ARCHIVE) and REMOTE not in T.KERNEL_TIERS
    assert len(TIER_NAMES) == T.N_TIERS
    assert len(TIER_NAMES) == K.N_TIERS


def timed(**kw) -> dict:
    """Real service times: 1 ms per token prefill, no constant, disk loads at 1 MB/s."""
    return {"hardware": {"zero_service_time": False, "prefill_const_s": 0.0,
                         "prefill_per_token_s": 1e-3, "prefill_attn_s": 0.0}, **kw}


def test_load_policy_if_faster_skips_a_slow_tier() -> None:
    trace = make_trace([[1, 2, 3], [5, 6, 7], [1, 2, 3]], arrivals=[0, 100, 200])
    disk = {"enabled": True, "capacity_blocks": 10, "latency_s": 0.0}
    slow = {**disk, "read_gbps": 1e-6}  # 4 KiB per block at 1 kB/s: 4 s per block
    fast = {**disk, "read_gbps": 1.0}
    always = run(scenario(gpu={"capacity_blocks": 3}, disk=slow, **timed(load_policy="always")), trace)
    cut = run(scenario(gpu={"capacity_blocks": 3}, disk=slow, **timed(load_policy="if_faster")), trace)
    quick = run(scenario(gpu={"capacity_blocks": 3}, disk=fast, **timed(load_policy="if_faster")), trace)
    assert always.requests["disk_hit_tokens"].iloc[2] == 12
    assert always.requests["load_s"].iloc[2] == pytest.approx(3 * 4096 / 1e3)
    assert cut.requests["hit_tokens"].iloc[2] == 0 and cut.requests["prefix_blocks"].iloc[2] == 3
    assert cut.requests["ttft_s"].iloc[2] == pytest.approx(0.012)  # recompute 12 tokens
    assert quick.requests["disk_hit_tokens"].iloc[2] == 12


def test_ttft_is_queue_plus_load_plus_prefill_and_fifo_baseline() -> None:
    trace = make_trace([[1, 2], [1, 2], [3]], arrivals=[0.0, 0.001, 0.002])
    res = run(scenario(gpu={"capacity_blocks": 10}, **timed()), trace)
    r = res.requests
    np.testing.assert_allclose(r["ttft_s"], r["queue_s"] + r["load_s"] + r["prefill_s"])
    # request 0 computes 8 tokens (8 ms); request 1 waits for it, then hits both blocks
    assert r["queue_s"].iloc[1] == pytest.approx(0.007)
    assert r["hit_tokens"].iloc[1] == 8
    # without a cache every request computes everything, FIFO on one GPU
    np.testing.assert_allclose(r["ttft_nocache_s"], [0.008, 0.015, 0.018])


def test_fifo_baseline_equals_simpy_with_cache_disabled(small_trace) -> None:
    sc = load_scenario(SCENARIOS / "default.yaml").without_cache()
    res = run(sc, small_trace)
    assert res.summary["hit_tokens"] == 0
    np.testing.assert_allclose(res.requests["ttft_s"], res.requests["ttft_nocache_s"], rtol=1e-12)
    starts = fifo_start_times(np.array([0.0, 0.5, 0.6]), np.array([1.0, 1.0, 1.0]), servers=2)
    assert starts.tolist() == [0.0, 0.5, 1.0]


def test_sliding_ttl_keeps_reused_blocks_alive_fixed_does_not() -> None:
    # block 1 used every 8 s; TTL 10 s on the GPU tier itself (scope: all)
    trace = make_trace([[1]] * 6, arrivals=[0, 8, 16, 24, 32, 40])
    base = {"gpu": {"capacity_blocks": 10}}
    ttl = {"heuristic": "static", "params": {"ttl": 10.0}, "scope": "all"}
    sliding = run(scenario(**base, ttl={**ttl, "mode": "sliding"}), trace)
    fixed = run(scenario(**base, ttl={**ttl, "mode": "fixed"}), trace)
    assert sliding.requests["hit_blocks"].tolist() == [0, 1, 1, 1, 1, 1]
    # fixed: stored at 0 (expires 10), hit at 8, expired at 16, stored again, ...
    assert fixed.requests["hit_blocks"].tolist() == [0, 1, 0, 1, 0, 1]
    assert fixed.summary["expirations_gpu"] == 2


def test_eviction_policies_run_end_to_end(gen_trace) -> None:
    rates = {}
    for policy in ("lru", "fifo", "lfu", "priority", "belady"):
        res = run(SCENARIOS / "parity-lru.yaml", gen_trace,
                  overrides=[f"tiers.gpu.eviction={policy}", "tiers.gpu.capacity_blocks=400"])
        expected = {"lru": "fast", "fifo": "compiled"}.get(policy, "simpy")
        assert res.summary["engine"] == expected
        rates[policy] = res.summary["block_hit_ratio"]
    # Belady maximises block hits for a single tier: an upper bound for the others
    assert rates["belady"] >= max(rates.values()) - 1e-12


def test_engines_agree_on_every_metric(small_trace) -> None:
    over = ["tiers.gpu.capacity_blocks=3000"]
    fast = run(SCENARIOS / "parity-lru.yaml", small_trace, overrides=[*over, "engine=fast"])
    slow = run(SCENARIOS / "parity-lru.yaml", small_trace, overrides=[*over, "engine=simpy"])
    a = {k: v for k, v in fast.summary.items() if k != "engine"}
    b = {k: v for k, v in slow.summary.items() if k != "engine"}
    assert a == b
    pd.testing.assert_frame_equal(fast.requests, slow.requests)


def test_same_inputs_same_outputs(small_trace, tmp_path) -> None:
    path = SCENARIOS / "three-tier-adaptive.yaml"
    one = run(path, small_trace).write(tmp_path / "a")
    two = run(path, small_trace).write(tmp_path / "b")
    for name in ("summary.json", "requests.parquet", "timeline.parquet", "scenario.yaml"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


# -- the CLI --------------------------------------------------------------------------------


def test_cli_run_writes_outputs_and_summary(tmp_path) -> None:
    out = tmp_path / "run"
    proc = simkv_cli("run", str(SCENARIOS / "three-tier-adaptive.yaml"), "--trace", str(SMALL_TRACE),
                     "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "token hit rate" in proc.stdout and "cost saved" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    requests = pd.read_parquet(out / "requests.parquet")
    timeline = pd.read_parquet(out / "timeline.parquet")
    assert summary["requests"] == len(requests) > 0
    assert summary["token_hit_rate"] == requests["hit_tokens"].sum() / requests["input_tokens"].sum()
    assert timeline["requests"].sum() == len(requests)
    assert set(summary["token_hit_rate_by_class"]) == set(requests["prompt_class"])
    assert load_scenario(out / "scenario.yaml").name == "three-tier-adaptive"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "tiers.gpu.eviction=mru"], "tiers.gpu.eviction"),
        (["--set", "tiers.gpu.capacity_bytes=8XB"], "tiers.gpu.capacity_bytes"),
        (["--set", "nosuch=1"], "nosuch"),
        (["--set", "ttl.params.alpha=-1"], "alpha"),
        (["--set", "load_policy=sometimes"], "load_policy"),
        (["--set", "hardware.gpus=0"], "hardware.gpus"),
        (["--set", "novalue"], "key=value"),
        (["--trace", "/nonexistent/t.parquet"], "/nonexistent/t.parquet"),
    ],
)
def test_cli_bad_scenario_input(args: list[str], message: str) -> None:
    proc = simkv_cli("run", str(SCENARIOS / "three-tier-adaptive.yaml"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_scenario_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [1, 2\n")
    proc = simkv_cli("run", str(bad), "--trace", str(SMALL_TRACE))
    assert proc.returncode == 2 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    proc = simkv_cli("run", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr


def test_package_level_run(small_trace) -> None:
    import simkv

    res = simkv.run(SCENARIOS / "default.yaml", small_trace)
    assert isinstance(res, simkv.Result) and res.summary["requests"] == len(small_trace)
