"""The tier layout and the rules the simulator and the real engine apply over it.

The tiers are one ordered list, fastest first (:data:`TIER_NAMES`; a tier's index in it,
``GPU`` ... ``ARCHIVE``, is its number everywhere: the simulator's caches and kernels, the
per-request columns, the summary, the reports, the engine's counters). Over that layout, one
implementation each of what both sides compute: an archived block's size
(:func:`archived_bytes`), the ``load_policy: if_faster`` cut (:func:`best_cut`) and the policy
state a scenario configures (:func:`new_policy_state`).
"""

from __future__ import annotations

import numpy as np

from simkv.core.policies.state import PolicyState
from simkv.core.policies.ttl import TTLHeuristic, make_heuristic
from simkv.core.profiles import HardwareProfile, Transfers
from simkv.core.scenario import GB, Scenario
from simkv.core.scenario.tiers import ARCHIVE, CPU, DISK, GPU, HELD_BILLED, HELD_BILLS, REMOTE, TIER_NAMES

__all__ = ["ARCHIVE", "CPU", "DISK", "GPU", "HELD_BILLED", "HELD_BILLS", "REMOTE", "SECONDS_PER_MONTH",
           "TIER_NAMES", "archived_bytes",
           "best_cut", "new_policy_state"]

SECONDS_PER_MONTH = 730 * 3600  # the month of cloud price sheets


def archived_bytes(block_bytes: int, compression_ratio: float) -> int:
    """Bytes the archive stores for a block of ``block_bytes`` raw bytes compressed at
    ``compression_ratio`` (raw / stored), rounded down: what its capacity, billing, transfer
    times and TTL heuristics count."""
    return int(block_bytes / compression_ratio)


def new_policy_state(scenario: Scenario, block_tokens: int, block_bytes: int, hw: HardwareProfile, *,
                     heuristic: TTLHeuristic | None = None, hashes: np.ndarray | None = None) -> PolicyState:
    """The scenario's :class:`PolicyState` for blocks of ``block_tokens`` tokens and
    ``block_bytes`` bytes: its TTL heuristic (``heuristic`` if given, else made from
    ``ttl.heuristic``; ``None`` for ``none``), archived size ``block_bytes /
    compression_ratio`` (``hw``'s: the scenario's unless a table profile measured it), GPU
    price per second, archive price per byte-second, sliding or fixed TTLs, and a block's
    value from ``hw``. The simulator's caches and the real engine's
    archive worker both build theirs here."""
    sc, a = scenario, scenario.tiers.archive
    if heuristic is None and sc.ttl.heuristic != "none":
        heuristic = make_heuristic(sc.ttl.heuristic, sc.ttl.params)
    return PolicyState(heuristic, block_tokens=block_tokens, block_bytes=block_bytes,
                       archive_bytes=archived_bytes(block_bytes, hw.compression_ratio(sc)),
                       gpu_cost_per_s=sc.hardware.gpu_cost_per_hour / 3600.0,
                       archive_cost_per_byte_s=a.price("gb_month") / GB / SECONDS_PER_MONTH,
                       sliding=sc.ttl.mode == "sliding",
                       value_s=lambda pos, tokens: hw.block_value_s(pos, tokens, block_tokens),
                       hashes=hashes)


def best_cut(sources: list[int], n_tokens: int, block_size: int, hw: HardwareProfile,
             tr: Transfers) -> tuple[int, float, float]:
    """``load_policy: if_faster``: ``argmin_k load(sources[:k]) + prefill(n - k·B, k·B)`` over
    a prefix whose blocks come from tiers ``sources`` (TIER_NAMES indices), the longest ``k``
    on ties; returns ``(k, load_s, prefill_s)``. A tier's latency is paid once, by its first
    block (GPU blocks cost ``load.gpu`` of a table profile, else nothing). The simulator's
    reference cache and the real engine both cut here."""
    B = block_size
    best_k, best_load, best_prefill = 0, 0.0, hw.prefill_s(n_tokens, 0)
    best = best_prefill
    load = 0.0
    lat, per = tr.latency_s, tr.read_per_block_s
    seen = [False] * len(lat)
    for k, src in enumerate(sources, start=1):
        load += per[src] + (0.0 if seen[src] else lat[src])
        seen[src] = True
        prefill = hw.prefill_s(n_tokens - k * B, k * B)
        if load + prefill <= best:
            best, best_k, best_load, best_prefill = load + prefill, k, load, prefill
    return best_k, best_load, best_prefill
