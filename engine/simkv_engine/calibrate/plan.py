"""What a calibration measures: its error, the named grids, the :class:`Plan` (token grids,
chunk counts, repeats; checked against the block size and the model's context), the fresh
random prompts every run is served on, and the number of engine requests a plan makes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simkv.core.errors import SimkvError

LOCAL_TIERS = ("gpu", "cpu", "disk")


class CalibrationError(SimkvError):
    """The engine cannot be calibrated as asked (bad grid, unreachable engine, a chunk found
    where the measurement did not put it)."""


# -- the grid -----------------------------------------------------------------------------

#: Grids in chunks of the engine's block size ``C`` (``quick``: CPU, a minute with the tiny
#: model; ``full``: a GPU with a Llama shape). ``new``: new tokens (``1`` is one token, the
#: rest multiples of C); ``cached``: cached tokens; ``chunks``: chunks per load measurement.
GRIDS: dict[str, dict[str, Any]] = {
    "quick": {"new": [1, 1, 4, 16], "cached": [0, 4, 16], "chunks": [1, 2, 4, 8], "repeats": 3, "warmup": 1},
    "full": {"new": [1, 1, 4, 16, 32, 64], "cached": [0, 16, 64, 128], "chunks": [1, 4, 16, 64],
             "repeats": 5, "warmup": 2},
}


@dataclass(frozen=True)
class Plan:
    """What to measure: token grids, chunk counts, repeats (medians of), warm-up runs
    (discarded) and the prompts' seed."""

    new_tokens: list[int]
    cached_tokens: list[int]
    chunks: list[int]
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    tiers: bool = True

    @classmethod
    def make(cls, grid: str, chunk: int, *, new_tokens: list[int] | None = None,
             cached_tokens: list[int] | None = None, chunks: list[int] | None = None,
             repeats: int | None = None, warmup: int | None = None, seed: int = 0) -> Plan:
        """The named grid for chunk size ``chunk``, any of its lists or counts replaced."""
        if grid not in GRIDS:
            raise CalibrationError(f"--grid: {grid!r} is not one of {', '.join(GRIDS)}")
        g = GRIDS[grid]
        new = new_tokens or [1, *(k * chunk for k in g["new"][1:])]
        plan = cls(new, cached_tokens or [k * chunk for k in g["cached"]], chunks or list(g["chunks"]),
                   g["repeats"] if repeats is None else repeats, g["warmup"] if warmup is None else warmup,
                   seed)
        plan.check(chunk)
        return plan

    def check(self, chunk: int, context: int | None = None) -> None:
        for key, values in (("--new-tokens", self.new_tokens), ("--cached-tokens", self.cached_tokens)):
            if len(values) < 2 or any(b <= a for a, b in itertools.pairwise(values)):
                raise CalibrationError(f"{key}: expected at least 2 strictly increasing token counts, "
                                       f"got {values}")
        if self.new_tokens[0] < 1:
            raise CalibrationError(f"--new-tokens: at least one token is computed, got {self.new_tokens[0]}")
        bad = [c for c in self.cached_tokens if c < 0 or c % chunk]
        if bad:
            raise CalibrationError(f"--cached-tokens: {bad[0]} is not a multiple of the block size {chunk} "
                                   "(only full chunks are cached)")
        if not self.chunks or any(k < 1 for k in self.chunks) or len(set(self.chunks)) < 2:
            raise CalibrationError(f"--chunks: expected at least 2 distinct counts >= 1, got {self.chunks}")
        if self.repeats < 1 or self.warmup < 0:
            raise CalibrationError(f"--repeats must be >= 1 and --warmup >= 0, got {self.repeats}, "
                                   f"{self.warmup}")
        if context is not None:
            longest = max(self.new_tokens[-1] + self.cached_tokens[-1], max(self.chunks) * chunk + 1)
            if longest > context:
                raise CalibrationError(f"the grid needs prompts of {longest} tokens but the model's context "
                                       f"is {context} (shrink --new-tokens / --cached-tokens / --chunks)")


class FreshPrompts:
    """Fresh prompts: ``numpy.random.default_rng(seed)`` token ids in ``[1, vocab)`` (the seed
    ``[seed, salt]`` with a salt)."""

    def __init__(self, vocab: int, seed: int, salt: int | None = None) -> None:
        self.rng, self.vocab = np.random.default_rng(seed if salt is None else [seed, salt]), vocab

    def __call__(self, n: int) -> list[int]:
        return self.rng.integers(1, self.vocab, n).tolist() if n else []


def steps(plan: Plan, tiers: Sequence[str], wait_clears: bool = False, prefill_only: bool = False) -> int:
    """Engine requests a calibration makes (the progress bar's total)."""
    runs = plan.warmup + plan.repeats
    prefill = sum(2 if c else 1 for c in plan.cached_tokens) * len(plan.new_tokens) * runs
    if prefill_only:
        return prefill
    per_load = 1 + len([t for t in ("gpu", "cpu") if t in tiers]) + (2 if "disk" in tiers else 0) \
        + (2 if "archive" in tiers else 0) + (2 if "disk" in tiers and wait_clears else 0)
    loads = per_load * len(plan.chunks) * runs if plan.tiers else 0
    full = len(plan.chunks) * runs if plan.tiers and "disk" in tiers else 0
    return prefill + loads + len(overhead_lengths(plan)) * runs + full


def overhead_lengths(plan: Plan, context: int | None = None) -> list[int]:
    """Prompt lengths of the request-overhead measurement: the grid's new-token counts and its
    longest prompt (new + cached), one token short of ``context`` at most (one is generated)."""
    longest = plan.new_tokens[-1] + plan.cached_tokens[-1]
    if context is not None:
        longest = min(longest, context - 1)
    return sorted({*(n for n in plan.new_tokens if n <= longest), longest})
