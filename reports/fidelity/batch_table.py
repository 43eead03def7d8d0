"""The batching study's figures as one markdown table, from validate's fidelity.json files.

    python reports/fidelity/batch_table.py STUDY_DIR

One row per load and repeat (``loadNN/fidelity-repK/fidelity.json``): TTFT p50 simulated /
measured and the errors of the targets, then the mean and the spread (max − min) per load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    study = Path(sys.argv[1])
    names = ("ttft_p50", "ttft_p90", "e2e_p50", "ttft_median_abs")
    print("| load | repeat | TTFT p50 sim / measured | " + " | ".join(names) + " | targets passed |")
    print("|---|---|---|" + "---:|" * len(names) + "---|")
    for load in sorted(p for p in study.glob("load*") if p.is_dir()):
        rows = []
        for f in sorted(load.glob("fidelity-rep*/fidelity.json")):
            d = json.loads(f.read_text())
            t = {x["name"]: x for x in d["targets"]}
            p50 = d["ttft_s"]["overall"]["p50"]
            signed = {"ttft_p50": p50["rel_error"], "ttft_p90": d["ttft_s"]["overall"]["p90"]["rel_error"],
                      "e2e_p50": d["e2e_s"]["overall"]["p50"]["rel_error"],
                      "ttft_median_abs": t["ttft_median_abs"]["value"]}
            passed = sum(1 for x in d["targets"] if x["pass"])
            rows.append(signed)
            ttft = f"{p50['sim'] * 1e3:.0f} / {p50['measured'] * 1e3:.0f} ms"
            print(f"| {load.name} | {f.parent.name[-1]} | {ttft} | "
                  + " | ".join(f"{100 * signed[k]:+.1f}%" for k in names)
                  + f" | {passed} of {len(d['targets'])} |")
        if rows:
            mean = {k: sum(r[k] for r in rows) / len(rows) for k in names}
            spread = {k: max(r[k] for r in rows) - min(r[k] for r in rows) for k in names}
            print(f"| {load.name} | mean | | " + " | ".join(f"{100 * mean[k]:+.1f}%" for k in names) + " | |")
            print(f"| {load.name} | spread | | " + " | ".join(f"{100 * spread[k]:.1f} pts" for k in names)
                  + " | |")


if __name__ == "__main__":
    main()
