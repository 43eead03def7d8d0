"""Compiled request steps for :class:`~simkv.model.compiled.CompiledTieredCache`.

The GPU, CPU, disk and archive tiers as arrays (an intrusive doubly linked list per tier gives
LRU or FIFO order; an array heap holds the archive's deadlines), stepped by two numba
functions per request: :func:`begin` (the tier walk and the load decision) and
:func:`finish` (stores, write policy, and the policy state's access history), and by the
archive worker's :func:`archive_refresh` and :func:`archive_commit`. They mirror
:class:`~simkv.model.system.TieredCache` statement for statement, floating-point operations
in the same order, so both give the same results bit for bit; a property test holds them to it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from simkv.model.access_kernel import record_access

# The tier numbers of simkv.model.system.TIER_NAMES (a test holds them equal).
GPU, CPU, DISK, ARCHIVE = 0, 1, 2, 3
N_TIERS = 4

# int64 scalars S[...]; per-tier entries at +GPU / +CPU / +DISK / +ARCHIVE
S_SIZE, S_CAP, S_EVICT, S_INSERT, S_BYTES, S_PEAK, S_FIFO, S_STORED = 0, 4, 8, 12, 16, 20, 24, 28
S_COUNT = 32  # S_COUNT + tier: blocks per source tier
S_HYDRATE, S_OFFLOAD, S_DISK_WRITES = 36, 37, 38
S_WRITE_THROUGH, S_OFFLOAD_POLICY, S_ZERO_TIME, S_IF_FASTER, S_HAS_DISK = 39, 40, 41, 42, 43
S_BLOCK_SIZE = 46
S_K, S_FOUND = 47, 48
S_HAS_ARCHIVE, S_HEAP, S_EXPIRE, S_SLIDING = 49, 50, 51, 52
S_HAS_CPU, S_CPU_WRITES = 53, 54
S_LEN = 56

# float64 scalars X[...]
X_MT, X_BS = 0, 4  # meter time, byte-seconds, per tier
X_DISK_FREE, X_DISK_LAT, X_DISK_READ, X_DISK_WRITE = 8, 9, 10, 11
X_ARCH_LAT, X_ARCH_READ = 12, 13
X_CONST, X_PER_TOKEN, X_ATTN = 14, 15, 16
X_LOAD, X_PREFILL = 17, 18
X_MIN_S = 19  # the archive's minimum billed object lifetime
X_DISK_LAG = 20  # TieredCache.disk_write_lag_max
X_CPU_FREE, X_CPU_LAT, X_CPU_READ, X_CPU_WRITE = 21, 22, 23, 24
X_LEN = 28


@njit(cache=True, inline="always")
def _meter(S: np.ndarray, X: np.ndarray, tier: int, t: float, delta: int) -> None:
    """StorageMeter.change: ``byte_seconds += bytes * (t - last_t)`` then apply ``delta``."""
    X[X_BS + tier] += S[S_BYTES + tier] * (t - X[X_MT + tier])
    X[X_MT + tier] = t
    S[S_BYTES + tier] += delta
    if S[S_BYTES + tier] > S[S_PEAK + tier]:
        S[S_PEAK + tier] = S[S_BYTES + tier]


@njit(cache=True, inline="always")
def _bill(b: int, t: float, obj_t: np.ndarray, obj_owner: np.ndarray, billed: np.ndarray,
          X: np.ndarray) -> None:
    """ObjectLedger.close: archive object ``b`` is gone at ``t``; its owner pays
    ``max(lifetime, min_s)`` object-seconds."""
    life = t - obj_t[b]
    m = X[X_MIN_S]
    billed[obj_owner[b]] += life if life > m else m


@njit(cache=True, inline="always")
def _unlink(link: np.ndarray, tier: int, b: int) -> None:
    p = link[tier, 0, b]
    q = link[tier, 1, b]
    link[tier, 1, p] = q
    link[tier, 0, q] = p


@njit(cache=True, inline="always")
def _push_mru(link: np.ndarray, tier: int, b: int, sentinel: int) -> None:
    last = link[tier, 0, sentinel]
    link[tier, 1, last] = b
    link[tier, 0, b] = last
    link[tier, 1, b] = sentinel
    link[tier, 0, sentinel] = b


@njit(cache=True, inline="always")
def _hit(link: np.ndarray, S: np.ndarray, tier: int, b: int, sentinel: int) -> None:
    if S[S_FIFO + tier] == 0:
        _unlink(link, tier, b)
        _push_mru(link, tier, b, sentinel)


@njit(cache=True)
def _insert(link: np.ndarray, resident: np.ndarray, S: np.ndarray, X: np.ndarray, tier: int,
            b: int, now: float, sentinel: int) -> int:
    """Tier.insert: returns the evicted block, -1 if none, -2 if nothing was admitted."""
    if resident[tier, b]:
        _hit(link, S, tier, b, sentinel)
        return -1
    cap = S[S_CAP + tier]
    victim = -1
    n_evicted = 0
    if cap >= 0:
        if cap == 0:
            return -2
        if S[S_SIZE + tier] >= cap:
            victim = link[tier, 1, sentinel]
            _unlink(link, tier, victim)
            resident[tier, victim] = False
            S[S_SIZE + tier] -= 1
            n_evicted = 1
        S[S_EVICT + tier] += n_evicted
    _push_mru(link, tier, b, sentinel)
    resident[tier, b] = True
    S[S_SIZE + tier] += 1
    S[S_INSERT + tier] += 1
    if n_evicted != 1:
        _meter(S, X, tier, now, (1 - n_evicted) * S[S_STORED + tier])
    return victim


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
        _unlink(link, ARCHIVE, b)
        resident[ARCHIVE, b] = False
        S[S_SIZE + ARCHIVE] -= 1
        _meter(S, X, ARCHIVE, t, -S[S_STORED + ARCHIVE])
        S[S_EXPIRE] += 1
        _bill(b, t, obj_t, obj_owner, billed, X)


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
        _hit(link, S, ARCHIVE, b, sentinel)
        _bill(b, now, obj_t, obj_owner, billed, X)
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
            _hit(link, S, ARCHIVE, b, sentinel)
            if S[S_SLIDING]:
                _set_deadline(b, deadlines[j], True, resident, deadline, ht, hb, S)
            _bill(b, now, obj_t, obj_owner, billed, X)
            obj_t[b] = now
            obj_owner[b] = owners[j]
            continue
        victim = _insert(link, resident, S, X, ARCHIVE, b, now, sentinel)
        if victim >= 0:
            _bill(victim, now, obj_t, obj_owner, billed, X)
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
            _bill(b, d if now < d and d < np.inf else now, obj_t, obj_owner, billed, X)


@njit(cache=True)
def _write_cpu(link: np.ndarray, resident: np.ndarray, ready: np.ndarray, S: np.ndarray,
               X: np.ndarray, b: int, now: float, sentinel: int) -> int:
    """TieredCache._write_cpu: a copy queued behind earlier ones; returns the CPU tier's
    victim (-1 if none, -2 if nothing was admitted)."""
    if resident[CPU, b]:
        _hit(link, S, CPU, b, sentinel)
        return -1
    if S[S_ZERO_TIME]:
        ready_at = now
    else:
        start = max(now, X[X_CPU_FREE])
        ready_at = start + X[X_CPU_WRITE]
        X[X_CPU_FREE] = ready_at
    S[S_CPU_WRITES] += 1
    victim = _insert(link, resident, S, X, CPU, b, now, sentinel)
    if victim != -2:
        ready[CPU, b] = ready_at if ready_at > now else 0.0
    return victim


@njit(cache=True)
def _write_disk(link: np.ndarray, resident: np.ndarray, ready: np.ndarray, S: np.ndarray,
                X: np.ndarray, b: int, now: float, sentinel: int) -> None:
    """TieredCache._write_disk: an asynchronous write queued behind earlier ones."""
    if resident[DISK, b]:
        _hit(link, S, DISK, b, sentinel)
        return
    if S[S_ZERO_TIME]:
        ready_at = now
    else:
        start = max(now, X[X_DISK_FREE])
        ready_at = start + X[X_DISK_WRITE]
        X[X_DISK_FREE] = ready_at
        if ready_at - now > X[X_DISK_LAG]:
            X[X_DISK_LAG] = ready_at - now
    if _insert(link, resident, S, X, DISK, b, now, sentinel) != -2:
        ready[DISK, b] = ready_at if ready_at > now else 0.0
    S[S_DISK_WRITES] += 1


@njit(cache=True)
def _prefill(X: np.ndarray, S: np.ndarray, new: int, cached: int) -> float:
    """AnalyticProfile.prefill_s (the compiled engine runs the analytic profile only)."""
    if S[S_ZERO_TIME]:
        return 0.0
    n = max(new, 1)
    return X[X_CONST] + X[X_PER_TOKEN] * n + X[X_ATTN] * n * (n + cached)


@njit(cache=True)
def begin(r: int, now: float, ids: np.ndarray, offsets: np.ndarray, tokens: np.ndarray,
          link: np.ndarray, resident: np.ndarray, ready: np.ndarray, src: np.ndarray,
          deadline: np.ndarray, ht: np.ndarray, hb: np.ndarray, obj_t: np.ndarray,
          obj_owner: np.ndarray, billed: np.ndarray, S: np.ndarray, X: np.ndarray) -> None:
    """TieredCache.begin: walk the prefix, choose the cut, touch the hit blocks."""
    sentinel = resident.shape[1]
    if S[S_HAS_ARCHIVE]:
        archive_expire(now, link, resident, deadline, ht, hb, obj_t, obj_owner, billed, S, X)
    lo = offsets[r]
    hi = offsets[r + 1]
    has_cpu = S[S_HAS_CPU] != 0
    has_disk = S[S_HAS_DISK] != 0
    found = 0
    for j in range(lo, hi):
        b = ids[j]
        if resident[GPU, b]:
            src[j] = GPU
        elif has_cpu and resident[CPU, b] and ready[CPU, b] <= now:
            src[j] = CPU
        elif has_disk and resident[DISK, b] and ready[DISK, b] <= now:
            src[j] = DISK
        elif resident[ARCHIVE, b]:
            src[j] = ARCHIVE
        else:
            break
        found += 1
    n_tokens = tokens[r]
    B = S[S_BLOCK_SIZE]
    if S[S_ZERO_TIME]:
        k = found
        load_s = 0.0
        prefill_s = 0.0
    elif S[S_IF_FASTER]:
        best_k = 0
        best_load = 0.0
        best_prefill = _prefill(X, S, n_tokens, 0)
        best = best_prefill
        load = 0.0
        seen_cpu = False
        seen_disk = False
        seen_arch = False
        for k1 in range(1, found + 1):
            s = src[lo + k1 - 1]
            if s == CPU:
                load += X[X_CPU_READ] + (0.0 if seen_cpu else X[X_CPU_LAT])
                seen_cpu = True
            elif s == DISK:
                load += X[X_DISK_READ] + (0.0 if seen_disk else X[X_DISK_LAT])
                seen_disk = True
            elif s == ARCHIVE:
                load += X[X_ARCH_READ] + (0.0 if seen_arch else X[X_ARCH_LAT])
                seen_arch = True
            prefill = _prefill(X, S, n_tokens - k1 * B, k1 * B)
            if load + prefill <= best:
                best = load + prefill
                best_k = k1
                best_load = load
                best_prefill = prefill
        k = best_k
        load_s = best_load
        prefill_s = best_prefill
    else:
        k = found
        n_cpu = 0
        n_disk = 0
        n_arch = 0
        for j in range(lo, lo + found):
            if src[j] == CPU:
                n_cpu += 1
            elif src[j] == DISK:
                n_disk += 1
            elif src[j] == ARCHIVE:
                n_arch += 1
        load_s = 0.0
        if n_cpu:
            load_s += X[X_CPU_LAT] + n_cpu * X[X_CPU_READ]
        if n_disk:
            load_s += X[X_DISK_LAT] + n_disk * X[X_DISK_READ]
        if n_arch:
            load_s += X[X_ARCH_LAT] + n_arch * X[X_ARCH_READ]
        prefill_s = _prefill(X, S, n_tokens - k * B, k * B)
    for t in range(N_TIERS):
        S[S_COUNT + t] = 0
    for j in range(lo, lo + k):
        s = src[j]
        S[S_COUNT + s] += 1
        _hit(link, S, s, ids[j], sentinel)
    S[S_K] = k
    S[S_FOUND] = found
    X[X_LOAD] = load_s
    X[X_PREFILL] = prefill_s


@njit(cache=True)
def finish(r: int, k: int, now: float, ids: np.ndarray, offsets: np.ndarray, req_class: np.ndarray,
           link: np.ndarray, resident: np.ndarray, ready: np.ndarray, src: np.ndarray,
           refs: np.ndarray, first_class: np.ndarray, reuse: np.ndarray, pend: np.ndarray,
           pc: np.ndarray, deadline: np.ndarray, ht: np.ndarray, hb: np.ndarray, obj_t: np.ndarray,
           obj_owner: np.ndarray, billed: np.ndarray, S: np.ndarray, X: np.ndarray) -> None:
    """TieredCache.finish: store the blocks, apply the write policy, record the access."""
    sentinel = resident.shape[1]
    if S[S_HAS_ARCHIVE]:
        archive_expire(now, link, resident, deadline, ht, hb, obj_t, obj_owner, billed, S, X)
    lo = offsets[r]
    hi = offsets[r + 1]
    has_cpu = S[S_HAS_CPU] != 0
    has_disk = S[S_HAS_DISK] != 0
    lower = has_cpu or has_disk
    offload = lower and S[S_OFFLOAD_POLICY] != 0
    write = lower and S[S_WRITE_THROUGH] != 0
    for j in range(lo, hi):
        b = ids[j]
        if j - lo < k:
            s = src[j]
            if s == GPU and resident[GPU, b]:
                continue
        else:
            s = -1
        victim = _insert(link, resident, S, X, GPU, b, now, sentinel)
        if s == ARCHIVE:
            S[S_HYDRATE] += 1
        if offload and victim >= 0:
            if not has_cpu:
                _write_disk(link, resident, ready, S, X, victim, now, sentinel)
            else:
                w = _write_cpu(link, resident, ready, S, X, victim, now, sentinel)
                if w >= 0 and has_disk:  # the CPU's victim goes down to disk
                    _write_disk(link, resident, ready, S, X, w, now, sentinel)
                    S[S_OFFLOAD] += 1
            S[S_OFFLOAD] += 1
        elif write:
            if has_cpu and s != CPU:
                _write_cpu(link, resident, ready, S, X, b, now, sentinel)
            if has_disk and s != DISK:
                _write_disk(link, resident, ready, S, X, b, now, sentinel)
    record_access(ids[lo:hi], r, req_class[r], refs, first_class, reuse, pend, pc)


@njit(cache=True)
def close_meters(S: np.ndarray, X: np.ndarray, now: float) -> None:
    for tier in range(N_TIERS):
        _meter(S, X, tier, now, 0)
