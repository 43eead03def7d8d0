"""The engine as the calibration sees it: :class:`Probe` (serve, look up, clear, wait for
disk writes; what the engine is and what its measurements mean, for the notes), the
:class:`Served` request it reports, and the checks that a prompt's chunks are (or were served
from) exactly where a measurement put them."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from simkv_engine.calibrate.plan import CalibrationError

#: The archive counters the calibration reads (``KVEngine.counters()`` keys).
ARCHIVE_COUNTERS = ("archive_fetches", "archive_fetch_bytes", "archive_fetch_s", "archive_decompress_s")


@dataclass
class Served:
    """One request as the engine reports it: tokens per tier, seconds of each phase, bytes
    loaded per tier (where reported)."""

    hit_tokens: dict[str, int]
    load_s: float
    prefill_s: float
    store_s: float
    hydrate_s: float = 0.0
    bytes_loaded: dict[str, int] = field(default_factory=dict)
    #: The server's queue and arrival → first token (in-process: 0 and the serve's wall time).
    queue_s: float | None = None
    ttft_s: float | None = None
    #: Send → first streamed token at the client (over HTTP, from :meth:`Probe.serve_timed`).
    client_ttft_s: float | None = None


class Probe(ABC):
    """The engine seen by the calibration: serve, look up, clear, wait for disk writes."""

    chunk_size: int
    vocab_size: int
    context: int | None = None
    #: Tiers the engine has, in walk order (``gpu``, ``cpu``, ``disk``, ``archive``).
    tiers: tuple[str, ...] = ()
    #: Bytes of one chunk's KV (``None``: learnt from a served GPU hit's ``bytes_loaded``).
    chunk_bytes: int | None = None
    #: Chunks the GPU cache holds (``None``: unlimited or unknown).
    gpu_chunks: int | None = None
    #: Whether :meth:`wait_on_disk` drops the chunks from the GPU and CPU tiers.
    wait_clears = True
    #: What "cold" means for this probe's disk reads (written into the profile's notes).
    disk_cold = "first read after the write (the page cache may still hold the file)"
    #: Whether only the prefill grid can be measured (no lookup, no tiers, no server timings).
    prefill_only = False
    #: What the profile's ``load.gpu`` is, for the notes.
    gpu_note = ("load.gpu is the engine's GPU-cache copy (KV chunks copied out of the GPU cache into the "
                "request's KV), charged to GPU hits")

    @abstractmethod
    def serve(self, tokens: list[int]) -> Served: ...

    def serve_timed(self, tokens: list[int]) -> Served:
        """Serve ``tokens`` as a replay sends a request (over HTTP: streamed, one token), with
        ``ttft_s`` (and ``client_ttft_s`` where there is a client) set."""
        return self.serve(tokens)

    @abstractmethod
    def lookup(self, tokens: list[int]) -> list[str]: ...

    @abstractmethod
    def clear(self, tiers: Sequence[str]) -> None: ...

    @abstractmethod
    def wait_on_disk(self, tokens: list[int], timeout: float = 60.0) -> float:
        """Block until every full chunk of ``tokens`` is on disk; the seconds waited. May drop
        the chunks from the GPU and CPU tiers (the HTTP probe can only see disk behind them)."""

    def drop_disk_cache(self) -> bool:
        """Evict the disk tier's files from the page cache; False where it cannot."""
        return False

    #: Where the archive lives, for the notes (``""``: no archive).
    archive_where = ""
    #: Whether the model has random weights (``None``: unknown).
    random_weights: bool | None = None
    #: Mixed into the prompts' seed (``None``: none): an archive outlives the engine, so an
    #: earlier calibration's chunks may still be there; fresh prompts must not meet them.
    prompt_salt: int | None = None

    def archive_pass(self) -> dict[str, Any]:
        """Run one archive pass now; what it did (the server's ``POST /kv/archive`` answer)."""
        raise CalibrationError("the engine has no archive tier")

    def counters(self) -> dict[str, float]:
        """The engine's archive fetch counters (:data:`ARCHIVE_COUNTERS`), cumulative."""
        return {}

    def disk_evictions(self) -> int | None:
        """Chunks the disk tier has evicted so far (``None``: not known)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Provenance: device, versions, model shape."""
        return {}

    def notes(self) -> list[str]:
        """The probe's own notes for the profile (what it measures differently, or not)."""
        return []

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        pass


def _expect(probe: Probe, tokens: list[int], want: list[str], what: str) -> None:
    got = probe.lookup(tokens)
    if got != want:
        raise CalibrationError(f"{what}: expected the chunks in {_runs(want) or 'no tier'}, the engine "
                               f"has them in {_runs(got) or 'no tier'} (is another client using it?)")


def _runs(tiers: list[str]) -> str:
    return ", ".join(f"{len(list(g))}x {t}" for t, g in itertools.groupby(tiers))


def _hits(served: Served, tier: str, tokens: int, what: str) -> None:
    got = {t: n for t, n in served.hit_tokens.items() if n}
    if got != ({tier: tokens} if tokens else {}):
        raise CalibrationError(f"{what}: expected {tokens} tokens from {tier}, the engine served {got}")
