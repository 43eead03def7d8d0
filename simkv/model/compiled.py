"""The tiered cache with its GPU, CPU and disk tiers compiled (the ``compiled`` engine).

Same interface and same results as :class:`~simkv.model.system.TieredCache`, which stays
the reference implementation; this one keeps the GPU, CPU and disk tiers as arrays stepped by
the numba functions of :mod:`simkv.model.kernels`, so the per-block work of a request costs
nanoseconds instead of microseconds. The archive worker's choices and the TTL heuristics
stay in Python (the shared :class:`~simkv.core.policies.state.PolicyState` decides once per
archive pass; the kernel records its access history in place); the archive tier's state is
compiled too.

It covers the common configurations: LRU or FIFO on every tier, a TTL that governs the
archive only, and the ``analytic`` hardware profile (its three prefill constants go to the
kernels; a ``table`` profile's grid does not). Everything else runs on the reference
implementation.
"""

from __future__ import annotations

import numpy as np

from simkv.core.profiles import AnalyticProfile
from simkv.core.scenario import Scenario
from simkv.core.tiers import ARCHIVE, CPU, DISK, GPU, TIER_NAMES
from simkv.model import archive_kernels as A
from simkv.model import kernels as K
from simkv.model import tier_kernels as T
from simkv.model.cache_base import CacheBase, Plan, Uploads
from simkv.model.tiers import TierStats
from simkv.traces.schema import Trace

_ORDERED = ("lru", "fifo")


class CompiledTieredCache(CacheBase):
    """:class:`~simkv.model.system.TieredCache` with compiled tiers: the kernels' arrays are its
    only tier state (no Python :class:`~simkv.model.tiers.Tier` is built)."""

    @staticmethod
    def unsupported(sc: Scenario) -> str | None:
        """Why the compiled tiers cannot run ``sc`` (``None``: they can)."""
        for name in TIER_NAMES:
            tier = getattr(sc.tiers, name)
            if (name == "gpu" or tier.enabled) and tier.eviction not in _ORDERED:
                return f"tiers.{name}.eviction is {tier.eviction!r} (compiled needs lru or fifo)"
        if sc.ttl.heuristic != "none" and sc.ttl.scope != "archive":
            return f"ttl.scope is {sc.ttl.scope!r} (compiled needs a TTL on the archive only)"
        if sc.hardware.profile is not None:
            return "hardware.profile is a table profile (compiled needs the analytic profile)"
        for t, (name, on) in enumerate(zip(TIER_NAMES, sc.tiers.present(), strict=True)):
            if on and t not in T.KERNEL_TIERS:
                return f"tiers.{name} is enabled (compiled has no {name} tier)"
        for t, (spec, on) in enumerate(zip(sc.tiers.specs(), sc.tiers.present(), strict=True)):
            if on and t != ARCHIVE and (spec.key_ttl_s() is not None or spec.rewrites or spec.bill):
                return (f"tiers.{TIER_NAMES[t]} has its own key TTL, rewrites or bill "
                        "(compiled models none of them below the archive)")
        return None

    def __init__(self, scenario: Scenario, trace: Trace) -> None:
        super().__init__(scenario, trace)
        reason = self.unsupported(scenario)
        if reason is not None:
            raise ValueError(f"the compiled tiers cannot run this scenario: {reason}")
        n = trace.n_unique_blocks
        self._ids = np.ascontiguousarray(trace.block_ids_flat)
        self._offsets = np.ascontiguousarray(trace.block_offsets, dtype=np.int64)
        self._tokens = np.ascontiguousarray(trace.input_tokens, dtype=np.int64)
        # Linked lists up to the slowest tier in use (a disabled tier's list stays unused).
        tiers = 1 + max(i for i, present in enumerate(self.present) if present)
        self._link = np.zeros((tiers, 2, n + 1), np.int32)
        self._link[:, :, n] = n  # each tier's list starts empty: the sentinel points to itself
        self._resident = np.zeros((len(TIER_NAMES), n), np.bool_)
        archive = self.present[ARCHIVE]
        heap = n + 1024 if archive else 1
        self._deadline = np.zeros(n if archive else 1, np.float64)
        self._heap_t = np.zeros(heap, np.float64)
        self._heap_b = np.zeros(heap, np.int32)
        # Per block: when its CPU copy (row CPU) and disk write (row DISK) are readable.
        self._ready = np.zeros((DISK + 1, n if self.present[CPU] or self.present[DISK] else 1), np.float64)
        self._src = np.zeros(len(self._ids), np.int8)
        # The archive's object ledger: creation time and owner per block, billed s per request.
        self._obj_t = np.zeros(n if archive else 1, np.float64)
        self._obj_owner = np.zeros(n if archive else 1, np.int64)
        self._billed = np.zeros(max(len(trace), 1), np.float64)

        sc = scenario
        S = self._S = np.zeros(T.S_LEN, np.int64)
        X = self._X = np.zeros(T.X_LEN, np.float64)
        for tier, name in enumerate(TIER_NAMES):
            present, cap = self.present[tier], self.capacity[tier]
            S[T.S_CAP + tier] = 0 if not present else -1 if cap is None else cap
            S[T.S_FIFO + tier] = getattr(sc.tiers, name).eviction == "fifo"
            S[T.S_STORED + tier] = self.stored_bytes[tier] if present else 0
        S[T.S_HAS_CPU] = self.present[CPU]
        S[T.S_HAS_DISK] = self.present[DISK]
        S[T.S_HAS_ARCHIVE] = archive
        S[T.S_SLIDING] = self.sliding
        S[T.S_WRITE_THROUGH] = self.write_through
        S[T.S_OFFLOAD_POLICY] = not self.write_through
        S[T.S_ZERO_TIME] = self.zero_time
        S[T.S_IF_FASTER] = self.if_faster
        S[T.S_BLOCK_SIZE] = self.block_size
        hw = self.hw
        assert isinstance(hw, AnalyticProfile)
        lat, read, write = self._lat, self._read_s, self._write_s
        X[T.X_CPU_LAT], X[T.X_DISK_LAT], X[T.X_ARCH_LAT] = lat[CPU], lat[DISK], lat[ARCHIVE]
        X[T.X_CPU_READ], X[T.X_DISK_READ], X[T.X_ARCH_READ] = read[CPU], read[DISK], read[ARCHIVE]
        X[T.X_CPU_WRITE], X[T.X_DISK_WRITE] = write[CPU], write[DISK]
        X[T.X_CONST] = hw.const_s
        X[T.X_PER_TOKEN] = hw.per_token_s
        X[T.X_ATTN] = hw.attn_s
        X[T.X_MIN_S] = self.archive_min_s

    def begin(self, r: int, now: float) -> Plan:
        K.begin(r, now, self._ids, self._offsets, self._tokens, self._link, self._resident,
                self._ready, self._src, self._deadline, self._heap_t, self._heap_b, self._obj_t,
                self._obj_owner, self._billed, self._S, self._X)
        S, X = self._S, self._X
        counts = [int(c) for c in S[T.S_COUNT:T.S_COUNT + len(TIER_NAMES)]]
        if counts[ARCHIVE]:
            self.archive_gets += counts[ARCHIVE]
            self.archive_bytes_fetched += counts[ARCHIVE] * self.archive_bytes
        return Plan([], [], int(S[T.S_FOUND]), float(X[T.X_LOAD]), float(X[T.X_PREFILL]), counts,
                    int(S[T.S_K]))

    def finish(self, r: int, plan: Plan, now: float) -> None:
        st = self.state  # its access history is recorded in place, by the kernel's twin of accessed_ids
        K.finish(r, plan.used, now, self._ids, self._offsets, st.req_class, self._link,
                 self._resident, self._ready, self._src, st.refs, st.first_class,
                 st.reuse_counts, st.pend, st.pc, self._deadline, self._heap_t, self._heap_b,
                 self._obj_t, self._obj_owner, self._billed, self._S, self._X)

    def archived_mask(self, blocks: np.ndarray) -> np.ndarray:
        return self._resident[ARCHIVE, blocks]

    def held_mask(self, blocks: np.ndarray) -> np.ndarray:
        return self._resident[GPU:ARCHIVE, blocks].any(axis=0)

    def _archive_expire(self, now: float) -> None:
        A.archive_expire(now, self._link, self._resident, self._deadline, self._heap_t,
                         self._heap_b, self._obj_t, self._obj_owner, self._billed, self._S, self._X)

    def _archive_refresh(self, blocks: np.ndarray, deadlines: np.ndarray, refs: np.ndarray,
                         owners: np.ndarray, now: float) -> None:
        A.archive_refresh(blocks, deadlines, owners, now, self._link, self._resident,
                          self._deadline, self._heap_t, self._heap_b, self._obj_t, self._obj_owner,
                          self._billed, self._S, self._X)

    def archive_commit(self, uploads: Uploads, now: float) -> None:
        self._archive_expire(now)
        blocks, _, ttls, _, owners = uploads
        A.archive_commit(blocks, now + ttls, owners, now, self._link, self._resident,
                         self._deadline, self._heap_t, self._heap_b, self._obj_t, self._obj_owner,
                         self._billed, self._S, self._X)
        self.archive_puts += len(blocks)
        np.add.at(self.archive_puts_by_request, owners, 1)

    def archive_billed_s(self) -> np.ndarray:
        return self._billed[: len(self.trace)].copy()

    def occupancy(self) -> tuple[int, ...]:
        return tuple(self._S[T.S_BYTES:T.S_BYTES + len(TIER_NAMES)].tolist())

    def close(self, now: float) -> None:
        S, X = self._S, self._X
        if self.present[ARCHIVE]:
            self._archive_expire(now)
            A.archive_close(now, self._resident, self._deadline, self._obj_t, self._obj_owner,
                            self._billed, X)
        K.close_meters(S, X, now)
        self.hydrations = int(S[T.S_HYDRATE])
        self.offloads = int(S[T.S_OFFLOAD])
        self.writes[CPU], self.writes[DISK] = int(S[T.S_CPU_WRITES]), int(S[T.S_DISK_WRITES])
        self.free_at[CPU], self.free_at[DISK] = float(X[T.X_CPU_FREE]), float(X[T.X_DISK_FREE])
        self.write_lag_max[DISK] = float(X[T.X_DISK_LAG])

    def release(self) -> None:
        super().release()
        for name in ("_ids", "_offsets", "_tokens", "_link", "_resident", "_ready", "_src",
                     "_deadline", "_heap_t", "_heap_b", "_obj_t", "_obj_owner"):
            delattr(self, name)  # the scalars S and X and the per-request _billed stay

    def tier_stats(self) -> list[TierStats]:
        """Read from the kernels' scalars; only the archive has TTL deadlines here."""
        S, X = self._S, self._X
        return [TierStats(name, True, int(S[T.S_INSERT + i]), int(S[T.S_EVICT + i]),
                          int(S[T.S_EXPIRE]) if i == ARCHIVE else 0, float(X[T.X_BS + i]),
                          int(S[T.S_PEAK + i])) if self.present[i] else TierStats(name)
                for i, name in enumerate(TIER_NAMES)]
