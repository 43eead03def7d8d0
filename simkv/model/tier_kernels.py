"""The array layout and tier primitives of the compiled engine's kernels.

Each tier is a set of arrays: an intrusive doubly linked list per tier (``link[tier, 0|1, b]``,
the previous and next block; the sentinel ``n`` closes the ring) gives LRU or FIFO order,
``resident[tier, b]`` says what it holds, and the scalars of every tier and of the run live in
two vectors, ``S`` (int64) and ``X`` (float64), at the offsets below. The primitives mirror
:class:`~simkv.model.tiers.Tier` and :class:`~simkv.model.tiers.StorageMeter` statement for
statement (:mod:`simkv.model.kernels` and :mod:`simkv.model.archive_kernels` build on them).
"""

from __future__ import annotations

import numpy as np

from simkv.core.scenario.tiers import ARCHIVE, CPU, DISK, GPU, TIER_NAMES
from simkv.jit import njit

# The tier numbers of TIER_NAMES; every tier has its slots below, laid out from their count, but
# the kernels model the GPU, CPU, disk and archive: the compiled engine refuses a scenario that
# enables another tier (CompiledTieredCache.unsupported).
N_TIERS = len(TIER_NAMES)
KERNEL_TIERS = (GPU, CPU, DISK, ARCHIVE)

# int64 scalars S[...]; per-tier entries at S_... + tier
S_SIZE, S_CAP, S_EVICT, S_INSERT, S_BYTES, S_PEAK, S_FIFO, S_STORED, S_COUNT = range(0, 9 * N_TIERS, N_TIERS)
(S_HYDRATE, S_OFFLOAD, S_DISK_WRITES, S_WRITE_THROUGH, S_OFFLOAD_POLICY, S_ZERO_TIME, S_IF_FASTER,
 S_HAS_DISK, S_BLOCK_SIZE, S_K, S_FOUND, S_HAS_ARCHIVE, S_HEAP, S_EXPIRE, S_SLIDING, S_HAS_CPU,
 S_CPU_WRITES, S_LEN) = range(9 * N_TIERS, 9 * N_TIERS + 18)   # S_COUNT + tier: blocks per source tier

# float64 scalars X[...]; per tier: meter time, byte-seconds
X_MT, X_BS = 0, N_TIERS
(X_DISK_FREE, X_DISK_LAT, X_DISK_READ, X_DISK_WRITE, X_ARCH_LAT, X_ARCH_READ, X_CONST, X_PER_TOKEN,
 X_ATTN, X_LOAD, X_PREFILL,
 X_MIN_S,      # the archive's minimum billed object lifetime
 X_DISK_LAG,   # TieredCache.write_lag_max[DISK]
 X_CPU_FREE, X_CPU_LAT, X_CPU_READ, X_CPU_WRITE, X_LEN) = range(2 * N_TIERS, 2 * N_TIERS + 18)


@njit(cache=True, inline="always")
def meter(S: np.ndarray, X: np.ndarray, tier: int, t: float, delta: int) -> None:
    """StorageMeter.change: ``byte_seconds += bytes * (t - last_t)`` then apply ``delta``."""
    X[X_BS + tier] += S[S_BYTES + tier] * (t - X[X_MT + tier])
    X[X_MT + tier] = t
    S[S_BYTES + tier] += delta
    if S[S_BYTES + tier] > S[S_PEAK + tier]:
        S[S_PEAK + tier] = S[S_BYTES + tier]


@njit(cache=True, inline="always")
def bill(b: int, t: float, obj_t: np.ndarray, obj_owner: np.ndarray, billed: np.ndarray,
          X: np.ndarray) -> None:
    """ObjectLedger.close: archive object ``b`` is gone at ``t``; its owner pays
    ``max(lifetime, min_s)`` object-seconds."""
    life = t - obj_t[b]
    m = X[X_MIN_S]
    billed[obj_owner[b]] += life if life > m else m


@njit(cache=True, inline="always")
def unlink(link: np.ndarray, tier: int, b: int) -> None:
    p = link[tier, 0, b]
    q = link[tier, 1, b]
    link[tier, 1, p] = q
    link[tier, 0, q] = p


@njit(cache=True, inline="always")
def push_mru(link: np.ndarray, tier: int, b: int, sentinel: int) -> None:
    last = link[tier, 0, sentinel]
    link[tier, 1, last] = b
    link[tier, 0, b] = last
    link[tier, 1, b] = sentinel
    link[tier, 0, sentinel] = b


@njit(cache=True, inline="always")
def hit(link: np.ndarray, S: np.ndarray, tier: int, b: int, sentinel: int) -> None:
    if S[S_FIFO + tier] == 0:
        unlink(link, tier, b)
        push_mru(link, tier, b, sentinel)


@njit(cache=True)
def insert(link: np.ndarray, resident: np.ndarray, S: np.ndarray, X: np.ndarray, tier: int,
            b: int, now: float, sentinel: int) -> int:
    """Tier.insert: returns the evicted block, -1 if none, -2 if nothing was admitted."""
    if resident[tier, b]:
        hit(link, S, tier, b, sentinel)
        return -1
    cap = S[S_CAP + tier]
    victim = -1
    n_evicted = 0
    if cap >= 0:
        if cap == 0:
            return -2
        if S[S_SIZE + tier] >= cap:
            victim = link[tier, 1, sentinel]
            unlink(link, tier, victim)
            resident[tier, victim] = False
            S[S_SIZE + tier] -= 1
            n_evicted = 1
        S[S_EVICT + tier] += n_evicted
    push_mru(link, tier, b, sentinel)
    resident[tier, b] = True
    S[S_SIZE + tier] += 1
    S[S_INSERT + tier] += 1
    if n_evicted != 1:
        meter(S, X, tier, now, (1 - n_evicted) * S[S_STORED + tier])
    return victim
