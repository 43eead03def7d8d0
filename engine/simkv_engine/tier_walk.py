"""The tier walk: which tier holds each full chunk of a prompt, asked of each backend in the
engine's list, fastest first (our GPU prefix cache, LMCache's CPU backend, its disk backend, then
the archive: the order in which LMCache's retrieve reads, too), up to the first chunk no tier
holds (prefix semantics, as the simulator). ``contains`` has no side effects (no pinning, no
policy update). A mixin of :class:`~simkv_engine.engine.KVEngine`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simkv_engine import lmcache_glue
from simkv_engine.archive import ArchiveWorker, chunk_hashes
from simkv_engine.backends import Chunk, Prompt, TierBackend


class TierWalk:
    """The engine's lookups (no side effects: no pinning, no policy update)."""

    chunk_size: int
    archive: ArchiveWorker | None
    lmcache: Any
    tiers: list[TierBackend]
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

    def tier(self, name: str) -> TierBackend | None:
        """The engine's backend of tier ``name`` (``None``: the tier is off)."""
        return next((b for b in self.tiers if b.name == name), None)

    def lookup(self, tokens: Sequence[int]) -> list[str]:
        """The tier holding each chunk of the cached prefix of ``tokens``, in order, ending at
        the first chunk no tier holds (the archive included). No side effects (no pinning, no
        policy update)."""
        with self._lock:
            return [b.name for b in self._walk(self._prompt(tokens))]

    def _prompt(self, tokens: list[int] | Sequence[int]) -> Prompt:
        tokens = list(tokens)
        hashes = self.chunk_hashes(tokens) if self.archive is not None else []
        return Prompt(tokens, self.chunk_keys(tokens), hashes)

    def _walk(self, prompt: Prompt) -> list[TierBackend]:
        out: list[TierBackend] = []
        for m in range(len(prompt.keys)):
            tier = self._holder(prompt.chunk(m), self.tiers)
            if tier is None:
                break
            out.append(tier)
        return out

    @staticmethod
    def _holder(chunk: Chunk, tiers: Sequence[TierBackend]) -> TierBackend | None:
        """The fastest of ``tiers`` holding ``chunk``."""
        return next((b for b in tiers if b.contains(chunk)), None)
