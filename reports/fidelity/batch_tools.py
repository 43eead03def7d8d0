"""Helpers of the batching study (reports/fidelity/make-batch.sh).

    python reports/fidelity/batch_tools.py loads TRACE CAPACITY_REPLAY_DIR OUT.json 0.3,0.6,0.85
        The capacity (requests / makespan of the saturated replay: its replay.json wall_s) and,
        per fraction of it, the trace speed whose offered rate (the trace's requests over its
        arrival span, times the speed) is that fraction.
    python reports/fidelity/batch_tools.py scale TRACE SPEED OUT.parquet
        The trace with its arrival times divided by SPEED (its source says so): replayed at
        --speed 1 and simulated as is, both see the same arrivals and the same trace hash.
    python reports/fidelity/batch_tools.py client REPLAY_DIR
        REPLAY_DIR/client.parquet: the replay's raw client timings per request (ids, arrival,
        send time and lag, TTFT, send → last token (e2e_s, tpot_s: where the replay's schema has
        them), send → end of stream, tokens generated, cached tokens, status, error),
        independent of the requests.parquet schema version.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa

from simkv.traces.schema import read_trace, write_trace

CLIENT_COLUMNS = ("request_id", "prompt_class", "input_tokens", "output_tokens", "arrival_s", "sent_s",
                  "send_lag_s", "ttft_s", "e2e_s", "tpot_s", "total_s", "completion_tokens", "cached_tokens",
                  "http_status", "error")


def arrival_rate(trace_path: str) -> float:
    """Requests per second over the trace's arrival span."""
    arrivals = read_trace(trace_path).arrival_s
    return (len(arrivals) - 1) / float(arrivals.max() - arrivals.min())


def loads(trace_path: str, capacity_dir: str, out: str, fractions: str) -> None:
    replay = json.loads((Path(capacity_dir) / "replay.json").read_text())
    requests = sum(s["requests_sent"] for s in replay["sessions"])
    makespan = sum(s["wall_s"] for s in replay["sessions"])
    capacity = requests / makespan
    rate = arrival_rate(trace_path)
    doc = {"capacity_req_per_s": capacity, "capacity_requests": requests, "capacity_makespan_s": makespan,
           "trace_rate_req_per_s": rate,
           "loads": {f"load{round(float(f) * 100)}": {"fraction": float(f),
                                                      "speed": float(f) * capacity / rate,
                                                      "offered_req_per_s": float(f) * capacity}
                     for f in fractions.split(",")}}
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    print(" ".join(f"{k}={v['speed']:.6g}" for k, v in doc["loads"].items()))


def scale(trace_path: str, speed: str, out: str) -> None:
    tr = read_trace(trace_path)
    s = float(speed)
    i = tr.table.schema.get_field_index("arrival_s")
    table = tr.table.set_column(i, tr.table.schema.field(i),
                                pa.array(tr.arrival_s / s, tr.table.schema.field(i).type))
    scaled = dataclasses.replace(tr, table=table, source=f"{tr.source}; arrivals / {s:.6g}", path=None)
    write_trace(scaled, out)


def client(replay_dir: str) -> None:
    d = Path(replay_dir)
    rows = pd.read_parquet(d / "requests.parquet").merge(pd.read_parquet(d / "replay_requests.parquet"),
                                                         on="request_id", how="left")
    rows[[c for c in CLIENT_COLUMNS if c in rows]].to_parquet(d / "client.parquet", index=False)


if __name__ == "__main__":
    {"loads": loads, "scale": scale, "client": client}[sys.argv[1]](*sys.argv[2:])
