"""The fits: non-negative least squares, the analytic prefill formula and the per-chunk lines
fitted to the measurements, and the prefill table's leave-one-out error."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from simkv.core.profiles import bilinear


def nonneg_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin ||a·x − b||`` over ``x >= 0``: the best of the unconstrained least-squares
    solutions on every subset of columns whose solution is non-negative (exact for the 2-3
    columns the fits here have)."""
    best, best_res = np.zeros(a.shape[1]), float(np.sum(b**2))
    for r in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), r):
            x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.all(x >= 0):
                res = float(np.sum((a[:, cols] @ x - b) ** 2))
                if res < best_res:
                    best_res, best = res, np.zeros(a.shape[1])
                    best[list(cols)] = x
    return best


def fit_analytic(n: np.ndarray, c: np.ndarray, seconds: np.ndarray) -> tuple[float, float, float]:
    """``(const_s, per_token_s, attn_s)`` of ``const + per_token·n + attn·n·(n + c)`` fitted to
    the measured ``seconds`` by least squares on relative residuals (each point divided by its
    measured time, so short prefills weigh as much as long ones), all three >= 0."""
    n, c, y = (np.asarray(v, np.float64).ravel() for v in (n, c, seconds))
    a = np.stack([np.ones_like(n), n, n * (n + c)], axis=1)
    w = 1.0 / np.maximum(y, 1e-12)
    const, per_token, attn = nonneg_lstsq(a * w[:, None], y * w)
    return float(const), float(per_token), float(attn)


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(intercept, slope)`` of ``y = intercept + slope·x`` by least squares, both >= 0."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a = np.stack([np.ones_like(xs), xs], axis=1)
    b0, b1 = nonneg_lstsq(a, ys)
    return float(b0), float(b1)


def leave_one_out(new: np.ndarray, cached: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Relative leave-one-out error of the table at each grid point: the point predicted by
    the table without its row (interpolated between its neighbours in new tokens, or
    extrapolated at an edge) and without its column (likewise in cached tokens), the larger
    of the two ``|predicted − measured| / measured``; NaN where an axis has only 2 values."""
    out = np.full(seconds.shape, np.nan)
    for i, j in itertools.product(range(len(new)), range(len(cached))):
        errs = []
        n, c = np.array([new[i]]), np.array([cached[j]])
        if len(new) > 2:
            keep = np.arange(len(new)) != i
            errs.append(bilinear(new[keep], cached, seconds[keep], n, c)[0])
        if len(cached) > 2:
            keep = np.arange(len(cached)) != j
            errs.append(bilinear(new, cached[keep], seconds[:, keep], n, c)[0])
        if errs:
            y = max(seconds[i, j], 1e-12)
            out[i, j] = max(abs(p - seconds[i, j]) / y for p in errs)
    return out
