"""How much each term of the time model moves the simulator's TTFT errors against one replay.

    python reports/fidelity/ablation.py SCENARIO TRACE PROFILE REPLAY_DIR OUT_DIR

Simulates TRACE under SCENARIO with PROFILE cut down step by step (none of the new terms = the
simulator before them; then load.gpu; then the request section's stores, worker rest and
latency, one at a time, cumulatively), validates each run against the same REPLAY_DIR, and
writes OUT_DIR/ablation.json and ablation.md (the figures of every step). Run by make.sh.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from simkv.api import run
from simkv.fidelity import validate

_STORES = {"gpu", "store_per_block_s", "admit_per_block_s"}
_EVICT = _STORES | {"disk_evict_per_block_s"}
_REST = _EVICT | {"per_request_s", "per_block_s"}
STEPS: list[tuple[str, str, set[str]]] = [
    ("before", "loads and prefill only (the simulator before load.gpu and request)", set()),
    ("+load.gpu", "+ GPU-cache copy charged to GPU hits", {"gpu"}),
    ("+stores", "+ stores before the first token (store_per_block_s, admit_per_block_s)", _STORES),
    ("+disk evictions", "+ LMCache's disk evictions inside the store (disk_evict_per_block_s)", _EVICT),
    ("+worker rest", "+ the worker's other time (per_request_s, per_block_s)", _REST),
    ("+latency", "+ latency outside the worker (latency_const_s, latency_per_token_s): the full model",
     _REST | {"latency_const_s", "latency_per_token_s"}),
]


def _profile(doc: dict[str, Any], keep: set[str], path: Path) -> Path:
    d = json.loads(json.dumps(doc))
    if "gpu" not in keep:
        d["load"].pop("gpu", None)
    req = {k: v for k, v in (d.pop("request", None) or {}).items() if k in keep}
    if req:
        d["request"] = req
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _figures(data: dict[str, Any]) -> dict[str, Any]:
    t = data["ttft_s"]
    out = {"p50_rel": t["overall"]["p50"]["rel_error"], "p90_rel": t["overall"]["p90"]["rel_error"],
           "median_abs_rel": data["ttft_per_request"]["median_abs_rel_error"],
           "median_rel": data["ttft_per_request"]["median_rel_error"], "by_class": {}}
    for c, v in t["by_class"].items():
        out["by_class"][c] = {"p50_rel": v["p50"]["rel_error"], "p90_rel": v["p90"]["rel_error"]}
    return out


def main(scenario: str, trace: str, profile: str, replay_dir: str, out_dir: str) -> None:
    out = Path(out_dir)
    work = out / "ablation-runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    doc = yaml.safe_load(Path(profile).read_text())
    rows = []
    for name, what, keep in STEPS:
        d = work / name.strip("+").replace(" ", "-").replace(".", "-")
        d.mkdir()
        prof = _profile(doc, keep, d / "profile.yaml")
        res = run(scenario, trace, overrides=[f"hardware.profile={prof.resolve()}"])
        res.write(d / "sim")
        v = validate(d / "sim", replay_dir, d / "validate", ignore_scenario=True)
        rows.append({"step": name, "what": what, **_figures(v.data)})
    shutil.rmtree(work)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    classes = sorted(rows[0]["by_class"])

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.1%}"

    lines = ["| step | TTFT p50 err | TTFT p90 err | per-request median abs err | median err (bias) | "
             + " | ".join(f"{c} p50 / p90" for c in classes) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(classes)]
    for r in rows:
        lines.append(f"| {r['step']} | {pct(r['p50_rel'])} | {pct(r['p90_rel'])} | "
                     f"{r['median_abs_rel']:.1%} | {pct(r['median_rel'])} | "
                     + " | ".join(f"{pct(r['by_class'][c]['p50_rel'])} / {pct(r['by_class'][c]['p90_rel'])}"
                                  for c in classes) + " |")
    steps = "\n".join(f"- **{r['step']}**: {r['what']}" for r in rows)
    (out / "ablation.md").write_text(
        "# TTFT errors by time-model term (same replay, cumulative steps)\n\n"
        "Errors are (simulated - measured) / measured; each step re-simulates the trace with the "
        "calibrated profile cut to the terms named, and validates against the same replay.\n\n"
        + "\n".join(lines) + "\n\n" + steps + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
