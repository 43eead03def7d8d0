"""The engine's usage and upkeep: :meth:`~EngineUsage.counters` (the cumulative counters and
gauges behind the server's ``/metrics``: tokens by source, bytes per tier, evictions, the disk's
and the archive's errors), :meth:`~EngineUsage.health` (why the engine is degraded) and
:meth:`~EngineUsage.clear` (dropping local tiers' contents, for calibration and tests). A mixin
of :class:`~simkv_engine.engine.KVEngine`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simkv_engine.backends import TierBackend
from simkv_engine.engine_types import LOCAL_TIERS, TIERS, EngineError
from simkv_engine.integrity import lmcache_alloc_failures


class EngineUsage:
    """The engine's counters, health and clears, gathered from its tiers' backends."""

    tiers: list[TierBackend]
    _counts: dict[str, Any]
    _alloc_failures0: int
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

        With a remote tier (:class:`~simkv_engine.lmcache_tiers.RemoteTier`): ``tier_bytes["remote"]``
        (the keys this engine put that the server still holds), ``bytes_stored["remote"]`` (every
        put, re-puts included) and ``expirations["remote"]`` (its keys found gone from the server).

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
        out["lmcache_alloc_failures"] = lmcache_alloc_failures() - self._alloc_failures0
        out["evictions"] = dict.fromkeys(LOCAL_TIERS, 0)
        out["tier_bytes"] = dict.fromkeys(TIERS, 0)
        extra: dict[str, Any] = {}
        for tier in self.tiers:
            c = tier.counters()
            out["bytes_stored"][tier.name] = c.stored_bytes
            out["tier_bytes"][tier.name] = c.bytes
            if tier.local:
                out["evictions"][tier.name] = c.evictions
            for key, value in c.extra.items():    # a dict by tier (expirations) merges
                extra[key] = {**extra[key], **value} if isinstance(value, dict) and key in extra else value
        out.update(extra)
        return out

    def health(self) -> list[str]:
        """Why the engine is degraded (it serves, by recompute, but a tier does not work), or
        nothing: the disk tier while its last write failed (full or failing filesystem)."""
        return [reason for tier in self.tiers for reason in tier.health()]

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
        held = {tier.name: tier for tier in self.tiers}
        return {name: held[name].clear(timeout_s) if name in held else 0 for name in dict.fromkeys(tiers)}
