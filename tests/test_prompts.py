"""Deterministic prompts from traces (simkv.traces.prompts): stable across processes, within
the vocabulary, one token sequence per block hash, unique tails, and shared prefixes exactly
as long as the shared block hashes say."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from simkv.core.errors import SimkvError
from simkv.traces.prompts import PromptBuilder, prompt_tokens
from simkv.traces.schema import Trace
from tests.conftest import ROOT, SMALL_TRACE, make_trace

VOCAB = 32000

_DIGEST = """
import hashlib, sys
from simkv.traces.prompts import PromptBuilder
from simkv.traces.schema import read_trace
pb = PromptBuilder(read_trace(sys.argv[1]), 32000, (0, 3))
h = hashlib.sha256()
for r in range(0, len(pb), 37):
    h.update(pb.tokens(r).tobytes())
print(h.hexdigest())
"""


def _digest_here(trace: Trace) -> str:
    pb = PromptBuilder(trace, VOCAB, (0, 3))
    h = hashlib.sha256()
    for r in range(0, len(pb), 37):
        h.update(pb.tokens(r).tobytes())
    return h.hexdigest()


def test_same_tokens_in_another_process_with_another_hash_seed(small_trace: Trace) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _DIGEST, str(SMALL_TRACE)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == _digest_here(small_trace)


def test_ids_in_range_and_reserved_ids_unused(small_trace: Trace) -> None:
    for reserved in (None, (0, 3), (31000, 32000), (100, 31900)):
        pb = PromptBuilder(small_trace, VOCAB, reserved)
        toks = np.concatenate([pb.tokens(r) for r in range(0, len(pb), 50)])
        assert toks.min() >= 0 and toks.max() < VOCAB
        if reserved is not None:
            lo, hi = reserved
            assert not np.any((toks >= lo) & (toks < hi))
            # both sides of the hole are used (the ids are spread over what is allowed)
            assert (lo == 0 or np.any(toks < lo)) and (hi == VOCAB or np.any(toks >= hi))


def test_every_length_the_schema_allows() -> None:
    # empty prompt, tail only, exact multiple, blocks + tail
    trace = make_trace([[], [], [1, 2], [1, 2]], block_size=4, tails=[0, 3, 0, 2])
    pb = PromptBuilder(trace, VOCAB)
    assert [len(pb.tokens(r)) for r in range(4)] == [0, 3, 8, 10]
    assert np.array_equal(pb.tokens(2), pb.tokens(3)[:8])
    assert pb.tokens(0).dtype == np.int64


def test_same_hash_same_tokens_anywhere() -> None:
    # hash 7 at position 0, 1 and 2, after different blocks, in different requests
    trace = make_trace([[7], [1, 7], [2, 3, 7, 9]], block_size=4, tails=[1, 2, 3])
    pb = PromptBuilder(trace, VOCAB)
    seven = pb.tokens(0)[:4]
    assert np.array_equal(pb.tokens(1)[4:8], seven)
    assert np.array_equal(pb.tokens(2)[8:12], seven)
    assert np.array_equal(pb.block_tokens(np.array([7], np.uint64))[0], seven)


def test_distinct_hashes_distinct_blocks_on_the_bundled_traces(small_trace: Trace) -> None:
    PromptBuilder(small_trace, VOCAB).check_distinct()  # raises on a collision
    pb = PromptBuilder(small_trace, VOCAB)
    uniq = np.unique(small_trace.block_hashes_flat)
    rows = pb.block_tokens(uniq)
    assert len(np.unique(rows, axis=0)) == len(uniq)


def test_tails_unique_per_request(small_trace: Trace) -> None:
    pb = PromptBuilder(small_trace, VOCAB)
    tails = {}
    for r in range(len(pb)):
        n_tail = int(small_trace.input_tokens[r] % small_trace.block_size)
        if n_tail >= 4:
            tails[r] = pb.tokens(r)[-n_tail:].tobytes()
    assert len(tails) > 100
    assert len(set(tails.values())) == len(tails)
    # two requests with identical blocks and tail lengths still differ in the tail
    trace = make_trace([[5, 6], [5, 6]], tails=[3, 3])
    a, b = PromptBuilder(trace, VOCAB).tokens(0), PromptBuilder(trace, VOCAB).tokens(1)
    assert np.array_equal(a[:8], b[:8]) and not np.array_equal(a[8:], b[8:])


def _common(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def test_shared_token_prefix_is_the_shared_block_prefix(small_trace: Trace) -> None:
    """For request pairs of the same session and across sessions: the token prefix they share
    covers exactly the shared block hashes (k × block_size, with any chance coincidence of the
    next token below one block), and an engine chunk of tokens never matches past it."""
    B = small_trace.block_size
    pb = PromptBuilder(small_trace, VOCAB)
    off, flat = small_trace.block_offsets, small_trace.block_hashes_flat
    n = len(small_trace)
    rng = np.random.default_rng(0)
    pairs = [(r, r + 1) for r in range(0, n - 1, 7)] + [tuple(rng.integers(0, n, 2)) for _ in range(300)]
    exact = 0
    for a, b in pairs:
        ha, hb = flat[off[a]:off[a + 1]], flat[off[b]:off[b + 1]]
        m = min(len(ha), len(hb))
        diff = np.flatnonzero(ha[:m] != hb[:m])
        k = int(diff[0]) if len(diff) else m
        shared = _common(pb.tokens(a), pb.tokens(b))
        assert k * B <= shared < (k + 1) * B
        exact += shared == k * B or a == b
    # a coincidence of the next token has probability 1/VOCAB per pair: almost all are exact
    assert exact >= len(pairs) - 2


def test_prompt_tokens_and_bad_arguments(small_trace: Trace) -> None:
    assert np.array_equal(prompt_tokens(small_trace, 3, VOCAB), PromptBuilder(small_trace, VOCAB).tokens(3))
    for vocab, reserved in ((1, None), (100, (50, 40)), (100, (0, 99)), (100, (0, 101))):
        with pytest.raises(SimkvError):
            PromptBuilder(small_trace, vocab, reserved)
    with pytest.raises(IndexError):
        PromptBuilder(small_trace, VOCAB).tokens(len(small_trace))
