"""How much of the batching study's error is the engine's speed drifting from its calibration.

    python reports/fidelity/batch_drift.py STUDY_DIR [SCENARIO]

STUDY_DIR is make-batch.sh's output with ``drift.tsv`` (engine_drift.py's samples: vLLM's own
time of a 512-token prefill and of a decode step of one sequence, three back to back before
and after the calibration, before every replay and after the last). For each replay, the
engine's speed around it relative to the calibration is

    s = mean over its two samples (before it, after it) of (prefill / prefill_cal + decode / decode_cal) / 2,

each sample the median of its tag's back-to-back samples,

and the replay's trace is simulated again with every step coefficient of the profile
(``STEP_KEYS``) multiplied by ``s``: the calibrated model, had the engine run at the speed it
ran around that replay. The latency outside the engine core is left as calibrated. Both
simulations are compared with the replay (TTFT p50 / p90, e2e p50, per-request median |TTFT
error|). Writes STUDY_DIR/drift.md and drift.json. A diagnostic of the study, not a fidelity
figure: the scaled simulation uses measurements taken around the replay it is compared with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from batch_ablation import errors, measured

from simkv.api import run
from simkv.core.profiles import STEP_KEYS

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("ttft_p50", "ttft_p90", "e2e_p50", "ttft_median_abs")


def speeds(study: Path) -> dict[str, float]:
    """``{replay: s}`` from drift.tsv (the replay's tag is its directory under the study; a tag's
    samples, taken back to back, count by their median)."""
    d = pd.read_csv(study / "drift.tsv", sep="\t")
    d = d.groupby("tag", sort=False)[["prefill512_ms", "decode1_ms"]].median()
    cal = d.loc["calibrated"]
    rel = (d["prefill512_ms"] / cal["prefill512_ms"] + d["decode1_ms"] / cal["decode1_ms"]) / 2
    tags = list(d.index)
    return {tag: float((rel.iloc[i] + rel.iloc[i + 1]) / 2) for i, tag in enumerate(tags)
            if tag.startswith("load") and i + 1 < len(tags)}


def scaled(profile: Path, factor: float, out: Path) -> Path:
    """``profile`` with every step coefficient multiplied by ``factor``, written to ``out``."""
    doc = yaml.safe_load(profile.read_text())
    doc["step"] = {**doc["step"], **{k: doc["step"][k] * factor for k in STEP_KEYS if k in doc["step"]}}
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def main() -> None:
    study = Path(sys.argv[1])
    scenario = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "reports" / "fidelity" / "cpu-batch.yaml"
    profile = (study / "profile.yaml").resolve()
    report: dict[str, Any] = {}
    calibrated: dict[str, pd.DataFrame] = {}     # per load: its repeats share one simulation
    for tag, s in speeds(study).items():
        load = tag.split("/")[0]
        trace = study / load / "trace.parquet"
        replay = measured(study / tag / "client.parquet")
        if load not in calibrated:
            calibrated[load] = run(scenario, str(trace), overrides=[f"hardware.profile={profile}"]).requests
        path = scaled(profile, s, study / tag / "profile-drift.yaml")
        drifted = run(scenario, str(trace), overrides=[f"hardware.profile={path.resolve()}"]).requests
        report[tag] = {"speed": s, "calibrated": errors(calibrated[load], replay),
                       "drift_scaled": errors(drifted, replay)}
        print(f"{tag:12s} s={s:.3f}  " + "  ".join(
            f"{k} {100 * report[tag]['calibrated'][k]:+.1f}% -> {100 * report[tag]['drift_scaled'][k]:+.1f}%"
            for k in KEYS), flush=True)
    (study / "drift.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# The engine's speed around each replay, and the simulation scaled to it", "",
             f"`python reports/fidelity/batch_drift.py {study}`. `s`: the engine's reference steps around "
             "the replay over the calibration's (drift.tsv). Each cell: the calibrated model → the model "
             "with its step times × s (`+` = the simulation is slower).", "",
             "| replay | s | " + " | ".join(KEYS) + " |", "|---|---:|" + "---:|" * len(KEYS)]
    for tag, r in report.items():
        lines.append(f"| {tag} | {r['speed']:.3f} | " + " | ".join(
            f"{100 * r['calibrated'][k]:+.1f}% → {100 * r['drift_scaled'][k]:+.1f}%" for k in KEYS) + " |")
    if report:
        def mean_abs(model: str, key: str) -> float:
            return 100 * float(np.mean([abs(r[model][key]) for r in report.values()]))

        lines += ["", "Mean |error| over the replays: " + ", ".join(
            f"{k} {mean_abs('calibrated', k):.1f}% → {mean_abs('drift_scaled', k):.1f}%" for k in KEYS) + "."]
    (study / "drift.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
