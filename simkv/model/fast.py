"""Compiled kernels for the configurations that need no event loop.

:func:`lru_prefix_hits` replays a trace through one LRU tier with no time and no TTL: the
LMCache-parity configuration. Per request it counts the hit prefix against the cache as it
was when the request arrived, then touches the hit blocks and inserts the others in prompt
order, exactly the operation order of the event-driven model (and of LMCache's simulator)
in that configuration; a test holds the two to equal results on random traces.
"""

from __future__ import annotations

import numpy as np

from simkv.jit import njit


@njit(cache=True)
def _lru_prefix_hits(ids: np.ndarray, offsets: np.ndarray, capacity: int,
                     n_unique: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n_req = offsets.shape[0] - 1
    sentinel = n_unique
    prev = np.empty(n_unique + 1, np.int64)
    nxt = np.empty(n_unique + 1, np.int64)
    prev[sentinel] = sentinel  # prev of the sentinel = MRU end
    nxt[sentinel] = sentinel   # next of the sentinel = LRU end
    resident = np.zeros(n_unique, np.bool_)
    hits = np.zeros(n_req, np.int64)
    sizes = np.zeros(n_req, np.int64)
    inserted = np.zeros(n_req, np.int64)
    size = 0
    evictions = 0
    for r in range(n_req):
        lo = offsets[r]
        hi = offsets[r + 1]
        h = 0
        for j in range(lo, hi):
            if resident[ids[j]]:
                h += 1
            else:
                break
        hits[r] = h
        for j in range(lo, hi):
            b = ids[j]
            if resident[b]:
                # unlink, then relink at the MRU end
                p = prev[b]
                q = nxt[b]
                nxt[p] = q
                prev[q] = p
            else:
                if capacity <= 0:
                    continue
                if size >= capacity:
                    v = nxt[sentinel]
                    p = prev[v]
                    q = nxt[v]
                    nxt[p] = q
                    prev[q] = p
                    resident[v] = False
                    size -= 1
                    evictions += 1
                resident[b] = True
                size += 1
                inserted[r] += 1
            last = prev[sentinel]
            nxt[last] = b
            prev[b] = last
            nxt[b] = sentinel
            prev[sentinel] = b
        sizes[r] = size
    return hits, sizes, inserted, evictions


def lru_prefix_hits(ids: np.ndarray, offsets: np.ndarray, capacity: int,
                    n_unique: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per request: hit-prefix blocks, resident blocks after it, blocks it inserted;
    and the total evictions."""
    return _lru_prefix_hits(np.ascontiguousarray(ids),
                            np.ascontiguousarray(offsets, dtype=np.int64),
                            int(capacity), int(n_unique))
