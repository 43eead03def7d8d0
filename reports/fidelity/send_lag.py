"""The client-side queue of a replay at ``--concurrency 1`` (reports/fidelity/make-vllm.sh).

With one request in flight the replay holds the next one at the client until the previous one
has finished (decode included): that wait is ``send_lag_s``, and the replay's ``ttft_s`` (send →
first token) leaves it out, while the simulator's TTFT holds its queue. This writes, as JSON: the
engine's busy share (Σ send → end of stream over the arrival span), the send lags, and the TTFT
errors of ``validate``'s conventions against the measured ``ttft_s + send_lag_s`` (arrival →
first token) beside those against ``ttft_s``.

    python reports/fidelity/send_lag.py SIM_DIR REPLAY_DIR OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def errors(sim: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """p50 / p90 relative errors and the per-request median |e| (simkv validate's definitions)."""
    p = {f"p{q}_rel_error": float(np.percentile(sim, q) / np.percentile(meas, q) - 1) for q in (50, 90)}
    e = (sim - meas) / meas
    return {**p, "median_abs_rel_error": float(np.median(np.abs(e))), "median_rel_error": float(np.median(e))}


def main(sim_dir: str, replay_dir: str, out: str) -> None:
    sim = pd.read_parquet(Path(sim_dir) / "requests.parquet")
    rep = pd.read_parquet(Path(replay_dir) / "requests.parquet").merge(
        pd.read_parquet(Path(replay_dir) / "replay_requests.parquet"), on="request_id")
    m = sim.merge(rep[rep["error"].isna()], on="request_id", suffixes=("_sim", "_meas"))
    lag = m["send_lag_s"].to_numpy()
    simulated, measured = m["ttft_s_sim"].to_numpy(), m["ttft_s_meas"].to_numpy()
    span = float(rep["arrival_s"].max() - rep["arrival_s"].min())
    doc = {
        "requests": len(m),
        "busy_share_measured": float(rep["total_s"].sum() / span),
        "busy_share_simulated": float(sim["prefill_s"].sum() + sim["load_s"].sum()) / span,
        "decode_share_measured": float((rep["total_s"] - rep["ttft_s"]).sum() / span),
        "completion_tokens_mean": float(rep["completion_tokens"].mean()),
        "send_lag_s": {"mean": float(lag.mean()), "p50": float(np.percentile(lag, 50)),
                       "p90": float(np.percentile(lag, 90)), "max": float(lag.max()),
                       "share_over_1ms": float((lag > 1e-3).mean())},
        "ttft_vs_send_to_first_token": errors(simulated, measured),
        "ttft_vs_arrival_to_first_token": errors(simulated, measured + lag),
        "simulated_queue_s_mean": float(m["queue_s_sim"].mean()),
    }
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
