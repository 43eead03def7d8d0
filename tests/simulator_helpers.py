"""Hand-made scenarios for the simulator's tests: zero-time, a 4 KiB block, the GPU tier only
unless told (shared by the simulator's and the cost tests)."""

from __future__ import annotations

from simkv.core.scenario import Scenario, scenario_from_dict
from simkv.core.tiers import TIER_NAMES

KV = 1024  # bytes per token in hand-made scenarios: a 4-token block is 4 KiB


def scenario(**tiers) -> Scenario:
    """A small hand-made scenario: zero-time by default, GPU tier only unless told."""
    data: dict = {
        "model": {"kv_bytes_per_token": KV},
        "tiers": {"gpu": {"capacity_blocks": 4}, "disk": {"enabled": False},
                  "archive": {"enabled": False}},
        "hardware": {"zero_service_time": True},
        "engine": "simpy",
        "timeline_bin_s": 10.0,
    }
    for key, value in tiers.items():
        if key in TIER_NAMES:
            data["tiers"].setdefault(key, {}).update(value)
        else:
            data[key] = value
    return scenario_from_dict(data)
