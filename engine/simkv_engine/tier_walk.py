"""The tier walk: which tier holds each full chunk of a prompt, fastest first (our GPU prefix
cache, LMCache's CPU backend, its disk backend, then the archive), up to the first chunk no tier
holds (prefix semantics, as the simulator). Which LMCache tier holds a chunk is asked of each
backend's ``contains`` (no pinning, no side effects), CPU before disk, the order in which
LMCache's retrieve reads. A mixin of :class:`~simkv_engine.engine.KVEngine`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simkv_engine import lmcache_glue
from simkv_engine.archive import ArchiveWorker, chunk_hashes
from simkv_engine.gpu_cache import GPUPrefixCache


class TierWalk:
    """The engine's lookups (no side effects: no pinning, no policy update)."""

    chunk_size: int
    gpu_cache: GPUPrefixCache
    archive: ArchiveWorker | None
    lmcache: Any
    _backends: dict[str, Any]
    _lock: Any

    def chunk_keys(self, tokens: Sequence[int]) -> list:
        """LMCache's keys of the full chunks of ``tokens`` (the tail is never cached)."""
        n_full = len(tokens) // self.chunk_size * self.chunk_size
        if n_full == 0:
            return []
        return lmcache_glue.chunk_keys(self.lmcache, list(tokens[:n_full]))

    def chunk_hashes(self, tokens: Sequence[int]) -> list[int]:
        """The archive's (and the policy state's) hashes of the full chunks of ``tokens``."""
        return chunk_hashes(tokens, self.chunk_size)

    def lookup(self, tokens: Sequence[int]) -> list[str]:
        """The tier holding each chunk of the cached prefix of ``tokens``, in order, ending at
        the first chunk no tier holds (the archive included). No side effects (no pinning, no
        policy update)."""
        with self._lock:
            keys = self.chunk_keys(tokens)
            return self._walk(keys, self.chunk_hashes(tokens) if self.archive is not None else [])

    def _walk(self, keys: list, hashes: list[int]) -> list[str]:
        out: list[str] = []
        now = self.archive.clock() if self.archive is not None else 0.0
        for m, key in enumerate(keys):
            tier = self._tier_of(key)
            if tier is None and self.archive is not None and self.archive.live(hashes[m], now):
                tier = "archive"
            if tier is None:
                break
            out.append(tier)
        return out

    def _tier_of(self, key) -> str | None:
        if key.chunk_hash in self.gpu_cache:
            return "gpu"
        for tier in ("cpu", "disk"):
            backend = self._backends[tier]
            if backend is not None and backend.contains(key, pin=False):
                return tier
        return None

