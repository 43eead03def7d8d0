"""``tiers.gpu.eviction: vllm``: the simulated system with vLLM's prefix cache as its GPU tier.

The GPU tier is :class:`~simkv.model.vllm_pool.VllmBlockPool`, in engine blocks of
``tiers.gpu.block_tokens`` tokens (``b``), which must divide the trace's block (``B``).
Engine blocks are named as the replay's deterministic prompts (:mod:`simkv.traces.prompts`)
make them: trace block ``h`` is ``B`` tokens that depend on ``h`` alone and ``h`` is chained,
so engine block ``s`` of a request's ``q``-th trace block is ``(h_q, s)``, shared by every
request whose prompt begins with the same ``q + 1`` trace blocks; the full engine blocks of a
request's tail (``input_tokens % B`` tokens, unique to it) and of its generated tokens are its
own. Each request is served alone (``hardware.gpus: 1``), from admission to its last output
token (``output_tokens`` of the trace, at least 1), before the next one is admitted.

Hits are engine-block granular: the plan carries the exact hit tokens
(:attr:`~simkv.model.cache_base.Plan.tier_tokens`); ``<tier>_blocks`` stay in whole trace
blocks (``hit_tokens // B``).
"""

from __future__ import annotations

import numpy as np

from simkv.core.errors import ScenarioError
from simkv.core.policies.eviction import LRU, EvictionPolicy, NextUse
from simkv.core.scenario import Scenario
from simkv.core.tiers import CPU, DISK, GPU, TIER_NAMES
from simkv.model.cache_base import Plan
from simkv.model.system import TieredCache
from simkv.model.tiers import StorageMeter, Tier, TierStats
from simkv.model.vllm_pool import VllmBlockPool
from simkv.traces.schema import Trace


def check_pool_fits(scenario: Scenario, trace: Trace, usable: int | None, block: int) -> None:
    """A :class:`ScenarioError` naming the GPU tier's capacity key and the first trace row
    whose request needs more than ``usable`` blocks of ``block`` tokens (its prompt and its
    output tokens, at least 1, less the last: vLLM could never run it)."""
    if usable is None or not len(trace):
        return
    outputs = np.maximum(trace.output_tokens, 1)
    need = -(-(trace.input_tokens.astype(np.int64) + outputs - 1) // block)
    over = np.flatnonzero(need > usable)
    if len(over):
        r = int(over[0])
        gpu = scenario.tiers.gpu
        key = "capacity_blocks" if gpu.capacity_blocks is not None else "capacity_bytes"
        rid = trace.table.column("request_id")[r].as_py()
        raise ScenarioError(
            f"tiers.gpu.{key}: vLLM's pool of {usable + 1} blocks ({usable} usable, the "
            f"null block aside) cannot hold trace row {r} (request {rid!r}: "
            f"{int(trace.input_tokens[r])} prompt + {int(outputs[r])} output tokens need "
            f"{int(need[r])} blocks of {block} tokens); raise it")


class VllmCache(TieredCache):
    """The simulated system over vLLM's prefix cache (see the module docstring)."""

    def __init__(self, scenario: Scenario, trace: Trace) -> None:
        super().__init__(scenario, trace)
        gpu = scenario.tiers.gpu
        b, B = gpu.block_tokens, self.block_size
        if B % b:
            raise ScenarioError(f"tiers.gpu.block_tokens: {b} does not divide the trace's block_size "
                                f"{B} (each trace block must be a whole number of engine blocks)")
        if (self.cpu is not None or self.disk is not None) and not self.write_through:
            raise ScenarioError("tiers.disk.write_policy: 'offload_on_evict', but LMCache below vLLM "
                                "stores every computed chunk (tiers.gpu.eviction: vllm needs "
                                "write_through)")
        self.engine_block = b
        self.per_trace_block = B // b
        per_token = scenario.model.bytes_per_token
        self.engine_block_bytes = b * per_token
        self.pool = VllmBlockPool(gpu.pool_blocks(per_token, B))
        self.outputs = np.maximum(trace.output_tokens, 1).tolist()
        self.meter = StorageMeter()
        self.prefixes: dict[tuple[int, int], int] = {}  # (prefix, trace block) -> prefix
        self._lookup: tuple[list[int], int] = ([], 0)
        check_pool_fits(scenario, trace, self.pool.usable, b)

    def _policy(self, tier: str, next_use: NextUse | None) -> EvictionPolicy:
        # The GPU's Tier object stays empty: the pool is the GPU tier.
        return LRU() if tier == "gpu" else super()._policy(tier, next_use)

    def keys(self, r: int, ids: list[int]) -> list[int]:
        """Names of request ``r``'s full engine blocks (prompt, then generated tokens): shared
        ones ``>= 0`` from its trace blocks ``ids`` (each named with the blocks before it, as
        vLLM's chained hash names it, so a trace whose hashes are not chained still maps
        exactly), its own ones ``< 0``."""
        S = self.per_trace_block
        prefixes = self.prefixes
        chain: list[int] = []
        parent = -1
        for h in ids:
            parent = prefixes.setdefault((parent, h), len(prefixes))
            chain.append(parent)
        keys = chain if S == 1 else [c * S + s for c in chain for s in range(S)]
        full = (self.input_tokens[r] + self.outputs[r] - 1) // self.engine_block
        own = -1 - (r << 32)
        return keys + [own - j for j in range(len(keys), full)]

    def lmcache_prefix(self, blocks: list[int], now: float) -> list[int]:
        """The tiers (CPU, DISK) of the longest prefix of ``blocks`` LMCache holds, found as
        LMCache 0.5.6's storage manager finds them (``batched_contains``,
        ``get_block_mapping``): the CPU's prefix, then the disk's from where the CPU's ended
        (a chunk past that point counts for the disk even when the CPU holds it too). A copy
        counts once written."""
        cpu, disk = self.cpu, self.disk
        found: list[int] = []
        on_cpu = True
        for b in blocks:
            if on_cpu and cpu is not None and cpu.available(b, now):
                found.append(CPU)
            elif disk is not None and disk.available(b, now):
                on_cpu = False
                found.append(DISK)
            else:
                break
        return found

    def lmcache_lookup(self, blocks: list[int], lo: int, now: float) -> list[int]:
        """LMCache's lookup of ``blocks`` (trace positions from ``lo``): the tiers of the prefix
        it holds (:meth:`lmcache_prefix`), each chunk an access for its tier's order, refreshed
        last to first (``touch_cache`` walks the request's keys in reverse), so the first chunk
        ends the most recent and a prefix's tail is evicted before its head."""
        found = self.lmcache_prefix(blocks, now)
        for i in reversed(range(len(found))):
            self.tier(found[i]).hit(blocks[i], lo + i)
        return found

    def tier(self, index: int) -> Tier:
        """The CPU or disk tier (``index``: CPU or DISK), which must be enabled."""
        tier = self.cpu if index == CPU else self.disk
        assert tier is not None
        return tier

    def begin(self, r: int, now: float) -> Plan:
        """Serve request ``r`` at ``now``: vLLM's hit (the pool), LMCache's below it (CPU,
        disk), the load and prefill times."""
        self.expire(now)
        lo, hi = self.offsets[r], self.offsets[r + 1]
        blocks = self.ids[lo:hi].tolist()
        n_tokens = self.input_tokens[r]
        B = self.block_size
        local = self.pool.run(self.keys(r, blocks), n_tokens, self.outputs[r], self.engine_block)
        lower = (self.lmcache_lookup(blocks, lo, now)
                 if self.cpu is not None or self.disk is not None else [])
        external = len(lower) * B
        if external == n_tokens:
            external -= 1  # LMCache's connector recomputes the last token of a whole-prompt hit
        hit = max(local, external)
        tokens = [local] + [0] * (len(TIER_NAMES) - 1)
        loaded: list[int] = []  # tiers of the chunks LMCache loads: those past vLLM's hit
        if hit > local:
            first = local // B
            # LMCache reads from the tier its lookup pinned when that was one tier, else from
            # the tiers a fresh prefix match over the chunks it loads finds
            loaded = (lower[first:] if len(set(lower)) == 1
                      else self.lmcache_prefix(blocks[first:len(lower)], now))
            lower = lower[:first] + loaded
            for j in range(first, -(-hit // B)):
                tokens[lower[j]] += min(hit, (j + 1) * B) - max(local, j * B)
        #: For finish (one request at a time): LMCache's hit and the chunks it loaded.
        self._lookup = (lower, len(lower) - len(loaded))
        k = hit // B
        # a trace block counts for the tier that supplied its last token
        sources = [GPU if (j + 1) * B <= local else lower[j] for j in range(k)]
        if self.zero_time:
            load_s = prefill_s = 0.0
        else:
            load_s = self._load_s(loaded)
            prefill_s = self.hw.prefill_s(n_tokens - hit, hit)
        plan = Plan(blocks, sources, k, load_s, prefill_s, used=k, tier_tokens=tokens)
        for src in sources:
            plan.tier_blocks[src] += 1
        if self.overhead.any and not self.zero_time:
            plan.overhead_s = self.overhead.service_s(len(blocks), len(blocks) - len(lower),
                                                      len(loaded), 0)
        return plan

    def finish(self, r: int, plan: Plan, now: float) -> None:
        """Store request ``r`` at ``now``: the pool's state after it (GPU bytes) and, with
        LMCache below, its loads' and stores' effects on the CPU and the disk."""
        self.expire(now)
        self.meter.change(now, self.pool.cached_blocks * self.engine_block_bytes - self.meter.bytes)
        if self.cpu is not None or self.disk is not None:
            lower, first_loaded = self._lookup
            lo = self.offsets[r]
            blocks = plan.blocks
            from_disk = [i for i in range(first_loaded, len(lower)) if lower[i] == DISK]
            if from_disk:
                # a disk read refreshes its chunks in order, then goes back to the CPU
                for i in from_disk:
                    self.tier(DISK).hit(blocks[i], lo + i)
                if self.cpu is not None:
                    self._lmcache_cpu_put(from_disk, blocks, r, now)
            new = list(range(len(lower), len(blocks)))
            if self.cpu is not None:
                new = new[:self._lmcache_cpu_put(new, blocks, r, now)]
            if self.disk is not None:
                for i in new:
                    self._write(DISK, blocks[i], r, i, now, lo + i)
        self.state.accessed_ids(plan.blocks, r)

    def _lmcache_cpu_put(self, chunks: list[int], blocks: list[int], r: int, now: float) -> int:
        """LMCache 0.5.6's batched put of request ``r``'s ``chunks`` (positions in ``blocks``)
        to its CPU: a buffer is allocated for each first, each evicting the least recent chunk
        while the tier is full (a chunk it holds already too: ``LocalCPUBackend.allocate``
        precedes the put), then the chunks it does not hold are admitted; one it holds is left
        where it is (``submit_put_task`` skips it, no access). Returns how many chunks got a
        buffer: LMCache stores only those (to the disk as well)."""
        cpu = self.tier(CPU)
        cap = cpu.capacity
        n = len(chunks)
        if cap is not None:
            n = 0
            for _ in chunks:
                while cpu.size + n >= cap and cpu.size:
                    cpu.evict(now)
                if cpu.size + n >= cap:
                    break  # the buffers fill the tier: LMCache stores what it allocated
                n += 1
        lo = self.offsets[r]
        for i in chunks[:n]:
            if blocks[i] not in cpu.members:
                self._write(CPU, blocks[i], r, i, now, lo + i)
        return n

    def close(self, now: float) -> None:
        super().close(now)
        self.meter.close(now)

    def tier_stats(self) -> list[TierStats]:
        stats = super().tier_stats()
        p = self.pool
        stats[GPU] = TierStats("gpu", True, p.insertions, p.evictions, 0, self.meter.byte_seconds,
                               self.meter.peak)
        return stats

    def occupancy(self) -> tuple[int, ...]:
        return (self.meter.bytes, *super().occupancy()[GPU + 1:])
