"""Block hashing: prompt content → chained uint64 hashes of its full blocks.

A prompt is described as an ordered list of segments ``(segment_id, n_tokens)``: a system
prompt, a tool schema, one turn of a conversation. Two prompts that start with the same
segments share the same leading block hashes, exactly as an engine's chained prefix hashes
would. Block ``b`` hashes the previous block's hash together with the (segment, offset range)
pieces that cover tokens ``[b*block_size, (b+1)*block_size)``::

    h_b = blake2b_64(h_{b-1} || pieces_b),   h_{-1} = 0

Only full blocks are hashed; the tail (``n_tokens % block_size``) is never cached.
Both the agent-log importer and the generator use this one function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_MASK64 = (1 << 64) - 1


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def hex_to_u64(text: str) -> int:
    """Map a hex digest of any length to a uint64, deterministically.

    Up to 16 hex digits are read as the number itself; longer digests are hashed down
    with blake2b. Callers that care about collisions must check for them.
    """
    text = text.lower().removeprefix("0x")
    if len(text) <= 16:
        return int(text, 16)
    return _h64(bytes.fromhex(text) if len(text) % 2 == 0 else text.encode())


def chain_block_hashes(segments: Sequence[tuple[str, int]], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of a prompt made of ``segments``."""
    hashes: list[int] = []
    prev = 0
    pieces: list[str] = []
    filled = 0
    for seg_id, n in segments:
        offset = 0
        while offset < n:
            take = min(n - offset, block_size - filled)
            pieces.append(f"{seg_id}[{offset}:{offset + take}]")
            filled += take
            offset += take
            if filled == block_size:
                prev = _h64(prev.to_bytes(8, "little") + "|".join(pieces).encode())
                hashes.append(prev & _MASK64)
                pieces.clear()
                filled = 0
    return hashes
