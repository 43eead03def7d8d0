"""Per-request rows: what each request hit, where from, what it waited and what it saved."""

from __future__ import annotations

import heapq

import numpy as np
import pandas as pd

from simkv.core.profiles import HardwareProfile
from simkv.core.scenario import Hardware, Scenario
from simkv.core.schema import DECODE_COLUMNS, LOAD_TIERS
from simkv.core.tiers import HELD_BILLED, SECONDS_PER_MONTH, TIER_NAMES
from simkv.model.cache_base import CacheBase
from simkv.model.engine import RequestLog
from simkv.traces.schema import Trace


def fifo_start_times(arrivals: np.ndarray, service_s: np.ndarray, servers: int) -> np.ndarray:
    """Start times of a FIFO queue with ``servers`` identical servers (requests in order).

    The no-cache baseline: the same queue discipline as the SimPy GPU resource, so with
    caching disabled the two give the same TTFTs (a test holds them equal).
    """
    free = [0.0] * servers
    starts = np.empty(len(arrivals))
    for i, (a, s) in enumerate(zip(arrivals.tolist(), service_s.tolist(), strict=True)):
        t = heapq.heappop(free)
        start = a if a > t else t
        starts[i] = start
        heapq.heappush(free, start + s)
    return starts


def prefill_array(hw: Hardware, new: np.ndarray, cached: np.ndarray) -> np.ndarray:
    """Vectorised :meth:`Hardware.prefill_s`: the scenario's hardware profile."""
    return hw.time_model().prefill_array(new, cached)


def archive_storage_dollars(scenario: Scenario, cache: CacheBase) -> np.ndarray:
    """Per request: the storage dollars of the archive objects charged to it, ``billed_s ×
    max(stored, min_object_bytes) / 1e9 / SECONDS_PER_MONTH × $/GB-month`` where ``billed_s
    = Σ max(lifetime, min_days)`` over those objects (see :class:`~simkv.model.tiers.ObjectLedger`)."""
    a = scenario.tiers.archive
    per_object_s = cache.archive_billed_bytes / 1e9 / SECONDS_PER_MONTH * a.price("gb_month")
    return cache.archive_billed_s() * per_object_s


def held_storage_dollars(cache: CacheBase) -> dict[str, np.ndarray]:
    """Per tier billed for what it holds (:data:`~simkv.core.tiers.HELD_BILLED`: the remote
    store's DRAM), per request: the bill of the blocks it wrote there, ``billed_s × block_bytes
    / 1e9 / 3600 × $/GB-hour`` where ``billed_s`` = Σ the blocks' lifetimes (write → expiry or
    eviction, or → their deadline if they outlive the run; the run's end without one)."""
    return {name: cache.held_billed_s(t) * (cache.block_bytes * cache.held_cost_per_byte_s[t])
            for t, name in enumerate(TIER_NAMES) if name in HELD_BILLED}


def request_frame(trace: Trace, scenario: Scenario, cache: CacheBase, log: RequestLog) -> pd.DataFrame:
    """One row per request, in trace order, with the columns of
    :data:`~simkv.core.schema.REQUEST_SCHEMA` (docs/metrics.md, "Per-request rows").

    Every archive dollar is charged to one request, so each cost column sums to the summary's:
    an archive object's PUT (upload or refresh COPY) and its storage (minimum duration and
    size included) go to the request whose access made the block a candidate for that upload
    (its last request before the archive pass); GETs, retrieval and transfer go to the request
    that fetched; a remote key's DRAM to the request that wrote it. ``cost_saved_dollars =
    gpu_dollars_saved − request_cost_dollars``, the sum of the three archive columns and each
    held bill (``remote_storage_dollars``); ``archive_objects`` counts the PUTs charged
    (uploads and refresh COPYs, each a new object).

    ``ttft_s = queue_s + load_s + prefill_s`` (+ the table profile's request overhead where it
    has one: the worker's stores and fixed time, and the latency outside the worker; the
    no-cache baseline pays them too, storing every block; :class:`~simkv.core.profiles.RequestOverhead`).

    Under ``hardware.scheduler: vllm`` (``log.first_token_s`` kept) the times come from the
    batching model (:func:`decode_columns`); under ``fifo`` the decode columns are null.
    """
    B = trace.block_size
    arrival = trace.arrival_s
    n_tokens = trace.input_tokens
    blocks = np.diff(trace.block_offsets)
    tier_blocks = {t: np.asarray(getattr(log, f"{t}_blocks"), dtype=np.int64) for t in TIER_NAMES}
    hit_blocks = sum(tier_blocks.values())
    if log.tier_tokens is None:
        tier_tokens = {t: b * B for t, b in tier_blocks.items()}
    else:  # engine-block hits (tiers.gpu.eviction: vllm): not whole trace blocks
        tier_tokens = {t: np.asarray(c, dtype=np.int64)
                       for t, c in zip(TIER_NAMES, log.tier_tokens, strict=True)}
    arch_b = tier_blocks["archive"]
    start = np.asarray(log.start_s)
    load = np.asarray(log.load_s)
    prefill = np.asarray(log.prefill_s)
    hw = scenario.hardware
    service_nocache = prefill_array(hw, n_tokens, np.zeros_like(n_tokens))
    service = load + prefill
    # A table profile's request overhead: the worker's other time (stores, the rest) is service
    # time, the latency outside it is TTFT (and e2e) only; without one both are 0.
    overhead = cache.overhead
    timed_overhead = overhead.any and not hw.zero_service_time
    latency = overhead.latency_s(n_tokens) if timed_overhead else 0.0
    if timed_overhead:
        service = service + np.asarray(log.overhead_s)
        service_nocache = service_nocache + overhead.service_s(blocks, blocks, 0)
    if log.first_token_s is None:      # fifo: one request at a time to its first token, no decode
        ttft = start - arrival + load + prefill
        if timed_overhead:
            ttft = ttft + np.asarray(log.overhead_s)
        ttft = ttft + latency
        start_nocache = fifo_start_times(arrival, service_nocache, hw.gpus)
        ttft_nocache = start_nocache - arrival + service_nocache + latency
        decode = no_decode_columns(len(arrival))
    else:                              # vllm: the batching model's first-token and finish times
        decode = decode_columns(log, arrival, trace.output_tokens)
        prefill = decode.pop("prefill_s")
        first, finish = np.asarray(log.first_token_s), np.asarray(log.finish_s)
        ttft = decode.pop("ttft_s") + latency + output_latency_s(cache.hw, first, finish, first)
        decode["e2e_s"] = decode["e2e_s"] + latency + output_latency_s(cache.hw, first, finish, finish)
        first_nc, finish_nc = _nocache_times(scenario, trace)
        ttft_nocache = (first_nc - arrival + latency
                        + output_latency_s(cache.hw, first_nc, finish_nc, first_nc))
    gpu_saved_s = service_nocache - service
    a = scenario.tiers.archive
    fetched = arch_b * cache.archive_bytes
    storage_cost = archive_storage_dollars(scenario, cache)
    put_get_cost = cache.archive_puts_by_request * a.price("put") + arch_b * a.price("get")
    transfer_cost = fetched / 1e9 * (a.price("retrieval_gb") + a.price_transfer_gb)
    held_cost = held_storage_dollars(cache)
    request_cost = storage_cost + put_get_cost + transfer_cost + sum(held_cost.values())
    gpu_saved_dollars = gpu_saved_s * hw.gpu_cost_per_hour / 3600.0
    return pd.DataFrame({
        "request_id": trace.table.column("request_id").to_numpy(zero_copy_only=False),
        "arrival_s": arrival,
        "prompt_class": trace.table.column("prompt_class").to_numpy(zero_copy_only=False),
        "input_tokens": n_tokens,
        "output_tokens": trace.output_tokens,
        "blocks": blocks,
        "prefix_blocks": np.asarray(log.prefix_blocks, dtype=np.int64),
        "hit_blocks": hit_blocks,
        "hit_tokens": sum(tier_tokens.values()),
        **{f"{t}_hit_tokens": tokens for t, tokens in tier_tokens.items()},
        "queue_s": start - arrival,
        "load_s": load,
        "prefill_s": prefill,
        "ttft_s": ttft,
        "ttft_nocache_s": ttft_nocache,
        **decode,
        **{f"{t}_loaded_bytes": tier_blocks[t] * _block_bytes(cache, t) for t in LOAD_TIERS},
        "gpu_seconds_saved": gpu_saved_s,
        "gpu_dollars_saved": gpu_saved_dollars,
        "archive_objects": cache.archive_puts_by_request,
        "archive_storage_dollars": storage_cost,
        "archive_request_dollars": put_get_cost,
        "transfer_dollars": transfer_cost,
        **{f"{t}_storage_dollars": dollars for t, dollars in held_cost.items()},
        "request_cost_dollars": request_cost,
        "cost_saved_dollars": gpu_saved_dollars - request_cost,
        **{f"{t}_held_bytes": np.asarray(getattr(log, f"{t}_bytes"), dtype=np.int64) for t in TIER_NAMES},
        "error": pd.array([None] * len(arrival), dtype="str"),   # a simulated request never fails
    }, copy=False)  # the columns as built: no second, consolidated copy of a million rows


def no_decode_columns(n: int) -> dict[str, np.ndarray]:
    """The decode columns of ``n`` requests under ``fifo``, which models no decode: all null
    (NaN; ``preemptions`` too, as a Parquet reader returns an integer column of nulls)."""
    return {c: np.full(n, np.nan) for c in DECODE_COLUMNS}


def decode_columns(log: RequestLog, arrival: np.ndarray, output_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The batching model's times per request (before any latency outside the worker):
    ``prefill_s = first_token_s − start_s − load_s`` (the steps until its first token, batching
    slowdown included), ``ttft_s = first_token_s − arrival_s``, ``e2e_s = finish_s −
    arrival_s``, ``tpot_s = (finish_s − first_token_s) / (O − 1)`` with ``O = max(output_tokens,
    1)`` (NaN: null, where ``O ≤ 1``) and ``preemptions``."""
    first, finish = np.asarray(log.first_token_s), np.asarray(log.finish_s)
    start, load = np.asarray(log.start_s), np.asarray(log.load_s)
    gaps = np.maximum(output_tokens, 1) - 1
    return {
        "prefill_s": first - start - load,
        "ttft_s": first - arrival,
        "e2e_s": finish - arrival,
        "tpot_s": np.divide(finish - first, gaps, out=np.full(len(gaps), np.nan), where=gaps > 0),
        "preemptions": np.asarray(log.preemptions, dtype=np.int64),
    }


def streams_at(first: np.ndarray, finish: np.ndarray, at: np.ndarray) -> np.ndarray:
    """For each request ``i``, the other requests whose tokens are being streamed at ``at[i]``
    (one of ``i``'s own token times): ``#{j ≠ i : first_j ≤ at_i ≤ finish_j}``."""
    streaming = (np.searchsorted(np.sort(first), at, side="right")
                 - np.searchsorted(np.sort(finish), at, side="left"))
    return np.maximum(streaming - 1, 0)   # less the request itself (first_i ≤ at_i ≤ finish_i)


def output_latency_s(hw: HardwareProfile, first: np.ndarray, finish: np.ndarray,
                     at: np.ndarray) -> np.ndarray:
    """The batching model's latency outside the engine core (HTTP, the API server, the client)
    of a token each request gets at ``at``: ``step.latency_s + step.latency_per_stream_s · S``,
    ``S`` the other requests being streamed then (:func:`streams_at`)."""
    per = hw.step_latency_per_stream_s
    base = np.full(len(at), hw.step_latency_s)
    return base + per * streams_at(first, finish, at) if per else base


def _nocache_times(scenario: Scenario, trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Absolute first-token and finish times of ``trace`` through the batching model with
    every cache tier off (the no-cache baseline under ``hardware.scheduler: vllm``)."""
    from simkv.model.batching import nocache_times  # only needed under scheduler: vllm

    first, finish = nocache_times(scenario, trace)
    return np.asarray(first, dtype=float), np.asarray(finish, dtype=float)


def _block_bytes(cache: CacheBase, tier: str) -> int:
    """Bytes one block occupies in ``tier`` (and moves when loaded from it): the archive
    stores compressed blocks, every other tier the KV bytes."""
    return cache.archive_bytes if tier == "archive" else cache.block_bytes
