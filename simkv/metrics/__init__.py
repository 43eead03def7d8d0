"""Metrics, exactly as docs/metrics.md defines them: per-request rows, a timeline, a summary.

* token hit rate = Σ hit-prefix tokens / Σ input tokens (tail tokens are misses); also per
  tier (tokens served from that tier) and per prompt class;
* block hit ratio = Σ hit blocks / Σ full blocks; request full-hit ratio = share of
  requests with at least one block whose every block hit; any-hit ratio = share with >= 1;
* evictions and TTL expirations per tier (counts, per second of simulated time, per request);
* storage per tier: time-weighted mean bytes, peak bytes, GB-hours (exact integrals);
* cost saved = GPU time avoided × GPU $/s − archive storage $ − archive request $ −
  transfer $, where GPU time avoided = Σ (prefill(n, 0) − load − prefill(n − h, h)) over
  requests (the GPU is busy while it loads, so a slow load can cost more than it saves);
  archive storage $ = Σ over archive objects of ``max(stored, min_object_bytes) × max(lifetime,
  min_days)`` × $/GB-month, every PUT (upload or sliding-TTL refresh COPY) being a new object:
  one removed before its storage class's minimum pays the rest at removal (S3's early-deletion
  fee), one alive at the end of the run is billed until its TTL deadline (``lifetime =
  max(deadline, end) − created``) but at least the minimum;
  request $ = PUTs × $/PUT + GETs × $/GET; transfer $ = GB fetched × (retrieval + transfer $/GB);
* per request, every archive dollar is charged to one request, so the per-request cost
  columns add up to the summary: an object's PUT and storage go to the request whose access
  made the block a candidate for that upload (its last request before the archive pass),
  GET / retrieval / transfer to the request that fetched;
* TTFT p50/p90/p99 with the cache and for the same trace, queue included, without it;
* offered load: GPU utilisation, disk write demand and lag, archive worker share
  (:func:`simkv.metrics.summary.load_metrics`).
"""

from simkv.metrics.requests import request_frame
from simkv.metrics.summary import summarize
from simkv.metrics.timeline import timeline_frame

__all__ = ["request_frame", "summarize", "timeline_frame"]
