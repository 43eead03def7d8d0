"""The batching study's TTFT error by concurrency: where the simulation's missing time is.

    python reports/fidelity/batch_inflight.py STUDY_DIR

For each load and repeat, every request is grouped by how many other requests the replay had in
flight (arrived, last token not yet received) at its arrival (4 or more together), and each group's
median TTFT error, simulated − measured, is printed in ms, beside its median relative error. A bias
that holds at 0 in flight is an offset of an isolated request; one that grows with the count is a
cost of the steps that mix a prefill with decodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def by_inflight(sim: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """Median TTFT error (ms, relative) of the requests of ``measured`` by their in-flight count."""
    m = measured.set_index("request_id").loc[sim["request_id"]]
    arrival = m["arrival_s"].to_numpy()
    end = arrival + m["e2e_s"].to_numpy()
    inflight = np.array([int(((arrival < a) & (end > a)).sum()) for a in arrival])
    err = sim["ttft_s"].to_numpy() - m["ttft_s"].to_numpy()
    df = pd.DataFrame({"in_flight": np.minimum(inflight, 4), "err_ms": err * 1e3,
                       "rel": err / m["ttft_s"].to_numpy()})
    return df.groupby("in_flight").agg(requests=("err_ms", "size"), median_err_ms=("err_ms", "median"),
                                       median_rel=("rel", "median"))


def main() -> None:
    study = Path(sys.argv[1])
    for load in sorted(p for p in study.glob("load*") if (p / "sim" / "requests.parquet").is_file()):
        sim = pd.read_parquet(load / "sim" / "requests.parquet")
        for rep in sorted(load.glob("rep*/requests.parquet")):
            print(f"{load.name} {rep.parent.name}")
            print(by_inflight(sim, pd.read_parquet(rep)).round(3).to_string())


if __name__ == "__main__":
    main()
