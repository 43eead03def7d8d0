"""What the engine's tests share: seeded prompts for the tiny model and a factory of engines
that closes them at the end of the test. Needs the engine's dependencies: import it after the
test module's ``pytest.importorskip`` lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from simkv_engine.engine import KVEngine
from simkv_engine.models import SHAPES


def prompt(seed: int, n: int) -> list[int]:
    """``n`` token ids drawn from the tiny model's vocabulary (id 0 aside) with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, SHAPES["tiny"]["vocab_size"], (n,), generator=g).tolist()


def engine_factory(build: Callable[..., KVEngine]) -> Iterator[Callable[..., KVEngine]]:
    """A fixture's body: yields ``make(*args, **kwargs)`` = ``build(i, *args, **kwargs)`` for the
    ``i``-th engine made, and closes every engine made once the test is done."""
    engines: list[KVEngine] = []

    def make(*args: Any, **kwargs: Any) -> KVEngine:
        engine = build(len(engines), *args, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()
