"""vLLM's prefix cache, block for block: the ``BlockPool`` of vLLM 0.32.0 on its default path
(one full-attention KV cache group, hash block = engine block, no speculative decoding, no
connector-deferred frees), as ``tiers.gpu.eviction: vllm`` runs it (docs/system.md, "vLLM's
prefix cache").

The rules, with the vLLM source they follow (``vllm/v1/core/``):

* **Pool** (``block_pool.py`` ``BlockPool.__init__``): blocks ``0 .. N-1``, ``N`` =
  ``num_gpu_blocks``; the free queue starts as ``[0 .. N-1]`` and block 0 is popped as the
  null block, so ``N - 1`` blocks hold KV. ``N = None``: an unbounded pool (nothing is ever
  evicted).
* **Lookup** (``kv_cache_manager.py`` ``get_computed_blocks``, ``FullAttentionManager.
  find_longest_cache_hit``): the longest run of the request's full-block hashes found in the
  hash map, at most ``(prompt_tokens - 1) // block`` blocks (a full hit recomputes its last
  block); a hash stored under several blocks answers with the first stored.
* **Allocation** (``allocate_slots``, ``BlockPool.touch`` / ``get_new_blocks``): the hit blocks
  are touched (taken out of the free queue when unreferenced, reference + 1), then new blocks
  are popped from the free queue's head; a popped block loses its hash (eviction). Full blocks
  are cached (their hash inserted, duplicates kept) up to the tokens computed so far.
* **Decode** (``sched/scheduler.py``): the prefill step samples one token; each further step
  computes the previous one, so a request of ``O >= 1`` output tokens computes ``P + O - 1``
  tokens, holds ``ceil((P + O - 1) / block)`` blocks and caches ``(P + O - 1) // block`` full
  blocks (the generated ones included).
* **Free** (``SingleTypeKVCacheManager.free``, ``BlockPool.free_blocks``,
  ``kv_cache_utils.py`` ``FreeKVCacheBlockQueue``): the request's blocks in reverse order
  (tail first); an unreferenced block without a hash is prepended to the queue's head (reused
  first), one with a hash appended to its tail (evicted last, tail blocks of a request before
  its head blocks).

Blocks are named by a key (any hashable): equal keys are equal token prefixes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence


class VllmBlockPool:
    """vLLM's block pool and hash map over ``num_blocks`` blocks (``None``: unbounded)."""

    def __init__(self, num_blocks: int | None) -> None:
        self.num_blocks = num_blocks
        #: The free queue, head first (OrderedDict: O(1) pop, prepend, append and removal).
        self.free: OrderedDict[int, None] = OrderedDict()
        if num_blocks is not None:
            self.free.update(dict.fromkeys(range(1, num_blocks)))  # block 0: the null block
        self.fresh = num_blocks if num_blocks is not None else 1  # an unbounded pool's next new block
        self.ref: dict[int, int] = {}
        self.key_of: dict[int, Hashable] = {}
        #: Hash map: key -> the blocks stored under it, first stored first.
        self.cached: dict[Hashable, list[int]] = {}
        self.insertions = 0
        self.evictions = 0

    @property
    def usable(self) -> int | None:
        """Blocks that can hold KV (the null block excluded)."""
        return None if self.num_blocks is None else max(0, self.num_blocks - 1)

    def lookup(self, keys: Sequence[Hashable], max_blocks: int) -> list[int]:
        """The blocks of the longest cached prefix of ``keys[:max_blocks]``."""
        hit: list[int] = []
        cached = self.cached
        for key in keys[:max_blocks]:
            blocks = cached.get(key)
            if not blocks:
                break
            hit.append(blocks[0])
        return hit

    def touch(self, blocks: Sequence[int]) -> None:
        ref, free = self.ref, self.free
        for b in blocks:
            if ref.get(b, 0) == 0:
                del free[b]
            ref[b] = ref.get(b, 0) + 1

    def take(self, n: int) -> list[int]:
        """``n`` new blocks from the free queue's head; a block with a hash loses it."""
        out: list[int] = []
        free, key_of, ref = self.free, self.key_of, self.ref
        bounded = self.num_blocks is not None
        for _ in range(n):
            if free and (bounded or next(iter(free)) not in key_of):
                b = free.popitem(last=False)[0]
            elif bounded:
                raise ValueError("no free block")  # callers check the request fits the pool
            else:  # unbounded: fresh blocks lie between the unhashed head and the hashed tail
                b = self.fresh
                self.fresh += 1
            key = key_of.pop(b, None)
            if key is not None:
                stored = self.cached[key]
                stored.remove(b)
                if not stored:
                    del self.cached[key]
                self.evictions += 1
            ref[b] = 1
            out.append(b)
        return out

    def cache(self, blocks: Sequence[int], keys: Sequence[Hashable]) -> None:
        """Insert ``keys[i]`` for ``blocks[i]`` (full blocks); a block keeps its first hash."""
        key_of, cached = self.key_of, self.cached
        for b, key in zip(blocks, keys, strict=True):
            if b in key_of:
                continue
            key_of[b] = key
            cached.setdefault(key, []).append(b)
            self.insertions += 1

    def release(self, blocks: Sequence[int]) -> None:
        """A finished request's blocks, in allocation order: freed tail first."""
        first: list[int] = []
        last: list[int] = []
        ref, key_of = self.ref, self.key_of
        for b in reversed(blocks):
            ref[b] -= 1
            if ref[b] == 0:
                (last if b in key_of else first).append(b)
        free = self.free
        for b in reversed(first):
            free[b] = None
            free.move_to_end(b, last=False)
        for b in last:
            free[b] = None

    def run(self, keys: Sequence[Hashable], prompt_tokens: int, output_tokens: int, block: int) -> int:
        """One request served alone from admission to finish: ``keys`` names its full blocks of
        prompt and generated tokens in order (at least ``(P + O - 1) // block`` of them, ``O =
        max(output_tokens, 1)``). Returns the tokens the prefix cache supplied."""
        p = prompt_tokens
        computed = p + max(output_tokens, 1) - 1
        hit = self.lookup(keys, (p - 1) // block) if p > 0 else []
        self.touch(hit)
        blocks = hit + self.take(-(-p // block) - len(hit))
        self.cache(blocks[len(hit):p // block], keys[len(hit):p // block])
        blocks += self.take(-(-computed // block) - len(blocks))
        full = computed // block
        self.cache(blocks[p // block:full], keys[p // block:full])
        self.release(blocks)
        return len(hit) * block

    @property
    def cached_blocks(self) -> int:
        """Blocks holding a hash (reusable KV) now."""
        return len(self.key_of)
