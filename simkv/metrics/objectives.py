"""Which way is better for every summary metric: the one table that sweeps, winner selection
and reports rank by.

An objective names a summary metric, or one of the short :data:`ALIASES`; its direction is
:func:`direction_of` the metric unless the user overrides it. Lower is better for latencies
(``ttft_*``, ``e2e_*``, ``tpot_*``, queue, load and prefill times), for what the system
spends (archive, request and transfer dollars, bytes stored, evictions, expirations, PUTs and
GETs) and for load (utilisation, write demand, preemptions); higher is better for the rest:
hit rates and ratios, throughput, what the cache saves (``cost_saved_dollars``,
``gpu_seconds_saved``, ``tokens_avoided``).
"""

from __future__ import annotations

from typing import Literal

Direction = Literal["max", "min"]

#: Short names accepted by ``--objective`` → summary column.
ALIASES: dict[str, str] = {
    "cost_saved": "cost_saved_dollars",
    "token_hit_rate": "token_hit_rate",
    "ttft_p50": "ttft_p50_s",
    "ttft_p90": "ttft_p90_s",
    "ttft_p99": "ttft_p99_s",
}

_LOWER_PREFIXES = ("ttft_", "e2e_", "tpot_", "preemptions", "queue_", "load_", "prefill_",
                   "evictions", "expirations", "storage_", "archive_storage", "archive_request",
                   "archive_puts", "archive_gets", "archive_refreshes", "archive_skipped", "archive_upload",
                   "archive_worker", "disk_write", "insertions", "hydrations", "offloads")
_LOWER_NAMES = frozenset({"transfer_dollars", "request_cost_dollars", "gpu_utilization",
                          "gpu_busy_s", "gpus_suggested", "makespan_s", "duration_s"})


def column_of(name: str) -> str:
    """The summary column an objective name means (an alias, or the name itself)."""
    return ALIASES.get(name, name)


def direction_of(metric: str) -> Direction:
    """``'min'`` if lower values of ``metric`` (an alias or a summary column) are better, else
    ``'max'``."""
    column = column_of(metric)
    if column in _LOWER_NAMES or column.startswith(_LOWER_PREFIXES):
        return "min"
    return "max"
