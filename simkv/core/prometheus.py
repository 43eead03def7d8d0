"""The server's ``/metrics`` page (Prometheus text) read into numbers: the samples the replay
client keeps around a replay and the engine's calibration reads between probes, from simkv's
engine and from vLLM alike."""

from __future__ import annotations

import math

#: Prometheus samples kept from ``/metrics`` (name prefixes): simkv's engine counters and
#: vLLM's prefix-cache counters.
METRIC_PREFIXES = ("simkv_", "vllm:prompt_tokens_by_source", "vllm:prefix_cache_",
                   "vllm:external_prefix_cache_")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → ``{'name{labels}': value}`` for the samples of :data:`METRIC_PREFIXES`."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or not line.startswith(METRIC_PREFIXES):
            continue
        key, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        if math.isfinite(v):
            out[key.strip()] = v
    return out
