"""LMCache's connector for vLLM's CPU paged KV cache (simkv_engine.vllm_paged): chunks copied out
of and back into paged layers by slot mapping, with real LMCache memory objects."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmcache")

from lmcache.v1.memory_allocators.ad_hoc_memory_allocator import AdHocMemoryAllocator  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from simkv_engine.vllm_paged import VLLMCPUPagedConnector  # noqa: E402

LAYERS, HEADS, HEAD_DIM, BLOCKS, BLOCK = 2, 2, 8, 6, 4
DTYPE = torch.bfloat16


def _caches(seed: int | None) -> list[torch.Tensor]:
    """vLLM CPU layers, ``[blocks, kv_heads, block_size, 2 * head_dim]``; random, or zeros."""
    shape = (BLOCKS, HEADS, BLOCK, 2 * HEAD_DIM)
    if seed is None:
        return [torch.zeros(shape, dtype=DTYPE) for _ in range(LAYERS)]
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(DTYPE) for _ in range(LAYERS)]


def _token_kv(caches: list[torch.Tensor], slot: int) -> torch.Tensor:
    """``[2, layers, kv_heads, head_dim]`` of one slot, read through the backend's physical layout:
    per block and head, ``block_size`` key rows then ``block_size`` value rows."""
    b, o = divmod(slot, BLOCK)
    return torch.stack([torch.stack([c.view(BLOCKS, HEADS, 2, BLOCK, HEAD_DIM)[b, :, kv, o]
                                     for c in caches]) for kv in (0, 1)])


def _connector() -> VLLMCPUPagedConnector:
    metadata = LMCacheMetadata(model_name="t", world_size=1, local_world_size=1, worker_id=0,
                               local_worker_id=0, kv_dtype=DTYPE,
                               kv_shape=(LAYERS, 2, 8, HEADS, HEAD_DIM), chunk_size=8)
    return VLLMCPUPagedConnector.from_metadata(metadata)


def _objs(connector: VLLMCPUPagedConnector, sizes: list[int]):
    allocator = AdHocMemoryAllocator("cpu")
    return [allocator.allocate(connector.get_shape(n), DTYPE, MemoryFormat.KV_2LTD) for n in sizes]


# A 12-token request over blocks 4, 1, 3 (not in order), in chunks of 8 and 4 tokens.
SLOTS = torch.tensor([4 * BLOCK + i for i in range(4)] + [1 * BLOCK + i for i in range(4)]
                     + [3 * BLOCK + i for i in range(4)])
STARTS, ENDS = [0, 8], [8, 12]


def test_from_gpu_copies_each_token_of_its_slot_into_the_chunk() -> None:
    conn, caches = _connector(), _caches(0)
    objs = _objs(conn, [8, 4])
    conn.batched_from_gpu(objs, STARTS, ENDS, kvcaches=caches, slot_mapping=SLOTS)
    for obj, s, e in zip(objs, STARTS, ENDS, strict=True):
        got = obj.tensor.view(2, LAYERS, e - s, HEADS, HEAD_DIM)
        for t in range(s, e):
            assert torch.equal(got[:, :, t - s], _token_kv(caches, int(SLOTS[t])))


def test_to_gpu_writes_chunks_to_other_slots_and_leaves_vllm_cached_tokens() -> None:
    conn, src = _connector(), _caches(1)
    objs = _objs(conn, [8, 4])
    conn.batched_from_gpu(objs, STARTS, ENDS, kvcaches=src, slot_mapping=SLOTS)
    dst = _caches(None)
    slots = torch.tensor([5 * BLOCK + i for i in range(4)] + [0 * BLOCK + i for i in range(4)]
                         + [2 * BLOCK + i for i in range(4)])
    conn.batched_to_gpu([objs], STARTS, ENDS, kvcaches=dst, slot_mapping=slots, vllm_cached_tokens=2)
    zero = torch.zeros(2, LAYERS, HEADS, HEAD_DIM, dtype=DTYPE)
    for t in range(12):
        want = zero if t < 2 else _token_kv(src, int(SLOTS[t]))
        assert torch.equal(_token_kv(dst, int(slots[t])), want), t
    written = {int(s) for s in slots[2:]}
    for slot in set(range(BLOCKS * BLOCK)) - written:
        assert torch.equal(_token_kv(dst, slot), zero), slot


def test_refuses_a_layer_not_in_the_cpu_backend_layout_and_a_missing_slot() -> None:
    conn = _connector()
    [obj] = _objs(conn, [4])
    wrong = [torch.zeros(BLOCKS, BLOCK, HEADS, HEAD_DIM, dtype=DTYPE) for _ in range(LAYERS)]
    with pytest.raises(ValueError, match="vLLM's CPU KV cache"):
        conn.from_gpu(obj, 0, 4, kvcaches=wrong, slot_mapping=SLOTS)
    with pytest.raises(ValueError, match="slot of -1"):
        conn.from_gpu(obj, 0, 4, kvcaches=_caches(0), slot_mapping=torch.tensor([-1, 0, 1, 2]))
    with pytest.raises(ValueError, match="1 layers given"):
        conn.from_gpu(obj, 0, 4, kvcaches=_caches(0)[:1], slot_mapping=SLOTS)
