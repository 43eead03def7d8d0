"""Invariants of the tiered model on random systems (hypothesis): capacities, hit accounting,
costs that add up; the compiled engine equal to the reference bit for bit; no expired entry ever
served."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkv.api import run
from simkv.core.tiers import TIER_NAMES
from tests.conftest import make_trace
from tests.simulator_helpers import KV, scenario

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
