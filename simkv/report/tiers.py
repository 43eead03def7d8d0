"""What a run's numbers say about its tiers beyond the metrics: how long a block takes to reach
each tier (for :mod:`simkv.fidelity.diagnose`) and why a configured tier served nothing.

Every time comes from the scenario's hardware profile (:meth:`simkv.core.scenario.Hardware.time_model`
and its :class:`~simkv.core.profiles.Transfers`), the one time model of the simulator, so a
hint quotes the numbers the simulation used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simkv.core.errors import SimkvError
from simkv.core.tiers import TIER_NAMES, archived_bytes

if TYPE_CHECKING:
    from simkv.core.profiles import HardwareProfile, Transfers
    from simkv.core.scenario import Scenario

#: The tiers below the GPU, in the order a lookup tries them.
LOWER_TIERS = ("cpu", "disk", "archive")


@dataclass(frozen=True)
class TimeModel:
    """A scenario's hardware profile with its per-block transfer times for one block size."""

    scenario: Scenario
    block_size: int
    profile: HardwareProfile
    transfers: Transfers

    def load_s(self, tier: str, blocks: int) -> float:
        """Seconds to load ``blocks`` blocks from ``tier`` (latency once, then per block)."""
        return self.transfers.load_s(TIER_NAMES.index(tier), blocks)

    def prefill_s(self, blocks: int) -> float:
        """Seconds to compute ``blocks`` blocks of a prompt with nothing cached."""
        return self.profile.prefill_s(blocks * self.block_size, 0)

    def write_delay_s(self, tier: str, blocks: int) -> float:
        """The longest time from a request's prefill to ``blocks`` of its blocks being readable
        in ``tier``: the write at the tier's bandwidth; for the archive, also the wait for the
        worker's next pass (``tiers.archive.interval_s``) and the compression."""
        write = blocks * self.transfers.write_per_block_s[TIER_NAMES.index(tier)]
        return self.scenario.tiers.archive.interval_s + write if tier == "archive" else write


def time_model(scenario: Scenario, block_size: int) -> TimeModel:
    """The scenario's time model for blocks of ``block_size`` tokens (the bytes of a block and
    of an archived block as the simulator counts them)."""
    hw = scenario.hardware.time_model()
    block_bytes = block_size * scenario.model.bytes_per_token
    archive_bytes = archived_bytes(block_bytes, hw.compression_ratio(scenario))
    return TimeModel(scenario, block_size, hw, hw.transfers(scenario, block_bytes, archive_bytes))


def run_time_model(run_dir: Path, block_size: int | None) -> TimeModel | None:
    """The time model of a results directory's ``scenario.yaml`` (``None`` when it has none, or
    it cannot be loaded: an older or hand-edited file, a profile no longer there)."""
    from simkv.core.scenario import load_scenario

    path = run_dir / "scenario.yaml"
    if not block_size or not path.is_file():
        return None
    try:
        return time_model(load_scenario(path), int(block_size))
    except SimkvError:
        return None


def _fmt_s(seconds: float) -> str:
    from simkv.metrics.format import fmt_seconds

    return fmt_seconds(seconds)


def idle_tier_hints(summary: dict[str, Any], scenario: Scenario) -> list[str]:
    """One line per configured lower tier that was written to but served no hit token, with
    the likely cause worked out from the run's numbers: with ``load_policy: if_faster``,
    loading from the tier is slower than recomputing (its load time per block against the
    prefill time per block, for the trace's mean prompt); a TTL shorter than the trace's reuse
    gaps (every stored block expired); a capacity too small (it evicted as many blocks as were
    written). Empty when every configured tier served hits (or was never written to)."""
    block_size = int(summary.get("block_size") or 0)
    requests = int(summary.get("requests") or 0)
    if not block_size or not requests:
        return []
    tiers = scenario.tiers
    model: TimeModel | None = None
    out = []
    for tier in LOWER_TIERS:
        cfg = getattr(tiers, tier)
        written = int(summary.get(f"insertions_{tier}") or 0)
        if tier == "archive":
            written = max(written, int(summary.get("archive_puts") or 0))
        if not cfg.enabled or not written or summary.get(f"token_hit_rate_{tier}"):
            continue
        if model is None:
            model = time_model(scenario, block_size)
        what = (f"the archive tier served 0 hit tokens though it took {written:,} PUTs "
                f"({int(summary.get('archive_gets') or 0):,} GETs)" if tier == "archive" else
                f"the {tier} tier served 0 hit tokens though {written:,} blocks were written to it")
        out.append(f"{what}: {_idle_cause(tier, summary, scenario, model, written)}")
    return out


def _idle_cause(tier: str, s: dict[str, Any], sc: Scenario, model: TimeModel, written: int) -> str:
    """The likeliest reason ``tier`` served nothing, from the numbers (see :func:`idle_tier_hints`)."""
    tokens = float(s.get("input_tokens") or 0) / max(int(s["requests"]), 1)
    blocks = max(int(tokens // model.block_size), 1)
    load = model.load_s(tier, blocks) / blocks
    prefill = model.prefill_s(blocks) / blocks
    if sc.load_policy == "if_faster" and load >= prefill:
        return (f"with load_policy if_faster, loading from {tier} takes {_fmt_s(load)} per block "
                f"but recomputing takes {_fmt_s(prefill)} per block (a {blocks:,}-block prompt, "
                f"the trace's mean), so every hit was recomputed instead; make the tier faster "
                f"or set load_policy=always to use it anyway")
    expired = int(s.get(f"expirations_{tier}") or 0)
    evicted = int(s.get(f"evictions_{tier}") or 0)
    if expired and expired >= evicted:
        governed = sc.ttl.heuristic != "none" and sc.ttl.scope in (tier, "all")
        knob = "ttl.params" if governed else f"tiers.{tier}.ttl_s"
        return (f"{expired:,} of its blocks expired (TTL) before any was asked for again: the "
                f"TTL is shorter than the trace's reuse gaps; raise the TTL ({knob})")
    if evicted and evicted >= 0.5 * written:
        return (f"it evicted {evicted:,} blocks of the {written:,} written, so its capacity is too "
                f"small for the blocks reused; raise tiers.{tier}.capacity_bytes")
    if tier == "archive" and not math.isinf(sc.tiers.archive.interval_s):
        return (f"no request asked for an archived block after the archive worker's pass (every "
                f"{_fmt_s(sc.tiers.archive.interval_s)}) had uploaded it: the faster tiers "
                f"served every reuse")
    return "the faster tiers served every reuse of its blocks"
