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
  prefill) with the step time fitted to the prefill-only and decode-only steps, without its
  prefill-context term;
* ``+ prefill context``: and the step's cost per cached token of a prefill chunk
  (``step.prefill_context_attn_s``);
* ``+ latency outside``: and the time outside the engine core (``calibration.step.http_s``,
  the client's TTFT of a prompt alone less vLLM's own prefill time);
* where the profile has mixed steps (``simkv calibrate --step-mixed``): ``+ mixed steps``, the
  step time fitted to them too (the profile's), and ``+ latency per stream``, the latency outside
  the engine as the profile's line in the streams beside a token: the full model.

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


def models(scenario: dict[str, Any], profile: Path, budget: int) -> list[tuple[str, list[str]]]:
    """The chain of models, as --set overrides of the study's scenario (profile variants are
    written beside ``profile``)."""
    doc = yaml.safe_load(profile.read_text())
    step = doc.get("step") or {}

    def variant(name: str, **changes: float) -> list[str]:
        d = json.loads(json.dumps(doc))
        d["step"] = {**d.get("step", {}), **changes}
        path = profile.with_name(f"profile-{name}.yaml")
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        return [f"hardware.profile={path}"]

    points = step.get("points") or []
    mixed = [p for p in points if p["prefill_tokens"] and p["decode_seqs"]]
    alone: dict[str, float] = {}
    if mixed:      # the step time without the mixed steps: fitted again to the others
        from simkv_engine.calibrate import STEP_KEYS, StepPoint, fit_steps

        fit = fit_steps([StepPoint(p["prefill_tokens"], p["decode_seqs"], p["context_tokens"],
                                   p["attn_tokens"], p["seconds"], p.get("prefill_context_tokens", 0))
                         for p in points if p not in mixed])
        alone = {k: fit[k] for k in STEP_KEYS}
    idle = (doc.get("calibration", {}).get("step") or {}).get("http_s") or step.get("latency_s", 0.0)
    plain = variant("plain", **{**alone, "prefill_context_attn_s": 0.0}, latency_s=0.0,
                    latency_per_stream_s=0.0)
    context = variant("context", **alone, latency_s=0.0, latency_per_stream_s=0.0)
    outside = variant("outside", **alone, latency_s=idle, latency_per_stream_s=0.0)
    chain = [
        ("fifo", [f"hardware.profile={profile}", "hardware.scheduler=fifo"]),
        ("serial", [*plain, "hardware.max_num_seqs=1"]),
        ("no chunking", [*plain, f"hardware.max_num_batched_tokens={budget}"]),
        ("batching", plain),
        ("+ prefill context", context),
        ("+ latency outside", outside if mixed else [f"hardware.profile={profile}"]),
    ]
    if mixed:
        chain += [("+ mixed steps", variant("mixed", latency_s=idle, latency_per_stream_s=0.0)),
                  ("+ latency per stream", [f"hardware.profile={profile}"])]
    return chain if scenario["hardware"].get("scheduler") == "vllm" and step else []


def main() -> None:
    study = Path(sys.argv[1])
    default = ROOT / "reports" / "fidelity" / "cpu-batch.yaml"
    scenario_path = Path(sys.argv[2]) if len(sys.argv) > 2 else default
    scenario = yaml.safe_load(scenario_path.read_text())
    profile = (study / "profile.yaml").resolve()
    report: dict[str, Any] = {"loads": {}}
    for load in sorted(p for p in study.glob("load*") if p.is_dir()):
        trace = load / "trace.parquet"
        reps = sorted(load.glob("rep*/client.parquet"))
        if not trace.exists() or not reps:
            continue
        replays = [measured(p) for p in reps]
        budget = int(max(pd.read_parquet(trace, columns=["input_tokens"])["input_tokens"].max() + 16,
                         scenario["hardware"].get("max_num_batched_tokens", 2048)))
        rows = {}
        for name, sets in models(scenario, profile, budget):
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
    keys = ("ttft_p50", "ttft_p90", "e2e_p50", "e2e_p90", "ttft_median_abs")
    for load, body in report["loads"].items():
        for name, row in body["models"].items():
            m = row["mean"]
            cells = ["n/a" if m[k] is None else f"{100 * m[k]:+.1f}%" for k in keys]
            lines.append(f"| {load} | {name} | " + " | ".join(cells) + " |")
    last = list(models(scenario, profile, 0))[-1][0] if report["loads"] else ""
    lines += ["", f"The full model ({last}) against each repeat: the spread over repeats.", "",
              "| load | repeat | TTFT p50 | TTFT p90 | e2e p50 | e2e p90 | median \\|TTFT err\\| |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for load, body in report["loads"].items():
        per_rep = body["models"][last]["repeats"]
        for i, r in enumerate(per_rep, 1):
            lines.append(f"| {load} | {i} | " + " | ".join(
                "n/a" if r[k] is None else f"{100 * r[k]:+.1f}%" for k in keys) + " |")
        spread = [None if any(r[k] is None for r in per_rep) else
                  max(r[k] for r in per_rep) - min(r[k] for r in per_rep) for k in keys]  # type: ignore[type-var,operator]
        lines.append(f"| {load} | spread (max − min) | " + " | ".join(
            "n/a" if v is None else f"{100 * v:.1f} pts" for v in spread) + " |")
    (study / "ablation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
