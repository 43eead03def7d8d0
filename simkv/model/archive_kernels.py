"""The compiled archive tier: its deadline heap and the archive worker's steps.

An array heap of ``(deadline, block)`` pairs, ordered like Python tuples, holds the archive's
TTL deadlines as :meth:`~simkv.model.tiers.Tier.expire` keeps its ``heapq``; the archive's
object ledger (creation time and owner per block, billed object-seconds per request) is
arrays too. :func:`archive_expire`, :func:`archive_refresh`, :func:`archive_commit` and
:func:`archive_close` mirror :class:`~simkv.model.system.TieredCache`'s archive side and
:class:`~simkv.model.tiers.ObjectLedger` statement for statement.
"""

from __future__ import annotations

import numpy as np

from simkv.jit import njit
from simkv.model.tier_kernels import (
    ARCHIVE,
    S_EXPIRE,
    S_HEAP,
    S_SIZE,
    S_SLIDING,
    S_STORED,
    bill,
    hit,
    insert,
    meter,
    unlink,
)


@njit(cache=True, inline="always")
def _before(t1: float, b1: int, t2: float, b2: int) -> bool:
    return t1 < t2 or (t1 == t2 and b1 < b2)


@njit(cache=True)
def _heap_push(ht: np.ndarray, hb: np.ndarray, S: np.ndarray, t: float, b: int,
               resident: np.ndarray, deadline: np.ndarray) -> None:
    """Push ``(t, b)`` on the deadline heap (ordered like Python tuples); a full heap is
    first rebuilt from the live deadlines, which always fit."""
    n = S[S_HEAP]
    if n == ht.shape[0]:
        n = 0
        for x in range(resident.shape[1]):
            if resident[ARCHIVE, x]:
                ht[n] = deadline[x]
                hb[n] = x
                n += 1
        for i in range(n // 2 - 1, -1, -1):
            _sift_down(ht, hb, i, n)
    i = n
    ht[i] = t
    hb[i] = b
    while i > 0:
        parent = (i - 1) // 2
        if _before(ht[i], hb[i], ht[parent], hb[parent]):
            ht[i], ht[parent] = ht[parent], ht[i]
            hb[i], hb[parent] = hb[parent], hb[i]
            i = parent
        else:
            break
    S[S_HEAP] = n + 1


@njit(cache=True)
def _sift_down(ht: np.ndarray, hb: np.ndarray, i: int, n: int) -> None:
    while True:
        left = 2 * i + 1
        if left >= n:
            return
        child = left
        if left + 1 < n and _before(ht[left + 1], hb[left + 1], ht[left], hb[left]):
            child = left + 1
        if _before(ht[child], hb[child], ht[i], hb[i]):
            ht[i], ht[child] = ht[child], ht[i]
            hb[i], hb[child] = hb[child], hb[i]
            i = child
        else:
            return


@njit(cache=True)
def archive_expire(now: float, link: np.ndarray, resident: np.ndarray, deadline: np.ndarray,
                   ht: np.ndarray, hb: np.ndarray, obj_t: np.ndarray, obj_owner: np.ndarray,
                   billed: np.ndarray, S: np.ndarray, X: np.ndarray) -> None:
    """Tier.expire for the archive: remove entries whose deadline is ``<= now``, at it;
    an extended deadline is re-pushed when its earlier entry surfaces."""
    while S[S_HEAP] > 0 and ht[0] <= now:
        t = ht[0]
        b = hb[0]
        n = S[S_HEAP] - 1
        ht[0] = ht[n]
        hb[0] = hb[n]
        S[S_HEAP] = n
        _sift_down(ht, hb, 0, n)
        if not resident[ARCHIVE, b]:
            continue
        current = deadline[b]
        if current < t:
            continue
        if current > t:
            _heap_push(ht, hb, S, current, b, resident, deadline)
            continue
        unlink(link, ARCHIVE, b)
        resident[ARCHIVE, b] = False
        S[S_SIZE + ARCHIVE] -= 1
        meter(S, X, ARCHIVE, t, -S[S_STORED + ARCHIVE])
        S[S_EXPIRE] += 1
        bill(b, t, obj_t, obj_owner, billed, X)


@njit(cache=True)
def _set_deadline(b: int, d: float, had: bool, resident: np.ndarray, deadline: np.ndarray,
                  ht: np.ndarray, hb: np.ndarray, S: np.ndarray) -> None:
    """Tier.set_deadline: push only when there was none or it moves earlier."""
    old = deadline[b]
    deadline[b] = d
    if not had or d < old:
        _heap_push(ht, hb, S, d, b, resident, deadline)


@njit(cache=True)
def archive_refresh(blocks: np.ndarray, deadlines: np.ndarray, owners: np.ndarray, now: float,
                    link: np.ndarray, resident: np.ndarray, deadline: np.ndarray, ht: np.ndarray,
                    hb: np.ndarray, obj_t: np.ndarray, obj_owner: np.ndarray, billed: np.ndarray,
                    S: np.ndarray, X: np.ndarray) -> None:
    """Slide the deadlines of live archive objects, and count the access for their order;
    each refresh overwrites the object with a new one charged to its owner."""
    sentinel = resident.shape[1]
    for j in range(blocks.shape[0]):
        b = blocks[j]
        _set_deadline(b, deadlines[j], True, resident, deadline, ht, hb, S)
        hit(link, S, ARCHIVE, b, sentinel)
        bill(b, now, obj_t, obj_owner, billed, X)
        obj_t[b] = now
        obj_owner[b] = owners[j]


@njit(cache=True)
def archive_commit(blocks: np.ndarray, deadlines: np.ndarray, owners: np.ndarray, now: float,
                   link: np.ndarray, resident: np.ndarray, deadline: np.ndarray, ht: np.ndarray,
                   hb: np.ndarray, obj_t: np.ndarray, obj_owner: np.ndarray, billed: np.ndarray,
                   S: np.ndarray, X: np.ndarray) -> None:
    """Tier.insert into the archive for each upload, with its deadline; each upload is a new
    object charged to its owner, and an evicted object is billed."""
    sentinel = resident.shape[1]
    for j in range(blocks.shape[0]):
        b = blocks[j]
        if resident[ARCHIVE, b]:
            hit(link, S, ARCHIVE, b, sentinel)
            if S[S_SLIDING]:
                _set_deadline(b, deadlines[j], True, resident, deadline, ht, hb, S)
            bill(b, now, obj_t, obj_owner, billed, X)
            obj_t[b] = now
            obj_owner[b] = owners[j]
            continue
        victim = insert(link, resident, S, X, ARCHIVE, b, now, sentinel)
        if victim >= 0:
            bill(victim, now, obj_t, obj_owner, billed, X)
        if victim != -2:
            _set_deadline(b, deadlines[j], False, resident, deadline, ht, hb, S)
            obj_t[b] = now
            obj_owner[b] = owners[j]


@njit(cache=True)
def archive_close(now: float, resident: np.ndarray, deadline: np.ndarray, obj_t: np.ndarray,
                  obj_owner: np.ndarray, billed: np.ndarray, X: np.ndarray) -> None:
    """ObjectLedger.close_all: the end of the run bills every live object, in block order,
    until its deadline if that is finite and later than ``now``, else until ``now``."""
    for b in range(resident.shape[1]):
        if resident[ARCHIVE, b]:
            d = deadline[b]
            bill(b, d if now < d and d < np.inf else now, obj_t, obj_owner, billed, X)
