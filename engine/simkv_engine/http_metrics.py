"""The server's ``/metrics``: the engine's counters read at scrape time
(:class:`EngineCollector`), as Prometheus counters and gauges with their help texts and labels,
and vLLM's buckets for the time-to-first-token histogram."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from simkv_engine.engine import KVEngine
from simkv_engine.http_jobs import Worker

#: vLLM's TTFT histogram buckets (seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
#: The label of each dict-valued engine value in ``/metrics`` (others: ``tier``).
COUNTER_LABELS = {"prompt_tokens_by_source": "source", "archive_errors": "kind",
                  "archive_upload_bytes": "kind", "disk_errors": "kind"}
#: Engine values that are levels (what is there now), not running totals: Prometheus gauges,
#: named without ``_total``.
GAUGES = {"tier_bytes": "KV bytes each tier holds now (the archive: the stored, compressed bytes of "
                        "the objects in its index).",
          "archive_objects": "Objects in the archive's index now.",
          "archive_stored_bytes": "Stored (compressed) bytes of the objects in the archive's index now.",
          "archive_compression_ratio": "Raw / stored bytes over all archive uploads (0 before the first)."}
COUNTER_HELP = {
    "requests": "Completions served by the engine.",
    "prompt_tokens_by_source": "Prompt tokens by where their KV came from (a tier, or computed).",
    "bytes_loaded": "KV bytes loaded from each tier into the prefill.",
    "bytes_stored": "KV bytes stored into each tier (the archive: raw bytes uploaded).",
    "evictions": "Chunks evicted from each tier by its capacity policy.",
    "expirations": "Chunks expired from each tier by their TTL.",
    "archive_uploads": "Chunks uploaded to the archive.",
    "archive_fetches": "Chunks fetched from the archive.",
    "archive_errors": "Archive operations that failed, by kind.",
    "disk_errors": "Disk-tier chunks not served (unreadable, length, checksum, unverified) and disk "
                   "writes that failed (write), by kind.",
    "lmcache_alloc_failures": "LMCache's failed CPU-pool allocations.",
}
#: HTTP status of a request whose client closed the connection before the worker started it

def _metric_name(key: str) -> str:
    return "simkv_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class EngineCollector(Collector):
    """``/metrics`` from :meth:`KVEngine.counters` at scrape time: a number becomes the counter
    ``simkv_<key>_total`` (the gauge ``simkv_<key>`` for the levels of :data:`GAUGES`), a dict
    ``{label: number}`` the same with the label named by :data:`COUNTER_LABELS` (``tier`` by
    default); plus the worker's queue depth (a gauge). The snapshot is read on the event loop,
    not through the worker, so a scrape never waits behind a long request."""

    def __init__(self, engine: KVEngine, worker: Worker) -> None:
        self.engine = engine
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        for key, value in self.engine.counters().items():
            kind = GaugeMetricFamily if key in GAUGES else CounterMetricFamily
            doc = GAUGES.get(key) or COUNTER_HELP.get(key, f"The engine's counter {key}.")
            if isinstance(value, dict):
                label = COUNTER_LABELS.get(key, "tier")
                family = kind(_metric_name(key), doc, labels=[label])
                for name, n in value.items():
                    family.add_metric([str(name)], float(n))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                family = kind(_metric_name(key), doc, value=float(value))
            else:
                continue
            yield family
        yield GaugeMetricFamily("simkv_queue_depth", "Jobs waiting for the engine's worker "
                                "(completions, lookups, hydrations, clears), not counting the one running.",
                                value=self.worker.depth)
