"""How summary metrics read: a metric's label with its unit, a value formatted by its unit (%,
$, seconds, bytes; ``n/a`` when undefined), a swept parameter's value as a short label, and
the ``overload`` flags with their caption. Shared by the console tables (``simkv run``,
``simkv sweep``, ``simkv replay``), the Markdown reports and their charts."""

from __future__ import annotations

import math
from typing import Any


def metric_label(metric: str) -> str:
    """A human name with its unit for a summary metric."""
    known = {
        "token_hit_rate": "token hit rate (%)",
        "cost_saved_dollars": "cost saved ($)",
        "gpu_dollars_saved": "GPU $ saved ($)",
        "ttft_p50_s": "TTFT p50 (s)",
        "ttft_p90_s": "TTFT p90 (s)",
        "ttft_p99_s": "TTFT p99 (s)",
        "ttft_mean_s": "mean TTFT (s)",
    }
    if metric in known:
        return known[metric]
    ratio = metric.endswith(("_rate", "_ratio")) or "_rate_" in metric or "_ratio_" in metric
    if ratio and "per_s" not in metric:
        return f"{metric} (%)"
    if metric.endswith("_dollars"):
        return f"{metric} ($)"
    if metric.endswith("_s"):
        return f"{metric} (s)"
    if metric.endswith("_bytes") or "_bytes_" in metric:
        return f"{metric} (GiB)"
    return metric


def is_fraction(metric: str) -> bool:
    """Metrics in [0, 1] that read best as percentages."""
    return metric_label(metric).endswith("(%)")


NA = "n/a"


def is_undefined(value: Any) -> bool:
    """A metric value that is undefined (``None`` in a summary, NaN in a table): shown ``n/a``."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_pct(value: float | None, digits: int = 2) -> str:
    """``0.1234`` → ``'12.34%'``; ``n/a`` for an undefined value (a ratio over zero)."""
    return NA if is_undefined(value) else f"{value:.{digits}%}"


def fmt_num(value: float | None, spec: str) -> str:
    """``format(value, spec)``; ``n/a`` for an undefined value."""
    return NA if is_undefined(value) else format(value, spec)


def fmt_metric(metric: str, value: Any) -> str:
    """A compact, unit-bearing rendering of one metric value."""
    if is_undefined(value):
        return NA
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if is_fraction(metric):
        return f"{value:.2%}"
    if metric.endswith("_dollars"):
        return fmt_dollars(value)
    if metric.endswith("_s"):
        return fmt_seconds(value)
    if metric.endswith("_bytes") or "_bytes_" in metric:
        return fmt_bytes(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def fmt_dollars(x: float | None) -> str:
    if is_undefined(x):
        return NA
    sign = "-" if x < 0 else ""
    x = abs(x)
    if x >= 100:
        return f"{sign}${x:,.0f}"
    if x >= 1:
        return f"{sign}${x:.2f}"
    if x == 0:
        return "$0"
    return f"{sign}${x:.3g}"


def fmt_seconds(x: float | None) -> str:
    if is_undefined(x):
        return NA
    if x == 0:
        return "0 s"
    if abs(x) < 1:
        return f"{x * 1000:.3g} ms"
    if abs(x) < 600:
        return f"{x:.3g} s"
    if abs(x) < 36000:
        return f"{x / 60:.3g} min"
    return f"{x / 3600:.3g} h"


def fmt_bytes(n: float | None) -> str:
    """``8589934592`` → ``'8 GiB'`` (three significant digits, binary units)."""
    if is_undefined(n):
        return NA
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_param(value: Any) -> str:
    """A swept parameter value as a short label (``600``, ``0.5``, ``lru``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


#: What the ``warn`` column of a sweep's table of cells means (the console's and report.md's).
OVERLOAD_CAPTION = ("warn: gpu = GPU utilisation >= 1 (TTFT measures an unbounded queue); "
                    "disk / archive = its writes fall behind (see summary.json)")


def overload_flags(value: object) -> str:
    """A cell's ``overload`` value (``gpu,disk``) as the ``warn`` column shows it: ``gpu, disk``;
    empty for none."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).replace(",", ", ")
