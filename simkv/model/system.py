"""The tiered KV cache of one inference engine: GPU prefix cache, LMCache CPU and disk, S3 archive.

The tiers form one ordered list, fastest first (:data:`TIER_NAMES`, indices ``GPU`` ... ``ARCHIVE``):
the engines, metrics and reports all iterate it. :class:`TieredCache` holds the tiers and
answers the two questions a request asks:

* :meth:`TieredCache.begin` (when the request gets the GPU): walk the prompt's blocks in
  order; each is found in the fastest tier holding it (GPU, CPU, disk, then archive; a CPU
  or disk copy counts once written) and the first block found nowhere ends the reusable
  prefix (prefix semantics). A hit is an access for its tier's eviction order and does not
  move the block. With
  ``load_policy: if_faster`` the prefix is cut at the ``k`` that minimises
  ``load(blocks[:k]) + prefill(n - k·B, k·B)`` (ties keep the longer prefix).
* :meth:`TieredCache.finish` (when its prefill is done): every block of the prompt that is
  not already in the GPU tier is stored there (computed or hydrated), in prompt order;
  blocks reach the CPU and disk by the write policy (``tiers.disk.write_policy``):
  ``write_through`` copies each such block to every lower local tier that did not supply it
  (CPU, then disk; LMCache stores every computed chunk, and writes disk hits back to CPU);
  ``offload_on_evict`` writes the GPU's victims to the CPU tier (to disk without one) and
  the CPU's victims to disk. All of them become candidates for the archive worker's next pass.

The archive worker's pass is the shared :meth:`~simkv.model.cache_base.CacheBase.archive_pass`
over this cache's archive tier, then :meth:`TieredCache.archive_commit`. No SimPy here: the
request process (``simkv.model.engine``) supplies the times.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from simkv.core.policies.eviction import EvictionPolicy, NextUse, make_policy
from simkv.core.scenario import Scenario
from simkv.core.tiers import ARCHIVE, CPU, DISK, GPU, TIER_NAMES, best_cut
from simkv.model.cache_base import CacheBase, Plan, Uploads
from simkv.model.tiers import ObjectLedger, Tier, TierStats
from simkv.traces.schema import Trace


class TieredCache(CacheBase):
    """The cache side of the simulated system over Python tiers (see the module docstring)."""

    def __init__(self, scenario: Scenario, trace: Trace) -> None:
        super().__init__(scenario, trace)
        sc = scenario
        needs_oracle = any(getattr(sc.tiers, t).eviction in ("belady", "opt") for t in TIER_NAMES)
        next_use = NextUse(trace.block_ids_flat) if needs_oracle else None
        #: Indexed like TIER_NAMES; None for a disabled tier.
        self.tiers: list[Tier | None] = [
            Tier(name, self._policy(name, next_use), capacity, stored, self.sliding) if present else None
            for name, present, capacity, stored in zip(TIER_NAMES, self.present, self.capacity,
                                                       self.stored_bytes, strict=True)]
        gpu, self.cpu, self.disk, self.archive = self.tiers
        assert gpu is not None  # the GPU tier is always present
        self.gpu: Tier = gpu
        if not self.ttl_all_tiers:  # no heuristic scores GPU/disk blocks: a live reference count
            for tier in self.tiers[:ARCHIVE]:
                if tier is not None and hasattr(tier.policy, "count_hits"):
                    tier.policy.count_hits = True
        if self.archive is not None:
            self.archive.ledger = ObjectLedger(len(trace), self.archive_min_s)

    def _policy(self, tier: str, next_use: NextUse | None) -> EvictionPolicy:
        """The eviction policy of ``tier`` (a TIER_NAMES name) from the scenario."""
        return make_policy(getattr(self.scenario.tiers, tier).eviction, f"tiers.{tier}.eviction", next_use)

    @property
    def ids(self) -> np.ndarray:
        """Dense block ids of the whole trace; each request takes its slice as a list."""
        return self.trace.block_ids_flat

    @cached_property
    def offsets(self) -> list[int]:
        return self.trace.block_offsets.tolist()

    @cached_property
    def input_tokens(self) -> list[int]:
        return self.trace.input_tokens.tolist()

    def _local_deadline(self, block: int, r: int, position: int, now: float) -> tuple[float | None, float]:
        """Deadline and priority for a GPU/disk insert (a TTL only when scope is ``all``)."""
        if not self.ttl_all_tiers:
            return None, float(self.state.refs[block])
        ttl, prio = self.state.ttl_one(block, r, position, now, self.block_bytes, 0.0)
        return now + ttl, prio

    # -- requests -------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        for tier in self.tiers:
            if tier is not None:
                tier.expire(now)

    def begin(self, r: int, now: float) -> Plan:
        """Look up request ``r`` at ``now`` and decide what to load and what to compute."""
        self.expire(now)
        lo, hi = self.offsets[r], self.offsets[r + 1]
        blocks = self.ids[lo:hi].tolist()
        gpu, cpu, disk, archive = self.gpu, self.cpu, self.disk, self.archive
        gpu_m = gpu.members
        cpu_m = cpu.members if cpu is not None else ()
        cpu_ready = cpu.ready if cpu is not None else {}
        disk_m = disk.members if disk is not None else ()
        disk_ready = disk.ready if disk is not None else {}
        arch_m = archive.members if archive is not None else ()
        sources: list[int] = []
        for b in blocks:
            if b in gpu_m:
                sources.append(GPU)
            elif b in cpu_m and (not cpu_ready or cpu_ready.get(b, 0.0) <= now):
                sources.append(CPU)
            elif b in disk_m and (not disk_ready or disk_ready.get(b, 0.0) <= now):
                sources.append(DISK)
            elif b in arch_m:
                sources.append(ARCHIVE)
            else:
                break
        found = len(sources)
        n_tokens = self.input_tokens[r]
        B = self.block_size
        if self.zero_time:
            k, load_s, prefill_s = found, 0.0, 0.0
        elif self.if_faster:
            k, load_s, prefill_s = self._best_cut(sources, n_tokens)
        else:
            k = found
            load_s = self._load_s(sources)
            prefill_s = self.hw.prefill_s(n_tokens - k * B, k * B)
        del sources[k:]
        plan = Plan(blocks, sources, found, load_s, prefill_s, used=k)
        counts = plan.tier_blocks
        tiers = self.tiers
        for i, src in enumerate(sources):
            counts[src] += 1
            tiers[src].hit(blocks[i], lo + i)  # type: ignore[union-attr]
        if self.overhead.any and not self.zero_time:
            # stored: computed or hydrated full blocks; admitted: copied up from the CPU or disk
            stored = len(blocks) - k + counts[ARCHIVE]
            evicted = 0
            cap = self.capacity[DISK]
            if self.overhead.disk_evict_per_block_s and self.disk is not None and cap is not None:
                evicted = min(stored, max(0, len(self.disk.members) + stored - cap))
            plan.overhead_s = self.overhead.service_s(len(blocks), stored, counts[CPU] + counts[DISK],
                                                      evicted)
        if counts[ARCHIVE]:
            self.archive_gets += counts[ARCHIVE]
            self.archive_bytes_fetched += counts[ARCHIVE] * self.archive_bytes
        if self.sliding and self.ttl_all_tiers:
            for i, src in enumerate(sources):
                if src != ARCHIVE:
                    tier = tiers[src]
                    deadline, _ = self._local_deadline(blocks[i], r, i, now)
                    tier.set_deadline(blocks[i], deadline)  # type: ignore[union-attr,arg-type]
        return plan

    def _load_s(self, sources: list[int]) -> float:
        """Time to bring the prefix blocks from their tiers to the GPU."""
        t = 0.0
        for tier, (lat, per) in enumerate(zip(self._lat, self._read_s, strict=True)):
            n = sources.count(tier)
            if n:
                t += lat + n * per
        return t

    def _best_cut(self, sources: list[int], n_tokens: int) -> tuple[int, float, float]:
        return best_cut(sources, n_tokens, self.block_size, self.hw, self.transfers)

    def finish(self, r: int, plan: Plan, now: float) -> None:
        """Store request ``r``'s blocks at ``now`` (end of its prefill)."""
        self.expire(now)
        lo = self.offsets[r]
        gpu, cpu, disk = self.gpu, self.cpu, self.disk
        blocks, sources = plan.blocks, plan.sources
        k = len(sources)
        lower = cpu is not None or disk is not None
        offload = lower and not self.write_through
        write = lower and self.write_through
        ttl_local = self.ttl_all_tiers
        refs = memoryview(self.state.refs)
        gpu_m = gpu.members
        insert = gpu.insert
        for i, b in enumerate(blocks):
            if i < k:
                src = sources[i]
                if src == GPU and b in gpu_m:
                    continue
            else:
                src = -1
            ref = lo + i
            if ttl_local:
                deadline, prio = self._local_deadline(b, r, i, now)
            else:
                deadline, prio = None, float(refs[b])
            evicted = insert(b, now, ref, prio, deadline)
            if src == ARCHIVE:
                self.hydrations += 1
            if offload and evicted:
                for v in evicted:
                    if cpu is None:
                        self._write_disk(v, r, i, now, ref)
                    else:
                        for w in self._write_cpu(v, r, i, now, ref):
                            if disk is not None:  # the CPU's victim goes down to disk
                                self._write_disk(w, r, i, now, ref)
                                self.offloads += 1
                    self.offloads += 1
            elif write:
                if cpu is not None and src != CPU:
                    self._write_cpu(b, r, i, now, ref)  # its victims are on disk already
                if disk is not None and src != DISK:
                    self._write_disk(b, r, i, now, ref)
        self.state.accessed_ids(blocks, r)  # after the lookup, so a request never counts itself

    def _write_cpu(self, block: int, r: int, position: int, now: float, ref: int) -> list[int]:
        """Copy ``block`` to the CPU tier, readable once copied (copies queue behind each
        other); a block already there is accessed instead. Returns the CPU tier's victims."""
        cpu = self.cpu
        assert cpu is not None
        if block in cpu.members:
            cpu.policy.hit(block, ref)
            return []
        if self.zero_time:
            ready = now
        else:
            start = max(now, self.cpu_free_at)
            ready = self.cpu_free_at = start + self._write_s[CPU]
        deadline, prio = self._local_deadline(block, r, position, now)
        self.cpu_writes += 1
        return cpu.insert(block, now, ref, prio, deadline, ready)

    def _write_disk(self, block: int, r: int, position: int, now: float, ref: int) -> None:
        disk = self.disk
        assert disk is not None
        if block in disk.members:
            disk.policy.hit(block, ref)
            return
        if self.zero_time:
            ready = now
        else:
            start = max(now, self.disk_free_at)
            ready = self.disk_free_at = start + self._write_s[DISK]
            if ready - now > self.disk_write_lag_max:
                self.disk_write_lag_max = ready - now
        deadline, prio = self._local_deadline(block, r, position, now)
        disk.insert(block, now, ref, prio, deadline, ready)
        self.disk_writes += 1

    # -- the archive worker -----------------------------------------------------------------

    def _archive_expire(self, now: float) -> None:
        self.archive.expire(now)  # type: ignore[union-attr]

    def _archive_refresh(self, blocks: np.ndarray, deadlines: np.ndarray, refs: np.ndarray,
                         owners: np.ndarray, now: float) -> None:
        archive = self.archive
        assert archive is not None and archive.ledger is not None
        renew = archive.ledger.renew
        for b, deadline, ref, owner in zip(blocks.tolist(), deadlines.tolist(), refs.tolist(),
                                           owners.tolist(), strict=True):
            archive.set_deadline(b, deadline)
            archive.hit(b, ref)
            renew(b, now, owner)

    def archived_mask(self, blocks: np.ndarray) -> np.ndarray:
        members = self.archive.members  # type: ignore[union-attr]
        return np.fromiter((b in members for b in blocks.tolist()), np.bool_, len(blocks))

    def held_mask(self, blocks: np.ndarray) -> np.ndarray:
        local = [t.members for t in self.tiers[:ARCHIVE] if t is not None]
        return np.fromiter((any(b in m for m in local) for b in blocks.tolist()), np.bool_, len(blocks))

    def archive_commit(self, uploads: Uploads, now: float) -> None:
        self._archive_expire(now)
        archive = self.archive
        assert archive is not None and archive.ledger is not None
        ledger = archive.ledger  # evicted objects are billed by the tier
        members = archive.members
        blocks, refs, ttls, prios, owners = uploads
        deadlines = now + ttls
        for b, ref, deadline, prio, owner in zip(blocks.tolist(), refs.tolist(), deadlines.tolist(),
                                                 prios.tolist(), owners.tolist(), strict=True):
            overwrite = b in members
            archive.insert(b, now, ref, prio, deadline)
            if overwrite:
                ledger.renew(b, now, owner)
            elif b in members:
                ledger.open(b, now, owner)
        self.archive_puts += len(blocks)
        np.add.at(self.archive_puts_by_request, owners, 1)

    def close(self, now: float) -> None:
        self.expire(now)
        if self.archive is not None and self.archive.ledger is not None:
            self.archive.ledger.close_all(now, self.archive.deadline)
        for tier in self.tiers:
            if tier is not None:
                tier.meter.close(now)

    def tier_stats(self) -> list[TierStats]:
        return [t.stats() if t is not None else TierStats(name)
                for name, t in zip(TIER_NAMES, self.tiers, strict=True)]

    def archive_billed_s(self) -> np.ndarray:
        ledger = self.archive.ledger if self.archive is not None else None
        return (np.asarray(ledger.billed_s, dtype=np.float64) if ledger is not None
                else np.zeros(len(self.trace)))

    def occupancy(self) -> tuple[int, ...]:
        return tuple(t.meter.bytes if t is not None else 0 for t in self.tiers)  # type: ignore[return-value]
