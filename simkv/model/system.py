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
        gpu, self.cpu, self.disk, self.archive = (self.tiers[t] for t in (GPU, CPU, DISK, ARCHIVE))
        assert gpu is not None  # the GPU tier is always present
        self.gpu: Tier = gpu
        if not self.ttl_all_tiers:  # no heuristic scores GPU/disk blocks: a live reference count
            for tier in self.tiers[:ARCHIVE]:
                if tier is not None and hasattr(tier.policy, "count_hits"):
                    tier.policy.count_hits = True
        if self.archive is not None:
            self.archive.ledger = ObjectLedger(len(trace), self.archive_min_s)
        for tier, billed in zip(self.tiers, self.billed, strict=True):
            if tier is not None and billed:  # each block billed for its lifetime to its writer
                tier.ledger = ObjectLedger(len(trace), 0.0)
        #: The tiers below the GPU in use, fastest first: where a lookup goes after the GPU.
        self.below = [(i, t) for i, t in enumerate(self.tiers) if i != GPU and t is not None]
        #: The tiers ``write_through`` copies every stored block to (all but GPU and archive).
        self.written = [i for i, _ in self.below if i != ARCHIVE]

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

    def _deadline(self, t: int, block: int, r: int, position: int, now: float) -> tuple[float | None, float]:
        """Deadline and priority of ``block`` stored in tier ``t`` (not the archive): the
        heuristic's TTL priced at the tier's held $/byte-second where it governs the tier, else
        the tier's own ``key_ttl_s`` (``None``: no deadline) and the block's reference count."""
        if self.ttl_governs[t]:
            ttl, prio = self.state.ttl_one(block, r, position, now, self.block_bytes,
                                           self.held_cost_per_byte_s[t])
            return now + ttl, prio
        ttl_s = self.key_ttl_s[t]
        return (None if ttl_s is None else now + ttl_s), float(self.state.refs[block])

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
        gpu_m = self.gpu.members
        below = [(i, t.members, t.ready) for i, t in self.below]  # a copy is readable once written
        sources: list[int] = []
        for b in blocks:
            if b in gpu_m:
                sources.append(GPU)
                continue
            for i, members, ready in below:
                if b in members and (not ready or ready.get(b, 0.0) <= now):
                    sources.append(i)
                    break
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
        governs = self.ttl_governs
        if self.sliding and any(governs[:ARCHIVE]):
            for i, src in enumerate(sources):    # a hit slides the deadlines the heuristic sets
                if src != ARCHIVE and governs[src]:
                    deadline, _ = self._deadline(src, blocks[i], r, i, now)
                    tiers[src].set_deadline(blocks[i], deadline)  # type: ignore[union-attr,arg-type]
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
        lower = bool(self.written)
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
                deadline, prio = self._deadline(GPU, b, r, i, now)
            else:
                deadline, prio = None, float(refs[b])
            evicted = insert(b, now, ref, prio, deadline)
            if src == ARCHIVE:
                self.hydrations += 1
            if offload and evicted:
                for v in evicted:
                    if cpu is None:
                        self._write(DISK, v, r, i, now, ref)
                    else:
                        for w in self._write(CPU, v, r, i, now, ref):
                            if disk is not None:  # the CPU's victim goes down to disk
                                self._write(DISK, w, r, i, now, ref)
                                self.offloads += 1
                    self.offloads += 1
            elif write:
                for t in self.written:   # a lower tier's victims are in the tiers below it already
                    if src != t:
                        self._write(t, b, r, i, now, ref)
        self.state.accessed_ids(blocks, r)  # after the lookup, so a request never counts itself

    def _write(self, t: int, block: int, r: int, position: int, now: float, ref: int) -> list[int]:
        """Write ``block`` to tier ``t`` (CPU, disk or remote) for request ``r``, readable once
        written (a tier's writes queue behind each other); a block already there is accessed
        instead, except in a tier that ``rewrites`` (the remote store: LMCache puts every stored
        chunk to its remote backend again, ``SET ... EX``): a write like any (counted, queued
        on the link) that restarts the block's TTL and passes its bill to this request. Returns
        the tier's victims."""
        tier = self.tiers[t]
        assert tier is not None
        if block in tier.members:
            tier.policy.hit(block, ref)
            if self.rewrites[t]:
                self._queue_write(t, now)
                deadline, _ = self._deadline(t, block, r, position, now)
                if deadline is not None:
                    tier.set_deadline(block, deadline)
                    if tier.ledger is not None:
                        tier.ledger.renew(block, now, r)
            return []
        ready = self._queue_write(t, now)
        deadline, prio = self._deadline(t, block, r, position, now)
        evicted = tier.insert(block, now, ref, prio, deadline, ready)
        if tier.ledger is not None and block in tier.members:
            tier.ledger.open(block, now, r)
        return evicted

    def _queue_write(self, t: int, now: float) -> float:
        """A write to tier ``t`` issued at ``now``, counted: when it lands, behind the tier's
        earlier writes (at once with zero service time); the tier's longest lag is kept."""
        self.writes[t] += 1
        if self.zero_time:
            return now
        ready = self.free_at[t] = max(now, self.free_at[t]) + self._write_s[t]
        if ready - now > self.write_lag_max[t]:
            self.write_lag_max[t] = ready - now
        return ready

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
        for tier in self.tiers:
            if tier is not None:
                if tier.ledger is not None:
                    tier.ledger.close_all(now, tier.deadline)
                tier.meter.close(now)

    def tier_stats(self) -> list[TierStats]:
        return [t.stats() if t is not None else TierStats(name)
                for name, t in zip(TIER_NAMES, self.tiers, strict=True)]

    def archive_billed_s(self) -> np.ndarray:
        return self._billed_s(self.archive)

    def held_billed_s(self, t: int) -> np.ndarray:
        return self._billed_s(self.tiers[t])

    def _billed_s(self, tier: Tier | None) -> np.ndarray:
        ledger = tier.ledger if tier is not None else None
        return (np.asarray(ledger.billed_s, dtype=np.float64) if ledger is not None
                else np.zeros(len(self.trace)))

    def occupancy(self) -> tuple[int, ...]:
        return tuple(t.meter.bytes if t is not None else 0 for t in self.tiers)  # type: ignore[return-value]
