"""Deterministic prompts from a trace: token ids for each request, so a replay against a real
engine shares exactly the prefixes the trace describes.

A trace carries no text, only the chained hash of each full block (``block_hashes``, in
prompt order) and ``input_tokens``. The schema fixes ``len(block_hashes) == input_tokens //
block_size``, so a request's prompt is always ``n_blocks`` full blocks followed by a tail of
``input_tokens % block_size`` tokens (0 to ``block_size - 1``) that no hash covers. Every case
the schema allows is one of these: ``input_tokens == 0`` (an empty prompt), a prompt shorter
than a block (tail only), an exact multiple (no tail), or blocks plus a tail.

* **Block tokens** depend on the block's uint64 hash alone (not on its position, the request or
  the other blocks): token ``j`` of block ``h`` is ``map(mix(mix(h ^ K_BLOCK) + (j + 1) ×
  GOLDEN))``, with ``mix`` the SplitMix64 finaliser (a bijection of uint64) and ``map`` the
  multiply-shift reduction of its high 32 bits onto the allowed ids. Same hash → same tokens,
  in every process and on every machine (no salted ``hash()``, no global RNG).
* **Tail tokens** are seeded by ``blake2b_64(content_sha256 || request_id)``, the trace's
  content hash and the request's id, under another key ``K_TAIL``: unique to the request (up
  to 64-bit collisions), so a tail never extends a prefix shared with another request, and
  the same in every replay of the same trace.
* **Ids** are drawn uniformly from ``[0, vocab_size)`` minus an optional reserved range
  ``[lo, hi)`` (special tokens: ``(0, 3)`` for BOS/EOS/PAD at the bottom, or the top range of a
  Llama-3 vocabulary).

Why tokens and not text: a tokenizer does not round-trip arbitrary ids through text, so the
replay sends ids (``prompt`` as a list of ints). What the guarantee is and is not: two requests
whose hash lists share exactly ``k`` leading blocks share the first ``k × block_size`` tokens
exactly; the tokens after that differ except by chance, with probability ``1 / allowed_ids``
per further token (a one-token coincidence does not make an engine hit, which needs a whole
chunk of equal tokens: probability ``allowed_ids^-chunk``). Distinct hashes give distinct
blocks unless all ``block_size`` tokens collide (negligible); :func:`check_distinct` checks a
trace's blocks anyway.

Bump :data:`DERIVATION_VERSION` if anything here changes the ids.
"""

from __future__ import annotations

import hashlib

import numpy as np

from simkv.core.errors import SimkvError
from simkv.traces.schema import Trace

DERIVATION_VERSION = 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _key(label: str) -> np.uint64:
    digest = hashlib.blake2b(f"simkv-prompt-v{DERIVATION_VERSION}:{label}".encode(), digest_size=8)
    return np.uint64(int.from_bytes(digest.digest(), "little"))


K_BLOCK = _key("block")
K_TAIL = _key("tail")


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic): a bijection that spreads
    every input bit over every output bit."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class PromptBuilder:
    """Token ids of a trace's requests (see the module docstring for the derivation).

    ``vocab_size``: ids are ``< vocab_size``; ``reserved``: an optional ``(lo, hi)`` range of
    ids never produced (``0 <= lo < hi <= vocab_size``).
    """

    def __init__(self, trace: Trace, vocab_size: int, reserved: tuple[int, int] | None = None) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer) or vocab_size < 2:
            raise SimkvError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        lo, hi = reserved if reserved is not None else (0, 0)
        if reserved is not None and not (0 <= lo < hi <= vocab_size):
            raise SimkvError(f"reserved id range {reserved!r} must satisfy 0 <= lo < hi <= "
                             f"vocab_size ({vocab_size})")
        allowed = int(vocab_size) - (hi - lo)
        if allowed < 2:
            raise SimkvError(f"reserved id range {reserved!r} leaves {allowed} id(s) of "
                             f"vocab_size {vocab_size}; at least 2 are needed")
        if allowed >= 2**32:
            raise SimkvError(f"vocab_size {vocab_size} is too large (at most 2^32 ids)")
        self.trace = trace
        self.vocab_size = int(vocab_size)
        self.reserved = (lo, hi) if reserved is not None else None
        self.allowed = allowed
        self._lo, self._width = np.int64(lo), np.int64(hi - lo)
        self._offsets = trace.block_offsets
        self._hashes = trace.block_hashes_flat
        self._steps = (np.arange(1, trace.block_size + 1, dtype=np.uint64) * _GOLDEN)
        ids = trace.table.column("request_id").to_pylist()
        base = trace.content_sha256.encode() + b"\0"
        self._tail_seed = np.array(
            [int.from_bytes(hashlib.blake2b(base + rid.encode(), digest_size=8).digest(), "little")
             for rid in ids], dtype=np.uint64)

    def _ids(self, z: np.ndarray) -> np.ndarray:
        """uint64 → ids in ``[0, vocab_size)`` outside the reserved range (multiply-shift on the
        high 32 bits: bias below 2^-32 per id)."""
        u = ((z >> np.uint64(32)) * np.uint64(self.allowed)) >> np.uint64(32)
        ids = u.astype(np.int64)
        if self.reserved is not None:
            ids += np.where(ids >= self._lo, self._width, 0)
        return ids

    def block_tokens(self, hashes: np.ndarray) -> np.ndarray:
        """Tokens of blocks with these hashes: shape ``(len(hashes), block_size)``."""
        seeds = mix64(np.asarray(hashes, dtype=np.uint64) ^ K_BLOCK)
        with np.errstate(over="ignore"):
            z = seeds[:, None] + self._steps[None, :]
        return self._ids(mix64(z))

    def tail_tokens(self, r: int, n: int) -> np.ndarray:
        """The first ``n`` tail tokens of request ``r`` (its own seed)."""
        with np.errstate(over="ignore"):
            z = mix64(self._tail_seed[r] ^ K_TAIL) + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        return self._ids(mix64(z))

    def tokens(self, r: int) -> np.ndarray:
        """Request ``r``'s prompt (row ``r`` of the trace): ``input_tokens[r]`` int64 ids, its
        blocks' tokens in order, then its tail."""
        if not 0 <= r < len(self.trace):
            raise IndexError(f"request index {r} out of range (trace has {len(self.trace)} rows)")
        hashes = self._hashes[self._offsets[r]:self._offsets[r + 1]]
        body = self.block_tokens(hashes).reshape(-1)
        tail = int(self.trace.input_tokens[r]) - len(body)
        return np.concatenate([body, self.tail_tokens(r, tail)]) if tail else body

    def __len__(self) -> int:
        return len(self.trace)

    def check_distinct(self) -> None:
        """Raise if two distinct block hashes of the trace got the same tokens (never expected:
        it needs ``block_size`` colliding ids). Costs one pass over the unique blocks."""
        uniq = np.unique(self._hashes)
        if len(uniq) < 2:
            return
        toks = self.block_tokens(uniq)
        digest = np.zeros(len(uniq), np.uint64)
        with np.errstate(over="ignore"):
            for j in range(toks.shape[1]):
                digest = mix64(digest ^ (toks[:, j].astype(np.uint64) + np.uint64(j)))
        order = np.argsort(digest, kind="stable")
        d = digest[order]
        for i in np.flatnonzero(d[1:] == d[:-1]):
            a, b = order[i], order[i + 1]
            if np.array_equal(toks[a], toks[b]):
                raise SimkvError(f"block hashes {uniq[a]:#x} and {uniq[b]:#x} got the same tokens")


def prompt_tokens(trace: Trace, r: int, vocab_size: int,
                  reserved: tuple[int, int] | None = None) -> np.ndarray:
    """Request ``r``'s token ids (one-off convenience; build a :class:`PromptBuilder` once to
    generate many)."""
    return PromptBuilder(trace, vocab_size, reserved).tokens(r)
