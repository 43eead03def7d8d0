"""``simkv regress``: CI regression of whole-run metrics against committed golden files.

A fixed list of cases (:data:`CASES`: a scenario, a canned trace, optional overrides) is
simulated and every summary metric is compared with ``reports/golden/<case>.json``.

Tolerances (see :func:`tolerance_for`; documented in ``reports/README.md``):

* **exact** for integers (requests, tokens, evictions, PUTs, ...), strings and booleans, and
  for the hit rates and ratios: each is one IEEE division of two integer counts, correctly
  rounded on every platform, and the counts come from a simulation that only uses basic
  arithmetic (+, -, *, /), which IEEE 754 makes reproducible bit for bit;
* **relative 1e-9** (absolute 1e-12 near zero) for every other float (durations, TTFT
  percentiles, storage integrals, dollars): these are sums of many floats, and numpy's and
  pandas' reductions may add in a different order on another CPU or library build (SIMD
  width, pairwise blocking), which moves the last few bits. On one machine they are
  bit-identical too; 1e-9 is far below any real change a policy edit makes;
* no metric currently needs a looser tolerance (:data:`LOOSER` is the one place to add one,
  with its reason).

A deliberate change is accepted with ``simkv regress --update``, which rewrites the golden
files and says which metrics changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simkv.core.errors import SimkvError
from simkv.core.fileio import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOLDEN_DIR = ROOT / "reports" / "golden"


@dataclass(frozen=True)
class Case:
    """One regression case: ``scenario`` on ``trace`` (paths relative to the repository root)
    with ``--set``-style ``overrides``."""

    name: str
    scenario: str
    trace: str
    overrides: tuple[str, ...] = ()
    what: str = ""


# The case list: the one place to add a case. Keep the whole set under ~30 s on 2 cores.
CASES: list[Case] = [
    Case("parity-lru-small", "scenarios/parity-lru.yaml", "traces/small.parquet",
         what="single LRU tier, no clock: the compiled fast path (LMCache parity)"),
    Case("parity-lru-medium", "scenarios/parity-lru.yaml", "traces/medium.parquet",
         what="the fast path on the 20k-request trace"),
    Case("belady-small", "scenarios/parity-lru.yaml", "traces/small.parquet",
         ("tiers.gpu.eviction=belady", "engine=simpy"),
         what="the offline oracle on the SimPy engine, zero service time"),
    Case("default-small", "scenarios/default.yaml", "traces/small.parquet",
         what="GPU + NVMe write-through, LRU, if_faster loads, queueing"),
    Case("lfu-offload-small", "scenarios/default.yaml", "traces/small.parquet",
         ("tiers.gpu.eviction=lfu", "tiers.disk.write_policy=offload_on_evict"),
         what="LFU GPU tier, disk written on eviction"),
    Case("three-tier-adaptive-small", "scenarios/three-tier-adaptive.yaml", "traces/small.parquet",
         what="GPU + NVMe + S3 archive, adaptive sliding TTL, costs"),
    Case("reuse-prob-glacier-small", "scenarios/three-tier-adaptive.yaml", "traces/small.parquet",
         ("ttl.heuristic=reuse_prob", "ttl.params={}", "ttl.mode=fixed",
          "tiers.archive.storage_class=glacier_ir"),
         what="learned reuse-probability TTL, fixed deadlines, Glacier IR prices"),
    Case("four-tier-small", "scenarios/four-tier.yaml", "traces/small.parquet",
         what="GPU + host RAM (CPU) + NVMe + S3 archive on the compiled engine"),
    Case("cpu-offload-small", "scenarios/four-tier.yaml", "traces/small.parquet",
         ("tiers.disk.write_policy=offload_on_evict", "tiers.archive.enabled=false",
          "ttl.heuristic=none", "ttl.params={}", "engine=simpy"),
         what="GPU victims to CPU, CPU victims to disk, on the SimPy engine"),
    # Three cells of the README's TTL study: too short, the optimum, too long. A change that
    # flattens the trade-off (archive hits, archive dollars, cost saved along the TTL) moves them.
    Case("ttl-study-1min", "scenarios/long-horizon-archive.yaml", "traces/long-horizon.parquet",
         ("ttl.params.alpha=0", "ttl.params.base_ttl=60"),
         what="TTL study: 1-minute archive TTL (few archive hits)"),
    Case("ttl-study-4h", "scenarios/long-horizon-archive.yaml", "traces/long-horizon.parquet",
         ("ttl.params.alpha=0", "ttl.params.base_ttl=14400"),
         what="TTL study: the 4-hour optimum of the committed example"),
    Case("ttl-study-1d-alpha1", "scenarios/long-horizon-archive.yaml", "traces/long-horizon.parquet",
         ("ttl.params.alpha=1", "ttl.params.base_ttl=86400"),
         what="TTL study: day-long adaptive TTLs (storage dollars dominate)"),
]


@dataclass(frozen=True)
class Tolerance:
    """``|now - golden| <= max(rel * max(|golden|, |now|), abs)``; ``rel == abs == 0`` is exact."""

    rel: float
    abs: float
    reason: str

    @property
    def exact(self) -> bool:
        return self.rel == 0 and self.abs == 0

    def __str__(self) -> str:
        return "exact" if self.exact else f"rel {self.rel:g}"

    def accepts(self, golden: Any, now: Any) -> bool:
        if self.exact or not _is_float(golden) or not _is_float(now):
            return (type(golden) is type(now) and golden == now) or _same_nan(golden, now)
        if _same_nan(golden, now):
            return True
        return abs(now - golden) <= max(self.rel * max(abs(golden), abs(now)), self.abs)


EXACT = Tolerance(0.0, 0.0, "a count, a label, or a ratio of two integer counts: exact on any platform")
FLOAT = Tolerance(1e-9, 1e-12, "a float reduction: summation order may differ across CPUs / builds")
# Metrics that need more than FLOAT, each with its reason. None do today.
LOOSER: dict[str, Tolerance] = {}
# Keys that describe the run rather than measure it: never compared.
IGNORED: dict[str, str] = {
    "simkv_version": "changes on every release, not a behaviour",
    "trace": "the trace path as given, which depends on the working directory",
    "trace_sha256": "the trace's identity, not a measure; a changed trace is reported as a note",
    "scenario_sha256": "the scenario's identity: it changes with any scenario key or default; the "
                       "changed keys are reported as notes",
    "engine_skipped": "why faster engines could not run the scenario: follows the scenario",
    "engine": "which engine ran: the engines must agree, so a switch that changes no metric is "
              "no regression (one that does shows in the metrics); reported as a note",
}
EXACT_FLOAT_PREFIXES = ("token_hit_rate", "block_hit_ratio", "request_full_hit_ratio",
                        "request_any_hit_ratio")


def _is_float(v: Any) -> bool:
    return isinstance(v, float)


def _same_nan(a: Any, b: Any) -> bool:
    return _is_float(a) and _is_float(b) and math.isnan(a) and math.isnan(b)


def tolerance_for(metric: str, golden: Any) -> Tolerance:
    """The tolerance one metric is compared with (see the module docstring)."""
    if metric in LOOSER:
        return LOOSER[metric]
    if not _is_float(golden) or metric.startswith(EXACT_FLOAT_PREFIXES):
        return EXACT
    return FLOAT


def flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys: ``token_hit_rate_by_class.chat``."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


@dataclass(frozen=True)
class Mismatch:
    """One metric that differs from its golden value (``None``: absent on that side)."""

    case: str
    metric: str
    golden: Any
    now: Any
    tolerance: Tolerance | None
    note: str = ""


def compare(case: str, golden: dict[str, Any], now: dict[str, Any]) -> list[Mismatch]:
    """Every metric of ``golden`` and ``now`` (flattened) outside its tolerance, plus metrics
    present on one side only."""
    g, n = flatten(golden), flatten(now)
    out = []
    for key in list(g) + [k for k in n if k not in g]:
        if key.split(".", 1)[0] in IGNORED:
            continue
        if key not in n:
            out.append(Mismatch(case, key, g[key], None, None, "metric no longer produced"))
        elif key not in g:
            out.append(Mismatch(case, key, None, n[key], None, "new metric, not in the golden file"))
        else:
            tol = tolerance_for(key, g[key])
            if not tol.accepts(g[key], n[key]):
                out.append(Mismatch(case, key, g[key], n[key], tol))
    return out


@dataclass
class CaseResult:
    """One case's outcome: its summary, mismatches, input changes and wall time."""

    case: Case
    summary: dict[str, Any]
    mismatches: list[Mismatch] = field(default_factory=list)
    input_notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    golden_status: str = ""  # update only: created | changed | unchanged


def select_cases(names: Iterable[str] | None, cases: list[Case] | None = None) -> list[Case]:
    """The cases named (all when ``names`` is empty); an unknown name is a :class:`SimkvError`."""
    cases = CASES if cases is None else cases
    names = list(names or [])
    if not names:
        return list(cases)
    by_name = {c.name: c for c in cases}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SimkvError(f"unknown regression case(s) {', '.join(unknown)}; cases: "
                         f"{', '.join(by_name)}")
    return [by_name[n] for n in names]


def golden_path(golden_dir: Path, case: Case) -> Path:
    return golden_dir / f"{case.name}.json"


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_case(case: Case) -> tuple[dict[str, Any], dict[str, Any]]:
    """Simulate one case; returns (summary, inputs) where inputs identify what was run."""
    from simkv.api import run

    scenario, trace = _resolve(case.scenario), _resolve(case.trace)
    for p, what in ((scenario, "scenario"), (trace, "trace")):
        if not p.exists():
            raise SimkvError(f"regression case {case.name}: {what} {p} does not exist")
    result = run(scenario, trace, overrides=list(case.overrides))
    inputs = {"trace_sha256": _sha256(trace), "scenario": result.scenario.relative_to(ROOT).to_dict()}
    # The trace as the case names it (relative to the repository), not this machine's path.
    summary = {**result.summary, "trace": case.trace}
    # Through JSON, so the values compared are the values stored (plain int / float / str).
    return json.loads(json.dumps(summary)), json.loads(json.dumps(inputs))


def golden_document(case: Case, summary: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The JSON stored for a case: what was run, the inputs' identity, and the summary."""
    return {"case": case.name, "scenario": case.scenario, "trace": case.trace,
            "overrides": list(case.overrides), "inputs": inputs, "summary": summary}


def _input_notes(old: dict[str, Any], new: dict[str, Any],
                 old_summary: dict[str, Any], new_summary: dict[str, Any]) -> list[str]:
    """What changed in the inputs (trace bytes, resolved scenario) and in the engine used."""
    notes = []
    if old_summary.get("engine") != new_summary.get("engine"):
        notes.append(f"engine: {old_summary.get('engine')!r} -> {new_summary.get('engine')!r}")
    if old.get("trace_sha256") and old.get("trace_sha256") != new.get("trace_sha256"):
        notes.append("the trace file changed since the golden file was written")
    old_sc, new_sc = flatten(old.get("scenario") or {}), flatten(new.get("scenario") or {})
    defaults = _scenario_defaults()
    for k in sorted(set(old_sc) | set(new_sc)):
        if old_sc.get(k) != new_sc.get(k):
            if k not in old_sc and k in defaults and new_sc.get(k) == defaults[k]:
                continue  # a key added since the golden file was written, at its default
            notes.append(f"scenario {k}: {old_sc.get(k)!r} -> {new_sc.get(k)!r}")
    return notes


def _scenario_defaults() -> dict[str, Any]:
    """Every scenario key at its default, flattened (``tiers.gpu.block_tokens``: 16, ...)."""
    from simkv.core.scenario import scenario_from_dict

    return flatten(json.loads(json.dumps(scenario_from_dict({}).to_dict())))


def _read_golden(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SimkvError(f"{path}: cannot read the golden file: {exc}; regenerate it with "
                         f"'simkv regress --update'") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        raise SimkvError(f"{path}: not a golden file (no 'summary'); regenerate it with "
                         f"'simkv regress --update'")
    return doc


def require_goldens(cases: list[Case], golden_dir: Path) -> None:
    """A :class:`SimkvError` naming every missing golden file, telling how to create them."""
    missing = [golden_path(golden_dir, c) for c in cases if not golden_path(golden_dir, c).exists()]
    if missing:
        raise SimkvError(f"no golden file {', '.join(str(m) for m in missing)}: run "
                         f"'simkv regress --update' to create it (then commit it)")


def check_case(case: Case, golden_dir: Path) -> CaseResult:
    """Run one case and compare it with its golden file."""
    doc = _read_golden(golden_path(golden_dir, case))
    t0 = time.perf_counter()
    summary, inputs = run_case(case)
    res = CaseResult(case, summary, wall_s=time.perf_counter() - t0)
    res.mismatches = compare(case.name, doc["summary"], summary)
    res.input_notes = _input_notes(doc.get("inputs") or {}, inputs, doc["summary"], summary)
    return res


def check(cases: list[Case], golden_dir: Path) -> list[CaseResult]:
    """Run ``cases`` and compare each with its golden file; missing golden files are a
    :class:`SimkvError` raised before anything runs."""
    require_goldens(cases, golden_dir)
    return [check_case(c, golden_dir) for c in cases]


def update_case(case: Case, golden_dir: Path) -> CaseResult:
    """Run one case and rewrite its golden file; the result says whether the file was
    created, changed (``mismatches`` lists what changed) or unchanged."""
    golden_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary, inputs = run_case(case)
    res = CaseResult(case, summary, wall_s=time.perf_counter() - t0)
    path = golden_path(golden_dir, case)
    if path.exists():
        try:
            old = json.loads(path.read_text())
            res.mismatches = compare(case.name, old.get("summary") or {}, summary)
            res.input_notes = _input_notes(old.get("inputs") or {}, inputs,
                                           old.get("summary") or {}, summary)
        except (OSError, json.JSONDecodeError, AttributeError):
            res.input_notes = ["the old golden file was unreadable"]
        res.golden_status = "changed" if res.mismatches or res.input_notes else "unchanged"
    else:
        res.golden_status = "created"
    text = json.dumps(golden_document(case, summary, inputs), indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return res


def update(cases: list[Case], golden_dir: Path) -> list[CaseResult]:
    """Run ``cases`` and rewrite their golden files."""
    return [update_case(c, golden_dir) for c in cases]
