"""Loads and stores: how a request's KV moves between the tiers. The loads fill the KV of the
cached prefix (a copy from the GPU cache, one LMCache retrieve per run of one tier, one
concurrent archive fetch per run of archive chunks); the lookup's hits touch their tiers'
eviction order; the stores admit the prompt's full chunks to the GPU cache and write them
through to LMCache (CPU, then disk), in prompt order, as the simulator's ``write_through`` does.
A mixin of :class:`~simkv_engine.engine.KVEngine`; :class:`Timer` times its blocks."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import DynamicCache

from simkv_engine import lmcache_glue
from simkv_engine.connector import HFKVConnector, KVLayers
from simkv_engine.gpu_cache import GPUPrefixCache
from simkv_engine.models import KVShape


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


def chunk_runs(chunks: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of consecutive chunk indices (sorted input)."""
    runs: list[tuple[int, int]] = []
    for m in chunks:
        if runs and runs[-1][1] == m:
            runs[-1] = (runs[-1][0], m + 1)
        else:
            runs.append((m, m + 1))
    return runs


class TierIO:
    """The engine's loads and stores (run under its lock, one request at a time)."""

    chunk_size: int
    chunk_bytes: int
    deterministic: bool
    device: torch.device
    kv: KVShape
    gpu_cache: GPUPrefixCache
    connector: HFKVConnector
    lmcache: Any
    _backends: dict[str, Any]
    _counts: dict[str, Any]
    _ref: int

    def _empty_kv(self, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (1, self.kv.kv_heads, tokens, self.kv.head_dim)
        return [(torch.empty(shape, dtype=self.kv.dtype, device=self.device),
                 torch.empty(shape, dtype=self.kv.dtype, device=self.device))
                for _ in range(self.kv.layers)]

    def _load(self, tokens: list[int], keys: list, hashes: list[int],
              sources: list[str]) -> tuple[int, KVLayers, float]:
        """Fill KV tensors for the chunks in ``sources``; returns (tokens loaded, per-layer K/V,
        seconds spent on archive chunks). A run of LMCache chunks is one retrieve, a run of
        archive chunks one concurrent fetch; a chunk either does not deliver ends the prefix.
        A run of LMCache chunks is of one tier: LMCache maps a retrieve's chunks to backends by
        prefix (the CPU's leading chunks, then the disk's), so a mixed run could be read from the
        disk where the walk counted the CPU. The CPU's runs are read first (see below); a chunk
        that fails ends the prefix, and the runs after it are not read."""
        c = self.chunk_size
        hit = len(sources) * c
        kv = self._empty_kv(hit)
        hydrate_s = 0.0
        runs: list[tuple[int, int]] = []              # [i, j): one tier each
        for m, tier in enumerate(sources):
            if runs and sources[runs[-1][0]] == tier and tier != "gpu":
                runs[-1] = (runs[-1][0], m + 1)
            else:
                runs.append((m, m + 1))
        # The CPU's chunks first: reading a disk chunk writes it back to the CPU (allocating there,
        # which may evict), which in the simulator happens after the lookup, never before a read.
        runs.sort(key=lambda r: sources[r[0]] != "cpu")
        end = len(sources)                            # the first chunk that did not deliver
        for i, j in runs:
            if i >= end:
                continue
            tier = sources[i]
            if tier == "gpu":
                self.connector.scatter(kv, self.gpu_cache.chunks[keys[i].chunk_hash], i * c)
            elif tier == "archive":
                with Timer(self.device) as t:
                    done = self._hydrate_run(kv, hashes, i, j)
                hydrate_s += t.seconds
                if done < j:                          # a failed fetch: the prefix ends there
                    end = min(end, done)
            else:
                mask = torch.zeros(j * c, dtype=torch.bool)
                mask[i * c:] = True
                got = self.lmcache.retrieve(tokens[: j * c], mask=mask, kvcaches=kv, req_id="simkv")
                missing = (~got[i * c:]).nonzero()
                if len(missing):                      # evicted since the lookup: the prefix ends
                    end = min(end, i + int(missing[0]) // c)
        if end < len(sources):
            return end * c, [(k[:, :, :end * c], v[:, :, :end * c]) for k, v in kv], hydrate_s
        return hit, kv, hydrate_s

    def _touch(self, keys: list, sources: list[str]) -> None:
        """The lookup's side of a hit, as the simulator's: each chunk served by the GPU cache or
        LMCache's CPU backend is an access for that tier's eviction order, in prompt order, before
        anything is admitted. (LMCache's own CPU read does not touch its policy, and its vLLM path
        touches every looked-up CPU chunk, the GPU's too, in reverse; the disk backend's read
        touches its chunk, as here.)"""
        cpu = self._backends["cpu"]
        for m, tier in enumerate(sources):
            key = keys[m]
            if tier == "gpu":
                self.gpu_cache.hit(key.chunk_hash, self._tick())
            elif tier == "cpu" and cpu is not None:
                lmcache_glue.touch_cpu(cpu, key)

    def _store(self, tokens: list[int], keys: list, sources: list[str], cache: DynamicCache) -> None:
        """Admit the prompt's full chunks to the GPU cache in prompt order (those it served stay,
        already touched by :meth:`_touch`; the others, loaded from LMCache or the archive or
        computed, now sit in device memory), then write them through to LMCache
        (:meth:`_write_through`). A chunk the GPU cache served but evicted before its turn (a
        cache smaller than the prompt: the admissions before it pushed it out) is admitted again
        and written through, as the simulator does. The cache is only changed after the loads,
        so admitting a chunk never evicts one this request still reads."""
        c = self.chunk_size
        n_full = len(tokens) // c * c
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        written = list(sources)
        for m in range(n_full // c):
            key = keys[m].chunk_hash
            if m < len(sources) and sources[m] == "gpu":
                if key in self.gpu_cache:
                    continue
                written[m] = "gpu-evicted"   # admitted again, and written through like a computed chunk
            if key not in self.gpu_cache:
                self._counts["bytes_stored"]["gpu"] += self.chunk_bytes
            self.gpu_cache.put(key, HFKVConnector.gather(kv, m * c, (m + 1) * c), self._tick())
        self._write_through(tokens, keys, written, kv)
        self._counts["archive_hydrations"] += sources.count("archive")

    def _write_through(self, tokens: list[int], keys: list, sources: list[str], kv: KVLayers) -> None:
        """The simulator's ``write_through``, chunk by chunk in prompt order, for every chunk the
        GPU cache did not serve: the CPU tier receives it unless it came from there (held already:
        an access; else stored), the disk tier likewise unless it came from disk (LMCache's disk
        backend touches a chunk it holds and writes one it lacks). Chunks read from disk were
        written back to the CPU by LMCache's retrieve. A run of chunks the CPU lacks is one
        LMCache store (CPU put and disk write); a chunk the CPU holds is handed to the disk
        backend from the CPU's copy, so no staging buffer is allocated for it (an allocation in a
        full pool evicts). Whether the CPU holds a chunk is read when its turn comes, after the
        stores before it.

        Deterministic: one chunk per store and each disk write done before the next chunk. LMCache
        adds a chunk to the disk's eviction order when its asynchronous write finishes, so a
        write still in flight when a later chunk of the request touches its own disk copy would
        land after that touch (the simulator's order: the write first)."""
        cpu, disk = self._backends["cpu"], self._backends["disk"]
        n = len(tokens) // self.chunk_size
        src = [sources[m] if m < len(sources) else None for m in range(n)]

        def needs_store(m: int) -> bool:
            return src[m] in (None, "archive", "gpu-evicted") and (cpu is None or not cpu.contains(keys[m]))

        m = 0
        while m < n:
            if src[m] in ("gpu", "disk"):
                m += 1
                continue
            if needs_store(m):
                j = m + 1
                while j < n and needs_store(j) and not self.deterministic:
                    j += 1
                self._store_lmcache(tokens, list(range(m, j)), kv)
                if self.deterministic:
                    self._drain_disk()
                m = j
                continue
            key = keys[m]                      # the CPU holds it (served from there, or held)
            assert cpu is not None
            if src[m] != "cpu":
                lmcache_glue.touch_cpu(cpu, key)
            if disk is not None:
                obj = cpu.get_blocking(key)
                if obj is not None:
                    try:
                        disk.submit_put_task(key, obj)
                    finally:
                        obj.ref_count_down()
                    if self.deterministic:
                        self._drain_disk()
            m += 1

    def _drain_disk(self, timeout_s: float = 60.0) -> None:
        """Wait (at most ``timeout_s``) until LMCache's pending disk writes are done."""
        disk = self._backends["disk"]
        if disk is None:
            return
        lmcache_glue.wait_disk_writes(disk, timeout_s, 0.0005)

    def _store_lmcache(self, tokens: list[int], chunks: list[int], kv: KVLayers) -> None:
        """Store ``chunks`` (indices) of ``kv`` into LMCache: one store per run (LMCache's mask
        is False-prefix then True)."""
        c = self.chunk_size
        for a, b in chunk_runs(chunks):
            mask = torch.zeros(b * c, dtype=torch.bool)
            mask[a * c:] = True
            self.lmcache.store(tokens[: b * c], mask=mask, kvcaches=kv, req_id="simkv")
        if self._backends["cpu"] is not None:         # the disk's: counted as its writes land
            self._counts["bytes_stored"]["cpu"] += len(chunks) * self.chunk_bytes

    def _tick(self) -> int:
        self._ref += 1
        return self._ref
