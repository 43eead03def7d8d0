"""The policy state outside the simulator: a worker fed events by hash decides as the simulator did."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from simkv.core.policies import PolicyState, make_heuristic
from simkv.core.scenario import load_scenario
from simkv.model.compiled import CompiledTieredCache
from simkv.model.engine import simulate
from simkv.model.system import TieredCache
from simkv.traces.schema import Trace
from tests.conftest import ROOT

HEAVY = ("simpy", "numba", "pandas", "matplotlib", "pyarrow", "scipy")


def test_importing_policies_pulls_in_numpy_and_yaml_only() -> None:
    code = ("import sys, simkv.core.policies, simkv.core.policies.state; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _record(cache: TieredCache, hashes: np.ndarray) -> list[tuple[Any, ...]]:
    """Wrap the cache's request and archive-worker steps so a run logs, in order, what a
    worker would see (finished requests) and what the simulator decided (by hash)."""
    log: list[tuple[Any, ...]] = []
    finish, archive_pass, commit, refresh = (cache.finish, cache.archive_pass, cache.archive_commit,
                                             cache._archive_refresh)
    refreshed: list[tuple[np.ndarray, np.ndarray]] = []

    def on_finish(r: int, plan: Any, now: float) -> None:
        finish(r, plan, now)
        log.append(("finish", now, r))

    def on_refresh(blocks: np.ndarray, deadlines: np.ndarray, *args: Any) -> None:
        refreshed.append((hashes[blocks], deadlines.copy()))
        refresh(blocks, deadlines, *args)

    def on_pass(now: float) -> Any:
        held = np.flatnonzero(cache.held_mask(np.arange(len(hashes))))
        skipped = cache.archive_skipped
        refreshed.clear()
        out = archive_pass(now)
        blocks, _, ttl, prio, owners = out[0]
        log.append(("pass", now, hashes[held], hashes[blocks], ttl.copy(), prio.copy(),
                    owners.copy(), list(refreshed), cache.archive_skipped - skipped))
        return out

    def on_commit(uploads: Any, now: float) -> None:
        commit(uploads, now)
        log.append(("commit", now))

    cache.finish, cache.archive_pass, cache.archive_commit = on_finish, on_pass, on_commit  # type: ignore[method-assign]
    cache._archive_refresh = on_refresh  # type: ignore[method-assign]
    return log


@pytest.mark.parametrize("cache_type", [TieredCache, CompiledTieredCache])
@pytest.mark.parametrize(("overrides", "own_held"), [
    (["ttl.params.base_ttl=20", "ttl.params.min_ttl=5"], True),
    (["ttl.mode=fixed", "ttl.params.base_ttl=20", "ttl.params.min_ttl=5"], True),
    (["ttl.heuristic=cost_aware", "ttl.params={max_ttl: 40}", "tiers.disk.capacity_bytes=64MiB"], False),
    (["ttl.heuristic=reuse_prob", "ttl.params={base_ttl: 30, min_ttl: 5}",
      "tiers.gpu.capacity_bytes=256MiB", "tiers.disk.capacity_bytes=1GiB"], False),
])
def test_a_worker_fed_events_by_hash_decides_as_the_simulator(gen_trace: Trace, overrides: list[str],
                                                              own_held: bool, cache_type: type) -> None:
    """Run the three-tier scenario on an engine, logging its archive decisions;
    then drive a fresh PolicyState as an engine's archive worker would, event by event with
    the blocks' uint64 hashes, and get the same TTLs, priorities, refreshes and skips. With
    ``own_held`` the worker knows what its tiers hold from its own ``stored`` events (a disk
    big enough to keep everything); otherwise it asks its tiers (the simulator's, logged)."""
    sc = load_scenario(ROOT / "scenarios" / "three-tier-adaptive.yaml").with_overrides(
        ["engine=simpy", *(["tiers.disk.capacity_bytes=1TiB"] if own_held else []), *overrides])
    trace = gen_trace
    cache = cache_type(sc, trace)
    hashes = cache.state.hashes.copy()  # by the simulator's dense id
    log = _record(cache, hashes)
    simulate(cache, trace.arrival_s.tolist(), sc.hardware.gpus)

    B = trace.block_size
    prof = sc.hardware.time_model()
    worker = PolicyState(make_heuristic(sc.ttl.heuristic, sc.ttl.params), block_tokens=B,
                         block_bytes=cache.block_bytes, archive_bytes=cache.archive_bytes,
                         gpu_cost_per_s=cache.gpu_cost_per_s,
                         archive_cost_per_byte_s=cache.archive_cost_per_byte_s,
                         sliding=sc.ttl.mode == "sliding",
                         value_s=lambda pos, tokens: prof.block_value_s(pos, tokens, B))
    classes = trace.table.column("prompt_class").to_pylist()
    tokens, flat, offsets = trace.input_tokens, trace.block_hashes_flat, trace.block_offsets
    request_of: dict[int, int] = {}  # the worker's request number -> the trace's row
    pending: tuple[np.ndarray, np.ndarray] | None = None
    counts = {"upload": 0, "refresh": 0, "skip": 0, "reupload": 0}
    uploaded: set[int] = set()
    for event in log:
        kind, now = event[0], event[1]
        if kind == "finish":
            r = event[2]
            prompt = flat[offsets[r]:offsets[r + 1]]
            wr = worker.request(classes[r], int(tokens[r]))
            request_of[wr] = r
            worker.stored(prompt)
            worker.accessed(prompt, wr)
        elif kind == "pass":
            held_hashes, up_hashes, ttl, prio, owners, refreshed, skipped = event[2:]
            if own_held:
                d = worker.decide_pass(now)
            else:
                d = worker.decide_pass(now, held=lambda ids, h=held_hashes: np.isin(worker.hashes[ids], h))
            assert np.array_equal(worker.hashes[d.blocks[d.upload]], up_hashes)
            assert np.array_equal(d.upload_ttl, ttl) and np.array_equal(d.upload_priority, prio)
            assert [request_of[w] for w in d.requests[d.upload].tolist()] == owners.tolist()
            assert d.skipped == skipped
            got_refresh = worker.hashes[d.blocks[d.refresh]]
            want = refreshed[0] if refreshed else (np.zeros(0, np.uint64), np.zeros(0))
            assert np.array_equal(got_refresh, want[0])
            assert np.array_equal(now + d.refresh_ttl, want[1])
            worker.archived(got_refresh, now + d.refresh_ttl)
            pending = (up_hashes, ttl)
            counts["upload"] += len(up_hashes)
            counts["reupload"] += len(uploaded & set(up_hashes.tolist()))
            uploaded |= set(up_hashes.tolist())
            counts["refresh"] += len(got_refresh)
            counts["skip"] += skipped
        else:  # the pass's uploads land
            assert pending is not None, "uploads landed without a pass before them"
            worker.archived(pending[0], now + pending[1])
    # The run exercised every path the comparison covers.
    assert counts["upload"] and counts["reupload"]
    assert bool(counts["refresh"]) == (sc.ttl.mode == "sliding")
    assert bool(counts["skip"]) == (not own_held)


def test_the_compiled_engine_records_the_same_history_and_decides_the_same(gen_trace: Trace) -> None:
    """The compiled engine keeps the per-block access history in its kernel (a twin of
    ``accessed_ids``) and calls the shared decision rule: same state, same decisions."""
    sc = load_scenario(ROOT / "scenarios" / "three-tier-adaptive.yaml").with_overrides(
        ["ttl.params.base_ttl=20", "ttl.params.min_ttl=5", "tiers.gpu.capacity_bytes=256MiB",
         "tiers.disk.capacity_bytes=1GiB"])
    logs, states = [], []
    for cls in (TieredCache, CompiledTieredCache):
        cache = cls(sc, gen_trace)
        logs.append(_record(cache, cache.state.hashes))
        simulate(cache, gen_trace.arrival_s.tolist(), sc.hardware.gpus)
        states.append(cache.state)
    ref, comp = states
    for name in ("refs", "first_class", "reuse_counts", "pend", "pc"):
        assert np.array_equal(getattr(ref, name), getattr(comp, name)), name
    assert len(logs[0]) == len(logs[1])
    for a, b in zip(*logs, strict=True):
        assert _same(a, b), (a[0], a[1])


def _same(a: Any, b: Any) -> bool:
    """Equal, element by element for arrays and (nested) sequences."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def test_the_learner_counts_first_and_second_references_by_the_first_class() -> None:
    """Access counts, the per-class reuse learner and the pass's candidates, by hand."""
    state = PolicyState(make_heuristic("reuse_prob", {}), block_tokens=4, block_bytes=1,
                        archive_bytes=1, gpu_cost_per_s=1.0, archive_cost_per_byte_s=1.0,
                        sliding=True, value_s=lambda pos, tokens: pos * 0.0)
    a, b, c = np.uint64(2**64 - 1), np.uint64(5), np.uint64(9)
    state.accessed([a, b], state.request("x", 8))
    state.accessed([a, c, a], state.request("y", 12))  # a repeated within one prompt
    state.accessed([c], state.request("y", 4))
    ids = state.ids([a, b, c])
    assert state.refs[ids].tolist() == [3, 1, 2]
    assert state.reuse.seen == {"x": 2, "y": 1} and state.reuse.reused == {"x": 1, "y": 1}
    d = state.decide_pass(10.0, held=lambda ids: np.ones(len(ids), np.bool_))
    assert state.hashes[d.blocks].tolist() == [a, b, c]  # first-seen order
    assert d.requests.tolist() == [1, 0, 2] and d.positions.tolist() == [2, 1, 0]
    assert d.upload.all() and not d.refresh.any() and d.skipped == 0
    p_x, p_y = (1 + 1) / (2 + 2), (1 + 1) / (1 + 2)  # (reused + 1) / (seen + 2)
    assert d.upload_priority.tolist() == [p_y, p_x, p_y]
    state.archived(state.hashes[d.blocks[:2]], [20.0, 15.0])
    state.accessed([a, b], state.request("x", 8))
    d = state.decide_pass(15.0)  # b's object expired at 15; neither is held by this state
    assert d.refresh.tolist() == [True, False] and not d.upload.any() and d.skipped == 1
    assert state.decide_pass(16.0).blocks.size == 0
