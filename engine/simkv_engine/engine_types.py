"""What every part of the engine shares: the tier names in walk order, the local tiers, the
engine's error and the result of one request (:class:`RequestResult`). Kept apart so that the
engine's parts (:mod:`simkv_engine.engine` and the modules it is built from) and the HTTP server
import them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from simkv.core.errors import SimkvError
from simkv.core.tiers import TIER_NAMES

#: Tier names in walk order (fastest first): the simulator's.
TIERS = TIER_NAMES
#: The tiers in the engine's own memory and disk (what :meth:`KVEngine.clear` drops).
LOCAL_TIERS = ("gpu", "cpu", "disk")


class EngineError(SimkvError):
    """The engine cannot start (LMCache unhealthy) or was given a request it cannot serve."""


@dataclass
class RequestResult:
    """One request: tokens served per tier (``hit_tokens``; ``gpu`` / ``cpu`` / ``disk`` /
    ``archive``), tokens prefilled (``computed_tokens``), and times in seconds: ``load_s``
    (GPU-cache copies, LMCache retrieves and archive hydration), ``prefill_s`` (the model's
    forward pass), ``store_s`` (into the GPU cache and LMCache; LMCache's disk writes finish
    asynchronously after it), ``hydrate_s`` (the part of ``load_s`` spent on archive chunks:
    GETs, checks, decompression, the copy into the KV; failed fetches included). ``logits``: the
    last prompt token's logits (all computed positions' with ``all_logits=True``).
    ``past_key_values``: the prompt's whole KV (a ``DynamicCache``) for :meth:`KVEngine.decode`.
    ``recomputed_tokens``: 1 when every prompt token was served from a tier and the last one was
    recomputed for its logits (counted in ``hit_tokens``, not in ``computed_tokens``)."""

    prompt_tokens: int
    hit_tokens: dict[str, int]
    computed_tokens: int
    load_s: float
    prefill_s: float
    store_s: float
    logits: torch.Tensor = field(repr=False)
    past_key_values: DynamicCache | None = field(default=None, repr=False)
    hydrate_s: float = 0.0
    recomputed_tokens: int = 0

    @property
    def cached_tokens(self) -> int:
        return sum(self.hit_tokens.values())

