"""``tiers.gpu.eviction: vllm``: vLLM 0.32's prefix cache, block for block.

Each rule of :mod:`simkv.model.vllm_pool` has a hand-computed case (engine block ``b = 4``
tokens, trace block ``B = 4`` unless said otherwise; ``P`` prompt and ``O`` output tokens). The
last tests replay traces through vLLM's own ``KVCacheManager`` (scripts/vllm_blockpool_check.py,
in vLLM's virtual environment) and require the simulator's hit tokens to equal vLLM's, request
by request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.scenario import scenario_from_dict
from simkv.model.engines import select_engine
from simkv.model.vllm_cache import VllmCache
from simkv.model.vllm_pool import VllmBlockPool
from simkv.replay.vllm import vllm_command
from simkv.traces.importers import import_mooncake
from simkv.traces.schema import Trace, build_table
from simkv.traces.slicing import TraceSlice, slice_trace
from tests.conftest import SMALL_TRACE, simkv_cli

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("SIMKV_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
CHECK = ROOT / "scripts" / "vllm_blockpool_check.py"


def trace(rows: Sequence[tuple[list[int], int, int]], block_size: int = 4) -> Trace:
    """Rows ``(block hashes, tail tokens, output tokens)``."""
    n = len(rows)
    return build_table({
        "arrival_s": [float(i) for i in range(n)],
        "request_id": [f"r{i}" for i in range(n)],
        "session_id": [""] * n,
        "prompt_class": ["chat"] * n,
        "input_tokens": [len(h) * block_size + tail for h, tail, _ in rows],
        "output_tokens": [out for _, _, out in rows],
        "block_hashes": [h for h, _, _ in rows],
    }, block_size=block_size, source="test")


def scenario(blocks: int | None = None, b: int = 4, **extra: Any) -> Any:
    gpu: dict[str, Any] = {"eviction": "vllm", "block_tokens": b}
    gpu.update({"capacity_blocks": blocks} if blocks is not None else {"capacity_bytes": "unlimited"})
    data: dict[str, Any] = {"tiers": {"gpu": gpu, "disk": {"enabled": False}}}
    for key, value in extra.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.update({key: value})
    return scenario_from_dict(data)


def hits(tr: Trace, blocks: int | None = None, b: int = 4) -> list[int]:
    """The simulator's per-request GPU hit tokens."""
    return run(scenario(blocks, b), tr).requests["gpu_hit_tokens"].tolist()


# -- the pool ---------------------------------------------------------------------------------


def test_pool_of_n_blocks_holds_n_minus_one_after_the_null_block() -> None:
    pool = VllmBlockPool(4)
    assert pool.usable == 3 and list(pool.free) == [1, 2, 3]
    assert pool.take(3) == [1, 2, 3]
    # N = 3 holds a request of 2 blocks (P + O - 1 = 8 tokens), N = 2 does not
    tr = trace([([1, 2], 0, 1)])
    assert hits(tr, 3) == [0]
    with pytest.raises(ScenarioError, match=r"tiers\.gpu\.capacity_blocks: .* 2 blocks \(1 usable.*"
                                            r"trace row 0 \(request 'r0'.*need 2 blocks"):
        hits(tr, 2)


def test_generated_tokens_count_towards_the_pool() -> None:
    # P = 4, O = 5: 8 tokens computed, 2 blocks; a 2-block pool (1 usable) cannot run it
    with pytest.raises(ScenarioError, match=r"trace row 0 .* 4 prompt \+ 5 output tokens need 2 blocks"):
        hits(trace([([1], 0, 5)]), 2)
    assert hits(trace([([1], 0, 5)]), 3) == [0]


def test_capacity_bytes_gives_the_pool_of_the_vllm_command() -> None:
    # 1 KiB of KV per token: 32-token blocks of 32 KiB; 1 MiB -> 32 blocks
    gpu = {"eviction": "vllm", "block_tokens": 32, "capacity_bytes": "1MiB"}
    sc = scenario_from_dict({"block_size": 512, "model": {"kv_bytes_per_token": 1024},
                             "tiers": {"gpu": gpu, "disk": {"enabled": False}}})
    tr = trace([([1], 0, 1)], block_size=512)
    cache = VllmCache(sc, tr)
    assert cache.pool.num_blocks == 32 and cache.pool.usable == 31
    argv = vllm_command(sc, "m")
    assert argv[argv.index("--block-size") + 1] == "32"
    assert argv[argv.index("--num-gpu-blocks-override") + 1] == "32"
    blocks_sc = scenario(40, b=32)
    argv = vllm_command(blocks_sc, "m")
    assert argv[argv.index("--num-gpu-blocks-override") + 1] == "40"  # engine blocks, as given


# -- lookup -----------------------------------------------------------------------------------


def test_hit_is_capped_below_the_prompt() -> None:
    # vLLM measured (block 32): a 100-token prompt repeated hits 96; 128 tokens of it hit 96 too
    tr = trace([([1, 2, 3], 4, 1), ([1, 2, 3], 4, 1), ([1, 2, 3, 4], 0, 1)], block_size=32)
    assert hits(tr, b=32) == [0, 96, 96]
    # an exact multiple repeated recomputes its last block; one more token hits it
    tr = trace([([1, 2], 0, 1), ([1, 2], 0, 1), ([1, 2], 1, 1)])
    assert hits(tr) == [0, 4, 8]


def test_duplicate_hash_entries_and_the_first_stored_answers() -> None:
    pool = VllmBlockPool(6)
    assert pool.run(["a", "b"], 8, 1, 4) == 0  # blocks 1, 2
    assert pool.run(["a", "b"], 8, 1, 4) == 4  # hits 1, recomputes "b" into block 3
    assert pool.cached["b"] == [2, 3] and pool.cached["a"] == [1]
    assert pool.lookup(["a", "b"], 2) == [1, 2]
    # the queue is [4, 5, 2, 3, 1] (r0 left 2 before 1; r1 appended 3, then 1 again):
    # taking three blocks evicts the first "b", and the second one answers
    assert list(pool.free) == [4, 5, 2, 3, 1]
    pool.take(3)
    assert pool.cached["b"] == [3] and pool.lookup(["a", "b"], 2) == [1, 3]


# -- the free queue ---------------------------------------------------------------------------


def test_freed_tail_first_and_evicted_from_the_head() -> None:
    # N = 5: r0 [A, B] -> blocks 1, 2; r1 [C, D] -> 3, 4; queue [2, 1, 4, 3] (each request
    # freed tail first); r2 (4 tokens, 1 block) takes block 2 and evicts B, r0's tail block;
    # r3 hits C and D and its tail block evicts A, next at the head
    tr = trace([([1, 2], 0, 1), ([3, 4], 0, 1), ([5], 0, 1), ([3, 4], 1, 1), ([1, 2], 1, 1)])
    assert hits(tr, 5) == [0, 0, 0, 8, 0]
    tr = trace([([1, 2], 0, 1), ([3, 4], 0, 1), ([5], 0, 1), ([1, 2], 1, 1)])
    assert hits(tr, 5) == [0, 0, 0, 4]  # A without B


def test_blocks_without_a_hash_are_reused_first() -> None:
    # N = 3: r0 [A] + 1 tail token -> blocks 1 (A), 2 (tail); freed: 2 to the head, 1 to the
    # tail; r1 takes block 2 and A survives (appended, block 1 would have gone first)
    tr = trace([([1], 1, 1), ([2], 0, 1), ([1], 1, 1)])
    assert hits(tr, 3) == [0, 0, 4]


def test_blocks_of_the_running_request_are_not_evicted() -> None:
    # N = 4: r0 [A, B]; r1 [X]; queue [2 (B), 1 (A), 3 (X)]; r2 hits A and B (taken out of the
    # queue) and its third block evicts X, not B at the head
    tr = trace([([1, 2], 0, 1), ([9], 0, 1), ([1, 2], 1, 1), ([9], 1, 1)])
    assert hits(tr, 4) == [0, 0, 8, 0]


def test_generated_blocks_are_cached_and_take_space() -> None:
    # N = 4: r0 [X] -> block 1; r1 [A], O = 5: blocks 2 (A) and 3 (its generated block, hashed,
    # so appended when freed: queue [1, 3, 2]); r2 takes block 1 and evicts X. Were the
    # generated block unhashed it would be reused first and X would survive.
    tr = trace([([9], 0, 1), ([1], 0, 5), ([2], 0, 1), ([9], 1, 1)])
    assert hits(tr, 4) == [0, 0, 0, 0]
    pool = VllmBlockPool(None)
    pool.run(["a", "g1", "g2"], 4, 9, 4)  # 12 tokens computed: 3 full blocks, all cached
    assert set(pool.cached) == {"a", "g1", "g2"}
    pool.run(["a"], 4, 1, 4)  # O = 1: the prompt only; the capped hit recomputes "a" anew
    assert pool.cached["a"] == [1, 4] and pool.insertions == 4


def test_unlimited_pool_never_evicts() -> None:
    tr = trace([([1, 2], 1, 3), ([3, 4, 5], 2, 7), ([1, 2], 1, 1), ([3, 4, 5], 0, 1)])
    assert hits(tr) == [0, 0, 8, 8]
    res = run(scenario(), tr)
    assert res.summary["evictions_gpu"] == 0


# -- trace blocks of several engine blocks (Mooncake's 512 tokens) ------------------------------


def test_mooncake_blocks_of_512_tokens_with_engine_blocks_of_32() -> None:
    tr = trace([([1, 2], 76, 10), ([1, 2], 0, 10), ([1, 2, 7], 464, 10), ([1], 88, 1)], block_size=512)
    res = run(scenario(b=32), tr).requests
    # r1: 1024 tokens, capped at 1023 // 32 = 31 engine blocks; r2: both trace blocks; r3: one
    assert res["gpu_hit_tokens"].tolist() == [0, 992, 1024, 512]
    assert res["hit_tokens"].tolist() == [0, 992, 1024, 512]
    assert res["hit_blocks"].tolist() == [0, 1, 2, 1]  # whole trace blocks (floor)


def test_trace_hashes_that_are_not_chained_are_named_with_their_prefix() -> None:
    # [3, 2] shares no prefix with [1, 2]: block 2 after 3 is another engine block
    tr = trace([([1, 2], 0, 1), ([3, 2], 0, 1), ([1, 2], 1, 1), ([3, 2], 1, 1), ([4, 2], 1, 1)])
    assert hits(tr) == [0, 0, 8, 8, 0]


# -- the scenario -----------------------------------------------------------------------------


def test_engine_auto_picks_simpy_and_the_others_say_why() -> None:
    name, skipped = select_engine(scenario())
    assert name == "simpy"
    assert "'vllm'" in skipped["fast"] and "'vllm'" in skipped["compiled"]
    with pytest.raises(ScenarioError, match=r"engine: 'compiled' cannot run"):
        select_engine(scenario(engine="compiled"))


@pytest.mark.parametrize(("extra", "key"), [
    ({"hardware": {"gpus": 2}}, r"hardware\.gpus: 2"),
    ({"ttl": {"heuristic": "static", "scope": "all"}}, r"ttl\.heuristic: 'static'"),
    ({"load_policy": "if_faster"}, r"load_policy: 'if_faster'"),
])
def test_what_vllm_does_not_have_is_refused(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ScenarioError, match=key):
        scenario(**extra)


@pytest.mark.parametrize(("sets", "message"), [
    (["tiers.gpu.block_tokens=24"], "error: tiers.gpu.block_tokens: 24 does not divide the trace's"),
    (["tiers.gpu.capacity_bytes=null", "tiers.gpu.capacity_blocks=100"],
     "error: tiers.gpu.capacity_blocks: vLLM's pool of 100 blocks (99 usable"),
    (["hardware.gpus=2"], "default.yaml: hardware.gpus: 2, but tiers.gpu.eviction: vllm"),
])
def test_cli_names_the_key_in_one_line(sets: list[str], message: str) -> None:
    args = ["run", str(ROOT / "scenarios" / "default.yaml"), "--limit", "20",
            "--set", "tiers.gpu.eviction=vllm", "--set", "load_policy=always"]
    for item in sets:
        args += ["--set", item]
    res = simkv_cli(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_engine_block_must_divide_the_trace_block() -> None:
    with pytest.raises(ScenarioError, match=r"tiers\.gpu\.block_tokens: 24 does not divide .* 512"):
        hits(trace([([1], 0, 1)], block_size=512), b=24)


def test_offload_on_evict_is_refused_under_vllm() -> None:
    sc = scenario_from_dict({"tiers": {"gpu": {"eviction": "vllm"},
                                       "disk": {"write_policy": "offload_on_evict"}}})
    with pytest.raises(ScenarioError, match=r"tiers\.disk\.write_policy: 'offload_on_evict'"):
        run(sc, trace([([1], 0, 1)], block_size=16))


# -- LMCache below vLLM (CPU, disk) -----------------------------------------------------------


def lower_hits(tr: Trace, blocks: int, b: int, **tiers: Any) -> Any:
    gpu = {"eviction": "vllm", "block_tokens": b, "capacity_blocks": blocks}
    sc = scenario_from_dict({"tiers": {"gpu": gpu, **tiers}})
    return run(sc, tr).requests


def test_a_whole_prompt_from_lmcache_recomputes_its_last_token() -> None:
    # N = 4: r1 flushes r0's blocks from vLLM; r2's 8 tokens are all on disk: 7 count (the
    # connector recomputes the last one); r3 then hits vLLM's copy (r2's recomputed blocks)
    tr = trace([([1, 2], 0, 1), ([5, 6, 7], 0, 1), ([1, 2], 0, 1), ([1, 2], 1, 1)])
    rq = lower_hits(tr, 4, 4)
    assert rq["gpu_hit_tokens"].tolist() == [0, 0, 0, 8]
    assert rq["disk_hit_tokens"].tolist() == [0, 0, 7, 0]
    assert rq["hit_tokens"].tolist() == [0, 0, 7, 8]
    assert rq["hit_blocks"].tolist() == [0, 0, 1, 2]


def test_lmcache_supplies_the_tokens_past_vllms_hit() -> None:
    # B = 8, b = 4, N = 6: r0's engine blocks 1a 1b 2a 2b; r1 (2 blocks) evicts 2b, r0's last;
    # r2 hits 1a 1b 2a in vLLM (12 tokens) and the rest of chunk 2 from LMCache (4 tokens)
    tr = trace([([1, 2], 0, 1), ([9], 0, 1), ([1, 2], 1, 1)], block_size=8)
    for tiers, tier in (({}, "disk"), ({"cpu": {"enabled": True}}, "cpu")):
        rq = lower_hits(tr, 6, 4, **tiers)
        assert rq["gpu_hit_tokens"].tolist() == [0, 0, 12]
        assert rq[f"{tier}_hit_tokens"].tolist() == [0, 0, 4]
        assert rq["hit_tokens"].tolist() == [0, 0, 16]
        assert rq["hit_blocks"].tolist() == [0, 0, 2]
        # a trace block counts for the tier of its last token: chunk 1 vLLM's, chunk 2 LMCache's
        assert rq[f"{tier}_loaded_bytes"].tolist() == [0, 0, 8 * 131072]


def test_lmcache_within_vllms_hit_loads_nothing() -> None:
    # r1 repeats r0 (+1 token): vLLM holds both chunks, LMCache too; vLLM's hit wins
    tr = trace([([1, 2], 0, 1), ([1, 2], 1, 1)], block_size=8)
    rq = lower_hits(tr, 20, 4, cpu={"enabled": True})
    assert rq["gpu_hit_tokens"].tolist() == [0, 16]
    assert rq["cpu_hit_tokens"].tolist() == [0, 0] and rq["disk_hit_tokens"].tolist() == [0, 0]
    assert rq["load_s"].tolist() == [0.0, 0.0]


# LMCache 0.5.6's order of its CPU and disk LRUs (each chunk a trace block: b = B = 4; vLLM's pool
# of 6 blocks, 5 usable, so a request of 1 block and 17 output tokens flushes vLLM's cache).
FLUSH = 17


def test_lmcache_lookup_refreshes_a_prefix_last_to_first() -> None:
    # disk of 3 chunks: r0 stores 1 2; r1 (vLLM's hit) looks them up: touch_cache refreshes 2,
    # then 1 -> order 2 1; r2 stores 3 -> 2 1 3; r3 stores 4 and evicts 2 -> 1 3 4; r4 finds
    # chunk 1 only (4 tokens from disk; refreshed first to last it would have lost 1 instead)
    tr = trace([([1, 2], 0, 1), ([1, 2], 1, 1), ([3], 0, FLUSH), ([4], 0, FLUSH), ([1, 2], 1, 1)])
    rq = lower_hits(tr, 6, 4, disk={"capacity_blocks": 3, "eviction": "lru"})
    assert rq["gpu_hit_tokens"].tolist() == [0, 8, 0, 0, 0]
    assert rq["disk_hit_tokens"].tolist() == [0, 0, 0, 0, 4]


def test_lmcache_disk_read_refreshes_its_chunks_first_to_last() -> None:
    # disk of 4 chunks: 1 2 3 4 stored; r3 loads 1 2 from disk: the lookup leaves 3 4 2 1, the
    # read 3 4 1 2; r4 r5 r6 store 5 6 7, evicting 3 4 1; r7 finds nothing (without the read's
    # refresh 2 would have gone before 1, and r7 would find chunk 1)
    tr = trace([([1, 2], 0, 1), ([3], 0, FLUSH), ([4], 0, FLUSH), ([1, 2], 1, 1),
                ([5], 0, FLUSH), ([6], 0, FLUSH), ([7], 0, FLUSH), ([1, 2], 1, 1)])
    rq = lower_hits(tr, 6, 4, disk={"capacity_blocks": 4, "eviction": "lru"})
    assert rq["gpu_hit_tokens"].tolist() == [0] * 8
    assert rq["disk_hit_tokens"].tolist() == [0, 0, 0, 8, 0, 0, 0, 0]


def test_lmcache_finds_the_cpus_prefix_then_the_disks() -> None:
    # CPU of 2 chunks, disk large: r0 stores 1 2 (CPU 1 2); r1 stores 3 (CPU 2 3). r2: the CPU
    # lacks chunk 1, so both chunks come from the disk, though the CPU holds 2; their copy back
    # allocates 2 CPU buffers first (evicting 2, then 3), then puts 1 2 -> CPU 1 2. r3 stores 4,
    # evicting 1 -> CPU 2 4; r4 again finds both chunks on the disk only.
    tr = trace([([1, 2], 0, 1), ([3], 0, FLUSH), ([1, 2], 1, 1), ([4], 0, FLUSH), ([1, 2], 1, 1)])
    rq = lower_hits(tr, 6, 4, cpu={"enabled": True, "capacity_blocks": 2, "eviction": "lru"})
    assert rq["gpu_hit_tokens"].tolist() == [0] * 5
    assert rq["disk_hit_tokens"].tolist() == [0, 0, 8, 0, 8]
    assert rq["cpu_hit_tokens"].tolist() == [0] * 5

def test_vllm_is_a_gpu_model_only() -> None:
    with pytest.raises(ScenarioError, match=r"tiers\.disk\.eviction"):
        scenario_from_dict({"tiers": {"disk": {"eviction": "vllm"}}})


# -- against vLLM's own KVCacheManager ------------------------------------------------------------


def vllm_hits(tr_path: Path, tmp_path: Path, b: int, blocks: int, limit: int | None = None) -> list[int]:
    requests = tmp_path / "requests.jsonl"
    export = [sys.executable, str(CHECK), "export", str(tr_path), str(requests)]
    subprocess.run(export + (["--limit", str(limit)] if limit else []), check=True, timeout=300)
    out = subprocess.run([str(VLLM_PYTHON), str(CHECK), "replay", str(requests), "--block-tokens", str(b),
                          "--num-gpu-blocks", str(blocks)], check=True, capture_output=True, text=True,
                         timeout=600)
    return [json.loads(line)["cached_tokens"] for line in out.stdout.splitlines()]


needs_vllm = pytest.mark.skipif(not VLLM_PYTHON.exists(),
                                reason=f"vLLM's virtual environment ({VLLM_PYTHON}) is not installed")


@needs_vllm
def test_small_trace_agrees_with_vllm_request_by_request(tmp_path: Path) -> None:
    from simkv.traces.schema import read_trace

    b, blocks, limit = 16, 2100, 120  # small enough to evict: every prompt is 5k-30k tokens
    sim = run(scenario(blocks, b), slice_trace(read_trace(SMALL_TRACE), TraceSlice(limit=limit)))
    assert sim.summary["evictions_gpu"] > 0
    assert sim.requests["gpu_hit_tokens"].tolist() == vllm_hits(SMALL_TRACE, tmp_path, b, blocks, limit)


@needs_vllm
def test_mooncake_trace_agrees_with_vllm_request_by_request(tmp_path: Path) -> None:
    rows = []
    for i in range(40):  # conversations growing by 512-token blocks, some repeated exactly
        conv = i % 4
        n = 1 + (i // 4) % 4
        ids = [conv * 100 + j for j in range(n)]
        tail = (0, 100, 511)[i % 3]
        rows.append({"timestamp": i * 10, "input_length": n * 512 + tail, "output_length": 1 + (i * 37) % 90,
                     "hash_ids": ids})
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tr = import_mooncake(path)
    parquet = tmp_path / "mc.parquet"
    from simkv.traces.schema import write_trace

    write_trace(tr, parquet)
    b, blocks = 32, 200  # 199 usable: about 3 requests' worth, so blocks are evicted
    sim = run(scenario(blocks, b), tr)
    assert sim.summary["evictions_gpu"] > 0
    ref = vllm_hits(parquet, tmp_path, b, blocks)
    assert sim.requests["gpu_hit_tokens"].tolist() == ref
    assert any(h % 512 for h in ref)  # engine-block granular hits happen
