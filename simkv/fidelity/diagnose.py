"""Where per-request hits disagree, and which assumption of the simulator most likely differs.

The diagnostics use only what both results and the trace hold: per-request hit tokens per
tier, arrival and TTFT on each side, and the trace's block hashes. For a request whose total
hit tokens differ, the first block hit on one side but not the other is block ``k = min(hit_sim,
hit_meas) // block_size``; the request ``p`` that last held that block before it (the latest
earlier request of the trace whose prompt contains that hash) is the one whose store should
have made it available. Each cause below says what it can and cannot tell (:data:`CAUSES`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simkv.core.errors import SimkvError
from simkv.core.tiers import TIER_NAMES
from simkv.fidelity.compare import HIT_COLUMNS, Side
from simkv.traces.schema import Trace, read_trace

#: ``delay(tier, blocks)``: seconds from a prefill to that many blocks being readable in the
#: tier (``None``: unknown); see :func:`write_delays`.
WriteDelay = Callable[[str, int], float | None]

CAUSES: dict[str, str] = {
    "tier_placement": (
        "same total hit tokens, served from different tiers: the prefix was found, but one side "
        "had demoted or evicted it from a faster tier (eviction order across tiers, or a write "
        "to the lower tier not finished yet). Cannot tell which of the two."),
    "granularity": (
        "hit tokens differ by less than one block or chunk, or are not whole blocks: the "
        "engine's chunk size differs from the trace's block size, or the engine recomputes the "
        "last chunk of a fully cached prompt. Cannot tell a real miss smaller than a chunk."),
    "never_stored": (
        "one side hit a block that no earlier request of the trace contains: the cache was not "
        "cold at the start, or the replay's prompts do not reproduce the trace's block hashes "
        "(prompt derivation, tokenizer, chunk hashing). The simulator can never hit such a block."),
    "write_timing": (
        "the block's last store had not landed on one side when this request arrived: either "
        "the request that stored it had not finished its prefill on one side (each side's own "
        "arrival + TTFT), or the tier the other side served it from (CPU, disk, archive) is "
        "written asynchronously and the request arrived sooner after that prefill than the "
        "write takes (the scenario's write time for the blocks that request stored, the "
        "simulated run's longest disk write lag, the archive worker's interval plus its "
        "upload). Whether it counts depends on when each system makes a block visible. "
        "Cannot tell when the write actually landed, only that it may not have."),
    "eviction": (
        "the block's last store was complete on both sides (or in flight on both, so an older "
        "copy served the hit) but one side no longer held it: "
        "capacity, eviction order or TTL differ (e.g. the engine's usable capacity is not the "
        "scenario's). Cannot tell which of these, nor when it was evicted."),
    "unknown": (
        "the request that last held the block is not among the compared requests (it failed or "
        "is missing on one side), or the trace is not available: no block-level diagnosis."),
}


def tier_columns(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """``(tier, hit column)`` of the tiers both sides report. A replay through vLLM reports a
    request's cached tokens, not their tiers (its per-tier columns are null): none, and its hits
    compare by total."""
    return [(t, col) for t, col in zip(TIER_NAMES, HIT_COLUMNS, strict=True)
            if frame[f"sim_{col}"].notna().any() and frame[f"meas_{col}"].notna().any()]


def _differ(frame: pd.DataFrame, cols: list[tuple[str, str]]) -> np.ndarray:
    """Per request: whether its hits differ in any of ``cols`` (none: in total)."""
    if not cols:
        return frame["sim_hit_tokens"].to_numpy() != frame["meas_hit_tokens"].to_numpy()
    return np.logical_or.reduce([frame[f"sim_{c}"].to_numpy() != frame[f"meas_{c}"].to_numpy()
                                 for _, c in cols])


def hit_agreement(frame: pd.DataFrame) -> dict[str, Any]:
    """How many compared requests hit exactly the same tokens in every tier (``per_tier``
    false: in total, where a side reports no tiers), and per tier how many differ (``None``:
    not reported)."""
    cols = tier_columns(frame)
    by_tier: dict[str, int | None] = dict.fromkeys(TIER_NAMES)
    for t, col in cols:
        by_tier[t] = int(_differ(frame, [(t, col)]).sum())
    same = ~_differ(frame, cols)
    total_same = frame["sim_hit_tokens"].to_numpy() == frame["meas_hit_tokens"].to_numpy()
    return {"requests": len(frame), "identical": int(same.sum()),
            "identical_fraction": float(same.mean()) if len(frame) else None,
            "total_identical": int(total_same.sum()), "per_tier": bool(cols), "differing_by_tier": by_tier}


def hit_unit(values: np.ndarray) -> int | None:
    """The greatest common divisor of the nonzero hit token counts (None if there is none): the
    granularity a cache served in."""
    nz = [int(v) for v in values if v]
    return reduce(math.gcd, nz) if nz else None


def find_trace(sides: list[Side], explicit: Path | None) -> tuple[Trace | None, str]:
    """The trace both results ran: ``explicit``, else each side's ``scenario.yaml`` ``trace``
    (relative to its directory), else ``summary.json``'s ``trace`` (relative to the working
    directory). Only a trace whose content hash matches the results' is taken; the note says
    what was used or why nothing was."""
    from simkv.report.data import read_yaml

    want = sides[0].trace_sha256
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(explicit)
    for s in sides:
        sc = s.path / "scenario.yaml"
        if sc.is_file():
            tr = read_yaml(sc).get("trace")
            if isinstance(tr, str):
                candidates.append(Path(tr) if Path(tr).is_absolute() else s.path / tr)
        if isinstance(s.summary.get("trace"), str):
            candidates.append(Path(s.summary["trace"]))
    tried = []
    for c in candidates:
        if not c.is_file():
            tried.append(f"{c} (not found)")
            continue
        try:
            trace = read_trace(c)
        except SimkvError as exc:
            tried.append(f"{c} ({exc})")
            continue
        if trace.content_sha256 == want:
            return trace, f"trace {os.path.normpath(c)}"
        tried.append(f"{c} (another trace: content hash differs)")
    if explicit is not None:
        raise SimkvError(f"--trace {explicit}: " + (tried[0] if tried else "not usable")
                         + f"; the results are of trace_sha256 {want}")
    return None, "no trace found (" + ("; ".join(tried) or "none named") + ")"


def _previous_holder(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Per flat block position: the trace row of the previous occurrence of the same hash (-1 if
    none), and each position's own row."""
    ids = trace.block_ids_flat
    rows = np.repeat(np.arange(len(trace)), np.diff(trace.block_offsets))
    order = np.argsort(ids, kind="stable")
    prev = np.full(len(ids), -1, np.int64)
    same = ids[order][1:] == ids[order][:-1]
    prev[order[1:][same]] = rows[order[:-1][same]]
    return prev, rows


def write_delays(sides: list[Side], block_size: int | None) -> WriteDelay:
    """The longest time from a request's prefill to ``n`` of its blocks being readable in a
    lower tier, over the results directories' scenarios (their hardware profiles' write
    times); for the disk at least a simulated run's longest write lag (``disk_write_lag_max_s``,
    queueing included). ``None`` for a tier no scenario enables, or without a scenario."""
    from simkv.report.tiers import run_time_model

    models = [m for m in (run_time_model(s.path, block_size) for s in sides) if m is not None]
    lag = max([float(s.summary.get("disk_write_lag_max_s") or 0.0) for s in sides] or [0.0])

    def delay(tier: str, blocks: int) -> float | None:
        known = [m.write_delay_s(tier, blocks) for m in models
                 if tier != "gpu" and getattr(m.scenario.tiers, tier).enabled]
        if not known:
            return None
        return max([*known, lag]) if tier == "disk" else max(known)

    return delay


def _write_not_landed(rec: pd.Series, w: pd.Series, B: int, write_delay: WriteDelay | None,
                      cols: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Whether a lower tier that served more of request ``rec`` on one side may not yet have
    held the block on the other: ``rec`` arrived there sooner after the storing request ``w``'s
    prefill than the tier's write of ``w``'s blocks takes. The tier, the side that missed, the
    gap and the write time, or ``None``."""
    if write_delay is None:
        return None
    for tier, col in cols:
        if tier == TIER_NAMES[0]:
            continue
        s_t, m_t = int(rec[f"sim_{col}"]), int(rec[f"meas_{col}"])
        if s_t == m_t:
            continue
        side = "meas" if s_t > m_t else "sim"
        stored = max(int(w[f"{p}_input_tokens"]) // B - int(w[f"{p}_hit_tokens"]) // B
                     for p in ("sim", "meas"))
        delay = write_delay(tier, max(stored, 1))
        gap = float(rec[f"{side}_arrival_s"]) - float(w[f"{side}_arrival_s"] + w[f"{side}_ttft_s"])
        if delay is not None and gap < delay:
            return {"tier": tier, "missed_on": "sim" if side == "sim" else "measured",
                    "gap_s": gap, "write_s": delay}
    return None


def divergences(frame: pd.DataFrame, trace: Trace | None, block_size: int | None,
                chunk_size: int | None, limit: int = 10,
                write_delay: WriteDelay | None = None) -> dict[str, Any]:
    """The first ``limit`` requests (in the simulated run's order) whose per-tier hit tokens
    differ, each with the tiers that differ and a likely cause; and the count of each cause
    over all differing requests. ``write_delay`` (:func:`write_delays`) tells a block whose
    asynchronous write to a lower tier had not landed yet (``write_timing``) from one that
    tier no longer held (``eviction``)."""
    cols = tier_columns(frame)
    diff = _differ(frame, cols)
    B = block_size or (trace.block_size if trace is not None else None)
    granule = max(B or 1, chunk_size or 1)
    by_id = frame.set_index("request_id")
    if trace is not None:
        prev, _ = _previous_holder(trace)
        offsets = trace.block_offsets
        trace_ids = trace.table.column("request_id").to_pylist()
        row_of = {r: i for i, r in enumerate(trace_ids)}
    causes: dict[str, int] = {}
    first: list[dict[str, Any]] = []
    for i in np.flatnonzero(diff):
        rec = frame.iloc[i]
        rid = rec["request_id"]
        s_tot, m_tot = int(rec["sim_hit_tokens"]), int(rec["meas_hit_tokens"])
        detail: dict[str, Any] = {}
        if s_tot == m_tot:
            cause = "tier_placement"
        elif B and (abs(s_tot - m_tot) < granule or s_tot % B or m_tot % B
                    or (max(s_tot, m_tot) == int(rec["sim_input_tokens"]) // B * B
                        and abs(s_tot - m_tot) <= granule)):
            cause = "granularity"
        elif trace is None or rid not in row_of:
            cause = "unknown"
        else:
            r = row_of[rid]
            k = min(s_tot, m_tot) // B
            pos = offsets[r] + k
            p = int(prev[pos]) if pos < offsets[r + 1] else -1
            detail["block"] = int(k)
            if p < 0:
                cause = "never_stored"
            elif trace_ids[p] not in by_id.index:
                cause, detail["stored_by"] = "unknown", trace_ids[p]
            else:
                w = by_id.loc[trace_ids[p]]
                detail["stored_by"] = trace_ids[p]
                flight = {side: float(w[f"{side}_arrival_s"] + w[f"{side}_ttft_s"])
                          > float(rec[f"{side}_arrival_s"]) for side in ("sim", "meas")}
                detail["store_in_flight"] = {"sim": flight["sim"], "measured": flight["meas"]}
                landing = None if flight["sim"] != flight["meas"] else _write_not_landed(
                    rec, w, B, write_delay, cols)
                if landing:
                    detail["write_not_landed"] = landing
                cause = "write_timing" if flight["sim"] != flight["meas"] or landing else "eviction"
        causes[cause] = causes.get(cause, 0) + 1
        if len(first) < limit:
            tiers = [{"tier": t, "sim": int(rec[f"sim_{c}"]), "measured": int(rec[f"meas_{c}"])}
                     for t, c in cols if rec[f"sim_{c}"] != rec[f"meas_{c}"]]
            first.append({"request_id": str(rid), "arrival_s": float(rec["sim_arrival_s"]),
                          "hit_tokens": {"sim": s_tot, "measured": m_tot}, "tiers": tiers,
                          "cause": cause, **detail})
    return {"requests": int(diff.sum()), "first": first, "causes": causes,
            "hit_unit_tokens": {"sim": hit_unit(frame["sim_hit_tokens"].to_numpy()),
                                "measured": hit_unit(frame["meas_hit_tokens"].to_numpy())},
            "block_size": B, "chunk_size": chunk_size}
