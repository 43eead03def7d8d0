"""Export a trace to other tools' formats (the parity test and benchmarks feed LMCache)."""

from __future__ import annotations

from typing import Any

from simkv.traces.schema import Trace


def to_lmcache_events(trace: Trace) -> list[dict[str, Any]]:
    """The trace as LMCache lookup events (``chunk_hashes`` as 16-digit hex, ``seq_len``,
    ``chunk_size``, ``timestamp``), the input of ``lmcache.tools.cache_simulator``."""
    hashes = trace.block_hashes_flat.tolist()
    offsets = trace.block_offsets.tolist()
    tokens = trace.input_tokens.tolist()
    arrivals = trace.arrival_s.tolist()
    return [
        {
            "timestamp": arrivals[r],
            "chunk_hashes": [f"{h:016x}" for h in hashes[offsets[r]:offsets[r + 1]]],
            "seq_len": tokens[r],
            "chunk_size": trace.block_size,
        }
        for r in range(len(trace))
    ]
