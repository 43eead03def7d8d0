"""What a table profile charges besides loads and prefill: ``load.gpu`` for GPU hits and the
``request`` section (the worker's stores and fixed time, in the queue; the latency outside it,
in TTFT only), as the engine spends them before a request's first token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.profiles import REQUEST_KEYS, RequestOverhead, TableProfile, load_profile
from simkv.core.scenario import scenario_from_dict
from simkv.core.tiers import CPU, GPU, best_cut
from tests.conftest import ROOT, make_trace

EXAMPLE = ROOT / "profiles" / "example-table.yaml"
B = 256  # the example profile's block size


def _profile(tmp_path: Path, name: str = "p.yaml", **changes: Any) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            doc[section][sub] = value
        else:
            doc[section] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _trace() -> Any:
    """Requests sharing prefixes a few seconds apart, some close enough to queue."""
    reqs = [[1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5], [9, 8], [1, 2, 3, 4, 5, 6], [9, 8, 7], [1, 2]]
    return make_trace(reqs, block_size=B, arrivals=[0.0, 0.01, 0.02, 1.0, 1.001, 3.0, 3.0],
                      tails=[5, 0, 17, 3, 0, 100, 0])


def _run(profile: Path, trace: Any, **tiers: Any) -> Any:
    sc = scenario_from_dict({"tiers": {"gpu": {"capacity_bytes": "unlimited"},
                                       "disk": {"enabled": False}, **tiers},
                             "hardware": {"profile": str(profile)}, "engine": "simpy"})
    return run(sc, trace)


def test_request_section_is_validated_naming_file_and_key(tmp_path: Path) -> None:
    ok = _profile(tmp_path, "ok.yaml", request={"per_request_s": 0.001, "latency_const_s": 0.002})
    prof = load_profile(ok)
    assert isinstance(prof, TableProfile)
    assert prof.overhead == RequestOverhead(per_request_s=0.001, latency_const_s=0.002)
    assert load_profile(ok, zero_service_time=True).overhead == RequestOverhead()
    assert load_profile(EXAMPLE).overhead == RequestOverhead() and not RequestOverhead().any
    with pytest.raises(ScenarioError, match=r"bad\.yaml: request\.per_token_s: unknown key"):
        load_profile(_profile(tmp_path, "bad.yaml", request={"per_token_s": 1.0}))
    with pytest.raises(ScenarioError, match=r"neg\.yaml: request\.latency_const_s: must be >= 0"):
        load_profile(_profile(tmp_path, "neg.yaml", request={"latency_const_s": -1.0}))
    assert set(REQUEST_KEYS) == set(RequestOverhead.__dataclass_fields__)


def test_gpu_hits_pay_load_gpu_when_the_profile_measured_it(tmp_path: Path) -> None:
    tr = _trace()
    plain = _run(_profile(tmp_path, "plain.yaml"), tr).requests
    assert (plain["load_s"] == 0.0).all() and (plain["gpu_hit_tokens"] > 0).any()
    per_block, per_request = 0.003, 0.0005
    got = _run(_profile(tmp_path, "gpu.yaml", load__gpu={"per_block_s": per_block,
                                                         "per_request_s": per_request}), tr).requests
    hit_blocks = got["gpu_hit_tokens"].to_numpy() // B
    want = np.where(hit_blocks > 0, per_request + hit_blocks * per_block, 0.0)
    assert np.allclose(got["load_s"], want, rtol=1e-12, atol=0)
    assert np.allclose(got["ttft_s"], got["queue_s"] + got["load_s"] + got["prefill_s"], rtol=1e-12)
    assert (got["ttft_s"] > plain["ttft_s"]).any()


def test_if_faster_weighs_the_gpu_copy_like_any_load(tmp_path: Path) -> None:
    cheap = load_profile(EXAMPLE)
    dear = load_profile(_profile(tmp_path, load__gpu={"per_block_s": 10.0, "per_request_s": 0.0}))
    sc = scenario_from_dict({})
    tr_cheap = cheap.transfers(sc, 1, 1)
    tr_dear = dear.transfers(sc, 1, 1)
    assert (tr_cheap.latency_s[GPU], tr_cheap.read_per_block_s[GPU]) == (0.0, 0.0)
    assert best_cut([GPU, GPU], 3 * B, B, cheap, tr_cheap)[0] == 2
    k, load, prefill = best_cut([GPU, GPU], 3 * B, B, dear, tr_dear)
    assert (k, load) == (0, 0.0) and prefill == dear.prefill_s(3 * B, 0)
    # other tiers' costs are untouched by the GPU entry
    assert best_cut([CPU], 2 * B, B, dear, tr_dear) == best_cut([CPU], 2 * B, B, cheap, tr_cheap)


def test_request_overhead_is_worker_time_in_the_queue_and_latency_outside_it(tmp_path: Path) -> None:
    tr = _trace()
    o = {"per_request_s": 0.02, "per_block_s": 0.001, "store_per_block_s": 0.004,
         "admit_per_block_s": 0.0, "latency_const_s": 0.005, "latency_per_token_s": 1e-6}
    base = _run(_profile(tmp_path, "base.yaml"), tr)
    res = _run(_profile(tmp_path, "req.yaml", request=o), tr)
    r, s = res.requests, res.summary
    blocks = r["blocks"].to_numpy()
    stored = blocks - r["hit_blocks"].to_numpy()
    worker = o["per_request_s"] + blocks * o["per_block_s"] + stored * o["store_per_block_s"]
    latency = o["latency_const_s"] + r["input_tokens"].to_numpy() * o["latency_per_token_s"]
    assert np.allclose(r["ttft_s"], r["queue_s"] + r["load_s"] + r["prefill_s"] + worker + latency,
                       rtol=1e-12, atol=0)
    # FIFO on one GPU: the next request starts when the previous one's worker time is over
    # (load + prefill + stores + fixed time); the latency outside the worker delays no one.
    start = r["arrival_s"].to_numpy() + r["queue_s"].to_numpy()
    service = r["load_s"].to_numpy() + r["prefill_s"].to_numpy() + worker
    for i in range(1, len(r)):
        assert start[i] == pytest.approx(max(r["arrival_s"][i], start[i - 1] + service[i - 1]), abs=1e-12)
    assert (r["queue_s"] > base.requests["queue_s"]).any()
    # The no-cache baseline stores every block and pays the same fixed time and latency.
    first = r.iloc[0]
    nocache = (first["prefill_s"] + o["per_request_s"]
               + first["blocks"] * (o["per_block_s"] + o["store_per_block_s"]) + latency[0])
    assert first["hit_tokens"] == 0 and first["ttft_nocache_s"] == pytest.approx(nocache, rel=1e-12)
    # GPU time saved: the no-cache worker time minus this one's.
    prof = load_profile(tmp_path / "req.yaml")
    nocache_worker = (prof.prefill_array(r["input_tokens"].to_numpy(), np.zeros(len(r)))
                      + o["per_request_s"] + blocks * (o["per_block_s"] + o["store_per_block_s"]))
    assert np.allclose(r["gpu_seconds_saved"], nocache_worker - service, rtol=1e-9, atol=1e-15)
    assert s["gpu_seconds_saved"] == pytest.approx(float(r["gpu_seconds_saved"].sum()), rel=1e-9)
    assert s["gpu_busy_s"] == pytest.approx(float(service.sum()), rel=1e-9)
    assert s["gpu_busy_s"] > base.summary["gpu_busy_s"]


def test_loads_from_the_cpu_tier_pay_the_gpu_admission(tmp_path: Path) -> None:
    """Blocks copied up from the CPU tier cost ``admit_per_block_s`` each; computed ones
    ``store_per_block_s``."""
    tr = make_trace([[1, 2], [3], [1, 2, 4]], block_size=B, arrivals=[0.0, 10.0, 20.0])
    o = {"store_per_block_s": 0.01, "admit_per_block_s": 0.1}
    doc = {"load__cpu": {"per_block_s": 0.0, "per_request_s": 0.0}, "store__cpu": {"per_block_s": 0.0}}
    res = _run(_profile(tmp_path, request=o, **doc), tr,
               gpu={"capacity_bytes": B * 131072}, cpu={"enabled": True, "capacity_bytes": "1GiB"})
    r = res.requests
    assert r["cpu_hit_tokens"].tolist() == [0, 0, 2 * B]       # the GPU holds one block
    extra = r["ttft_s"] - (r["queue_s"] + r["load_s"] + r["prefill_s"])
    assert extra.tolist() == pytest.approx([2 * 0.01, 0.01, 2 * 0.1 + 0.01], rel=1e-12)


def test_a_zero_request_section_changes_nothing(tmp_path: Path) -> None:
    tr = _trace()
    a = _run(_profile(tmp_path, "a.yaml"), tr)
    b = _run(_profile(tmp_path, "b.yaml", request=dict.fromkeys(REQUEST_KEYS, 0.0)), tr)
    cols = ["queue_s", "load_s", "prefill_s", "ttft_s", "ttft_nocache_s", "gpu_seconds_saved"]
    assert a.requests[cols].equals(b.requests[cols])


def test_stores_that_evict_from_disk_pay_the_disk_eviction(tmp_path: Path) -> None:
    """LMCache evicts inside the store: a request pays ``disk_evict_per_block_s`` for each block
    its stores push out of a full disk tier (held + stored − capacity, at most stored)."""
    tr = make_trace([[1, 2], [3, 4], [5], [4]], block_size=B, arrivals=[0.0, 10.0, 20.0, 30.0])
    block = B * 131072
    res = _run(_profile(tmp_path, request={"disk_evict_per_block_s": 1.0}), tr,
               gpu={"capacity_bytes": block}, disk={"enabled": True, "capacity_bytes": 2 * block})
    r = res.requests
    extra = r["ttft_s"] - (r["queue_s"] + r["load_s"] + r["prefill_s"])
    # held before: 0, 2, 2, 2 blocks; stored: 2, 2, 1, 0 (block 4 is a disk hit)
    assert r["disk_hit_tokens"].tolist() == [0, 0, 0, B]
    assert extra.tolist() == pytest.approx([0.0, 2.0, 1.0, 0.0], abs=1e-12)
