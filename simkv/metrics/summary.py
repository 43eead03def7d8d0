"""The run summary: every metric of docs/metrics.md as one flat, JSON-ready mapping.

Flat keys (``evictions_gpu``, ``storage_gb_hours_archive``, ...) so a sweep stores one
summary as one row; only ``token_hit_rate_by_class`` is a nested mapping.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from simkv.core.scenario import GB, Scenario
from simkv.core.tiers import ARCHIVE, DISK, GPU, HELD_BILLED, TIER_NAMES
from simkv.metrics.requests import archive_storage_dollars
from simkv.model.cache_base import CacheBase

if TYPE_CHECKING:
    from simkv.model.engines import RunRecord

PERCENTILES = (50, 90, 99)


def ratio(num: float, den: float) -> float | None:
    """``num / den``; ``None`` (undefined: ``null`` in JSON, ``n/a`` on screen) when ``den``
    is 0, e.g. the hit rate of a trace whose prompts are all shorter than a block. Never 0,
    which would read as a measured value."""
    return float(num) / float(den) if den else None


def percentiles(values: np.ndarray) -> dict[int, float | None]:
    """Linear-interpolated :data:`PERCENTILES` (numpy's default) by percent; ``None``
    (undefined) for no values."""
    if len(values) == 0:
        return dict.fromkeys(PERCENTILES)
    return {p: float(q) for p, q in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)}


def _percentiles(values: np.ndarray, prefix: str) -> dict[str, float | None]:
    """:func:`percentiles` keyed as in the summary, e.g. ``ttft_p90_s``."""
    return {f"{prefix}_p{p}_s": q for p, q in percentiles(values).items()}


def summarize(requests: pd.DataFrame, scenario: Scenario, run: RunRecord) -> dict[str, Any]:
    """All summary metrics for one run: its per-request rows, and the engine's record (its
    cache's counters, each tier's totals, the end time)."""
    cache, end_s = run.cache, run.end_s
    n = len(requests)
    hit_tokens = int(requests["hit_tokens"].sum())
    blocks = requests["blocks"].to_numpy()
    hit_blocks = requests["hit_blocks"].to_numpy()
    duration = float(end_s)
    out: dict[str, Any] = {"requests": n, "duration_s": duration, "block_size": cache.block_size,
                           "block_bytes": cache.block_bytes}
    out.update(hit_metrics(requests))

    for tier in run.tiers:
        name, ev, ex, byte_s = tier.name, tier.evictions, tier.expirations, tier.byte_seconds
        out[f"evictions_{name}"] = ev
        out[f"evictions_per_s_{name}"] = ratio(ev, duration)
        out[f"evictions_per_request_{name}"] = ratio(ev, n)
        out[f"expirations_{name}"] = ex
        out[f"expirations_per_s_{name}"] = ratio(ex, duration)
        out[f"insertions_{name}"] = tier.insertions
        out[f"storage_mean_bytes_{name}"] = ratio(byte_s, duration)
        out[f"storage_peak_bytes_{name}"] = tier.peak_bytes
        out[f"storage_gb_hours_{name}"] = byte_s / 1e9 / 3600.0

    hw = scenario.hardware
    a = scenario.tiers.archive
    gpu_s = float(requests["gpu_seconds_saved"].sum())
    gpu_dollars = gpu_s * hw.gpu_cost_per_hour / 3600.0
    # Every archive object billed max(stored, min_object_bytes) × max(lifetime, min_days):
    # the early-deletion remainder at removal; alive at the end: until its deadline, >= min_days.
    storage_dollars = float(archive_storage_dollars(scenario, cache).sum())
    request_dollars = ((cache.archive_puts + cache.archive_refreshes) * a.price("put")
                       + cache.archive_gets * a.price("get"))
    transfer_dollars = cache.archive_bytes_fetched / 1e9 * (a.price("retrieval_gb") + a.price_transfer_gb)
    held_dollars = {c: float(requests[c].sum()) for c in (f"{t}_storage_dollars" for t in HELD_BILLED)}
    out.update({
        "gpu_seconds_saved": gpu_s,
        "gpu_dollars_saved": gpu_dollars,
        "archive_storage_dollars": storage_dollars,
        "archive_request_dollars": request_dollars,
        "transfer_dollars": transfer_dollars,
        **held_dollars,
        "cost_saved_dollars": (gpu_dollars - storage_dollars - request_dollars - transfer_dollars
                               - sum(held_dollars.values())),
        "tokens_avoided": hit_tokens,
        "requests_fully_cached": int(((hit_blocks == blocks) & (blocks > 0)).sum()),
        "archive_puts": cache.archive_puts,
        "archive_gets": cache.archive_gets,
        "archive_refreshes": cache.archive_refreshes,
        "archive_skipped": cache.archive_skipped,
        "hydrations": cache.hydrations,
        "offloads": cache.offloads,
        **{f"{name}_writes": cache.writes[t] for t, name in enumerate(TIER_NAMES) if t not in (GPU, ARCHIVE)},
    })
    out.update(ttft_metrics(requests))
    if run.log.first_token_s is not None:       # hardware.scheduler: vllm models the decode
        out.update(decode_metrics(requests))
    out.update(load_metrics(requests, scenario, cache, end_s, run.log.busy_s))
    return out


def _known_sum(column: pd.Series) -> float | None:
    """Σ of a per-request column, or ``None`` (unknown) if any row's value is unknown (null:
    a replay against an engine that does not report it)."""
    return None if column.isna().any() else column.sum()


def hit_metrics(requests: pd.DataFrame) -> dict[str, Any]:
    """The hit metrics of per-request rows (a run's, or a replay's served requests): token hit
    rate = Σ hit_tokens / Σ input_tokens, per tier and per prompt class; block hit ratio = Σ
    hit_blocks / Σ blocks; the shares of requests with every block / any block hit. A column
    with an unknown (null) value makes its metric ``None``."""
    n = len(requests)
    input_tokens = int(requests["input_tokens"].sum())
    hit = _known_sum(requests["hit_tokens"])
    out: dict[str, Any] = {
        "input_tokens": input_tokens,
        "hit_tokens": None if hit is None else int(hit),
        "token_hit_rate": None if hit is None else ratio(hit, input_tokens),
    }
    for tier in TIER_NAMES:
        tier_hit = _known_sum(requests[f"{tier}_hit_tokens"])
        out[f"token_hit_rate_{tier}"] = None if tier_hit is None else ratio(tier_hit, input_tokens)
    out["token_hit_rate_by_class"] = {
        str(c): None if (h := _known_sum(g["hit_tokens"])) is None else ratio(h, g["input_tokens"].sum())
        for c, g in requests.groupby("prompt_class", sort=True)
    }
    if requests["hit_blocks"].isna().any():
        out.update(block_hit_ratio=None, request_full_hit_ratio=None, request_any_hit_ratio=None)
        return out
    blocks = requests["blocks"].to_numpy()
    hit_blocks = requests["hit_blocks"].to_numpy()
    out["block_hit_ratio"] = ratio(hit_blocks.sum(), blocks.sum())
    out["request_full_hit_ratio"] = ratio(((hit_blocks == blocks) & (blocks > 0)).sum(), n)
    out["request_any_hit_ratio"] = ratio((hit_blocks > 0).sum(), n)
    return out


def ttft_metrics(requests: pd.DataFrame) -> dict[str, Any]:
    """Mean and p50/p90/p99 of ``ttft_s`` and ``ttft_nocache_s`` over the rows where they are
    known (``None`` where no row knows them)."""
    out: dict[str, Any] = {}
    for col, prefix in (("ttft_s", "ttft"), ("ttft_nocache_s", "ttft_nocache")):
        values = requests[col].dropna().to_numpy(dtype=float)
        out[f"{prefix}_mean_s"] = float(values.mean()) if len(values) else None
        out.update(_percentiles(values, prefix))
    return out


def decode_metrics(requests: pd.DataFrame) -> dict[str, Any]:
    """What a batching time model adds (``hardware.scheduler: vllm``; docs/metrics.md,
    "Latency"): p50/p90/p99 of ``e2e_s``, ``tpot_s`` (over the requests with more than one
    output token) and ``queue_s``; throughput over ``first arrival → last finish`` (finish =
    ``arrival_s + e2e_s``) in requests and in output tokens (``max(output_tokens, 1)`` each) per
    second; the total of ``preemptions``."""
    e2e = requests["e2e_s"].to_numpy(dtype=float)
    arrival = requests["arrival_s"].to_numpy()
    span = float((arrival + e2e).max() - arrival.min()) if len(e2e) else 0.0
    out: dict[str, Any] = {}
    out.update(_percentiles(e2e, "e2e"))
    out.update(_percentiles(requests["tpot_s"].dropna().to_numpy(dtype=float), "tpot"))
    out.update(_percentiles(requests["queue_s"].to_numpy(dtype=float), "queue"))
    out["throughput_requests_per_s"] = ratio(len(e2e), span)
    out["throughput_output_tokens_per_s"] = ratio(int(np.maximum(requests["output_tokens"], 1).sum()), span)
    out["preemptions"] = int(requests["preemptions"].sum())
    return out


# -- offered load: can the simulated system keep up with the trace? --------------------------

#: GPU utilisation at or above which the queue grows without bound (TTFTs then measure it).
GPU_UNSTABLE = 1.0
#: The utilisation ``gpus_suggested`` aims under (queueing stays moderate below ~0.85).
GPU_TARGET = 0.85
#: Disk write demand at or above which writes cannot keep up with the arrivals.
DISK_BEHIND = 1.0
#: Archive worker busy share at or above which it has (almost) no idle time left: a pass
#: takes ``share / (1 - share)`` times ``interval_s``, so near 1 the candidates it must upload
#: pile up without bound (at 0.5 a pass merely lasts as long as the sleep between passes).
ARCHIVE_BEHIND = 0.9


def _share(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def gpus_suggested(busy: float, span: float, gpus: int) -> int:
    """The least ``N`` with ``busy / (span × N)`` ≤ :data:`GPU_TARGET`; ``gpus`` where the span
    is too short for the ratio to be finite (arrivals at one instant, or a denormal apart)."""
    ratio = busy / (span * GPU_TARGET) if span > 0 else math.inf
    return max(math.ceil(ratio), 1) if math.isfinite(ratio) else gpus


def load_metrics(requests: pd.DataFrame, scenario: Scenario, cache: CacheBase,
                 end_s: float, busy_s: float | None = None) -> dict[str, Any]:
    """Offered load and how far each resource fell behind.

    ``arrival_span_s`` = last arrival − first arrival (the trace's duration). Every demand
    below is work per second of that span, so a value ≥ 1 means the resource cannot keep up
    with the arrivals, whatever happens after the last one:

    * ``gpu_busy_s`` = Σ (load + prefill) over requests (a GPU is busy while it loads; with a
      table profile's ``request`` section, + the worker's stores and fixed time); under
      ``hardware.scheduler: vllm`` (``busy_s`` given) the engine's seconds in steps instead,
      and utilisation is not flagged as overload (a batching engine steps whenever anything
      runs; a growing queue shows in ``queue_p90_s``);
      ``gpu_utilization`` = gpu_busy_s / (arrival_span_s × gpus); ≥ 1: the FIFO queue
      grows without bound and TTFT percentiles measure that queue, not the cache;
      ``gpus_suggested`` = the least N with gpu_busy_s / (arrival_span_s × N) ≤ 0.85;
    * ``makespan_s`` = end of the simulation (last prefill done) − first arrival;
      ``ttft_queue_share`` = Σ queueing / Σ TTFT;
    * ``disk_write_demand`` = bytes written to disk / (arrival_span_s × write bandwidth);
      ``disk_write_lag_max_s`` = the longest wait of a disk write from its issue until the
      block is readable (writes queue behind each other); ``disk_write_backlog_s`` = the
      queued write time still unfinished at the end of the simulation;
    * ``archive_upload_demand`` = bytes uploaded / (arrival_span_s × upload bandwidth);
      ``archive_worker_busy_share`` = (compress + upload time of every pass the worker
      began, a pass still running at the end included) / simulated time (from 0 to the
      end). The worker sleeps ``interval_s`` between passes, so with a share ``s`` passes
      come ``1 / (1 - s)`` times ``interval_s`` apart; ``s`` ≥ 0.9 (passes 10x further apart
      than configured, and unbounded as ``s`` → 1) is flagged: candidates
      then wait long for (or are evicted before) their upload.

    ``overload`` names the resources over their threshold (``"gpu,disk"``; ``""``: none).
    A trace whose arrivals span no time (one request) reports zero demands.
    """
    arrival = requests["arrival_s"].to_numpy()
    first, last = (float(arrival.min()), float(arrival.max())) if len(arrival) else (0.0, 0.0)
    span = last - first
    gpus = scenario.hardware.gpus
    busy = float((requests["load_s"] + requests["prefill_s"]).sum())
    overhead = cache.overhead
    if busy_s is not None:  # a batching engine: its time in steps (requests overlap in them)
        busy = busy_s
    elif overhead.any and not scenario.hardware.zero_service_time:   # + the worker's other time
        worker = (requests["ttft_s"] - requests["queue_s"] - requests["load_s"] - requests["prefill_s"]
                  - overhead.latency_s(requests["input_tokens"].to_numpy()))
        busy += float(worker.sum())
    util = _share(busy, span * gpus)
    disk_cfg, arch_cfg = scenario.tiers.disk, scenario.tiers.archive
    disk_demand = _share(cache.writes[DISK] * cache.block_bytes, span * disk_cfg.write_gbps * GB)
    upload_demand = _share(cache.archive_puts * cache.archive_bytes, span * arch_cfg.upload_gbps * GB)
    worker_share = _share(cache.archive_busy_s, end_s)
    # a batching engine steps whenever anything runs, so its utilisation says nothing of a
    # growing queue (queue_p90_s does)
    overload = [name for name, over in (("gpu", util >= GPU_UNSTABLE and busy_s is None),
                                        ("disk", disk_demand >= DISK_BEHIND),
                                        ("archive", worker_share >= ARCHIVE_BEHIND)) if over]
    return {
        "arrival_span_s": span,
        "makespan_s": float(end_s) - first if len(arrival) else 0.0,
        "gpu_busy_s": busy,
        "gpu_utilization": util,
        "gpus_suggested": gpus_suggested(busy, span, gpus),
        "ttft_queue_share": _share(requests["queue_s"].sum(), requests["ttft_s"].sum()),
        "disk_write_demand": disk_demand,
        "disk_write_lag_max_s": float(cache.write_lag_max[DISK]),
        "disk_write_backlog_s": max(float(cache.free_at[DISK]) - float(end_s), 0.0),
        "archive_upload_demand": upload_demand,
        "archive_worker_busy_share": worker_share,
        "overload": ",".join(overload),
    }


def overload_warnings(summary: dict[str, Any]) -> list[str]:
    """One plain-text line per overloaded resource of a run's summary (empty: none)."""
    flagged = set(filter(None, str(summary.get("overload", "")).split(",")))
    out = []
    if "gpu" in flagged:
        out.append(
            f"GPU utilisation {summary['gpu_utilization']:.2f} >= 1: the GPUs cannot keep up with "
            f"the arrivals, the queue grows without bound and TTFT numbers measure it "
            f"(queueing is {summary['ttft_queue_share']:.0%} of TTFT); try --set "
            f"hardware.gpus={summary['gpus_suggested']} (utilisation <= {GPU_TARGET})")
    if "disk" in flagged:
        out.append(
            f"disk writes fall behind: they need {summary['disk_write_demand']:.2f}x the write "
            f"bandwidth, the longest write waited {summary['disk_write_lag_max_s']:.0f} s before it "
            f"was readable (disk hits are lost meanwhile); raise tiers.disk.write_gbps or use "
            f"tiers.disk.write_policy=offload_on_evict")
    if "archive" in flagged:
        out.append(
            f"the archive worker falls behind: it is busy {summary['archive_worker_busy_share']:.0%} "
            f"of the time (upload demand {summary['archive_upload_demand']:.2f}x), so passes come "
            f"far apart; raise tiers.archive.upload_gbps and compress_gbps")
    return out
