"""``simkv validate SIM_DIR REPLAY_DIR``: how far the simulator's per-request results are from
a real engine's on the same trace and scenario (hit rates, TTFT, per-request hits), with
diagnostics where hits diverge and the issue's fidelity targets as pass/fail.

:mod:`.compare` loads and joins both sides and computes the figures, :mod:`.diagnose` the
hit agreement and divergences, :mod:`.report` the Markdown, JSON and charts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simkv.core.errors import SimkvError
from simkv.core.fileio import atomic_write, make_dir
from simkv.fidelity.compare import check_same_inputs, figures, join, load_side
from simkv.fidelity.diagnose import divergences, find_trace, hit_agreement, write_delays
from simkv.fidelity.report import markdown, tier_hits, ttft_error_cdf, ttft_scatter
from simkv.report.charts import Chart


@dataclass(frozen=True)
class Target:
    """A fidelity gate: ``value <= limit`` (``at_most``) or ``value >= limit``."""

    name: str
    label: str
    limit: float
    at_most: bool = True


_LABELS = {
    "ttft_p50": "TTFT p50 |relative error|",
    "ttft_p90": "TTFT p90 |relative error|",
    "e2e_p50": "e2e p50 |relative error|",
    "ttft_median_abs": "per-request median |relative TTFT error|",
    "hits_identical": "requests with identical per-tier hit tokens (in total where the replay "
                      "reports no tiers: vLLM; deterministic policies)",
}


def _target_set(ttft_p50: float, ttft_p90: float, e2e_p50: float, median_abs: float) -> tuple[Target, ...]:
    limits = {"ttft_p50": ttft_p50, "ttft_p90": ttft_p90, "e2e_p50": e2e_p50, "ttft_median_abs": median_abs}
    return (*(Target(name, _LABELS[name], limit) for name, limit in limits.items()),
            Target("hits_identical", _LABELS["hits_identical"], 1.0, at_most=False))


#: The fidelity gates by where the replay ran (``--targets``): ``cpu`` (the default: a small
#: model on a shared CPU, where the machine's own noise is larger) and ``gpu`` (the issue's
#: gates for a real-size model on a GPU). The hits one asks deterministic policies.
TARGET_SETS: dict[str, tuple[Target, ...]] = {
    "cpu": _target_set(ttft_p50=0.10, ttft_p90=0.15, e2e_p50=0.10, median_abs=0.15),
    "gpu": _target_set(ttft_p50=0.02, ttft_p90=0.05, e2e_p50=0.05, median_abs=0.05),
}


def parse_targets(items: list[str] | None, target_set: str = "cpu") -> tuple[Target, ...]:
    """The targets of ``target_set`` (``cpu`` or ``gpu``) with ``name=limit`` overrides (e.g.
    ``ttft_p50=0.03``)."""
    if target_set not in TARGET_SETS:
        raise SimkvError(f"--targets {target_set!r}: expected one of {', '.join(TARGET_SETS)}")
    by_name = {t.name: t for t in TARGET_SETS[target_set]}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in by_name:
            raise SimkvError(f"--target {item!r}: expected NAME=LIMIT with NAME one of {', '.join(by_name)}")
        try:
            limit = float(value)
        except ValueError:
            raise SimkvError(f"--target {item!r}: {value!r} is not a number") from None
        if not math.isfinite(limit) or limit < 0:
            raise SimkvError(f"--target {item!r}: the limit must be a finite number >= 0")
        t = by_name[name.strip()]
        by_name[t.name] = Target(t.name, t.label, limit, t.at_most)
    return tuple(by_name.values())


def _target_value(name: str, data: dict[str, Any]) -> float | None:
    """The target's figure in ``data`` (``None``: not known on both sides, e.g. the e2e latency
    of a ``fifo`` simulation, which models no decode)."""
    if name in ("ttft_p50", "ttft_p90", "e2e_p50"):
        metric, _, p = name.partition("_")
        e = data[f"{metric}_s"]["overall"][p]["rel_error"]
        return None if e is None else abs(e)
    if name == "ttft_median_abs":
        return data["ttft_per_request"]["median_abs_rel_error"]
    return data["hits"]["identical_fraction"]


def evaluate_targets(data: dict[str, Any], targets: tuple[Target, ...]) -> list[dict[str, Any]]:
    """One row per target: its value, limit, and ``pass`` (``None``: n/a, the value is unknown;
    never a failure)."""
    rows = []
    for t in targets:
        v = _target_value(t.name, data)
        ok = None if v is None else (v <= t.limit if t.at_most else v >= t.limit)
        frac = t.name != "hits_identical"
        rows.append({"name": t.name, "label": t.label, "value": v, "limit": t.limit,
                     "op": "<=" if t.at_most else ">=", "pass": ok,
                     "shown": "n/a" if v is None else (f"{v:.2%}" if frac else f"{v:.2%} of requests"),
                     "limit_shown": ("≤ " if t.at_most else "≥ ") + f"{t.limit:.2%}"})
    return rows


@dataclass
class Validation:
    """What :func:`validate` produced: the figures (as in ``fidelity.json``) and the files."""

    data: dict[str, Any]
    markdown: Path
    json: Path
    charts: list[Chart]

    @property
    def failed_targets(self) -> list[dict[str, Any]]:
        return [t for t in self.data["targets"] if t["pass"] is False]


def _clean(x: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def validate(sim_dir: str | Path, replay_dir: str | Path, out_dir: str | Path, *,
             ignore_scenario: bool = False, trace: str | Path | None = None,
             target_set: str = "cpu", targets: tuple[Target, ...] | None = None,
             examples: int = 10) -> Validation:
    """Compare ``sim_dir`` (``simkv run -o``) with ``replay_dir`` (a replay's results) and write
    ``fidelity.md``, ``fidelity.json`` and the PNG charts into ``out_dir``. The targets are
    ``target_set``'s (:data:`TARGET_SETS`), or ``targets`` (:func:`parse_targets` of that set
    with overrides)."""
    sim = load_side(sim_dir, "simulated")
    meas = load_side(replay_dir, "measured")
    check_same_inputs(sim, meas, ignore_scenario=ignore_scenario)
    joined = join(sim, meas)
    tr, note = find_trace([sim, meas], Path(trace) if trace is not None else None)
    block = sim.summary.get("block_size") or (tr.block_size if tr is not None else None)
    chunk = meas.summary.get("chunk_size")
    data: dict[str, Any] = {
        "sim": {"dir": str(sim.path), "trace_sha256": sim.trace_sha256,
                "scenario_sha256": sim.scenario_sha256},
        "measured": {"dir": str(meas.path), "trace_sha256": meas.trace_sha256,
                     "scenario_sha256": meas.scenario_sha256},
        "requests": {"compared": len(joined.frame), "failed": len(joined.failed),
                     "only_sim": len(joined.only_sim), "only_measured": len(joined.only_meas)},
        "failed_examples": [{"request_id": str(r), "error": str(e)}
                            for r, e in joined.failed.head(examples).itertuples(index=False)],
        **figures(joined),
        "hits": hit_agreement(joined.frame),
        "divergence": divergences(joined.frame, tr, block, chunk, examples,
                                  write_delays([sim, meas], block)),
        "trace_note": note,
    }
    data["target_set"] = target_set
    data["targets"] = evaluate_targets(data, targets or parse_targets(None, target_set))
    data = _clean(data)
    out = make_dir(Path(out_dir))
    try:
        charts = [ttft_scatter(joined.frame, out), ttft_error_cdf(joined.frame, out),
                  tier_hits(data["hit_rate"], out)]
    except OSError as exc:
        raise SimkvError(f"{out}: cannot write the charts: {exc.strerror or exc}") from None
    md, js = out / "fidelity.md", out / "fidelity.json"
    text = markdown(data, charts)
    atomic_write(md, lambda p: p.write_text(text))
    atomic_write(js, lambda p: p.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n"))
    return Validation(data, md, js, charts)


__all__ = ["TARGET_SETS", "Target", "Validation", "parse_targets", "validate"]
