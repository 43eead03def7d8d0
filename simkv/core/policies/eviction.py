"""Eviction policies: which resident block a full tier gives up next.

Every policy implements the same small interface (as in libCacheSim): ``admit`` a block,
note a ``hit``, ``drop`` a block the tier removed for another reason (expiry, a move), and
name the ``victim``. Policies hold the tier's resident set, so a tier asks its policy
``block in policy``. ``ref`` is a logical clock: the position of the current block access
in the trace (non-decreasing); the offline oracle uses it to look up the next use.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Container

import numpy as np

from simkv.core.errors import ScenarioError, SimkvError
from simkv.core.registry import Registry, check_signature, describe


class NextUse:
    """Offline knowledge for the oracle: when is ``block`` referenced next after ``ref``?

    Built once from the trace's flat block ids (position ``j`` = the ``j``-th block access).
    """

    NEVER = 1 << 62

    def __init__(self, block_ids_flat: np.ndarray) -> None:
        order = np.argsort(block_ids_flat, kind="stable")
        ids_sorted = block_ids_flat[order]
        n_ids = int(ids_sorted[-1]) + 1 if len(ids_sorted) else 0
        self._starts = np.searchsorted(ids_sorted, np.arange(n_ids + 1)).tolist()
        self._positions = order.tolist()

    def next_after(self, block: int, ref: int) -> int:
        lo, hi = self._starts[block], self._starts[block + 1]
        i = bisect_right(self._positions, ref, lo, hi)
        return self._positions[i] if i < hi else self.NEVER


class EvictionPolicy(ABC):
    """The resident set of one tier, ordered for eviction."""

    name: str = ""

    @abstractmethod
    def admit(self, block: int, ref: int, priority: float = 0.0) -> None:
        """``block`` became resident (it is not resident yet)."""

    @abstractmethod
    def hit(self, block: int, ref: int) -> None:
        """``block`` (resident) was accessed."""

    @abstractmethod
    def drop(self, block: int) -> None:
        """``block`` (resident) left the tier for a reason other than eviction by this policy."""

    @abstractmethod
    def victim(self) -> int:
        """The block to evict next (still resident)."""

    def evict(self) -> int:
        """Remove and return the victim."""
        block = self.victim()
        self.drop(block)
        return block

    #: The resident set as a container (``block in members``), for the tiers' hot path.
    members: Container[int]

    @abstractmethod
    def __contains__(self, block: int) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...


EVICTION_POLICIES: Registry[Callable[..., EvictionPolicy]] = Registry("eviction policy")


@EVICTION_POLICIES.register("lru")
class LRU(EvictionPolicy):
    """Least recently used: evict the block whose last access is oldest."""

    name = "lru"

    def __init__(self, next_use: NextUse | None = None) -> None:
        self.order: OrderedDict[int, None] = OrderedDict()
        self.members = self.order

    def admit(self, block: int, ref: int, priority: float = 0.0) -> None:
        self.order[block] = None

    def hit(self, block: int, ref: int) -> None:
        self.order.move_to_end(block)

    def drop(self, block: int) -> None:
        del self.order[block]

    def victim(self) -> int:
        return next(iter(self.order))

    def evict(self) -> int:
        return self.order.popitem(last=False)[0]

    def __contains__(self, block: int) -> bool:
        return block in self.order

    def __len__(self) -> int:
        return len(self.order)


@EVICTION_POLICIES.register("fifo")
class FIFO(LRU):
    """First in, first out: evict the block admitted earliest; hits do not reorder."""

    name = "fifo"

    def hit(self, block: int, ref: int) -> None:
        pass


class _HeapPolicy(EvictionPolicy):
    """Evict the block with the smallest key; a lazy heap skips stale entries."""

    def __init__(self, next_use: NextUse | None = None) -> None:
        self.key: dict[int, tuple[float, int]] = {}
        self.heap: list[tuple[float, int, int]] = []
        self.members = self.key

    def _set(self, block: int, key: tuple[float, int]) -> None:
        self.key[block] = key
        heapq.heappush(self.heap, (key[0], key[1], block))
        if len(self.heap) > 4 * len(self.key) + 64:
            self.heap = [(k[0], k[1], b) for b, k in self.key.items()]
            heapq.heapify(self.heap)

    def drop(self, block: int) -> None:
        del self.key[block]

    def victim(self) -> int:
        heap, key = self.heap, self.key
        while True:
            k0, k1, block = heap[0]
            if key.get(block) == (k0, k1):
                return block
            heapq.heappop(heap)

    def __contains__(self, block: int) -> bool:
        return block in self.key

    def __len__(self) -> int:
        return len(self.key)


@EVICTION_POLICIES.register("lfu")
class LFU(_HeapPolicy):
    """Least frequently used: evict the block with the fewest accesses since admission;
    ties go to the least recently used."""

    name = "lfu"

    def admit(self, block: int, ref: int, priority: float = 0.0) -> None:
        self._set(block, (1.0, ref))

    def hit(self, block: int, ref: int) -> None:
        self._set(block, (self.key[block][0] + 1.0, ref))


@EVICTION_POLICIES.register("priority")
class Priority(_HeapPolicy):
    """Evict the block with the lowest priority score; ties go to the least recently used.

    Where the scores come from:

    * the TTL heuristic's priority (higher = keep longer) wherever it scores the tier's
      blocks: the archive tier always, the GPU and disk tiers with ``ttl.scope: all``. A
      heuristic that returns only a TTL scores every block 0, so the order is then LRU;
    * otherwise (GPU and disk tiers without ``ttl.scope: all``) a live reference count: the
      requests that referenced the block before it was admitted, plus one per hit while it
      is resident (``count_hits``, set by the cache), i.e. LFU with the block's history.
    """

    name = "priority"
    #: Add one to the score on each hit (set where no heuristic supplies the scores).
    count_hits = False

    def admit(self, block: int, ref: int, priority: float = 0.0) -> None:
        self._set(block, (float(priority), ref))

    def hit(self, block: int, ref: int) -> None:
        score = self.key[block][0]
        self._set(block, (score + 1.0 if self.count_hits else score, ref))


@EVICTION_POLICIES.register("belady")
class Belady(_HeapPolicy):
    """Offline optimum (Belady's MIN): evict the block whose next reference is farthest in
    the future. Needs the whole trace, so it is an upper bound, not a deployable policy."""

    name = "belady"

    def __init__(self, next_use: NextUse | None = None) -> None:
        super().__init__()
        if next_use is None:
            raise ValueError("belady needs the trace's next-use table")
        self.next_use = next_use

    def admit(self, block: int, ref: int, priority: float = 0.0) -> None:
        self._set(block, (-float(self.next_use.next_after(block, ref)), ref))

    def hit(self, block: int, ref: int) -> None:
        self._set(block, (-float(self.next_use.next_after(block, ref)), ref))


EVICTION_POLICIES.add("opt", Belady)


class CheckedPolicy(EvictionPolicy):
    """A user's plug-in policy, checked at every call: an exception it raises, or a victim
    that is not a resident block, is a :class:`ScenarioError` naming the scenario key,
    instead of a traceback or (worse) silently wrong tier sizes. Built-in policies are not
    wrapped."""

    def __init__(self, inner: EvictionPolicy, name: str, key: str) -> None:
        self.inner, self.plugin, self.key = inner, name, key
        for attr in ("admit", "hit", "drop", "victim", "__contains__", "__len__"):
            if not callable(getattr(inner, attr, None)):
                raise ScenarioError(f"{key}: {name!r} has no method {attr}() (an eviction policy "
                                    "implements simkv.core.policies.eviction.EvictionPolicy)")
        self.members = getattr(inner, "members", inner)

    def _call(self, method: str, *args: object) -> object:
        try:
            return getattr(self.inner, method)(*args)
        except SimkvError:
            raise
        except Exception as exc:
            raise ScenarioError(f"{self.key}: {self.plugin!r}.{method}() raised "
                                f"{describe(exc)}") from exc

    def admit(self, block: int, ref: int, priority: float = 0.0) -> None:
        self._call("admit", block, ref, priority)

    def hit(self, block: int, ref: int) -> None:
        self._call("hit", block, ref)

    def drop(self, block: int) -> None:
        self._call("drop", block)

    def victim(self) -> int:
        block = self._call("victim")
        if not isinstance(block, int | np.integer) or isinstance(block, bool) or block not in self.inner:
            raise ScenarioError(f"{self.key}: {self.plugin!r}.victim() returned {block!r:.80}, "
                                "not a resident block id")
        return int(block)

    def evict(self) -> int:
        block = self.victim()
        self.drop(block)
        if block in self.inner:
            raise ScenarioError(f"{self.key}: {self.plugin!r}.drop({block}) left the block "
                                "resident")
        return block

    def __contains__(self, block: int) -> bool:
        return bool(self._call("__contains__", block))

    def __len__(self) -> int:
        return int(self._call("__len__"))  # type: ignore[call-overload]


def make_policy(name: str, key: str, next_use: NextUse | None) -> EvictionPolicy:
    """The eviction policy ``name`` for the tier at scenario key ``key``; a plug-in
    (``module:Class``) is constructed as ``Class(next_use)`` and checked
    (:class:`CheckedPolicy`)."""
    cls = EVICTION_POLICIES.get(name, key=key)
    if not EVICTION_POLICIES.is_plugin(name):
        return cls(next_use)
    check_signature(cls, name, key, "Class(next_use)", 1)
    try:
        inner = cls(next_use)
    except SimkvError:
        raise
    except Exception as exc:
        raise ScenarioError(f"{key}: {name}(next_use) raised {describe(exc)}") from exc
    return CheckedPolicy(inner, name, key)
