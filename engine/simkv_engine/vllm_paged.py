"""LMCache's GPU connector for vLLM's CPU paged KV cache, in plain torch.

LMCache 0.5.6 ships paged vLLM connectors for CUDA, XPU, MUSA and HPU only (compiled kernels);
on vLLM's CPU build ``CreateGPUConnector`` raises ``No supported cpu connector found`` and
LMCache runs degraded (every prompt recomputed). This is the counterpart of LMCache's
``VLLMPagedMemGPUConnectorV2`` for the CPU attention backend's layout, so LMCache's CPU and disk
tiers serve vLLM on the CPU.

vLLM's CPU backend (``vllm/v1/attention/backends/cpu_attn.py``) keeps one tensor per layer of
logical shape ``[num_blocks, kv_heads, block_size, 2 * head_dim]`` whose memory is, per block and
head, the block's keys then its values: viewed as ``[num_blocks, kv_heads, 2 * block_size,
head_dim]``, rows ``[0, block_size)`` are K and the rest V (the backend's own ``view`` +
``chunk``). Token ``i`` of a request sits in slot ``slot_mapping[i]``: block ``slot //
block_size``, row ``slot % block_size``. A memory object holds one chunk in LMCache's
``KV_2LTD`` layout: ``[2, layers, tokens, kv_heads * head_dim]``.

This module imports only torch and LMCache, so it is testable without vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lmcache.v1.memory_management import MemoryFormat
from lmcache.v1.metadata import LMCacheMetadata

from simkv_engine.lmcache_base import KV2LTDConnector, flat_memory_objs


def paged_kv(layer: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The K and V views, each ``[num_blocks, kv_heads, block_size, head_dim]``, of one layer of
    vLLM's CPU paged cache (``[num_blocks, kv_heads, block_size, 2 * head_dim]``)."""
    if layer.dim() != 4 or layer.shape[3] != 2 * head_dim:
        raise ValueError(f"VLLMCPUPagedConnector: a layer of vLLM's CPU KV cache is [blocks, kv_heads, "
                         f"block_size, 2 * {head_dim}]; got {tuple(layer.shape)}")
    blocks, heads, block_size, _ = layer.shape
    kv = layer.view(blocks, heads, 2 * block_size, head_dim)
    return kv[:, :, :block_size], kv[:, :, block_size:]


class VLLMCPUPagedConnector(KV2LTDConnector):
    """LMCache <-> vLLM's CPU paged KV cache, addressed by the request's slot mapping.

    ``store`` / ``retrieve`` pass ``kvcaches`` (vLLM's per-layer tensors), ``slot_mapping`` (one
    slot per token of the whole sequence) and, on retrieve, ``vllm_cached_tokens`` (tokens vLLM's
    own prefix cache already holds; their slots may be shared with other requests, so they are
    not written, as LMCache's CUDA connector skips them)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        super().__init__(layers, kv_heads, head_dim)
        self.dtype = dtype
        self.kvcaches: Sequence[torch.Tensor] | None = None

    @classmethod
    def from_metadata(cls, metadata: LMCacheMetadata) -> VLLMCPUPagedConnector:
        """The connector for LMCache's metadata (``kv_shape``: layers, 2, chunk, kv_heads, head_dim)."""
        layers, kv, _, heads, head_dim = metadata.kv_shape
        if metadata.use_mla or kv != 2:
            raise ValueError("VLLMCPUPagedConnector: MLA caches are not supported")
        return cls(layers, heads, head_dim, metadata.kv_dtype)

    # -- LMCache's interface ------------------------------------------------------------------
    def batched_from_gpu(self, memory_objs, starts: list[int], ends: list[int], **kwargs) -> None:
        """Copy tokens ``[starts[i], ends[i])`` (their slots) of vLLM's cache into ``memory_objs[i]``."""
        objs = flat_memory_objs(memory_objs, type(self).__name__)
        layers = self._layers(kwargs)
        slots = self._slots(kwargs)
        for obj, s, e in zip(objs, starts, ends, strict=True):
            dst = self.chunk_view(obj, e - s)
            block, row = self._address(slots[s:e], layers[0][0].shape[2])
            for i, (k, v) in enumerate(layers):
                dst[0, i] = k[block, :, row]     # [tokens, kv_heads, head_dim]
                dst[1, i] = v[block, :, row]
            obj.metadata.fmt = MemoryFormat.KV_2LTD

    def batched_to_gpu(self, memory_objs=None, starts: list[int] | None = None,
                       ends: list[int] | None = None, **kwargs) -> None:
        """Copy ``memory_objs[i]`` into the slots of tokens ``[starts[i], ends[i])``, but those
        vLLM's prefix cache already holds."""
        assert memory_objs is not None and starts is not None and ends is not None
        objs = flat_memory_objs(memory_objs, type(self).__name__)
        layers = self._layers(kwargs)
        slots = self._slots(kwargs)
        vllm_cached = int(kwargs.get("vllm_cached_tokens", 0))
        for obj, s, e in zip(objs, starts, ends, strict=True):
            if obj.metadata.fmt != MemoryFormat.KV_2LTD:
                raise ValueError(f"VLLMCPUPagedConnector: memory object in {obj.metadata.fmt}, "
                                 "expected KV_2LTD")
            skip = min(e - s, max(0, vllm_cached - s))
            if skip == e - s:
                continue
            src = self.chunk_view(obj, e - s)[:, :, skip:]
            block, row = self._address(slots[s + skip:e], layers[0][0].shape[2])
            for i, (k, v) in enumerate(layers):
                k[block, :, row] = src[0, i]
                v[block, :, row] = src[1, i]

    # -- helpers ------------------------------------------------------------------------------
    def _layers(self, kwargs: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
        caches = kwargs.get("kvcaches", self.kvcaches)
        if caches is None:
            raise ValueError("VLLMCPUPagedConnector: 'kvcaches' (vLLM's per-layer tensors) must be passed")
        caches = list(caches)
        if len(caches) != self.layers:
            raise ValueError(f"VLLMCPUPagedConnector: {len(caches)} layers given, LMCache expects "
                             f"{self.layers}")
        return [paged_kv(layer, self.head_dim) for layer in caches]

    @staticmethod
    def _slots(kwargs: dict) -> torch.Tensor:
        if "slot_mapping" not in kwargs:
            raise ValueError("VLLMCPUPagedConnector: 'slot_mapping' must be passed")
        return kwargs["slot_mapping"].to(device="cpu", dtype=torch.long)

    @staticmethod
    def _address(slots: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((slots < 0).any()):
            raise ValueError("VLLMCPUPagedConnector: a slot of -1 in the range to copy")
        return torch.div(slots, block_size, rounding_mode="floor"), slots % block_size
