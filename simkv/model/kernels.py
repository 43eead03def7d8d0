"""Compiled request steps for :class:`~simkv.model.compiled.CompiledTieredCache`.

The GPU, CPU, disk and archive tiers as arrays (:mod:`simkv.model.tier_kernels`: an intrusive
doubly linked list per tier gives LRU or FIFO order; :mod:`simkv.model.archive_kernels`: an
array heap holds the archive's deadlines), stepped by two numba functions per request:
:func:`begin` (the tier walk and the load decision) and :func:`finish` (stores, write policy,
and the policy state's access history), and by the archive worker's
:func:`~simkv.model.archive_kernels.archive_refresh` and
:func:`~simkv.model.archive_kernels.archive_commit`. They mirror
:class:`~simkv.model.system.TieredCache` statement for statement, floating-point operations
in the same order, so both give the same results bit for bit; a property test holds them to it.
"""

from __future__ import annotations

import numpy as np

from simkv.jit import njit
from simkv.model.access_kernel import record_access
from simkv.model.archive_kernels import archive_expire
from simkv.model.tier_kernels import (
    ARCHIVE,
    CPU,
    DISK,
    GPU,
    N_TIERS,
    S_BLOCK_SIZE,
    S_COUNT,
    S_CPU_WRITES,
    S_DISK_WRITES,
    S_FOUND,
    S_HAS_ARCHIVE,
    S_HAS_CPU,
    S_HAS_DISK,
    S_HYDRATE,
    S_IF_FASTER,
    S_K,
    S_OFFLOAD,
    S_OFFLOAD_POLICY,
    S_WRITE_THROUGH,
    S_ZERO_TIME,
    X_ARCH_LAT,
    X_ARCH_READ,
    X_ATTN,
    X_CONST,
    X_CPU_FREE,
    X_CPU_LAT,
    X_CPU_READ,
    X_CPU_WRITE,
    X_DISK_FREE,
    X_DISK_LAG,
    X_DISK_LAT,
    X_DISK_READ,
    X_DISK_WRITE,
    X_LOAD,
    X_PER_TOKEN,
    X_PREFILL,
    hit,
    insert,
    meter,
)


@njit(cache=True)
def _write_cpu(link: np.ndarray, resident: np.ndarray, ready: np.ndarray, S: np.ndarray,
               X: np.ndarray, b: int, now: float, sentinel: int) -> int:
    """TieredCache._write_cpu: a copy queued behind earlier ones; returns the CPU tier's
    victim (-1 if none, -2 if nothing was admitted)."""
    if resident[CPU, b]:
        hit(link, S, CPU, b, sentinel)
        return -1
    if S[S_ZERO_TIME]:
        ready_at = now
    else:
        start = max(now, X[X_CPU_FREE])
        ready_at = start + X[X_CPU_WRITE]
        X[X_CPU_FREE] = ready_at
    S[S_CPU_WRITES] += 1
    victim = insert(link, resident, S, X, CPU, b, now, sentinel)
    if victim != -2:
        ready[CPU, b] = ready_at if ready_at > now else 0.0
    return victim


@njit(cache=True)
def _write_disk(link: np.ndarray, resident: np.ndarray, ready: np.ndarray, S: np.ndarray,
                X: np.ndarray, b: int, now: float, sentinel: int) -> None:
    """TieredCache._write_disk: an asynchronous write queued behind earlier ones."""
    if resident[DISK, b]:
        hit(link, S, DISK, b, sentinel)
        return
    if S[S_ZERO_TIME]:
        ready_at = now
    else:
        start = max(now, X[X_DISK_FREE])
        ready_at = start + X[X_DISK_WRITE]
        X[X_DISK_FREE] = ready_at
        if ready_at - now > X[X_DISK_LAG]:
            X[X_DISK_LAG] = ready_at - now
    if insert(link, resident, S, X, DISK, b, now, sentinel) != -2:
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
        hit(link, S, s, ids[j], sentinel)
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
        victim = insert(link, resident, S, X, GPU, b, now, sentinel)
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
        meter(S, X, tier, now, 0)
