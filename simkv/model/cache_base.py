"""What the reference cache and the compiled one share: the scenario's constants over the
tier layout (:mod:`simkv.core.tiers`), the policy state, the counters and the archive worker's pass.

:class:`CacheBase` is everything about a run's cache except how its tiers are stored:
:class:`~simkv.model.system.TieredCache` keeps them as Python :class:`~simkv.model.tiers.Tier`
objects, :class:`~simkv.model.compiled.CompiledTieredCache` as the arrays of its kernels. Each
implements the request steps (``begin``, ``finish``), the archive tier's side of the worker
(expire, refresh, commit, the residency masks) and the end-of-run readings (``close``,
``tier_stats``, ``archive_billed_s``, ``occupancy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simkv.core.errors import ScenarioError
from simkv.core.policies.state import PolicyState
from simkv.core.policies.ttl import TTLHeuristic, make_heuristic
from simkv.core.scenario import GB, Scenario
from simkv.core.tiers import ARCHIVE, SECONDS_PER_MONTH, TIER_NAMES, archived_bytes, new_policy_state
from simkv.model.tiers import TierStats
from simkv.traces.schema import Trace

#: An archive pass's uploads: block ids, trace positions (refs), TTLs, priorities, and the
#: requests they are charged to (each block's last request before the pass).
Uploads = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


#: The most steps a period in seconds may take over a trace's span: archive passes
#: (``tiers.archive.interval_s``) and timeline bins (``timeline_bin_s``). Idle passes cost
#: nothing (the worker skips them), but the float clock must still advance by ``interval_s``
#: at the trace's end, and a bin's index must stay an exact integer; 2**40 steps leave a
#: margin of 2**12 on both.
MAX_STEPS = 2**40


def check_steps(key: str, period_s: float, span_s: float, what: str) -> None:
    """A :class:`ScenarioError` naming ``key`` if one ``what`` every ``period_s`` seconds
    over ``span_s`` seconds of trace makes more than :data:`MAX_STEPS` of them."""
    steps = span_s / period_s
    if steps > MAX_STEPS:
        raise ScenarioError(f"{key}: {period_s!r} s would take {steps:.3g} {what} over the "
                            f"trace's {span_s:.6g} s (at most 2**40); raise it")


@dataclass(slots=True)
class Plan:
    """What a cache's ``begin`` decided for one request."""

    blocks: list[int]
    sources: list[int]  # tier of each used prefix block
    prefix_blocks: int  # blocks found in some tier before any cut
    load_s: float
    prefill_s: float
    tier_blocks: list[int] = field(default_factory=lambda: [0] * len(TIER_NAMES))
    used: int = 0  # prefix blocks used (after any if_faster cut)
    overhead_s: float = 0.0  # the worker's time besides load and prefill (RequestOverhead.service_s)
    #: Hit tokens per tier where they are not whole trace blocks (``tiers.gpu.eviction: vllm``:
    #: engine blocks); ``None``: ``tier_blocks × block_size``.
    tier_tokens: list[int] | None = None


class CacheBase:
    """The shared setup and archive pass of the caches (see the module docstring)."""

    def __init__(self, scenario: Scenario, trace: Trace) -> None:
        self.scenario = sc = scenario
        self.trace = trace
        self.block_size = B = trace.block_size
        self.block_bytes = B * sc.model.bytes_per_token
        self.hw = sc.hardware.time_model()
        self.hw.check_block_size(B)
        self.zero_time = sc.hardware.zero_service_time
        self.if_faster = sc.load_policy == "if_faster"

        t = sc.tiers
        self.archive_bytes = archived_bytes(self.block_bytes, self.hw.compression_ratio(sc))
        configs = t.specs()
        #: Per tier, indexed like TIER_NAMES: in use (the GPU tier always is), bytes a block
        #: occupies (the archive stores compressed blocks), capacity in blocks (None: unbounded).
        self.present = t.present()
        self.stored_bytes = (self.block_bytes,) * ARCHIVE + (self.archive_bytes,)
        self.capacity = tuple(cfg.blocks(stored) if present else None for cfg, stored, present
                              in zip(configs, self.stored_bytes, self.present, strict=True))
        self.write_through = t.disk.write_policy == "write_through"

        # Load-time constants per tier (latency once per request, seconds per block) and store
        # times, from the hardware profile.
        self.transfers = tr = self.hw.transfers(sc, self.block_bytes, self.archive_bytes)
        self._lat, self._read_s, self._write_s = tr.latency_s, tr.read_per_block_s, tr.write_per_block_s
        #: What a request costs besides load and prefill (a table profile's ``request``).
        self.overhead = self.hw.overhead
        a = t.archive

        # TTL machinery.
        self.ttl: TTLHeuristic | None = (make_heuristic(sc.ttl.heuristic, sc.ttl.params)
                                         if sc.ttl.heuristic != "none" else None)
        self.ttl_all_tiers = self.ttl is not None and sc.ttl.scope == "all"
        self.sliding = sc.ttl.mode == "sliding"
        #: Per tier (TIER_NAMES order), who sets a written block's TTL: the heuristic where
        #: ``ttl.scope`` names the tier or is ``all``, priced at the tier's held $/byte-second;
        #: else the spec's ``key_ttl_s`` (``None``: none).
        self.ttl_governs = tuple(self.ttl is not None and sc.ttl.scope in (name, "all")
                                 for name in TIER_NAMES)
        self.key_ttl_s = tuple(spec.key_ttl_s() for spec in configs)
        self.held_cost_per_byte_s = tuple(spec.held_price_gb_hour() / GB / 3600.0 for spec in configs)
        #: Per tier: billed for the bytes it holds (its spec's ``bill``); a write of a block it
        #: holds rewrites it (its spec's ``rewrites``).
        self.billed = tuple(spec.bill is not None for spec in configs)
        self.rewrites = tuple(spec.rewrites for spec in configs)
        self.gpu_cost_per_s = sc.hardware.gpu_cost_per_hour / 3600.0
        self.archive_cost_per_byte_s = a.price("gb_month") / GB / SECONDS_PER_MONTH
        # Billing: objects billed as archive_billed_bytes for at least archive_min_s each.
        self.archive_min_s = a.min_storage_s()
        if self.present[ARCHIVE]:
            check_steps("tiers.archive.interval_s", a.interval_s,
                        float(trace.arrival_s[-1]) if len(trace) else 0.0, "archive passes")
        self.archive_billed_bytes = a.billed_bytes(self.archive_bytes)
        #: Per request: archive PUTs (uploads and refresh COPYs) charged to it.
        self.archive_puts_by_request = np.zeros(len(trace), np.int64)
        self.state = self._policy_state()

        # Counters.
        self.archive_gets = 0
        self.archive_puts = 0
        self.archive_refreshes = 0
        self.archive_bytes_fetched = 0
        self.archive_skipped = 0  # candidates gone from every tier before the worker came
        self.archive_busy_s = 0.0  # the worker's compress + upload time of every pass begun
        self.hydrations = 0
        self.offloads = 0
        #: Per tier (TIER_NAMES order): blocks written, when its write queue drains, and the
        #: longest wait of a write from its issue until the block was readable.
        self.writes = [0] * len(TIER_NAMES)
        self.free_at = [0.0] * len(TIER_NAMES)
        self.write_lag_max = [0.0] * len(TIER_NAMES)

    def _policy_state(self) -> PolicyState:
        """The access history, reuse learner and candidate rule, keyed by block hash (dense id
        ``i`` is the trace's ``block_hashes_unique[i]``, shared, not copied)."""
        trace = self.trace
        state = new_policy_state(self.scenario, self.block_size, self.block_bytes, self.hw,
                                 heuristic=self.ttl, hashes=trace.block_hashes_unique)
        classes = trace.table.column("prompt_class").combine_chunks().dictionary_encode()
        state.add_requests(classes.indices.to_numpy(zero_copy_only=False),
                           classes.dictionary.to_pylist(), trace.input_tokens)
        return state

    # -- requests (each cache) --------------------------------------------------------------

    def begin(self, r: int, now: float) -> Plan:
        """Look up request ``r`` at ``now`` and decide what to load and what to compute."""
        raise NotImplementedError

    def finish(self, r: int, plan: Plan, now: float) -> None:
        """Store request ``r``'s blocks at ``now`` (end of its prefill)."""
        raise NotImplementedError

    # -- the archive worker -----------------------------------------------------------------

    def archive_pass(self, now: float) -> tuple[Uploads, float]:
        """One archive pass at ``now``: :meth:`PolicyState.decide_pass` applied to these tiers,
        each upload or refresh (a COPY) charged to the block's last request. Returns the
        uploads (block, ref, ttl, priority, request) and the worker's busy time; the caller
        commits them with :meth:`archive_commit` once that time has passed."""
        self._archive_expire(now)
        d = self.state.decide_pass(now, self.archived_mask, self.held_mask)
        blocks, rs, refresh, upload = d.blocks, d.requests, d.refresh, d.upload
        refs = self.trace.block_offsets[rs] + d.positions
        self.archive_skipped += d.skipped
        if refresh.any():
            self._archive_refresh(blocks[refresh], now + d.refresh_ttl, refs[refresh], rs[refresh], now)
            self.archive_refreshes += int(refresh.sum())
            np.add.at(self.archive_puts_by_request, rs[refresh], 1)
        uploads = (blocks[upload], refs[upload], d.upload_ttl, d.upload_priority, rs[upload])
        busy = 0.0 if self.zero_time else len(uploads[0]) * self._write_s[ARCHIVE]
        return uploads, busy

    def archive_pending(self) -> bool:
        """Whether blocks were stored or used since the last pass (the next pass's candidates);
        without them a pass only applies expiries, which land at their deadlines anyway."""
        return bool(self.state.pc[0])

    def _archive_expire(self, now: float) -> None:
        """Remove the archive entries whose deadline is ``<= now``, at their deadlines."""
        raise NotImplementedError

    def _archive_refresh(self, blocks: np.ndarray, deadlines: np.ndarray, refs: np.ndarray,
                         owners: np.ndarray, now: float) -> None:
        """Slide the deadlines of live archive objects (an access each, for their order); each
        refresh COPY overwrites the object with a new one, charged to ``owners``."""
        raise NotImplementedError

    def archived_mask(self, blocks: np.ndarray) -> np.ndarray:
        """Which of ``blocks`` are live in the archive."""
        raise NotImplementedError

    def held_mask(self, blocks: np.ndarray) -> np.ndarray:
        """Which of ``blocks`` the GPU, CPU or disk tier holds (where the worker can read them)."""
        raise NotImplementedError

    def archive_commit(self, uploads: Uploads, now: float) -> None:
        """The uploads of a pass land in the archive at ``now``, expiring ``ttl`` later; each is
        a new object charged to its request (evicted objects are billed)."""
        raise NotImplementedError

    # -- readings ---------------------------------------------------------------------------

    def close(self, now: float) -> None:
        """End of the simulation: apply due expiries, bill the live archive objects (until
        their deadlines) and close the storage integrals."""
        raise NotImplementedError

    def tier_stats(self) -> list[TierStats]:
        """Each tier's totals (TIER_NAMES order; after :meth:`close`)."""
        raise NotImplementedError

    def archive_billed_s(self) -> np.ndarray:
        """Per request: billed object-seconds of the archive objects charged to it, ``Σ
        max(lifetime, archive_min_s)`` (after :meth:`close`)."""
        raise NotImplementedError

    def held_billed_s(self, t: int) -> np.ndarray:
        """Per request: seconds the blocks it wrote to billed tier ``t`` lived (until removed, or
        until their deadline if they outlive the run; after :meth:`close`). Zeros where the
        cache has no such tier."""
        return np.zeros(len(self.trace))

    def occupancy(self) -> tuple[int, ...]:
        """Bytes held now per tier (TIER_NAMES order)."""
        raise NotImplementedError

    def release(self) -> None:
        """Let go of the per-block state after :meth:`close`, keeping what the metrics read
        (the counters, :meth:`tier_stats`, :meth:`archive_billed_s`, :meth:`occupancy`,
        ``archive_puts_by_request``): at a million requests it is most of the run's memory,
        and the per-request rows and the summary are built after the run."""
        del self.state
