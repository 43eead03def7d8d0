"""The tiered model: tiers, write policies, load policy, archive, TTLs, metrics, invariants."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkv.api import run
from simkv.errors import ScenarioError
from simkv.metrics.requests import fifo_start_times
from simkv.model import kernels as K
from simkv.model.engine import StalledClock, archive_worker_loop, first_pass_at
from simkv.model.system import ARCHIVE, CPU, DISK, GPU, TIER_NAMES, TieredCache
from simkv.model.tiers import Tier
from simkv.policies.eviction import LRU
from simkv.scenario import Scenario, load_scenario, scenario_from_dict
from tests.conftest import ROOT, SMALL_TRACE, make_trace, simkv_cli

SCENARIOS = ROOT / "scenarios"
KV = 1024  # bytes per token in hand-made scenarios: a 4-token block is 4 KiB


def scenario(**tiers) -> Scenario:
    """A small hand-made scenario: zero-time by default, GPU tier only unless told."""
    data: dict = {
        "model": {"kv_bytes_per_token": KV},
        "tiers": {"gpu": {"capacity_blocks": 4}, "disk": {"enabled": False},
                  "archive": {"enabled": False}},
        "hardware": {"zero_service_time": True},
        "engine": "simpy",
        "timeline_bin_s": 10.0,
    }
    for key, value in tiers.items():
        if key in TIER_NAMES:
            data["tiers"].setdefault(key, {}).update(value)
        else:
            data[key] = value
    return scenario_from_dict(data)


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
    assert (K.GPU, K.CPU, K.DISK, K.ARCHIVE) == (GPU, CPU, DISK, ARCHIVE)
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


def archive_scenario(**ttl) -> Scenario:
    return scenario(
        gpu={"capacity_blocks": 2},
        disk={"enabled": True, "capacity_blocks": 2},
        archive={"enabled": True, "interval_s": 10.0, "compression_ratio": 2.0},
        ttl={"heuristic": "static", "params": {"ttl": ttl.get("ttl", 1000.0)},
             "mode": ttl.get("mode", "fixed"), "scope": "archive"},
    )


def test_deep_miss_fetches_from_archive_and_hydrates() -> None:
    # blocks 1,2 archived at t=10, evicted from GPU and disk by 3,4 and 5,6; re-used at t=30
    trace = make_trace([[1, 2], [3, 4], [5, 6], [1, 2]], arrivals=[0, 15, 16, 30])
    res = run(archive_scenario(), trace)
    r, s = res.requests, res.summary
    assert r["archive_hit_tokens"].tolist() == [0, 0, 0, 8]
    assert s["archive_gets"] == 2 and s["hydrations"] == 2 and s["archive_puts"] >= 2
    assert s["storage_peak_bytes_archive"] >= 2 * 2 * 4 * KV // 2
    assert s["archive_storage_dollars"] > 0 and s["archive_request_dollars"] > 0


def test_expired_archive_objects_are_never_served() -> None:
    trace = make_trace([[1, 2], [3, 4], [5, 6], [1, 2]], arrivals=[0, 15, 16, 30])
    res = run(archive_scenario(ttl=15.0), trace)  # uploaded at 10, expire at 25 < 30
    assert res.requests["archive_hit_tokens"].iloc[3] == 0
    assert res.summary["expirations_archive"] >= 2


def test_archive_storage_integral_exact() -> None:
    trace = make_trace([[1, 2], [9]], arrivals=[0.0, 40.0])
    res = run(archive_scenario(ttl=15.0), trace)
    # blocks 1,2 uploaded at t=10 (zero-time worker) and expire at t=25; block 9 never
    # reaches a pass before the end (t=40)
    per_object = 4 * KV // 2
    assert res.summary["storage_gb_hours_archive"] == pytest.approx(2 * per_object * 15 / 1e9 / 3600)
    assert res.summary["expirations_archive"] == 2


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
@pytest.mark.parametrize(("interval", "zero_time", "mode"), [
    (1.0, True, "fixed"), (3.0, True, "sliding"), (0.7, False, "sliding"), (10.0, False, "fixed")])
def test_skipping_idle_archive_passes_changes_nothing(monkeypatch, gen_trace, engine, interval,
                                                      zero_time, mode) -> None:
    # Integer arrivals on a grid of integer pass times make passes and requests coincide, so
    # the order of simultaneous events matters too; every output must be bit-identical.
    arrivals = np.floor(gen_trace.arrival_s * 3.0)
    trace = make_trace([[int(h) for h in gen_trace.block_hashes_flat[lo:hi]]
                        for lo, hi in zip(gen_trace.block_offsets[:-1], gen_trace.block_offsets[1:],
                                          strict=True)][:200], block_size=gen_trace.block_size,
                       arrivals=arrivals[:200].tolist())
    sc = scenario_from_dict({
        "tiers": {"gpu": {"capacity_blocks": 64}, "disk": {"enabled": True, "capacity_blocks": 128},
                  "archive": {"enabled": True, "interval_s": interval}},
        "ttl": {"heuristic": "adaptive", "params": {"base_ttl": 20.0, "alpha": 1.0, "min_ttl": 5.0,
                                                    "max_ttl": 200.0}, "mode": mode},
        "hardware": {"zero_service_time": zero_time}, "engine": engine})
    skipped = run(sc, trace)
    periodic_worker = functools.partial(archive_worker_loop, skip_idle=False)  # a pass every interval
    monkeypatch.setattr("simkv.model.engine.archive_worker_loop", periodic_worker)
    periodic = run(sc, trace)
    pd.testing.assert_frame_equal(skipped.requests, periodic.requests, check_exact=True)
    pd.testing.assert_frame_equal(skipped.timeline, periodic.timeline, check_exact=True)
    drop = ("wall_s", "sim_wall_s")
    assert ({k: v for k, v in skipped.summary.items() if k not in drop}
            == {k: v for k, v in periodic.summary.items() if k not in drop})
    assert skipped.summary["archive_puts"] > 0


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_archive_passes_follow_the_requests_not_the_time_span(monkeypatch, engine) -> None:
    # 50 requests over 1e8 s with a pass every 60 s: 1.7 million periodic passes, nearly all
    # idle. Only the passes with candidates (and the first idle one after them) may run.
    from simkv.model.cache_base import CacheBase

    calls = [0]
    original = CacheBase.archive_pass

    def counted(self, now):
        calls[0] += 1
        assert calls[0] <= 1000, "idle archive passes are not skipped"
        return original(self, now)

    monkeypatch.setattr(CacheBase, "archive_pass", counted)
    trace = make_trace([[i % 5, 10 + i % 3] for i in range(50)],
                       arrivals=np.linspace(0.0, 1e8, 50).tolist())
    sc = replace(archive_scenario(ttl=1e7), engine=engine)
    res = run(sc, trace)
    assert calls[0] <= 2 * 50
    assert res.summary["archive_puts"] > 0 and res.summary["requests"] == 50


def repeated_addition(t: float, h: float, event: float) -> float:
    while t < event:
        t += h
    return t


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-6, 1e4), st.floats(1e-6, 1e3), st.integers(0, 20000))
def test_first_pass_at_is_the_chain_of_float_additions(t0: float, h: float, steps: int) -> None:
    event = t0 + steps * h
    assert first_pass_at(t0, h, event) == repeated_addition(t0, h, event)


@pytest.mark.parametrize("exponent", [-3, 0, 7, 20])
@pytest.mark.parametrize("half_ulps", [3, 5, 7, 2049])
def test_first_pass_at_rounds_ties_like_the_clock(exponent: int, half_ulps: int) -> None:
    # an interval of an odd number of half ulps: every addition is a tie, rounded to even
    t0 = math.ldexp(1.0, exponent) + 3 * math.ulp(math.ldexp(1.0, exponent))
    h = half_ulps * math.ulp(t0) / 2
    event = t0 + 30000 * h
    assert first_pass_at(t0, h, event) == repeated_addition(t0, h, event)


def test_an_interval_below_the_clock_resolution_is_an_error() -> None:
    with pytest.raises(StalledClock, match=r"tiers\.archive\.interval_s"):
        first_pass_at(1.0, 1e-9, 1e300)
    with pytest.raises(StalledClock):  # half an ulp: one tie rounds up to even, the next stays
        first_pass_at(1.0 + math.ulp(1.0), math.ulp(1.0) / 2, 2.0)
    trace = make_trace([[1], [2]], arrivals=[0.0, 1e6])
    sc = scenario_from_dict({**archive_scenario().to_dict(), "tiers": {
        **archive_scenario().to_dict()["tiers"], "archive": {"enabled": True, "interval_s": 1e-9}}})
    with pytest.raises(ScenarioError, match=r"tiers.archive.interval_s: 1e-09 s would take 1e\+15"):
        run(sc, trace)


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


# -- invariants on random systems ----------------------------------------------------------

blocks_st = st.lists(st.lists(st.integers(0, 15), max_size=8), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=blocks_st,
    gaps=st.lists(st.floats(0.0, 20.0), min_size=30, max_size=30),
    gpu_cap=st.integers(0, 6),
    cpu_cap=st.one_of(st.none(), st.integers(0, 6)),
    disk_cap=st.integers(0, 6),
    archive=st.booleans(),
    write_policy=st.sampled_from(["write_through", "offload_on_evict"]),
    eviction=st.sampled_from(["lru", "fifo", "lfu", "priority", "belady"]),
    heuristic=st.sampled_from(["static", "adaptive", "cost_aware", "reuse_prob", "size_aware"]),
    mode=st.sampled_from(["fixed", "sliding"]),
    scope=st.sampled_from(["archive", "all"]),
    zero_time=st.booleans(),
    load_policy=st.sampled_from(["always", "if_faster"]),
)
def test_invariants(requests, gaps, gpu_cap, cpu_cap, disk_cap, archive, write_policy, eviction,
                    heuristic, mode, scope, zero_time, load_policy) -> None:
    arrivals = np.cumsum(gaps[: len(requests)]).tolist()
    trace = make_trace(requests, arrivals=arrivals, tails=[i % 3 for i in range(len(requests))])
    params = {"static": {"ttl": 12.0}, "adaptive": {"base_ttl": 5, "alpha": 1, "min_ttl": 1,
                                                    "max_ttl": 50}}.get(heuristic, {})
    sc = scenario(
        gpu={"capacity_blocks": gpu_cap, "eviction": eviction},
        cpu={"enabled": cpu_cap is not None, "capacity_blocks": cpu_cap, "eviction": eviction,
             "read_gbps": 0.1, "write_gbps": 0.05},
        disk={"enabled": True, "capacity_blocks": disk_cap, "write_policy": write_policy,
              "eviction": eviction, "read_gbps": 0.01},
        archive={"enabled": archive or scope == "archive", "interval_s": 7.0},
        ttl={"heuristic": heuristic, "params": params, "mode": mode, "scope": scope},
        hardware={"zero_service_time": zero_time, "prefill_per_token_s": 1e-3},
        load_policy=load_policy,
    )
    res = run(sc, trace)
    r, s = res.requests, res.summary
    block_bytes = 4 * KV
    # occupancy never above capacity (sampled after every request, and the exact peak)
    assert (r["gpu_held_bytes"] <= gpu_cap * block_bytes).all()
    assert (r["disk_held_bytes"] <= disk_cap * block_bytes).all()
    assert s["storage_peak_bytes_gpu"] <= gpu_cap * block_bytes
    assert s["storage_peak_bytes_disk"] <= disk_cap * block_bytes
    assert (r["cpu_held_bytes"] <= (cpu_cap or 0) * block_bytes).all()
    assert s["storage_peak_bytes_cpu"] <= (cpu_cap or 0) * block_bytes
    # hit + miss tokens = input tokens; tier hits add up; prefix never longer than the prompt
    assert (r["hit_tokens"] == sum(r[f"{t}_hit_tokens"] for t in TIER_NAMES)).all()
    assert (r["cpu_loaded_bytes"] == r["cpu_hit_tokens"] // 4 * block_bytes).all()
    assert (r["hit_tokens"] <= r["input_tokens"]).all() and (r["hit_blocks"] <= r["prefix_blocks"]).all()
    assert (r["prefix_blocks"] <= r["blocks"]).all()
    assert s["hit_tokens"] + (s["input_tokens"] - s["hit_tokens"]) == int(r["input_tokens"].sum())
    # costs non-negative; TTFT never below its parts
    for key in ("archive_storage_dollars", "archive_request_dollars", "transfer_dollars"):
        assert s[key] >= 0
    assert (r["request_cost_dollars"] >= 0).all()
    # every dollar is charged to one request: the per-request columns add up to the summary
    for key in ("gpu_dollars_saved", "archive_storage_dollars", "archive_request_dollars",
                "transfer_dollars", "cost_saved_dollars"):
        assert r[key].sum() == pytest.approx(s[key], rel=1e-9, abs=1e-12), key
    assert (r["ttft_s"] + 1e-12 >= r["load_s"] + r["prefill_s"]).all()
    if s["input_tokens"]:
        assert 0.0 <= s["token_hit_rate"] <= 1.0
    else:
        assert s["token_hit_rate"] is None  # 0/0 is undefined, not a 0% hit rate


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=blocks_st,
    gaps=st.lists(st.sampled_from([0.0, 0.5, 3.0, 7.0, 10.0, 13.7]), min_size=30, max_size=30),
    caps=st.tuples(st.integers(0, 6), st.integers(0, 6), st.one_of(st.none(), st.integers(0, 6))),
    evictions=st.tuples(*[st.sampled_from(["lru", "fifo"])] * 4),
    cpu_cap=st.one_of(st.none(), st.integers(0, 6)),  # None: no CPU tier
    disk=st.booleans(),
    archive=st.booleans(),
    write_policy=st.sampled_from(["write_through", "offload_on_evict"]),
    heuristic=st.sampled_from(["static", "adaptive", "cost_aware", "reuse_prob", "per_class"]),
    mode=st.sampled_from(["fixed", "sliding"]),
    zero_time=st.booleans(),
    load_policy=st.sampled_from(["always", "if_faster"]),
    gpus=st.integers(1, 2),
    billing=st.sampled_from([{}, {"storage_class": "glacier_ir"},
                             {"min_days": 1e-4, "min_object_bytes": "3KiB"}]),  # 8.64 s minimum
)
def test_compiled_engine_equals_reference(requests, gaps, caps, evictions, cpu_cap, disk, archive,
                                          write_policy, heuristic, mode, zero_time, load_policy, gpus,
                                          billing) -> None:
    """The compiled tiers give the reference implementation's results bit for bit, with or
    without a CPU tier."""
    arrivals = np.cumsum(gaps[: len(requests)]).tolist()
    classes = [("chat", "tool", "rag")[i % 3] for i in range(len(requests))]
    trace = make_trace(requests, arrivals=arrivals, tails=[i % 3 for i in range(len(requests))],
                       classes=classes)
    params = {"static": {"ttl": 12.0}, "per_class": {"default_ttl": 9.0, "class_ttl": {"tool": 30.0}},
              "adaptive": {"base_ttl": 5, "alpha": 1, "min_ttl": 1, "max_ttl": 50}}.get(heuristic, {})
    sc = scenario(
        gpu={"capacity_blocks": caps[0], "eviction": evictions[0]},
        cpu={"enabled": cpu_cap is not None, "capacity_blocks": cpu_cap, "eviction": evictions[3],
             "read_gbps": 0.1, "write_gbps": 0.05, "latency_s": 0.01},
        disk={"enabled": disk, "capacity_blocks": caps[1], "write_policy": write_policy,
              "eviction": evictions[1], "read_gbps": 0.01, "write_gbps": 0.02},
        archive={"enabled": archive, "interval_s": 7.0, "capacity_blocks": caps[2],
                 "eviction": evictions[2], "download_gbps": 0.05, **billing},
        ttl={"heuristic": heuristic, "params": params, "mode": mode, "scope": "archive"}
        if archive else {},
        hardware={"zero_service_time": zero_time, "prefill_per_token_s": 1e-3, "gpus": gpus},
        load_policy=load_policy,
    )
    ref = run(sc, trace)
    fast = run(sc.with_overrides(["engine=compiled"]), trace)
    assert ref.summary.pop("engine") == "simpy" and fast.summary.pop("engine") == "compiled"
    assert ref.summary == fast.summary
    pd.testing.assert_frame_equal(ref.requests, fast.requests)


@settings(max_examples=60, deadline=None)
@given(requests=blocks_st, gaps=st.lists(st.floats(0.0, 10.0), min_size=30, max_size=30),
       ttl=st.floats(0.5, 15.0), mode=st.sampled_from(["fixed", "sliding"]))
def test_no_expired_entry_is_ever_served(requests, gaps, ttl, mode) -> None:
    """A brute-force model of a TTL-only GPU tier (unlimited, zero time) gives the same hits."""
    arrivals = np.cumsum(gaps[: len(requests)]).tolist()
    trace = make_trace(requests, arrivals=arrivals)
    sc = scenario(gpu={"capacity_blocks": None, "capacity_bytes": "unlimited"},
                  ttl={"heuristic": "static", "params": {"ttl": ttl}, "mode": mode, "scope": "all"})
    got = run(sc, trace).requests["hit_blocks"].tolist()
    deadline: dict[int, float] = {}
    expected = []
    for t, blocks in zip(arrivals, requests, strict=True):
        live = {b for b, d in deadline.items() if d > t}
        hit = 0
        for b in blocks:
            if b not in live:
                break
            hit += 1
        expected.append(hit)
        for b in blocks:
            if b not in live or mode == "sliding":
                deadline[b] = t + ttl
    assert got == expected


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
