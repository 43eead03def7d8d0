"""Tiers as data structures: resident blocks, capacity, TTL deadlines, exact byte accounting.

Tier state changes are plain data-structure operations, not SimPy events: the request
process and the archive worker call them with the current simulated time. Expiry is lazy
(:meth:`Tier.expire` runs before every lookup and insert) but exact: an entry leaves the
storage integral at its deadline, not when it is noticed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

from simkv.core.policies.eviction import EvictionPolicy


@dataclass(slots=True)
class StorageMeter:
    """Bytes held over time as a step function: current, peak and the exact integral.

    ``byte_seconds = Σ bytes(t) · dt``; changes must come in non-decreasing time order.
    """

    bytes: int = 0
    peak: int = 0
    t: float = 0.0
    byte_seconds: float = 0.0

    def change(self, t: float, delta: int) -> None:
        self.byte_seconds += self.bytes * (t - self.t)
        self.t = t
        self.bytes += delta
        if self.bytes > self.peak:
            self.peak = self.bytes

    def close(self, t: float) -> None:
        """Extend the integral to ``t`` (the end of the simulation)."""
        self.change(t, 0)


@dataclass(frozen=True, slots=True)
class TierStats:
    """One tier's totals at the end of a run, as every engine hands them to the metrics
    (``byte_seconds = Σ bytes(t) · dt`` over the run, ``peak_bytes = max bytes(t)``); an
    absent (disabled) tier reports zeros."""

    name: str
    present: bool = False
    insertions: int = 0
    evictions: int = 0
    expirations: int = 0
    byte_seconds: float = 0.0
    peak_bytes: int = 0


class ObjectLedger:
    """The billing of archive objects: when each was created and which request it is charged to.

    Every object is billed ``max(lifetime, min_s)`` seconds, added to its owner's total when it
    goes (expiry, eviction, overwrite by a refresh) or when the run ends: an early removal pays
    the rest of the minimum then (S3's early-deletion fee). An object alive at the end will stay
    until its TTL expires, so it is billed until its current deadline, ``lifetime = max(deadline,
    end) − created``, but at least the minimum: the bill the run's uploads incur if traffic
    stopped at the end. One without a finite deadline is billed to the end of the run.
    """

    def __init__(self, n_owners: int, min_s: float) -> None:
        self.min_s = min_s
        self.start: dict[int, float] = {}
        self.owner: dict[int, int] = {}
        self.billed_s = [0.0] * n_owners  # per owner: Σ max(lifetime, min_s) of its objects

    def open(self, block: int, t: float, owner: int) -> None:
        """A new object for ``block`` at ``t``, charged to request ``owner``."""
        self.start[block] = t
        self.owner[block] = owner

    def close(self, block: int, t: float) -> None:
        """``block``'s object is gone at ``t``: bill it to its owner."""
        life = t - self.start.pop(block)
        self.billed_s[self.owner.pop(block)] += life if life > self.min_s else self.min_s

    def renew(self, block: int, t: float, owner: int) -> None:
        """``block``'s object is overwritten by a new one at ``t`` (a refresh COPY)."""
        self.close(block, t)
        self.open(block, t, owner)

    def close_all(self, t: float, deadline: Mapping[int, float]) -> None:
        """The end of the run at ``t``: bill every live object, in block order, until its
        ``deadline`` if that is finite and later than ``t``, else until ``t``."""
        for block in sorted(self.start):
            d = deadline.get(block, t)
            self.close(block, d if t < d < math.inf else t)


class Tier:
    """One cache tier: a resident set ordered by an eviction policy, with optional
    per-block TTL deadlines and per-block ready times (asynchronous writes)."""

    def __init__(
        self,
        name: str,
        policy: EvictionPolicy,
        capacity_blocks: int | None,
        stored_bytes_per_block: int,
        sliding: bool = False,
    ) -> None:
        self.name = name
        self.sliding = sliding
        self.policy = policy
        self.members = policy.members
        self.capacity = capacity_blocks
        self.stored_bytes = stored_bytes_per_block
        self.size = 0
        self.meter = StorageMeter()
        self.deadline: dict[int, float] = {}
        self._deadlines: list[tuple[float, int]] = []
        self.ready: dict[int, float] = {}
        self.insertions = 0
        self.evictions = 0
        self.expirations = 0
        self.ledger: ObjectLedger | None = None  # the archive's billing; told of removals

    def stats(self) -> TierStats:
        """This tier's totals (after its meter is closed)."""
        return TierStats(self.name, True, self.insertions, self.evictions, self.expirations,
                         self.meter.byte_seconds, self.meter.peak)

    def __contains__(self, block: int) -> bool:
        return block in self.members

    def __len__(self) -> int:
        return self.size

    def available(self, block: int, now: float) -> bool:
        """Resident, not expired (callers ran :meth:`expire`), and fully written by ``now``."""
        if block not in self.members:
            return False
        ready = self.ready.get(block)
        return ready is None or ready <= now

    def expire(self, now: float) -> None:
        """Remove every entry whose deadline is ``<= now``, at its deadline.

        The heap holds at least one entry per deadline, at or before it: an extended
        deadline is pushed again only when its earlier entry surfaces, so sliding TTLs do
        not grow the heap on every refresh.
        """
        heap = self._deadlines
        deadline = self.deadline
        while heap and heap[0][0] <= now:
            t, block = heapq.heappop(heap)
            current = deadline.get(block)
            if current is None or current < t:
                continue  # removed, or an earlier deadline has its own entry
            if current > t:
                heapq.heappush(heap, (current, block))
                continue
            del deadline[block]
            self.policy.drop(block)
            self.ready.pop(block, None)
            self.size -= 1
            self.meter.change(t, -self.stored_bytes)
            self.expirations += 1
            if self.ledger is not None:
                self.ledger.close(block, t)

    def set_deadline(self, block: int, deadline: float) -> None:
        old = self.deadline.get(block)
        self.deadline[block] = deadline
        if old is None or deadline < old:
            heapq.heappush(self._deadlines, (deadline, block))
            if len(self._deadlines) > 4 * len(self.deadline) + 1024:
                self._deadlines = [(t, b) for b, t in self.deadline.items()]
                heapq.heapify(self._deadlines)

    def hit(self, block: int, ref: int) -> None:
        self.policy.hit(block, ref)

    def insert(
        self,
        block: int,
        now: float,
        ref: int,
        priority: float = 0.0,
        deadline: float | None = None,
        ready: float | None = None,
    ) -> list[int]:
        """Make ``block`` resident at ``now``, evicting as needed; returns the evicted blocks.

        A block already resident is refreshed: a hit, and a new deadline if TTLs slide
        (a fixed deadline stands). A tier of
        capacity 0 stores nothing. Evictions and the admission happen at the same instant,
        so the storage meter records only their net change.
        """
        policy = self.policy
        if block in self.members:
            policy.hit(block, ref)
            if deadline is not None and self.sliding:
                self.set_deadline(block, deadline)
            return []
        cap = self.capacity
        evicted: list[int] = []
        if cap is not None:
            if cap <= 0:
                return evicted
            while self.size >= cap:
                evicted.append(self._remove_victim(now))
            self.evictions += len(evicted)
        policy.admit(block, ref, priority)
        self.size += 1
        self.insertions += 1
        if len(evicted) != 1:
            self.meter.change(now, (1 - len(evicted)) * self.stored_bytes)
        if deadline is not None:
            self.set_deadline(block, deadline)
        if ready is not None and ready > now:
            self.ready[block] = ready
        return evicted

    def _remove_victim(self, now: float) -> int:
        """Remove the policy's victim at ``now`` (no counters, no meter); returns it."""
        victim = self.policy.evict()
        if self.deadline:
            self.deadline.pop(victim, None)
        if self.ready:
            self.ready.pop(victim, None)
        if self.ledger is not None:
            self.ledger.close(victim, now)
        self.size -= 1
        return victim

    def evict(self, now: float) -> int:
        """Evict the policy's victim at ``now`` to free a slot no block will take (a buffer
        the engine allocates, then drops); returns it."""
        victim = self._remove_victim(now)
        self.evictions += 1
        self.meter.change(now, -self.stored_bytes)
        return victim
