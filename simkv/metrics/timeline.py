"""The timeline: per time bin (by arrival), hit rate, tokens, TTFT and tier occupancy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from simkv.core.tiers import TIER_NAMES
from simkv.model.cache_base import check_steps

#: Round bin widths (seconds) the automatic choice picks from.
ROUND_BINS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                43200, 86400, 172800, 604800)
MAX_BINS = 300


def choose_bin_s(span_s: float) -> float:
    """The smallest round width giving at most 300 bins over ``span_s`` seconds; successive
    widths differ by at most 2.5x, so a span longer than 100 s gets 120-300 bins."""
    for w in ROUND_BINS_S:
        if math.ceil(span_s / w) <= MAX_BINS:
            return float(w)
    return float(math.ceil(span_s / MAX_BINS / ROUND_BINS_S[-1]) * ROUND_BINS_S[-1])


def check_timeline_bins(bin_s: float | None, span_s: float) -> None:
    """A :class:`~simkv.core.errors.ScenarioError` naming ``timeline_bin_s`` if bins of ``bin_s``
    seconds over ``span_s`` seconds (the last arrival: bins start at 0) would be more than
    2**40: past that a bin's index is no longer exact (1e-300 s would overflow it)."""
    if bin_s is not None:
        check_steps("timeline_bin_s", bin_s, span_s, "timeline bins")


def timeline_frame(requests: pd.DataFrame, bin_s: float | None = None) -> pd.DataFrame:
    """Aggregate request rows into bins of ``bin_s`` seconds of arrival time (``None``:
    :func:`choose_bin_s` of the largest arrival time, as bins start at 0; a given ``bin_s`` is
    checked by :func:`check_timeline_bins` before the run).

    Occupancy columns (``<tier>_held_bytes``) are the bytes each tier held after the last
    request of the bin; ``token_hit_rate`` is NaN (undefined) in a bin whose prompts hold no input token.
    """
    if bin_s is None:
        bin_s = choose_bin_s(float(requests["arrival_s"].max()) if len(requests) else 0.0)
    held = [f"{t}_held_bytes" for t in TIER_NAMES]
    if requests.empty:
        return pd.DataFrame(columns=["t_s", "requests", "input_tokens", "hit_tokens",
                                     "token_hit_rate", "ttft_p50_s", *held])
    bins = np.floor(requests["arrival_s"].to_numpy() / bin_s).astype(np.int64)
    g = requests.assign(_bin=bins).groupby("_bin", sort=True)
    out = pd.DataFrame({
        "t_s": g.size().index.to_numpy() * bin_s,
        "requests": g.size().to_numpy(),
        "input_tokens": g["input_tokens"].sum().to_numpy(),
        "hit_tokens": g["hit_tokens"].sum().to_numpy(),
        **{f"{t}_hit_tokens": g[f"{t}_hit_tokens"].sum().to_numpy() for t in TIER_NAMES},
        "ttft_p50_s": g["ttft_s"].median().to_numpy(),
        **{c: g[c].last().to_numpy() for c in held},
    })
    tokens = out["input_tokens"].to_numpy()
    out.insert(4, "token_hit_rate",
               np.divide(out["hit_tokens"].to_numpy(), tokens, out=np.full(len(out), np.nan),
                         where=tokens > 0))
    return out
