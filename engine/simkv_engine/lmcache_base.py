"""What simkv's LMCache GPU connectors share: LMCache's ``GPUConnectorInterface`` for chunks in
LMCache's ``KV_2LTD`` layout (``[2, layers, tokens, kv_heads * head_dim]``), with the single
copies done as one-element batches. Imports only torch and LMCache (the vLLM connector's process
has no simkv)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.memory_management import MemoryObj


def flat_memory_objs(memory_objs: Sequence, who: str) -> list[MemoryObj]:
    """LMCache passes one list of memory objects, or one list per layer group; one group only."""
    if memory_objs and isinstance(memory_objs[0], list | tuple):
        if len(memory_objs) != 1:
            raise ValueError(f"{who}: one layer group only")
        return list(memory_objs[0])
    return list(memory_objs)


class KV2LTDConnector(GPUConnectorInterface):
    """A connector whose memory objects hold ``[2, layers, tokens, kv_heads * head_dim]``;
    subclasses implement ``batched_from_gpu`` / ``batched_to_gpu``."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int) -> None:
        self.layers = layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.kvcaches = None

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([2, self.layers, num_tokens, self.kv_heads * self.head_dim])

    def initialize_kvcaches_ptr(self, **kwargs) -> None:
        if "kvcaches" in kwargs:
            self.kvcaches = kwargs["kvcaches"]

    def from_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs) -> None:
        self.batched_from_gpu([memory_obj], [start], [end], **kwargs)

    def to_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs) -> None:
        self.batched_to_gpu([memory_obj], [start], [end], **kwargs)

    def chunk_view(self, obj: MemoryObj, tokens: int) -> torch.Tensor:
        """The memory object's tensor as ``[2, layers, tokens, kv_heads, head_dim]``."""
        tensor = obj.tensor
        assert tensor is not None, "memory object without a tensor"
        return tensor.view(2, self.layers, tokens, self.kv_heads, self.head_dim)
