"""The profile document: a calibration's measurements fitted into a ``kind: table`` profile
(prefill table, loads, stores, the request section, defaults for what was not measured, the
fit errors and notes) and written as YAML."""

from __future__ import annotations

import datetime as _dt
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simkv.core.profiles import PROFILE_VERSION, AnalyticProfile, Transfers
from simkv.core.tiers import TIER_NAMES, archived_bytes
from simkv_engine.calibrate.archive_measure import _archive_notes, _archive_summary
from simkv_engine.calibrate.fits import fit_analytic, fit_line, leave_one_out
from simkv_engine.calibrate.plan import Plan
from simkv_engine.calibrate.probe import Probe


@dataclass
class Calibration:
    """What a calibration measured and fitted; :attr:`doc` is the profile document."""

    doc: dict[str, Any]
    prefill_rows: list[dict[str, float]]
    load_rows: list[dict[str, Any]]
    notes: list[str]


def _medians(samples: dict[int, list[float]]) -> tuple[list[int], list[float]]:
    ks = sorted(samples)
    return ks, [float(np.median(samples[k])) for k in ks]


def _rel(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas if meas > 0 else float("nan")


def _profile(probe: Probe, plan: Plan, scenario: Any, seconds: np.ndarray,
             loads: dict[str, dict[int, list[float]]], stores: dict[str, dict[int, list[float]]],
             chunk_bytes: int | None, notes: list[str], *, cold_dropped: bool,
             archive: dict[str, Any] | None = None) -> Calibration:
    C = probe.chunk_size
    new = np.asarray(plan.new_tokens, np.float64)
    cached = np.asarray(plan.cached_tokens, np.float64)
    nn, cc = np.meshgrid(new, cached, indexing="ij")
    const, per_token, attn = fit_analytic(nn, cc, seconds)
    analytic = AnalyticProfile(const, per_token, attn)
    a_pred = analytic.prefill_array(nn.ravel(), cc.ravel()).reshape(seconds.shape)
    a_err = np.abs(a_pred - seconds) / np.maximum(seconds, 1e-12)
    loo = leave_one_out(new, cached, seconds)

    prefill_rows = [{"new": int(new[i]), "cached": int(cached[j]), "measured_s": float(seconds[i, j]),
                     "table_s": float(seconds[i, j]), "table_loo_rel": float(loo[i, j]),
                     "analytic_s": float(a_pred[i, j]), "analytic_rel": float(a_err[i, j])}
                    for i, j in itertools.product(range(len(new)), range(len(cached)))]

    # Defaults for what is not measured: the analytic profile of the scenario's tiers.
    block_bytes = chunk_bytes or C * scenario.model.bytes_per_token
    archive_bytes = archived_bytes(block_bytes, scenario.tiers.archive.compression_ratio)
    default: Transfers = AnalyticProfile(0.0, 0.0, 0.0).transfers(scenario, block_bytes, archive_bytes)
    load_rows: list[dict[str, Any]] = []
    fitted: dict[str, dict[str, Any]] = {}
    for label, samples in [*loads.items(), *stores.items()]:
        if not samples:
            continue
        ks, med = _medians(samples)
        b0, b1 = fit_line(ks, med)
        errs = [_rel(b0 + b1 * k, m) for k, m in zip(ks, med, strict=True)]
        fitted[label] = {"chunks": ks, "median_s": med, "per_request_s": b0, "per_block_s": b1,
                         "fit_rel_error": errs}
        load_rows += [{"what": label, "chunks": k, "measured_s": m, "fit_s": b0 + b1 * k, "rel": e}
                      for k, m, e in zip(ks, med, errs, strict=True)]

    base_load, base_store = default.to_profile(TIER_NAMES)     # the scenario's, where not measured

    def entry(label: str, tier: str) -> dict[str, float]:
        f = fitted.get(label)
        return ({"per_block_s": f["per_block_s"], "per_request_s": f["per_request_s"]} if f
                else base_load[tier])

    def written(label: str, tier: str) -> dict[str, float]:
        return {"per_block_s": fitted[label]["per_block_s"]} if label in fitted else base_store[tier]

    load: dict[str, Any] = {"gpu": entry("gpu", "gpu")}
    store: dict[str, Any] = {}
    if "cpu" in probe.tiers:
        load["cpu"] = entry("cpu", "cpu")
        store["cpu"] = written("store", "cpu")
    load["disk"] = entry("disk_cold" if "disk_cold" in fitted else "disk_warm", "disk")
    store["disk"] = written("disk_write", "disk")
    load["archive"] = entry("archive", "archive")
    store["archive"] = base_store["archive"]
    measured_archive = _archive_summary(archive)
    if measured_archive is not None and measured_archive["uploads"]:
        store["archive"] = {"per_block_s": measured_archive["store_s_per_chunk"]}
    request = _request_section(fitted)
    if request:
        notes.append(
            "request: the engine's time per request besides loads, prefill and stores: per_request_s + "
            "per_block_s x chunks is the worker's rest (ttft - queue - load - prefill - store of fresh "
            "prompts) plus the store's intercept; store_per_block_s is the store slope of computed "
            "chunks, admit_per_block_s that of chunks loaded from the CPU tier; disk_evict_per_block_s "
            "is the store slope with the tiers full (every stored chunk evicts one from disk) minus "
            "store_per_block_s; " + ("latency_* is the client's TTFT minus the server's (streamed, one "
                                     "token, as simkv replay sends), by prompt tokens (calibration."
                                     "request.latency's chunks are tokens)" if "latency" in fitted else
                                     "measured in-process (no HTTP): latency_* is not measured"))

    if probe.prefill_only:
        pass                        # the probe's own notes say what was not measured
    elif "disk" not in probe.tiers:
        notes.append("disk: the engine has no disk tier; load.disk and store.disk are the analytic "
                     "default of the scenario's tiers.disk")
    else:
        notes.append(f"load.disk is the cold read: {probe.disk_cold}"
                     + ("" if cold_dropped else " (the page cache could not be dropped here)")
                     + "; the warm read (file in the page cache) is calibration.load.disk_warm. "
                     "store.disk is the per-chunk slope of the time from the request's end until "
                     "LMCache's asynchronous disk writes were done")
    if "archive" not in probe.tiers and not probe.prefill_only:
        notes.append("archive: not measured (the engine has no archive tier); load.archive and "
                     "store.archive are the analytic default of the scenario's tiers.archive "
                     "(compression ratio, compress / decompress and network speeds not measured)")
    elif measured_archive is not None:
        notes += _archive_notes(probe, measured_archive)
    notes.append(probe.gpu_note)
    if "cpu" in probe.tiers:
        notes.append("store.cpu is the per-chunk slope of the engine's store_s (GPU cache + LMCache "
                     "CPU copy, disk writes queued)")

    info = probe.describe()
    today = _dt.date.today().isoformat()
    measured_on = ", ".join(f"{k} {v}" for k, v in info.items() if k != "device")
    measured_on = f"{info.get('device', 'unknown device')}; {measured_on}; {today}; simkv calibrate"
    finite = loo[np.isfinite(loo)]
    doc: dict[str, Any] = {
        "version": PROFILE_VERSION, "kind": "table", "model": str(info.get("model", "unknown")),
        "block_size": C, "measured_on": measured_on,
        "fit_error": {
            "method": "leave-one-out: each grid point predicted by the table without its row and "
                      "without its column (interpolated between the neighbours, extrapolated at an "
                      "edge), the larger relative error; the table itself is exact at grid points",
            "max_rel": float(finite.max()) if finite.size else None,
            "prefill_rel": _nan_none(loo),
            "analytic_max_rel": float(a_err.max()),
        },
        "notes": "; ".join(notes),
        "calibration": {
            "date": today, **{k: str(v) for k, v in info.items()},
            "plan": {"new_tokens": plan.new_tokens, "cached_tokens": plan.cached_tokens,
                     "chunks": plan.chunks, "repeats": plan.repeats, "warmup": plan.warmup,
                     "seed": plan.seed, "statistic": "median",
                     **({"salt": probe.prompt_salt} if probe.prompt_salt is not None else {})},
            **({} if probe.prefill_only else {"chunk_bytes": int(block_bytes)}),   # vLLM: not known
            "analytic_fit": {"const_s": const, "per_token_s": per_token, "attn_s": attn,
                             "formula": "const_s + per_token_s*n + attn_s*n*(n+c), least squares on "
                                        "relative residuals, constants >= 0",
                             "prefill_rel": a_err.tolist()},
            "load": {k: v for k, v in fitted.items() if k not in _STORE_LABELS},
            "store": {k: v for k, v in fitted.items() if k in ("store", "disk_write", "admit", "store_full")},
            "request": {k: v for k, v in fitted.items() if k in ("rest", "latency")},
        },
        "prefill": {"new_tokens": [int(v) for v in new], "cached_tokens": [int(v) for v in cached],
                    "seconds": seconds.tolist()},
        "load": load,
        "store": store,
        **({"request": request} if request else {}),
    }
    if measured_archive is not None:
        doc["calibration"]["archive"] = measured_archive
        if measured_archive["uploads"]:
            doc["archive"] = {"compression_ratio": measured_archive["compression_ratio"]}
    return Calibration(doc, prefill_rows, load_rows, notes)


_STORE_LABELS = ("store", "disk_write", "admit", "store_full", "rest", "latency")


def _request_section(fitted: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The profile's ``request`` section from the fitted lines (empty: nothing measured)."""
    if "rest" not in fitted:
        return {}
    rest, store = fitted["rest"], fitted.get("store", {})
    out = {"per_request_s": rest["per_request_s"] + store.get("per_request_s", 0.0),
           "per_block_s": rest["per_block_s"],
           "store_per_block_s": store.get("per_block_s", 0.0),
           "admit_per_block_s": fitted.get("admit", {}).get("per_block_s", 0.0)}
    if "store_full" in fitted:
        slope = fitted["store_full"]["per_block_s"]
        out["disk_evict_per_block_s"] = max(slope - out["store_per_block_s"], 0.0)
    if "latency" in fitted:
        out |= {"latency_const_s": fitted["latency"]["per_request_s"],
                "latency_per_token_s": fitted["latency"]["per_block_s"]}
    return out


def _nan_none(a: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]


def write_profile(cal: Calibration, path: Path) -> None:
    """Write the profile document as YAML (atomically), with a header saying what it is."""
    import yaml

    from simkv.core.fileio import atomic_write

    fit = cal.doc["calibration"]["analytic_fit"]
    worst = cal.doc["fit_error"]["analytic_max_rel"]
    header = (f"# Hardware profile measured by `simkv calibrate` (kind: table, version {PROFILE_VERSION}); "
              "see docs/system.md, \"Calibrating a profile\".\n"
              f"# {cal.doc['measured_on']}\n"
              f"# Analytic fit for comparison: prefill(n, c) = {fit['const_s']:.4g} + "
              f"{fit['per_token_s']:.4g}*n + {fit['attn_s']:.4g}*n*(n+c) (max relative error {worst:.1%})"
              "\n# prefill.seconds: one row per new_tokens, one column per cached_tokens.\n")
    text = header + yaml.safe_dump(cal.doc, sort_keys=False, width=110)
    atomic_write(path, lambda tmp: tmp.write_text(text))
