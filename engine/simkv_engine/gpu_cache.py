"""The engine's own first tier: :class:`GPUPrefixCache`, KV chunks in device memory keyed by
LMCache's chunk hash, bounded by a chunk count and evicted by one of the simulator's online
policies (``simkv.core.policies.eviction``). LMCache holds the CPU and disk tiers; this one is ours."""

from __future__ import annotations

import torch

from simkv.core.policies.eviction import EvictionPolicy


class GPUPrefixCache:
    """KV chunks in device memory (``[2, layers, chunk, kv_heads, head_dim]`` each), keyed by
    chunk hash; ``capacity`` chunks (``None``: unlimited), the victim named by ``policy``."""

    def __init__(self, capacity: int | None, policy: EvictionPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self.chunks: dict[int, torch.Tensor] = {}
        self.evictions = 0

    def __contains__(self, key: int) -> bool:
        return key in self.chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def hit(self, key: int, ref: int) -> None:
        self.policy.hit(key, ref)

    def put(self, key: int, chunk: torch.Tensor, ref: int) -> None:
        """Admit ``chunk`` (evicting as needed); a resident key only counts as a hit."""
        if key in self.chunks:
            self.policy.hit(key, ref)
            return
        if self.capacity is not None and self.capacity <= 0:
            return
        while self.capacity is not None and len(self.chunks) >= self.capacity:
            del self.chunks[self.policy.evict()]
            self.evictions += 1
        self.chunks[key] = chunk
        self.policy.admit(key, ref)

    def clear(self) -> int:
        """Drop every chunk (not counted as evictions); returns how many were held."""
        n = len(self.chunks)
        for key in self.chunks:
            self.policy.drop(key)
        self.chunks.clear()
        return n
