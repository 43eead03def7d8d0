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

from simkv.errors import ScenarioError
from simkv.model.cache_base import CPU, DISK, GPU, Plan
from simkv.model.system import TieredCache
from simkv.model.tiers import StorageMeter, TierStats
from simkv.model.vllm_pool import VllmBlockPool
from simkv.policies.eviction import LRU, EvictionPolicy, NextUse
from simkv.scenario import Scenario
from simkv.traces.schema import Trace


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
        self._check_fits(trace)

    def _policy(self, tier: str, next_use: NextUse | None) -> EvictionPolicy:
        # The GPU's Tier object stays empty: the pool is the GPU tier.
        return LRU() if tier == "gpu" else super()._policy(tier, next_use)

    def _check_fits(self, trace: Trace) -> None:
        """A :class:`ScenarioError` naming the capacity key and the first trace row whose
        request needs more blocks than the pool has (vLLM could never run it)."""
        usable = self.pool.usable
        if usable is None or not len(trace):
            return
        b = self.engine_block
        need = -(-(trace.input_tokens.astype(np.int64) + np.asarray(self.outputs) - 1) // b)
        over = np.flatnonzero(need > usable)
        if len(over):
            r = int(over[0])
            gpu = self.scenario.tiers.gpu
            key = "capacity_blocks" if gpu.capacity_blocks is not None else "capacity_bytes"
            rid = trace.table.column("request_id")[r].as_py()
            raise ScenarioError(
                f"tiers.gpu.{key}: vLLM's pool of {self.pool.num_blocks} blocks ({usable} usable, the "
                f"null block aside) cannot hold trace row {r} (request {rid!r}: "
                f"{int(trace.input_tokens[r])} prompt + {self.outputs[r]} output tokens need "
                f"{int(need[r])} blocks of {b} tokens); raise it")

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

    def lmcache_lookup(self, blocks: list[int], lo: int, now: float) -> list[int]:
        """The tiers (CPU, DISK) of the longest prefix of ``blocks`` (trace positions from
        ``lo``) LMCache holds (a copy counts once written), each an access for its tier's order."""
        cpu, disk = self.cpu, self.disk
        found: list[int] = []
        for i, b in enumerate(blocks):
            if cpu is not None and cpu.available(b, now):
                found.append(CPU)
                cpu.hit(b, lo + i)
            elif disk is not None and disk.available(b, now):
                found.append(DISK)
                disk.hit(b, lo + i)
            else:
                break
        return found

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
        tokens = [local, 0, 0, 0]
        loaded: list[int] = []  # tiers of the chunks LMCache loads: those past vLLM's hit
        if hit > local:
            for j in range(local // B, -(-hit // B)):
                tokens[lower[j]] += min(hit, (j + 1) * B) - max(local, j * B)
                loaded.append(lower[j])
        #: For finish (one request at a time): LMCache's hit and the first chunk it loaded.
        self._lookup = (lower, local // B if loaded else len(lower))
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
        LMCache below, every full chunk of the prompt past LMCache's own hit to the CPU and
        the disk, and the chunks it loaded from disk back to the CPU."""
        self.expire(now)
        self.meter.change(now, self.pool.cached_blocks * self.engine_block_bytes - self.meter.bytes)
        cpu, disk = self.cpu, self.disk
        if cpu is not None or disk is not None:
            lo = self.offsets[r]
            lower, first_loaded = self._lookup
            for i, b in enumerate(plan.blocks):
                if i < len(lower):
                    if cpu is not None and lower[i] == DISK and i >= first_loaded:
                        self._write_cpu(b, r, i, now, lo + i)
                    continue
                if cpu is not None:
                    self._write_cpu(b, r, i, now, lo + i)
                if disk is not None:
                    self._write_disk(b, r, i, now, lo + i)
        self.state.accessed_ids(plan.blocks, r)

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
