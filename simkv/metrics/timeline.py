"""The timeline: per time bin (by arrival), hit rate, tokens, TTFT and tier occupancy."""

from __future__ import annotations

import numpy as np
import pandas as pd


def timeline_frame(requests: pd.DataFrame, bin_s: float) -> pd.DataFrame:
    """Aggregate request rows into bins of ``bin_s`` seconds of arrival time.

    Occupancy columns are the bytes each tier held after the last request of the bin;
    ``token_hit_rate`` is NaN (undefined) in a bin whose prompts hold no input token.
    """
    if requests.empty:
        return pd.DataFrame(columns=["t_s", "requests", "input_tokens", "hit_tokens",
                                     "token_hit_rate", "ttft_p50_s", "gpu_bytes",
                                     "disk_bytes", "archive_bytes"])
    bins = np.floor(requests["arrival_s"].to_numpy() / bin_s).astype(np.int64)
    g = requests.assign(_bin=bins).groupby("_bin", sort=True)
    out = pd.DataFrame({
        "t_s": g.size().index.to_numpy() * bin_s,
        "requests": g.size().to_numpy(),
        "input_tokens": g["input_tokens"].sum().to_numpy(),
        "hit_tokens": g["hit_tokens"].sum().to_numpy(),
        "gpu_hit_tokens": g["gpu_hit_tokens"].sum().to_numpy(),
        "disk_hit_tokens": g["disk_hit_tokens"].sum().to_numpy(),
        "archive_hit_tokens": g["archive_hit_tokens"].sum().to_numpy(),
        "ttft_p50_s": g["ttft_s"].median().to_numpy(),
        "gpu_bytes": g["gpu_bytes"].last().to_numpy(),
        "disk_bytes": g["disk_bytes"].last().to_numpy(),
        "archive_bytes": g["archive_bytes"].last().to_numpy(),
    })
    tokens = out["input_tokens"].to_numpy()
    out.insert(4, "token_hit_rate",
               np.divide(out["hit_tokens"].to_numpy(), tokens, out=np.full(len(out), np.nan),
                         where=tokens > 0))
    return out
