"""The remote KV store tier in the simulator: hits below the disk, per-key TTLs (fixed or the
heuristic's, priced at DRAM rates), its DRAM bill charged to the requests that wrote the keys,
and the configurations it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.lmcache import lmcache_policy
from simkv.core.profiles import load_profile
from simkv.core.scenario import scenario_from_dict
from tests.conftest import ROOT, make_trace
from tests.simulator_helpers import scenario

#: 4 KiB blocks: a remote load takes latency 0.5 s + 4096 B / 4.096e-6 GB/s = 1.5 s.
SLOW_REMOTE = {"enabled": True, "read_gbps": 4.096e-6, "latency_s": 0.5}
PER_KEY_S = 4096 / 1e9 / 3600  # one block's GB-hours per second held


def test_a_remote_key_serves_hits_until_its_ttl_then_expires() -> None:
    # GPU holds one block. r0 writes 0 (expires at 250), r1 writes 1 (evicting 0 from the GPU;
    # expires at 350), r2 at 200 loads 0 from the remote store, r3 at 400 finds 1 expired and
    # writes it again (until 650, past the run's end: billed to its deadline).
    trace = make_trace([[0], [1], [0], [1]], arrivals=[0, 100, 200, 400])
    price = 7.2
    remote = {**SLOW_REMOTE, "ttl_s": 250, "price_gb_hour": price}
    res = run(scenario(gpu={"capacity_blocks": 1}, remote=remote, hardware={"zero_service_time": False}),
              trace)
    req, s = res.requests, res.summary
    assert s["engine"] == "simpy"
    assert req["remote_hit_tokens"].tolist() == [0, 0, 4, 0]
    assert req["remote_loaded_bytes"].tolist() == [0, 0, 4096, 0]
    assert req["load_s"].tolist() == [0.0, 0.0, 1.5, 0.0]
    assert (s["remote_writes"], s["insertions_remote"], s["expirations_remote"]) == (3, 3, 2)
    assert s["token_hit_rate_remote"] == 4 / 16
    # each key is billed its 250 s, to the request that wrote it; r2 wrote none (its hit stays)
    want = [250 * price * PER_KEY_S, 250 * price * PER_KEY_S, 0.0, 250 * price * PER_KEY_S]
    assert req["remote_storage_dollars"].tolist() == pytest.approx(want, rel=1e-9)
    assert s["remote_storage_dollars"] == pytest.approx(sum(want), rel=1e-9)
    assert (req["request_cost_dollars"] == req["remote_storage_dollars"]).all()   # no archive here
    assert s["cost_saved_dollars"] == pytest.approx(s["gpu_dollars_saved"] - sum(want), rel=1e-9)
    assert req["remote_held_bytes"].tolist() == [4096, 8192, 8192, 4096]


def test_without_a_ttl_a_key_lives_until_evicted_and_is_billed_to_the_end() -> None:
    trace = make_trace([[0], [1], [2], [0]], arrivals=[0, 10, 20, 30])
    res = run(scenario(gpu={"capacity_blocks": 1}, remote={"enabled": True, "capacity_blocks": 2,
                                                           "price_gb_hour": 3600.0}), trace)
    req, s = res.requests, res.summary
    # capacity 2, LRU: writing 2 evicts 0, so r3 misses everywhere
    assert req["remote_hit_tokens"].tolist() == [0, 0, 0, 0]
    assert (s["evictions_remote"], s["expirations_remote"], s["remote_writes"]) == (2, 0, 4)
    # zero-time run ending at 30: key 0 lived 0-20, 1 10-30 (evicted by r3's 0), 2 20-30, 0 30-30
    assert req["remote_storage_dollars"].tolist() == pytest.approx(
        [20 * 4096 / 1e9, 20 * 4096 / 1e9, 10 * 4096 / 1e9, 0.0], rel=1e-9)


def test_a_lookup_takes_the_disk_before_the_remote_store() -> None:
    trace = make_trace([[0, 1], [2], [0, 1]], arrivals=[0, 10, 20])
    res = run(scenario(gpu={"capacity_blocks": 1}, disk={"enabled": True, "capacity_blocks": 1},
                       remote={"enabled": True}), trace)
    # the disk keeps the last block written (2), the remote store all three
    assert res.requests["disk_hit_tokens"].tolist() == [0, 0, 0]
    assert res.requests["remote_hit_tokens"].tolist() == [0, 0, 8]
    res = run(scenario(gpu={"capacity_blocks": 1}, disk={"enabled": True}, remote={"enabled": True}), trace)
    assert res.requests["disk_hit_tokens"].tolist() == [0, 0, 8]
    assert res.requests["remote_hit_tokens"].tolist() == [0, 0, 0]
    # a block the GPU serves is not written again; one the disk serves is put to the remote store
    # again (LMCache puts every stored chunk): 3 writes, then r2's 2 re-puts
    assert res.summary["remote_writes"] == 5 and res.summary["insertions_remote"] == 3


def test_a_write_of_a_key_the_remote_store_holds_restarts_its_ttl() -> None:
    # As LMCache's put (SET ... EX) does. TTL 100 s, GPU 1 block: r1 at 50 computes 0 again (its
    # prefix ends at 5) and writes it again: 0 now lives until 150, so r3 at 120 (after r2 took
    # the GPU) loads it from the remote store. The key's bill: r0 until 50, r1 from then.
    trace = make_trace([[0], [5, 0], [7], [0]], arrivals=[0, 50, 60, 120])
    res = run(scenario(gpu={"capacity_blocks": 1}, remote={"enabled": True, "ttl_s": 100,
                                                           "price_gb_hour": 3600.0}), trace)
    assert res.requests["remote_hit_tokens"].tolist() == [0, 0, 0, 4]
    assert res.summary["expirations_remote"] == 0
    # 0: r0 0-50, r1 50-150; 5: r1 50-150; 7: r2 60-160 (billed to their deadlines past the end)
    assert res.requests["remote_storage_dollars"].tolist() == pytest.approx(
        [50 * 4096 / 1e9, 200 * 4096 / 1e9, 100 * 4096 / 1e9, 0.0], rel=1e-9)


def test_the_ttl_heuristic_sets_remote_ttls_with_scope_remote() -> None:
    trace = make_trace([[0], [1], [0], [1]], arrivals=[0, 10, 100, 300])
    res = run(scenario(gpu={"capacity_blocks": 1}, remote={"enabled": True, "ttl_s": 10_000},
                       ttl={"heuristic": "static", "params": {"ttl": 150}, "scope": "remote"}), trace)
    # static 150 s wins over ttl_s: 0 (until 150) is hit at 100, 1 (until 160) is gone at 300
    assert res.requests["remote_hit_tokens"].tolist() == [0, 0, 4, 0]
    assert res.summary["expirations_remote"] == 2
    # sliding: r2's hit moves 0's deadline from 150 to 250, so r4 at 240 still finds it
    trace = make_trace([[0], [1], [0], [1], [0]], arrivals=[0, 10, 100, 120, 240])
    hits = {mode: run(scenario(gpu={"capacity_blocks": 1}, remote={"enabled": True},
                               ttl={"heuristic": "static", "params": {"ttl": 150}, "scope": "remote",
                                    "mode": mode}), trace).requests["remote_hit_tokens"].tolist()
            for mode in ("fixed", "sliding")}
    assert hits == {"fixed": [0, 0, 4, 4, 0], "sliding": [0, 0, 4, 4, 4]}


def test_cost_aware_ttls_price_remote_keys_at_the_dram_rate() -> None:
    """``cost_aware``: ttl ∝ 1 / (stored bytes × $/byte-second): the remote store's price, not
    the archive's, so a dearer store keeps its keys shorter."""
    trace = make_trace([[0], [1], [0]], arrivals=[0, 10, 5000])
    ttl = {"heuristic": "cost_aware", "params": {"reuse_prob": 0.5, "min_ttl": 0, "max_ttl": 1e9},
           "scope": "remote"}
    held = [run(scenario(gpu={"capacity_blocks": 1}, remote={"enabled": True, "price_gb_hour": p},
                         hardware={"zero_service_time": False}, ttl=ttl), trace).summary
            for p in (1e-6, 1e6)]
    assert held[0]["token_hit_rate_remote"] > 0 and held[1]["token_hit_rate_remote"] == 0
    assert held[1]["expirations_remote"] == 2


@pytest.mark.parametrize(("overrides", "message"), [
    ({"ttl": {"heuristic": "static", "scope": "remote"}},
     "ttl.scope: 'remote' but tiers.remote.enabled is false"),
    ({"remote": {"enabled": True}, "disk": {"enabled": True, "write_policy": "offload_on_evict"}},
     "tiers.disk.write_policy: offload_on_evict is not modelled with a remote tier"),
    ({"remote": {"enabled": True, "ttl_s": 0}}, "tiers.remote.ttl_s: must be > 0"),
    ({"remote": {"enabled": True, "price_gb_hour": -1}}, "tiers.remote.price_gb_hour: must be >= 0"),
    ({"remote": {"enabled": True}, "gpu": {"eviction": "vllm"}},
     "tiers.remote.enabled: tiers.gpu.eviction: vllm models vLLM with LMCache's CPU and disk tiers only"),
    ({"remote": {"enabled": True}, "engine": "compiled"},
     "engine: 'compiled' cannot run this scenario: tiers.remote is enabled"),
])
def test_what_a_remote_tier_refuses(overrides: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=None) as info:
        run(scenario(**overrides), make_trace([[0]]))
    assert message in str(info.value)


def test_auto_runs_a_remote_tier_on_the_reference_engine() -> None:
    s = run(scenario(remote={"enabled": True}, engine="auto"), make_trace([[0], [0]])).summary
    assert s["engine"] == "simpy"
    assert s["engine_skipped"] == ("fast: tiers below the GPU in use: remote (fast needs a single GPU tier); "
                                   "compiled: tiers.remote is enabled (compiled has no remote tier)")


def test_the_vllm_setup_refuses_a_remote_tier_and_the_engine_builds_it() -> None:
    sc = scenario_from_dict({"tiers": {"remote": {"enabled": True}}})
    with pytest.raises(ScenarioError, match=r"tiers\.remote\.enabled: the vLLM setup does not build"):
        lmcache_policy(sc)
    assert lmcache_policy(sc, remote=True) == "LRU"


def test_a_table_profile_needs_remote_entries_only_with_a_remote_tier(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "profiles" / "example-table.yaml").read_text())
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    prof = load_profile(path)
    sc = scenario_from_dict({"tiers": {"remote": {"enabled": True}}})
    with pytest.raises(ScenarioError, match=r"load\.remote: missing, but tiers\.remote\.enabled is true"):
        prof.transfers(sc, 4096, 2048)
    doc["load"]["remote"] = {"per_block_s": 0.002, "per_request_s": 0.001}
    doc["store"]["remote"] = {"per_block_s": 0.003}
    path.write_text(yaml.safe_dump(doc))
    t = load_profile(path).transfers(sc, 4096, 2048)
    assert t.load_s(3, 2) == 0.001 + 2 * 0.002 and t.write_per_block_s[3] == 0.003
    del doc["store"]["remote"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ScenarioError, match=r"store\.remote: missing, but load\.remote is given"):
        load_profile(path)
