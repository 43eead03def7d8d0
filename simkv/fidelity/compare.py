"""Join a simulated run with a measured one (a replay against a real engine) per request, and
compute what the simulator got right: token hit rates, TTFT percentiles and per-request TTFT
errors, and whether each request hit the same tokens in the same tiers.

Both directories hold the project's one result schema (:data:`~simkv.core.schema.REQUEST_SCHEMA`
in ``requests.parquet``, with the trace and scenario hashes in its metadata). A replay may add
an ``error`` column: rows where it is set (non-empty) did not complete and are left out of
every statistic, but counted and listed.

Conventions (the sign says which way the simulator is off):

* hit rates: ``rate = Σ hit_tokens / Σ input_tokens`` over the compared requests (per tier:
  that tier's hit tokens; ``None`` on a side that reports no tiers, e.g. a replay through vLLM,
  whose ``cached_tokens`` is a total); the error is ``sim − measured`` in fraction points;
* TTFT percentiles: linear interpolation (``numpy.percentile``) of each side's TTFTs, error
  ``(sim − measured) / measured``;
* per request: ``e_i = (ttft_sim_i − ttft_meas_i) / ttft_meas_i`` (undefined, and counted,
  where the measured TTFT is 0); reported as the median and p90 of ``|e_i|`` and the median
  of ``e_i`` (the bias);
* end-to-end latency (``e2e_s``) and time per output token (``tpot_s``): the same percentiles
  and errors as TTFT, over the requests where both sides know the value (a ``fifo`` simulation
  models no decode: then none, and every figure is ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simkv.core.errors import SimkvError
from simkv.core.schema import read_requests, request_metadata
from simkv.core.tiers import TIER_NAMES
from simkv.metrics.summary import percentiles, ratio

HIT_COLUMNS = tuple(f"{t}_hit_tokens" for t in TIER_NAMES)
#: Decode latencies compared where both sides know them.
DECODE_LATENCIES = ("e2e_s", "tpot_s")


@dataclass
class Side:
    """One results directory: its rows, its metadata hashes, its summary (may be empty)."""

    label: str
    path: Path
    rows: pd.DataFrame
    trace_sha256: str | None
    scenario_sha256: str | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> pd.Series:
        """True for rows the engine did not complete (``error`` set)."""
        if "error" not in self.rows.columns:
            return pd.Series(False, index=self.rows.index)
        err = self.rows["error"]
        return err.notna() & (err.astype(str).str.len() > 0)


def load_side(path: str | Path, label: str) -> Side:
    """Read a results directory (``requests.parquet`` required, ``summary.json`` optional)."""
    from simkv.report.data import read_json

    path = Path(path)
    if not path.is_dir():
        raise SimkvError(f"{path}: no such directory (the {label} results: expected "
                         "requests.parquet, summary.json, scenario.yaml)")
    req = path / "requests.parquet"
    if not req.is_file():
        raise SimkvError(f"{path}: no requests.parquet (the {label} results, as 'simkv run -o' "
                         "or the replay writes them)")
    rows = read_requests(req)
    meta = request_metadata(req)
    summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    dup = rows["request_id"].duplicated()
    if dup.any():
        raise SimkvError(f"{req}: request_id {rows['request_id'][dup].iloc[0]!r} appears twice")
    return Side(label, path, rows, meta.get("trace_sha256"), meta.get("scenario_sha256"), summary)


def check_same_inputs(sim: Side, meas: Side, *, ignore_scenario: bool = False) -> None:
    """Refuse results of different traces, or (unless ``ignore_scenario``) scenarios."""
    keys = [("trace_sha256", "traces")] + ([] if ignore_scenario else [("scenario_sha256", "scenarios")])
    for key, what in keys:
        a, b = getattr(sim, key), getattr(meas, key)
        if a is None or b is None:
            missing = sim if a is None else meas
            raise SimkvError(f"{missing.path / 'requests.parquet'}: no {key} in its metadata; "
                             f"cannot tell whether both results are of the same {what[:-1]}")
        if a != b:
            hint = (" (a perturbed scenario on purpose? pass --ignore-scenario)"
                    if key == "scenario_sha256" else "")
            raise SimkvError(f"results of different {what}: {sim.path} has {key} {a} but "
                             f"{meas.path} has {b}{hint}")


def _pct(values: np.ndarray) -> dict[str, float | None]:
    return {f"p{p}": q for p, q in percentiles(values).items()}


def rel_error(sim: float | None, meas: float | None) -> float | None:
    """``(sim − meas) / meas``; None where undefined (a missing value or ``meas == 0``)."""
    if sim is None or meas is None or meas == 0:
        return None
    return (sim - meas) / meas


def _rate_figures(sim: pd.DataFrame, meas: pd.DataFrame, tokens: float) -> dict[str, Any]:
    """Total and per-tier token hit rates of both sides, with ``error = sim − measured``."""

    def rate(side: pd.DataFrame, col: str) -> float | None:
        return None if side[col].isna().all() else ratio(side[col].sum(), tokens)

    def fig(col: str) -> dict[str, float | None]:
        s, m = rate(sim, col), rate(meas, col)
        return {"sim": s, "measured": m, "error": None if s is None or m is None else s - m}

    return {"total": fig("hit_tokens"), "by_tier": {t: fig(f"{t}_hit_tokens") for t in TIER_NAMES}}


def _latency_figures(sim: np.ndarray, meas: np.ndarray) -> dict[str, Any]:
    ps, pm = _pct(sim), _pct(meas)
    return {k: {"sim": ps[k], "measured": pm[k], "rel_error": rel_error(ps[k], pm[k])} for k in ps}


@dataclass
class Joined:
    """The compared requests, in the simulated run's order: ``sim_*`` and ``meas_*`` columns,
    plus who was left out and why."""

    frame: pd.DataFrame
    only_sim: list[str]
    only_meas: list[str]
    failed: pd.DataFrame  # request_id, error


def join(sim: Side, meas: Side) -> Joined:
    """Inner join on ``request_id``; failed measured rows (and failed simulated ones, should a
    simulator ever write an error) are set aside."""
    failed_mask = meas.failed
    failed = (meas.rows.loc[failed_mask, ["request_id", "error"]].reset_index(drop=True)
              if failed_mask.any() else pd.DataFrame({"request_id": [], "error": []}))
    sim_ok = sim.rows[~sim.failed.to_numpy()]
    keep = ["request_id", "arrival_s", "prompt_class", "input_tokens", "hit_tokens", *HIT_COLUMNS,
            "queue_s", "load_s", "prefill_s", "ttft_s", *DECODE_LATENCIES]
    s = sim_ok[keep].add_prefix("sim_").rename(columns={"sim_request_id": "request_id"})
    m = meas.rows.loc[~failed_mask.to_numpy(), keep].add_prefix("meas_").rename(
        columns={"meas_request_id": "request_id"})
    frame = s.merge(m, on="request_id", how="inner", sort=False)
    sim_ids, meas_ids = set(sim.rows["request_id"]), set(meas.rows["request_id"])
    only_sim = [r for r in sim.rows["request_id"] if r not in meas_ids]
    only_meas = [r for r in meas.rows["request_id"] if r not in sim_ids]
    if frame.empty:
        raise SimkvError(f"no request of {sim.path} completed in {meas.path} (none in common, or "
                         f"all {len(failed)} failed): nothing to compare")
    bad = frame["sim_input_tokens"] != frame["meas_input_tokens"]
    if bad.any():
        row = frame[bad].iloc[0]
        raise SimkvError(f"request {row['request_id']!r}: input_tokens {row['sim_input_tokens']} in "
                         f"{sim.path} but {row['meas_input_tokens']} in {meas.path}: not the same "
                         "requests")
    return Joined(frame, only_sim, only_meas, failed)


def figures(j: Joined) -> dict[str, Any]:
    """Hit-rate and TTFT figures of the compared requests (the module docstring's formulas)."""
    f = j.frame
    sim = f[[c for c in f.columns if c.startswith("sim_")]].rename(columns=lambda c: c[4:])
    meas = f[[c for c in f.columns if c.startswith("meas_")]].rename(columns=lambda c: c[5:])
    tokens = float(sim["input_tokens"].sum())
    classes = sorted(sim["prompt_class"].unique())
    out: dict[str, Any] = {"hit_rate": _rate_figures(sim, meas, tokens)}
    out["hit_rate"]["by_class"] = {}
    out["ttft_s"] = {"overall": _latency_figures(sim["ttft_s"].to_numpy(), meas["ttft_s"].to_numpy()),
                     "by_class": {}}
    for c in classes:
        mask = (sim["prompt_class"] == c).to_numpy()
        rates = _rate_figures(sim[mask], meas[mask], float(sim["input_tokens"][mask].sum()))
        out["hit_rate"]["by_class"][str(c)] = {"requests": int(mask.sum()), **rates["total"]}
        out["ttft_s"]["by_class"][str(c)] = {
            "requests": int(mask.sum()),
            **_latency_figures(sim["ttft_s"].to_numpy()[mask], meas["ttft_s"].to_numpy()[mask])}
    out["ttft_per_request"] = per_request_errors(sim["ttft_s"].to_numpy(), meas["ttft_s"].to_numpy())
    for col in DECODE_LATENCIES:
        s, m = sim[col].to_numpy(float), meas[col].to_numpy(float)
        known = ~(np.isnan(s) | np.isnan(m))
        out[col] = {"requests": int(known.sum()), "overall": _latency_figures(s[known], m[known])}
    return out


def request_rel_errors(sim: np.ndarray, meas: np.ndarray) -> np.ndarray:
    """``(sim − meas) / meas`` per request; NaN where ``meas == 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(meas != 0, (sim - meas) / np.where(meas != 0, meas, 1.0), np.nan)


def per_request_errors(sim: np.ndarray, meas: np.ndarray) -> dict[str, Any]:
    e = request_rel_errors(sim, meas)
    ok = e[~np.isnan(e)]
    a = np.abs(ok)
    return {
        "requests": len(ok),
        "undefined": int(np.isnan(e).sum()),
        "median_abs_rel_error": float(np.median(a)) if len(a) else None,
        "p90_abs_rel_error": float(np.percentile(a, 90)) if len(a) else None,
        "max_abs_rel_error": float(a.max()) if len(a) else None,
        "median_rel_error": float(np.median(ok)) if len(ok) else None,
    }
