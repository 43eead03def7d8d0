"""The run summary: every metric of DESIGN.md as one flat, JSON-ready mapping.

Flat keys (``evictions_gpu``, ``storage_gb_hours_archive``, ...) so a sweep stores one
summary as one row; only ``token_hit_rate_by_class`` is a nested mapping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from simkv.model.system import SECONDS_PER_MONTH, TIER_NAMES, TieredCache
from simkv.scenario import Scenario

PERCENTILES = (50, 90, 99)


def _ratio(num: float, den: float) -> float | None:
    """``num / den``; ``None`` (undefined: ``null`` in JSON, ``n/a`` on screen) when ``den``
    is 0, e.g. the hit rate of a trace whose prompts are all shorter than a block. Never 0,
    which would read as a measured value."""
    return float(num) / float(den) if den else None


def _percentiles(values: np.ndarray, prefix: str) -> dict[str, float | None]:
    """Linear-interpolated percentiles (numpy's default), e.g. ``ttft_p90_s``; ``None``
    (undefined) for no values."""
    if len(values) == 0:
        return {f"{prefix}_p{p}_s": None for p in PERCENTILES}
    qs = np.percentile(values, PERCENTILES)
    return {f"{prefix}_p{p}_s": float(q) for p, q in zip(PERCENTILES, qs, strict=True)}


def summarize(requests: pd.DataFrame, scenario: Scenario, cache: TieredCache,
              end_s: float) -> dict[str, Any]:
    """All summary metrics for one run."""
    n = len(requests)
    input_tokens = int(requests["input_tokens"].sum())
    hit_tokens = int(requests["hit_tokens"].sum())
    blocks = requests["blocks"].to_numpy()
    hit_blocks = requests["hit_blocks"].to_numpy()
    duration = float(end_s)
    out: dict[str, Any] = {
        "requests": n,
        "duration_s": duration,
        "block_size": cache.block_size,
        "block_bytes": cache.block_bytes,
        "input_tokens": input_tokens,
        "hit_tokens": hit_tokens,
        "token_hit_rate": _ratio(hit_tokens, input_tokens),
    }
    for tier in TIER_NAMES:
        out[f"token_hit_rate_{tier}"] = _ratio(requests[f"{tier}_hit_tokens"].sum(), input_tokens)
    by_class = requests.groupby("prompt_class", sort=True)[["hit_tokens", "input_tokens"]].sum()
    out["token_hit_rate_by_class"] = {
        str(c): _ratio(row.hit_tokens, row.input_tokens) for c, row in by_class.iterrows()
    }
    out["block_hit_ratio"] = _ratio(hit_blocks.sum(), blocks.sum())
    out["request_full_hit_ratio"] = _ratio(((hit_blocks == blocks) & (blocks > 0)).sum(), n)
    out["request_any_hit_ratio"] = _ratio((hit_blocks > 0).sum(), n)

    for name, tier in zip(TIER_NAMES, cache.tiers, strict=True):
        present = tier is not None
        ev = tier.evictions if present else 0
        ex = tier.expirations if present else 0
        byte_s = tier.meter.byte_seconds if present else 0.0
        out[f"evictions_{name}"] = ev
        out[f"evictions_per_s_{name}"] = _ratio(ev, duration)
        out[f"evictions_per_request_{name}"] = _ratio(ev, n)
        out[f"expirations_{name}"] = ex
        out[f"expirations_per_s_{name}"] = _ratio(ex, duration)
        out[f"insertions_{name}"] = tier.insertions if present else 0
        out[f"storage_mean_bytes_{name}"] = _ratio(byte_s, duration)
        out[f"storage_peak_bytes_{name}"] = tier.meter.peak if present else 0
        out[f"storage_gb_hours_{name}"] = byte_s / 1e9 / 3600.0

    hw = scenario.hardware
    a = scenario.tiers.archive
    gpu_s = float(requests["gpu_seconds_saved"].sum())
    gpu_dollars = gpu_s * hw.gpu_cost_per_hour / 3600.0
    storage_dollars = (cache.archive.meter.byte_seconds / 1e9 / SECONDS_PER_MONTH
                       * a.price("gb_month")) if cache.archive is not None else 0.0
    request_dollars = ((cache.archive_puts + cache.archive_refreshes) * a.price("put")
                       + cache.archive_gets * a.price("get"))
    transfer_dollars = cache.archive_bytes_fetched / 1e9 * (a.price("retrieval_gb") + a.price_transfer_gb)
    out.update({
        "gpu_seconds_saved": gpu_s,
        "gpu_dollars_saved": gpu_dollars,
        "archive_storage_dollars": storage_dollars,
        "archive_request_dollars": request_dollars,
        "transfer_dollars": transfer_dollars,
        "cost_saved_dollars": gpu_dollars - storage_dollars - request_dollars - transfer_dollars,
        "tokens_avoided": hit_tokens,
        "requests_fully_cached": int(((hit_blocks == blocks) & (blocks > 0)).sum()),
        "archive_puts": cache.archive_puts,
        "archive_gets": cache.archive_gets,
        "archive_refreshes": cache.archive_refreshes,
        "archive_skipped": cache.archive_skipped,
        "hydrations": cache.hydrations,
        "offloads": cache.offloads,
        "disk_writes": cache.disk_writes,
    })
    ttft = requests["ttft_s"].to_numpy()
    base = requests["ttft_nocache_s"].to_numpy()
    out["ttft_mean_s"] = float(ttft.mean()) if n else None
    out.update(_percentiles(ttft, "ttft"))
    out["ttft_nocache_mean_s"] = float(base.mean()) if n else None
    out.update(_percentiles(base, "ttft_nocache"))
    return out
