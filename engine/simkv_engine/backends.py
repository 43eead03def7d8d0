"""The engine's tiers behind one protocol: :class:`TierBackend`. The engine holds its tiers as one
list of backends, fastest first (absent tiers left out), and its walk, loads, stores, clears and
counters loop over that list; what a tier does is its backend's business. The adapters: our GPU
prefix cache (:class:`GPUTier`, here), LMCache's CPU and disk backends
(:mod:`simkv_engine.lmcache_tiers`) and the archive (:class:`~simkv_engine.archive_tier.ArchiveBackend`).

Where LMCache's semantics force an order, a backend states it as data the engine reads, never by
tier name: ``admits`` (every chunk of a served prompt is admitted to it in prompt order, and a
chunk it served is not written through: the GPU cache, where the model's KV lives),
``writes_through`` (the write-through's targets, in list order: LMCache's tiers), and
``fills_on_read`` (the tiers its read writes the chunk into: LMCache's disk read lands in the
CPU backend, so the CPU's runs are read before the others' and a chunk read from disk is not
written back to the CPU). See engine/README.md, "Tiers and backends".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from simkv_engine.connector import HFKVConnector, KVLayers
from simkv_engine.gpu_cache import GPUPrefixCache

if TYPE_CHECKING:
    from simkv_engine.archive import ChunkFormat


class Chunk(NamedTuple):
    """One full chunk: LMCache's ``CacheEngineKey`` (its ``chunk_hash`` keys the GPU cache) and
    the archive's hash of it (``None`` without an archive)."""

    key: Any
    hash: int | None = None


@dataclass(frozen=True)
class Prompt:
    """A prompt's full chunks as the tiers address them: its tokens, LMCache's key of each full
    chunk and the archive's hash of each (empty without an archive)."""

    tokens: list[int]
    keys: list
    hashes: list[int]

    def chunk(self, m: int) -> Chunk:
        return Chunk(self.keys[m], self.hashes[m] if self.hashes else None)


@dataclass
class TierCounters:
    """A tier's side of :meth:`KVEngine.counters`: ``chunks`` / ``bytes`` held now (the archive's:
    its index's objects and their stored bytes), ``evictions`` (chunks its own policy evicted;
    clears not counted), ``stored_bytes`` (KV bytes written into it; the archive's: raw bytes
    uploaded) and ``extra``: counters of its own, merged into the engine's as they are."""

    chunks: int
    bytes: int
    evictions: int = 0
    stored_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TierBackend(Protocol):
    """One tier of the engine. ``name``: its tier name (``simkv.core.tiers.TIER_NAMES``);
    ``local``: in the engine's own memory or disk (:meth:`KVEngine.clear` drops it, the archive
    worker reads chunks from it, its evictions are reported); ``admits``, ``writes_through``,
    ``fills_on_read``: the order-specific steps (module docstring). Called under the engine's lock."""

    name: str
    local: bool
    admits: bool
    writes_through: bool
    fills_on_read: tuple[str, ...]

    def contains(self, chunk: Chunk) -> bool:
        """Whether the tier holds ``chunk`` now (no side effects: no pinning, no policy update)."""
        ...

    def touch(self, chunk: Chunk) -> None:
        """The lookup's side of a hit: an access in the tier's eviction order (nothing where the
        tier's own read makes it)."""
        ...

    def read(self, prompt: Prompt, kv: KVLayers, a: int, b: int) -> int:
        """Copy chunks ``a..b-1`` (all held here at the lookup) into ``kv``; returns the first
        chunk that did not deliver (``b``: all did)."""
        ...

    def write(self, prompt: Prompt, chunks: Sequence[int], kv: KVLayers) -> frozenset[str]:
        """Store ``chunks`` (indices, ascending) of ``kv``: a chunk held already is an access.
        Returns the tiers the write reached (one LMCache store reaches all of LMCache's)."""
        ...

    def peek(self, chunk: Chunk, fmt: ChunkFormat) -> bytes | None:
        """The chunk's raw KV bytes in ``fmt`` for the archive worker (no policy update), or None."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until the tier's asynchronous writes are done."""
        ...

    def clear(self, timeout_s: float) -> int:
        """Drop every chunk (not counted as evictions); returns how many were dropped."""
        ...

    def counters(self) -> TierCounters:
        ...

    def health(self) -> list[str]:
        """Why the tier is degraded now (nothing: it works)."""
        ...


def chunk_runs(chunks: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of consecutive chunk indices (sorted input)."""
    runs: list[tuple[int, int]] = []
    for m in chunks:
        if runs and runs[-1][1] == m:
            runs[-1] = (runs[-1][0], m + 1)
        else:
            runs.append((m, m + 1))
    return runs


class GPUTier:
    """:class:`GPUPrefixCache` as a backend: chunks copied to and from the request's KV, each
    access and admission a tick of the cache's policy clock."""

    name = "gpu"
    local = True
    admits = True
    writes_through = False
    fills_on_read: tuple[str, ...] = ()

    def __init__(self, cache: GPUPrefixCache, chunk_size: int, chunk_bytes: int) -> None:
        self.cache = cache
        self.chunk_size = chunk_size
        self.chunk_bytes = chunk_bytes
        self.stored_bytes = 0
        self._ref = 0

    def _tick(self) -> int:
        self._ref += 1
        return self._ref

    def contains(self, chunk: Chunk) -> bool:
        return chunk.key.chunk_hash in self.cache

    def touch(self, chunk: Chunk) -> None:
        self.cache.hit(chunk.key.chunk_hash, self._tick())

    def read(self, prompt: Prompt, kv: KVLayers, a: int, b: int) -> int:
        for m in range(a, b):
            HFKVConnector.scatter(kv, self.cache.chunks[prompt.keys[m].chunk_hash], m * self.chunk_size)
        return b

    def write(self, prompt: Prompt, chunks: Sequence[int], kv: KVLayers) -> frozenset[str]:
        c = self.chunk_size
        for m in chunks:
            key = prompt.keys[m].chunk_hash
            if key not in self.cache:
                self.stored_bytes += self.chunk_bytes
            self.cache.put(key, HFKVConnector.gather(kv, m * c, (m + 1) * c), self._tick())
        return frozenset((self.name,))

    def peek(self, chunk: Chunk, fmt: ChunkFormat) -> bytes | None:
        tensor = self.cache.chunks.get(chunk.key.chunk_hash)
        return None if tensor is None else fmt.to_bytes(tensor)

    def flush(self, timeout_s: float) -> None:
        return None

    def clear(self, timeout_s: float) -> int:
        return self.cache.clear()

    def counters(self) -> TierCounters:
        n = len(self.cache)
        return TierCounters(n, n * self.chunk_bytes, self.cache.evictions, self.stored_bytes)

    def health(self) -> list[str]:
        return []
