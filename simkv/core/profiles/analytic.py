"""The ``analytic`` profile: the scenario's fitted prefill formula (``hardware.prefill_*``)
and transfer times from the tiers' bandwidths; what a scenario without a profile file gets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from simkv.core.profiles.base import (
    PROFILES,
    HardwareProfile,
    StepTime,
    Transfers,
)

if TYPE_CHECKING:
    from simkv.core.scenario import Scenario

@PROFILES.register("analytic")
class AnalyticProfile(HardwareProfile):
    """``prefill(n, c) = const_s + per_token_s·n + attn_s·n·(n + c)`` (the scenario's
    ``hardware.prefill_const_s``, ``prefill_per_token_s``, ``prefill_attn_s``); transfer
    times from the tiers' bandwidths: CPU and disk load ``latency_s + bytes / read_gbps``,
    CPU and disk write ``bytes / write_gbps``, archive fetch ``request_latency_s + stored /
    download_gbps + raw / decompress_gbps``, archive pass ``raw / compress_gbps + stored /
    upload_gbps`` per block."""

    kind = "analytic"

    def __init__(self, const_s: float, per_token_s: float, attn_s: float,
                 zero_service_time: bool = False) -> None:
        super().__init__(zero_service_time)
        self.const_s, self.per_token_s, self.attn_s = const_s, per_token_s, attn_s

    def _prefill(self, n: np.ndarray, cached: np.ndarray) -> np.ndarray:
        return self.const_s + self.per_token_s * n + self.attn_s * n * (n + cached)

    def prefill_s(self, new: int, cached: int) -> float:
        # The scalar path of the request loop: plain floats, same operations as _prefill.
        if self.zero:
            return 0.0
        n = max(new, 1)
        return self.const_s + self.per_token_s * n + self.attn_s * n * (n + cached)

    def _step_time(self) -> StepTime:
        # a decode is a prefill of one token after its context: per_token_s + attn_s·(1 + c)
        return StepTime(self.const_s, self.per_token_s, self.per_token_s, self.attn_s, self.attn_s)

    def transfers(self, scenario: Scenario, block_bytes: int, archive_bytes: int) -> Transfers:
        # each tier's (latency, read, write) from its spec, in TIER_NAMES order
        lat, read, write = zip(*(spec.transfer_s(block_bytes, archive_bytes)
                                 for spec in scenario.tiers.specs()), strict=True)
        return Transfers(latency_s=lat, read_per_block_s=read, write_per_block_s=write)
