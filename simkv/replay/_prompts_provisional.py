"""PROVISIONAL prompt synthesis, replaced at merge by :mod:`simkv.traces.prompts` (being
written on another branch): a request's prompt as token ids, from its block hashes.

Assumed signature (what :mod:`simkv.replay.driver` calls)::

    request_tokens(block_hashes, input_tokens, block_size, request_id, vocab_size) -> list[int]

Block ``b``'s tokens depend only on its (chained) hash, so two requests that share a block
hash share the whole prefix up to it token for token, and an engine's prefix cache (keyed by
the tokens) hits exactly where the trace's hashes repeat. The tail (``input_tokens %
block_size`` tokens) is drawn from the request id, so it is unique to the request. Ids are in
``[1, vocab_size)`` (0 is often a special token).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def request_tokens(block_hashes: Sequence[int], input_tokens: int, block_size: int, request_id: str,
                   vocab_size: int) -> list[int]:
    """The ``input_tokens`` token ids of a request whose full blocks hash to ``block_hashes``."""
    parts = [_rng(int(h)).integers(1, vocab_size, block_size) for h in block_hashes]
    tail = input_tokens - len(block_hashes) * block_size
    seed = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")
    parts.append(_rng(seed).integers(1, vocab_size, tail))
    return np.concatenate(parts).astype(int).tolist()
