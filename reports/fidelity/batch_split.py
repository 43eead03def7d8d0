"""Where a replay's TTFT goes, by vLLM's own timings: the engine (queue, prefill) against the rest.

    python reports/fidelity/batch_split.py STUDY_DIR

For every replay of the batching study (``loadNN/repK``), the means over its requests of the
client's TTFT (``client.parquet``) and of vLLM's request timings over the same replay: its TTFT
(``vllm:time_to_first_token_seconds``: the API server's arrival → first token), queue time
(``request_queue_time_seconds``: waiting in the engine core's scheduler) and prefill time
(``request_prefill_time_seconds``: scheduled → first token) and gaps between tokens
(``inter_token_latency_seconds``), and the simulation's TTFT, queue, prefill and mean gap
between tokens (``loadNN/sim``). vLLM's sums come from the replay's ``metrics_delta``
(``replay.json``), or, for a study run before the replay kept them, from
``STUDY_DIR/server-metrics.txt``: ``EPOCH_SECONDS SAMPLE VALUE`` lines scraped from ``/metrics``
every few seconds, each replay bracketed by the last scrape before it began and the first after
it ended (``runs.tsv``). ``outside`` = client TTFT − vLLM's queue − prefill: HTTP, the API
server, the client, and the wait for the step in progress when a request reached the engine core.
"""

from __future__ import annotations

import calendar
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

NAMES = {"ttft": "vllm:time_to_first_token_seconds", "queue": "vllm:request_queue_time_seconds",
         "prefill": "vllm:request_prefill_time_seconds", "itl": "vllm:inter_token_latency_seconds"}
#: A scrape file: the scrape times and each scrape's samples.
Scrapes = tuple[np.ndarray, list[dict[str, float]]]


def _sums(samples: dict[str, float]) -> dict[str, float]:
    """``{ttft, queue, prefill}`` mean seconds from ``{sample: value}`` deltas (labels summed)."""
    out = {}
    for key, name in NAMES.items():
        total = sum(v for k, v in samples.items() if k.startswith(name + "_sum"))
        count = sum(v for k, v in samples.items() if k.startswith(name + "_count"))
        out[key] = total / count if count else float("nan")
    return out


def _scraped(study: Path) -> Scrapes | None:
    """The scrape file's times and samples per scrape."""
    path = study / "server-metrics.txt"
    if not path.is_file():
        return None
    by_time: dict[float, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        t, sample, value = line.split(" ")
        by_time.setdefault(float(t), {})[sample] = float(value)
    times = np.array(sorted(by_time))
    return times, [by_time[t] for t in times]


def _bracket(scrapes: Scrapes, start: float, end: float) -> dict[str, float]:
    """The samples' growth from the last scrape at or before ``start`` to the first at or after ``end``."""
    times, samples = scrapes
    i = max(int(np.searchsorted(times, start, side="right")) - 1, 0)
    j = min(int(np.searchsorted(times, end, side="left")), len(times) - 1)
    return {k: v - samples[i].get(k, 0.0) for k, v in samples[j].items()}


def _sim_itl(sim: pd.DataFrame) -> float:
    """The simulation's mean gap between consecutive tokens over all gaps (vLLM's
    ``inter_token_latency_seconds`` mean): Σ (e2e − TTFT) / Σ (output tokens − 1)."""
    gaps = (sim["output_tokens"].clip(lower=1) - 1).sum()
    return float((sim["e2e_s"] - sim["ttft_s"]).sum() / gaps) if gaps else float("nan")


def main() -> None:
    study = Path(sys.argv[1])
    runs = pd.read_csv(study / "runs.tsv", sep="\t")
    date = (study / "machine.txt").read_text().split("date: ", 1)[1][:10]
    scrapes = _scraped(study)
    rows = []
    for _, run in runs.iterrows():
        rep = Path(run["run"])
        if not (rep.name.startswith("rep") and (rep / "client.parquet").is_file()):
            continue
        delta = json.loads((rep / "replay.json").read_text())["sessions"][-1].get("metrics_delta") or {}
        if not any(k.startswith(NAMES["ttft"]) for k in delta) and scrapes is not None:
            end = calendar.timegm(time.strptime(f"{date} {run['ended_utc']}", "%Y-%m-%d %H:%M:%S"))
            delta = _bracket(scrapes, end - float(run["wall_s"]), end + 1.0)
        server = _sums(delta)
        client = pd.read_parquet(rep / "client.parquet")
        ttft = float(client["ttft_s"].mean())
        sim_path = rep.parent / "sim" / "requests.parquet"
        sim = pd.read_parquet(sim_path) if sim_path.is_file() else None
        rows.append({"replay": f"{rep.parent.name}/{rep.name}", "client_ttft_ms": ttft * 1e3,
                     **{f"vllm_{k}_ms": v * 1e3 for k, v in server.items()},
                     "outside_ms": (ttft - server["queue"] - server["prefill"]) * 1e3,
                     **{f"sim_{c[:-2]}_ms": float(sim[c].mean()) * 1e3 if sim is not None else float("nan")
                        for c in ("ttft_s", "queue_s", "prefill_s")},
                     "sim_itl_ms": _sim_itl(sim) * 1e3 if sim is not None else float("nan")})
    print("Means over each replay's requests (ms):")
    print(pd.DataFrame(rows).round(1).to_string(index=False))


if __name__ == "__main__":
    main()
