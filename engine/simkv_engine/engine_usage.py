"""The engine's usage and upkeep: :meth:`~EngineUsage.counters` (the cumulative counters and
gauges behind the server's ``/metrics``: tokens by source, bytes per tier, evictions, the disk's
and the archive's errors), :meth:`~EngineUsage.health` (why the engine is degraded) and
:meth:`~EngineUsage.clear` (dropping local tiers' contents, for calibration and tests). A mixin
of :class:`~simkv_engine.engine.KVEngine`."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from simkv_engine import lmcache_glue
from simkv_engine.archive import ArchiveWorker
from simkv_engine.engine_types import LOCAL_TIERS, EngineError
from simkv_engine.gpu_cache import GPUPrefixCache
from simkv_engine.integrity import DiskGuard, lmcache_alloc_failures


class EngineUsage:
    """The engine's counters, health and clears."""

    chunk_bytes: int
    gpu_cache: GPUPrefixCache
    archive: ArchiveWorker | None
    lmcache: Any
    _backends: dict[str, Any]
    _counts: dict[str, Any]
    _disk_guard: DiskGuard | None
    _alloc_failures0: int
    _lmcache_evictions: dict[str, int]
    _evictions_lock: threading.Lock
    _lock: Any

    def counters(self) -> dict[str, Any]:
        """A snapshot of the engine's cumulative counters, for ``/metrics`` and benchmarks: each
        value a number, or a dict from a label (tier, source, error kind) to a number.
        ``prompt_tokens_by_source`` (tiers and ``computed``), ``bytes_loaded`` / ``bytes_stored``
        per tier (KV bytes of the hosted model; the archive's raw bytes hydrated / uploaded),
        ``evictions`` per tier in chunks (the GPU cache's, and LMCache's CPU and disk backends' own
        evictions; :func:`~simkv_engine.lmcache_glue.count_evictions`; :meth:`clear` is not
        counted), ``requests``, and the gauge ``tier_bytes`` (KV bytes each tier holds now: its
        chunks x ``chunk_bytes``; the archive's: the stored bytes of its index's objects).
        ``bytes_stored["disk"]`` counts the chunks whose disk write landed (LMCache writes
        asynchronously: it lags the requests by the writes in flight). With a disk tier:
        ``disk_errors`` (``{kind: n}``: chunks not served because their file was ``unreadable``,
        of the wrong ``length``, failed its ``checksum`` or had no digest (``unverified``), and
        disk writes that failed (``write``); :mod:`simkv_engine.integrity`).
        ``lmcache_alloc_failures``: LMCache's failed CPU-pool allocations (each one a warning
        LMCache logs in a busy loop; the console shows one per 10 s).

        With an archive: ``expirations`` (``{"archive": n}``, objects deleted at their deadline),
        ``archive_uploads``, ``archive_upload_bytes`` (``{"raw": , "stored": }``),
        ``archive_compression_ratio`` (raw / stored over all uploads; 0 before the first),
        ``archive_compress_s`` / ``archive_upload_s`` (seconds spent compressing / in PUTs),
        ``archive_refreshes`` (sliding-TTL metadata COPYs), ``archive_skipped`` (candidates
        gone from every local tier at the pass), ``archive_passes``, ``archive_fetches``
        (objects fetched and verified), ``archive_fetch_bytes`` (stored bytes),
        ``archive_fetch_s`` / ``archive_decompress_s``, ``archive_hydrations`` (chunks written
        into LMCache and the GPU cache from the archive), ``archive_errors`` (``{kind: n}``,
        kinds unreachable, timeout, corrupt, missing, other), ``archive_rejected_objects``
        (objects of another layout left out of the index), and the gauges
        ``archive_objects`` / ``archive_stored_bytes`` (the index now)."""
        out = {k: dict(v) if isinstance(v, dict) else v for k, v in self._counts.items()}
        if self._disk_guard is not None:
            out["disk_errors"], stored, _ = self._disk_guard.counts()
            out["bytes_stored"]["disk"] = stored * self.chunk_bytes
        out["lmcache_alloc_failures"] = lmcache_alloc_failures() - self._alloc_failures0
        with self._evictions_lock:
            out["evictions"] = {"gpu": self.gpu_cache.evictions, **self._lmcache_evictions}
        cpu, disk = self._backends["cpu"], self._backends["disk"]
        held = {"gpu": len(self.gpu_cache), "cpu": 0 if cpu is None else lmcache_glue.cpu_chunks(cpu),
                "disk": 0 if disk is None else lmcache_glue.disk_chunks(disk)}
        out["tier_bytes"] = {**{t: n * self.chunk_bytes for t, n in held.items()}, "archive": 0}
        if self.archive is not None:
            a = self.archive.snapshot()
            out["bytes_stored"]["archive"] = a["upload_raw_bytes"]
            out["tier_bytes"]["archive"] = a["stored_bytes"]
            out["expirations"] = {"archive": a["expirations"]}
            out["archive_uploads"] = a["uploads"]
            out["archive_upload_bytes"] = {"raw": a["upload_raw_bytes"], "stored": a["upload_stored_bytes"]}
            out["archive_compression_ratio"] = (a["upload_raw_bytes"] / a["upload_stored_bytes"]
                                                if a["upload_stored_bytes"] else 0.0)
            for k in ("compress_s", "upload_s", "refreshes", "skipped", "passes", "fetches", "fetch_bytes",
                      "fetch_s", "decompress_s", "errors", "rejected_objects", "objects", "stored_bytes"):
                out[f"archive_{k}"] = a[k]
        return out

    def health(self) -> list[str]:
        """Why the engine is degraded (it serves, by recompute, but a tier does not work), or
        nothing: the disk tier while its last write failed (full or failing filesystem)."""
        if self._disk_guard is None:
            return []
        write_error = self._disk_guard.counts()[2]
        if write_error is None:
            return []
        return [f"disk tier: writes fail ({write_error}); chunks are not stored on disk"]

    def clear(self, tiers: Sequence[str] = LOCAL_TIERS, *, timeout_s: float = 30.0) -> dict[str, int]:
        """Drop the named local tiers' contents (for calibration and tests; never the archive);
        returns the chunks dropped per tier. Clearing the CPU or disk tier first waits (at most
        ``timeout_s``) for LMCache's pending asynchronous disk writes, so a chunk being written
        neither stays pinned in the CPU tier nor reappears on disk after the clear. LMCache
        0.5.6's disk backend has no ``clear``: its chunks are removed one by one."""
        unknown = [t for t in tiers if t not in LOCAL_TIERS]
        if unknown:
            raise EngineError(f"tiers: {unknown[0]!r} is not a local tier ({', '.join(LOCAL_TIERS)})")
        with self._lock:
            return self._clear(tiers, timeout_s)

    def _clear(self, tiers: Sequence[str], timeout_s: float) -> dict[str, int]:
        out: dict[str, int] = {}
        disk = self._backends["disk"]
        if disk is not None and {"cpu", "disk"} & set(tiers):
            # A pending disk write pins its CPU copy (the CPU clear skips pinned objects) and
            # would re-create a cleared disk chunk: let them finish first.
            lmcache_glue.wait_disk_writes(disk, timeout_s, 0.005)
        for tier in dict.fromkeys(tiers):
            if tier == "gpu":
                out[tier] = self.gpu_cache.clear()
                continue
            backend = self._backends[tier]
            if backend is None:
                out[tier] = 0
            elif tier == "cpu":
                out[tier] = lmcache_glue.cpu_chunks(backend)
                self.lmcache.clear(locations=[lmcache_glue.BACKENDS["cpu"]])
                out[tier] -= lmcache_glue.cpu_chunks(backend)
            else:
                assert self._disk_guard is not None
                out[tier] = sum(self._disk_guard.drop(key) for key in lmcache_glue.disk_keys(backend))
        return out

