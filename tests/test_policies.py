"""Eviction policies and TTL heuristics, one by one."""

from __future__ import annotations

import numpy as np
import pytest

from simkv.core.errors import ScenarioError
from simkv.core.policies.eviction import EVICTION_POLICIES, NextUse
from simkv.core.policies.ttl import TTL_HEURISTICS, ClassReuse, TTLContext, make_heuristic


def evict_order(name: str, ops: list[tuple[str, int, int]], n: int,
                next_use: NextUse | None = None) -> list[int]:
    policy = EVICTION_POLICIES.get(name)(next_use)
    for op, block, ref in ops:
        if op == "admit":
            policy.admit(block, ref, priority=float(block))
        else:
            policy.hit(block, ref)
    return [policy.evict() for _ in range(n)]


OPS = [("admit", 1, 0), ("admit", 2, 1), ("admit", 3, 2), ("hit", 1, 3), ("hit", 1, 4), ("hit", 2, 5)]


def test_lru_evicts_least_recently_used() -> None:
    assert evict_order("lru", OPS, 3) == [3, 1, 2]


def test_fifo_ignores_hits() -> None:
    assert evict_order("fifo", OPS, 3) == [1, 2, 3]


def test_lfu_evicts_least_frequent_then_least_recent() -> None:
    # counts: 1 -> 3, 2 -> 2, 3 -> 1
    assert evict_order("lfu", OPS, 3) == [3, 2, 1]
    ties = [("admit", 5, 0), ("admit", 6, 1), ("hit", 5, 2), ("hit", 6, 3)]
    assert evict_order("lfu", ties, 2) == [5, 6]


def test_priority_evicts_lowest_priority_first() -> None:
    assert evict_order("priority", OPS, 3) == [1, 2, 3]  # priority = block id here


def test_belady_evicts_farthest_next_use() -> None:
    # access sequence (positions 0..): 1 2 3 1 2 1 3
    ids = np.array([1, 2, 3, 1, 2, 1, 3])
    nu = NextUse(ids)
    assert nu.next_after(1, 0) == 3 and nu.next_after(3, 2) == 6 and nu.next_after(2, 4) == NextUse.NEVER
    policy = EVICTION_POLICIES.get("belady")(nu)
    for pos, b in enumerate(ids[:3].tolist()):
        policy.admit(b, pos)
    assert policy.victim() == 3  # next uses: 1 -> 3, 2 -> 4, 3 -> 6
    policy.hit(1, 3)  # 1 is next used at 5
    policy.hit(2, 4)  # 2 is never used again
    assert policy.victim() == 2


def test_unknown_policy_names_the_key() -> None:
    with pytest.raises(ScenarioError, match=r"tiers\.gpu\.eviction.*'mru'"):
        EVICTION_POLICIES.get("mru", key="tiers.gpu.eviction")


def ctx(**kw) -> TTLContext:
    base = dict(now=0.0, block=0, position=0, prompt_class="chat", input_tokens=4096, access_count=0,
                block_tokens=256, block_bytes=2**25, stored_bytes=2**24, value_s=0.01,
                gpu_cost_per_s=4 / 3600, storage_cost_per_byte_s=1e-15, reuse=ClassReuse())
    base.update(kw)
    return TTLContext(**base)


def test_adaptive_formula_and_clamp() -> None:
    h = make_heuristic("adaptive", {"base_ttl": 100, "alpha": 0.5, "min_ttl": 120, "max_ttl": 400})
    assert h(ctx(access_count=0)) == (120.0, 0.0)  # 100 clamped up to min_ttl
    assert h(ctx(access_count=2)) == (200.0, 2.0)  # 100 * (1 + 0.5 * 2)
    assert h(ctx(access_count=100)) == (400.0, 100.0)  # clamped to max_ttl


def test_static_per_class_size_aware() -> None:
    assert make_heuristic("static", {"ttl": 42})(ctx())[0] == 42.0
    pc = make_heuristic("per_class", {"default_ttl": 10, "class_ttl": {"tool": 99}})
    assert pc(ctx(prompt_class="tool"))[0] == 99.0 and pc(ctx())[0] == 10.0
    sa = make_heuristic("size_aware", {"base_ttl": 100, "ref_tokens": 1000, "exponent": 1,
                                       "min_ttl": 0, "max_ttl": 1e9})
    assert sa(ctx(input_tokens=3000))[0] == pytest.approx(300.0)


def test_cost_aware_is_break_even_holding_time() -> None:
    h = make_heuristic("cost_aware", {"reuse_prob": 0.5, "min_ttl": 0, "max_ttl": 1e12})
    c = ctx()
    expected = 0.5 * c.value_s * c.gpu_cost_per_s / (c.stored_bytes * c.storage_cost_per_byte_s)
    assert h(c)[0] == pytest.approx(expected)


def test_reuse_prob_learns_online_per_class() -> None:
    reuse = ClassReuse()
    for _ in range(8):
        reuse.first_reference("tool")
    for _ in range(6):
        reuse.second_reference("tool")
    assert reuse.probability("tool") == pytest.approx(7 / 10)
    assert reuse.probability("never-seen") == pytest.approx(0.5)
    h = make_heuristic("reuse_prob", {"base_ttl": 100, "ref_prob": 0.5, "min_ttl": 0, "max_ttl": 1e6})
    assert h(ctx(prompt_class="tool", reuse=reuse))[0] == pytest.approx(140.0)


def test_bad_params_name_the_key() -> None:
    with pytest.raises(ScenarioError, match=r"ttl\.params\.nope"):
        make_heuristic("adaptive", {"nope": 1})
    with pytest.raises(ScenarioError, match=r"ttl\.params\.alpha"):
        make_heuristic("adaptive", {"alpha": "lots"})
    with pytest.raises(ScenarioError, match="min_ttl"):
        make_heuristic("adaptive", {"min_ttl": 10, "max_ttl": 5})


def user_ttl(c: TTLContext, params: dict) -> float:
    """A user heuristic without a parameter class, named by import path."""
    return float(params.get("ttl", 7)) + c.position


def test_user_heuristic_by_import_path_and_registration() -> None:
    h = make_heuristic("tests.test_policies:user_ttl", {"ttl": 5})
    assert h(ctx(position=3)) == (8.0, 0.0)
    if "test-double" not in TTL_HEURISTICS:
        TTL_HEURISTICS.register("test-double")(lambda c, p: 2.0 * c.access_count)
    assert make_heuristic("test-double", {})(ctx(access_count=4))[0] == 8.0
    with pytest.raises(ScenarioError, match="cannot import"):
        make_heuristic("tests.nowhere:fn", {})


def test_negative_ttl_from_a_heuristic_is_an_error() -> None:
    h = make_heuristic("tests.test_policies:user_ttl", {"ttl": -100})
    with pytest.raises(ScenarioError, match="negative"):
        h(ctx())


def test_priority_without_heuristic_counts_live_references() -> None:
    """GPU tier, no TTL heuristic: the score is the reference count, kept up to date by hits
    (not frozen at admission, where D would score 0 and B 1 and D would be evicted)."""
    from simkv.api import run
    from simkv.core.scenario import scenario_from_dict
    from tests.conftest import make_trace

    B, C, D, E = 1, 2, 3, 4
    trace = make_trace([[B], [C], [D], [B], [D], [D], [E], [D]])
    sc = scenario_from_dict({
        "tiers": {"gpu": {"capacity_blocks": 2, "eviction": "priority"}, "disk": {"enabled": False}},
        "hardware": {"zero_service_time": True}, "engine": "simpy"})
    res = run(sc, trace)
    # r6 (E) evicts B (1 reference) rather than D (admitted with 0, then hit twice): r7 hits D
    assert res.requests["hit_blocks"].tolist() == [0, 0, 0, 0, 1, 1, 0, 1]
    # with heuristic-given scores, a hit keeps the score
    policy = EVICTION_POLICIES.get("priority")(None)
    policy.admit(7, 0, priority=0.5)
    policy.hit(7, 1)
    assert policy.key[7][0] == 0.5
