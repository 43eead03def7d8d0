"""The server's ``/metrics`` page (Prometheus text) read into numbers: the samples the replay
client keeps around a replay and the engine's calibration reads between probes, from simkv's
engine and from vLLM alike."""

from __future__ import annotations

import math

#: vLLM's per-request timing histograms whose ``_sum`` and ``_count`` a replay keeps: the API
#: server's TTFT, the engine core's queue and prefill times, the request's end to end, the gaps
#: between its tokens (where the simulation's time goes, against the engine's own clock).
VLLM_TIMINGS = ("vllm:time_to_first_token_seconds", "vllm:request_queue_time_seconds",
                "vllm:request_prefill_time_seconds", "vllm:e2e_request_latency_seconds",
                "vllm:inter_token_latency_seconds")
#: Prometheus samples kept from ``/metrics`` (name prefixes): simkv's engine counters,
#: vLLM's prefix-cache counters and its timings' sums and counts.
METRIC_PREFIXES = ("simkv_", "vllm:prompt_tokens_by_source", "vllm:prefix_cache_",
                   "vllm:external_prefix_cache_",
                   *(f"{name}_{part}" for name in VLLM_TIMINGS for part in ("sum", "count")))


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
