"""The in-memory trace: :class:`Trace`, a validated Arrow table and its file metadata (block size,
source, schema version), with the array views and dense block ids that the simulator, the
stats and the curves share. Traces are made, checked, read and written by
:mod:`simkv.traces.schema`, the only way to get one that obeys the contract."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas._libs import hashtable

SCHEMA_VERSION = 1

META_BLOCK_SIZE = b"block_size"
META_SOURCE = b"source"
META_SCHEMA_VERSION = b"schema_version"


@dataclass(frozen=True)
class Trace:
    """A validated trace: the Arrow table plus its file metadata.

    Array views (``arrival_s``, ``input_tokens``, ...) and the dense block ids are computed
    once and cached, so the simulator, the stats and the curves share one decoding.
    """

    table: pa.Table
    block_size: int
    source: str = "unknown"
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> np.ndarray:
        """A required or optional column as a NumPy array (strings as an object array)."""
        col = self.table.column(name)
        if pa.types.is_string(col.type):
            return np.asarray(col.to_pylist(), dtype=object)
        return col.to_numpy()

    @cached_property
    def arrival_s(self) -> np.ndarray:
        return self.table.column("arrival_s").to_numpy()

    @cached_property
    def input_tokens(self) -> np.ndarray:
        return self.table.column("input_tokens").to_numpy().astype(np.int64)

    @cached_property
    def output_tokens(self) -> np.ndarray:
        return self.table.column("output_tokens").to_numpy().astype(np.int64)

    @cached_property
    def block_offsets(self) -> np.ndarray:
        """``block_hashes`` of request ``i`` are ``block_hashes_flat[offsets[i]:offsets[i+1]]``."""
        lengths = pc.list_value_length(self.table.column("block_hashes")).to_numpy(zero_copy_only=False)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets

    def block_hash_chunks(self) -> list[np.ndarray]:
        """The block hashes as uint64 arrays, one per chunk of the Arrow column, without a
        copy: their concatenation is :attr:`block_hashes_flat`."""
        return [c.flatten().to_numpy() for c in self.table.column("block_hashes").chunks]

    @property
    def block_hashes_flat(self) -> np.ndarray:
        """All block hashes, request after request, as uint64 (built on each call, not kept:
        the dense ids below are what the simulator holds on to)."""
        chunks = self.block_hash_chunks()
        return np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)

    @cached_property
    def _dense_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(block_ids_flat, block_hashes_unique)``: each chunk of hashes numbered through
        one hash table, into one preallocated id array. A million-request trace holds tens of
        millions of block references: neither their concatenation nor int64 codes for all of
        them are ever built, only one chunk's at a time."""
        chunks = self.block_hash_chunks()
        n = sum(len(c) for c in chunks)
        table = hashtable.UInt64HashTable(min(n, 1 << 20))
        ids = np.empty(n, np.int64 if n > np.iinfo(np.int32).max else np.int32)
        uniques: list[np.ndarray] = []
        start = count = 0
        for chunk in chunks:
            found = hashtable.UInt64Vector()  # a fresh one each chunk: to_array() pins it
            ids[start:start + len(chunk)] = table.get_labels(chunk, found, count, -1)
            uniques.append(found.to_array())
            start += len(chunk)
            count += len(uniques[-1])
        del table
        return ids, np.concatenate(uniques) if uniques else np.zeros(0, np.uint64)

    @property
    def block_ids_flat(self) -> np.ndarray:
        """Block hashes mapped to dense ids 0..n_unique-1, in order of first appearance
        (int32 while they fit: a million-request trace holds tens of millions of them)."""
        return self._dense_blocks[0]

    @property
    def block_hashes_unique(self) -> np.ndarray:
        """The hash of each dense block id: ``block_hashes_unique[block_ids_flat]`` is
        :attr:`block_hashes_flat`."""
        return self._dense_blocks[1]

    @property
    def n_unique_blocks(self) -> int:
        return len(self.block_hashes_unique)

    @cached_property
    def content_sha256(self) -> str:
        """SHA-256 of the trace's content: its block size and each column's name, type, null
        mask and values in a canonical byte form (independent of chunking, slicing and
        compression), so the same trace read from any path, or built in memory, hashes the
        same; the file's bytes and its ``source`` label do not enter. Computed once."""
        h = hashlib.sha256(f"simkv-trace\0block_size={self.block_size}\0".encode())
        for name in self.table.column_names:
            col = self.table.column(name)
            typ = f"list<{col.type.value_type}>" if pa.types.is_list(col.type) else str(col.type)
            h.update(f"\0{name}:{typ}\0".encode())  # not the list's child name (Parquet's differs)
            h.update(np.asarray(col.is_null().to_numpy(zero_copy_only=False), np.bool_).tobytes())
            if name == "block_hashes":
                h.update(self.block_offsets)
                for chunk in self.block_hash_chunks():  # no flat copy of the hashes
                    h.update(np.ascontiguousarray(chunk))
            elif pa.types.is_string(col.type):
                arr = col.fill_null("").cast(pa.large_string()).combine_chunks()
                offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]
                h.update((offsets - offsets[0]).tobytes())
                h.update(memoryview(arr.buffers()[2])[offsets[0]:offsets[-1]] if len(arr) else b"")
            else:
                h.update(col.fill_null(0).to_numpy().tobytes())
        return h.hexdigest()

    def metadata(self) -> dict[bytes, bytes]:
        return {
            META_BLOCK_SIZE: str(self.block_size).encode(),
            META_SOURCE: self.source.encode(),
            META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
        }
