"""Loads and stores: how a request's KV moves between the tiers, through their backends
(:class:`~simkv_engine.backends.TierBackend`). The loads fill the KV of the cached prefix (one
read per run of chunks of one tier: a copy from the GPU cache, one LMCache retrieve, one
concurrent archive fetch); the lookup's hits touch their tiers' eviction order; the stores admit
the prompt's full chunks to the GPU cache and write them through to LMCache (CPU, then disk), in
prompt order, as the simulator's ``write_through`` does. A mixin of
:class:`~simkv_engine.engine.KVEngine`; :class:`Timer` times its blocks."""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from simkv_engine.backends import Prompt, TierBackend, chunk_runs
from simkv_engine.connector import KVLayers
from simkv_engine.models import KVShape

__all__ = ["TierIO", "Timer", "chunk_runs"]


class Timer:
    """Wall time of a block: CUDA events on a GPU (device time), else ``time.perf_counter``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> Timer:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


class TierIO:
    """The engine's loads and stores over its list of backends (run under its lock, one request
    at a time)."""

    chunk_size: int
    deterministic: bool
    device: torch.device
    kv: KVShape
    tiers: list[TierBackend]

    def _empty_kv(self, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (1, self.kv.kv_heads, tokens, self.kv.head_dim)
        return [(torch.empty(shape, dtype=self.kv.dtype, device=self.device),
                 torch.empty(shape, dtype=self.kv.dtype, device=self.device))
                for _ in range(self.kv.layers)]

    def _load(self, prompt: Prompt, sources: list[TierBackend]) -> tuple[int, KVLayers, float]:
        """Fill KV tensors for the chunks in ``sources``; returns (tokens loaded, per-layer K/V,
        seconds spent reading non-local tiers: the archive's hydration). Each run of chunks of
        one tier is one read (one LMCache retrieve, one concurrent archive fetch); a chunk that
        does not deliver ends the prefix, and the runs after it are not read. A run is of one
        tier: LMCache maps a retrieve's chunks to backends by prefix (the CPU's leading chunks,
        then the disk's), so a mixed run could be read from the disk where the walk counted the
        CPU. The runs of a tier another tier's read fills (``fills_on_read``: the CPU) are read
        first: reading a disk chunk writes it back to the CPU (allocating there, which may
        evict), which in the simulator happens after the lookup, never before a read."""
        c = self.chunk_size
        hit = len(sources) * c
        kv = self._empty_kv(hit)
        remote_s = 0.0
        runs: list[tuple[int, int]] = []              # [i, j): one tier each
        for m, tier in enumerate(sources):
            if runs and sources[runs[-1][0]] is tier:
                runs[-1] = (runs[-1][0], m + 1)
            else:
                runs.append((m, m + 1))
        filled = {name for b in self.tiers for name in b.fills_on_read}
        runs.sort(key=lambda r: sources[r[0]].name not in filled)
        end = len(sources)                            # the first chunk that did not deliver
        for i, j in runs:
            if i >= end:
                continue
            tier = sources[i]
            if tier.local:
                done = tier.read(prompt, kv, i, j)
            else:
                with Timer(self.device) as t:
                    done = tier.read(prompt, kv, i, j)
                remote_s += t.seconds
            if done < j:                              # it did not deliver: the prefix ends there
                end = min(end, done)
        if end < len(sources):
            return end * c, [(k[:, :, :end * c], v[:, :, :end * c]) for k, v in kv], remote_s
        return hit, kv, remote_s

    def _touch(self, prompt: Prompt, sources: list[TierBackend]) -> None:
        """The lookup's side of a hit, as the simulator's: each chunk served is an access for its
        tier's eviction order (:meth:`TierBackend.touch`: the GPU cache's and LMCache's CPU
        backend's; LMCache's disk read touches its chunk itself), in prompt order, before
        anything is admitted. (LMCache's own CPU read does not touch its policy, and its vLLM
        path touches every looked-up CPU chunk, the GPU's too, in reverse.)"""
        for m, tier in enumerate(sources):
            tier.touch(prompt.chunk(m))

    def _store(self, prompt: Prompt, sources: list[TierBackend], cache: DynamicCache) -> None:
        """Admit the prompt's full chunks, in prompt order, to the tiers that hold every chunk of
        a served prompt (``admits``: the GPU cache; those it served stay, already touched by
        :meth:`_touch`; the others, loaded or computed, now sit in device memory), then write
        them through (:meth:`_write_through`). A chunk the GPU cache served but evicted before its
        turn (a cache smaller than the prompt: the admissions before it pushed it out) is
        admitted again and written through like a computed chunk, as the simulator does. The
        tiers are only changed after the loads, so admitting a chunk never evicts one this
        request still reads."""
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        n = len(prompt.keys)
        src: list[TierBackend | None] = [sources[m] if m < len(sources) else None for m in range(n)]
        admitting = [b for b in self.tiers if b.admits]
        for m in range(n):
            for tier in admitting:
                if src[m] is tier:
                    if tier.contains(prompt.chunk(m)):
                        continue
                    src[m] = None         # evicted before its turn: written through like a computed chunk
                tier.write(prompt, [m], kv)
        self._write_through(prompt, src, kv)

    def _targets(self, source: TierBackend | None) -> list[TierBackend]:
        """The write-through's targets for a chunk served by ``source`` (``None``: computed,
        re-admitted, or none): every ``writes_through`` tier, fastest first, but the one that
        served it and those its read filled; none for a chunk an admitting tier served."""
        if source is not None and source.admits:
            return []
        skip = () if source is None else (source.name, *source.fills_on_read)
        return [b for b in self.tiers if b.writes_through and b.name not in skip]

    def _write_through(self, prompt: Prompt, src: list[TierBackend | None], kv: KVLayers) -> None:
        """The simulator's ``write_through``, chunk by chunk in prompt order: each target tier
        (:meth:`_targets`) receives the chunk (held: an access; else stored). Whether the first
        target holds a chunk is read when its turn comes, after the writes before it; a run of
        chunks it lacks is one write (one LMCache store, reaching its CPU and disk: a write
        returns the tiers it reached, which are then not written again).

        Deterministic: one chunk per write and each tier's writes done before the next chunk.
        LMCache adds a chunk to the disk's eviction order when its asynchronous write finishes,
        so a write still in flight when a later chunk of the request touches its own disk copy
        would land after that touch (the simulator's order: the write first)."""
        n = len(prompt.keys)
        m = 0
        while m < n:
            targets = self._targets(src[m])
            if not targets:
                m += 1
                continue
            first = targets[0]
            j = m + 1
            if not first.contains(prompt.chunk(m)):
                while (j < n and not self.deterministic and self._targets(src[j]) == targets
                       and not first.contains(prompt.chunk(j))):
                    j += 1
            self._write_chunks(prompt, list(range(m, j)), kv, targets)
            m = j

    def _write_chunks(self, prompt: Prompt, chunks: list[int], kv: KVLayers,
                      targets: list[TierBackend]) -> None:
        """Write ``chunks`` into each of ``targets`` in order, skipping the tiers an earlier
        write reached; deterministic: then wait for the tiers' asynchronous writes."""
        reached: frozenset[str] = frozenset()
        for tier in targets:
            if tier.name not in reached:
                reached |= tier.write(prompt, chunks, kv)
        if self.deterministic:
            self._drain()

    def _drain(self, timeout_s: float = 60.0) -> None:
        """Wait (at most ``timeout_s`` per tier) until the tiers' asynchronous writes are done."""
        for tier in self.tiers:
            tier.flush(timeout_s)
