"""What each mechanism of the batching model buys, against the replays of the batching study.

    python reports/fidelity/batch_ablation.py STUDY_DIR [SCENARIO]

STUDY_DIR is make-batch.sh's output (profile.yaml, loadNN/trace.parquet, loadNN/repK/
client.parquet: the replays' client timings). For every load, the trace is simulated under a
chain of models, each adding one mechanism to the one before, and each is compared with every
repeat of that load's replay (per repeat, then the spread):

* ``fifo``: one request at a time, to its first token (the model before batching; no decode);
* ``serial``: the batching engine with ``max_num_seqs: 1`` (decode modelled, no batching);
* ``no chunking``: batching with a step budget no prompt exceeds (prefills never chunked);
* ``batching``: the study's scheduler (``max_num_seqs``, ``max_num_batched_tokens``: chunked
  prefill) with the calibrated step time;
* ``+ http``: and the profile's latency outside the engine (``request.latency_const_s``, the
  client's TTFT of a prompt alone less vLLM's own prefill time): the full model.

Writes STUDY_DIR/ablation.json and ablation.md: TTFT p50 / p90, e2e p50 and the per-request
median |TTFT error| of each model against each repeat, and the mean over repeats.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from simkv.api import run

ROOT = Path(__file__).resolve().parents[2]


def measured(path: Path) -> pd.DataFrame:
    """A replay's client timings with e2e and TPOT (send → last token where recorded, else
    send → end of stream)."""
    c = pd.read_parquet(path)
    if "e2e_s" not in c or c["e2e_s"].isna().all():
        c["e2e_s"] = c["total_s"]
    return c[c["error"].isna()] if "error" in c else c


def errors(sim: pd.DataFrame, rep: pd.DataFrame) -> dict[str, float | None]:
    """Relative errors (sim − measured) / measured of the percentiles, over the requests both
    know, and the per-request median |TTFT error|."""
    m = sim.merge(rep, on="request_id", suffixes=("_sim", "_rep"))
    out: dict[str, float | None] = {}
    for col, qs in (("ttft_s", (50, 90)), ("e2e_s", (50, 90))):
        s, r = m[f"{col}_sim"], m[f"{col}_rep"]
        ok = s.notna() & r.notna()
        for q in qs:
            if not ok.any():
                out[f"{col[:-2]}_p{q}"] = None
                continue
            a, b = float(np.percentile(s[ok], q)), float(np.percentile(r[ok], q))
            out[f"{col[:-2]}_p{q}"] = (a - b) / b
    e = (m["ttft_s_sim"] - m["ttft_s_rep"]) / m["ttft_s_rep"]
    out["ttft_median_abs"] = float(np.median(np.abs(e)))
    return out


def models(scenario: dict[str, Any], profile: Path, http_s: float,
           budget: int) -> list[tuple[str, list[str]]]:
    """The chain of models, as --set overrides of the study's scenario."""
    hw = scenario["hardware"]
    with_http = profile.with_name("profile-http.yaml")
    doc = yaml.safe_load(profile.read_text())
    doc["request"] = {**(doc.get("request") or {}), "latency_const_s": http_s}
    with_http.write_text(yaml.safe_dump(doc, sort_keys=False))
    base = [f"hardware.profile={profile}"]
    return [
        ("fifo", [*base, "hardware.scheduler=fifo"]),
        ("serial", [*base, "hardware.max_num_seqs=1"]),
        ("no chunking", [*base, f"hardware.max_num_batched_tokens={budget}"]),
        ("batching", base),
        ("+ http", [f"hardware.profile={with_http}"]),
    ] if hw.get("scheduler") == "vllm" else []


def main() -> None:
    study = Path(sys.argv[1])
    default = ROOT / "reports" / "fidelity" / "cpu-batch.yaml"
    scenario_path = Path(sys.argv[2]) if len(sys.argv) > 2 else default
    scenario = yaml.safe_load(scenario_path.read_text())
    profile = (study / "profile.yaml").resolve()
    cal = yaml.safe_load(profile.read_text()).get("calibration", {})
    http_s = float(((cal.get("step") or {}).get("http_s")) or 0.0)
    report: dict[str, Any] = {"http_s": http_s, "loads": {}}
    for load in sorted(p for p in study.glob("load*") if p.is_dir()):
        trace = load / "trace.parquet"
        reps = sorted(load.glob("rep*/client.parquet"))
        if not trace.exists() or not reps:
            continue
        replays = [measured(p) for p in reps]
        budget = int(max(pd.read_parquet(trace, columns=["input_tokens"])["input_tokens"].max() + 1,
                         scenario["hardware"].get("max_num_batched_tokens", 2048)))
        rows = {}
        for name, sets in models(scenario, profile, http_s, budget):
            sim = run(scenario_path, str(trace), overrides=sets).requests
            per_rep = [errors(sim, rep) for rep in replays]
            mean = {k: (float(np.mean([p[k] for p in per_rep])) if all(p[k] is not None for p in per_rep)
                        else None) for k in per_rep[0]}
            rows[name] = {"mean": mean, "repeats": per_rep}
            print(f"{load.name:7s} {name:12s} " + "  ".join(
                f"{k} {'n/a' if v is None else f'{100 * v:+.1f}%'}" for k, v in mean.items()), flush=True)
        report["loads"][load.name] = {"repeats": len(replays), "models": rows}
    (study / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Ablation: what each mechanism of the batching model buys", "",
             "Relative error of the simulation against the replays, mean over the repeats (`+` = the "
             "simulation is slower). `python reports/fidelity/batch_ablation.py "
             f"{study}`.", "",
             "| load | model | TTFT p50 | TTFT p90 | e2e p50 | e2e p90 | median \\|TTFT err\\| |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for load, body in report["loads"].items():
        for name, row in body["models"].items():
            m = row["mean"]
            cells = ["n/a" if m[k] is None else f"{100 * m[k]:+.1f}%"
                     for k in ("ttft_p50", "ttft_p90", "e2e_p50", "e2e_p90")]
            lines.append(f"| {load} | {name} | " + " | ".join(cells)
                         + f" | {100 * m['ttft_median_abs']:.1f}% |")
    (study / "ablation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
