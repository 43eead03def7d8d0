"""The engine's clocks, which the archive's TTLs and passes run on: the wall clock (optionally
sped up, for a replay at speed k) or the trace's own time axis set by the requests."""

from __future__ import annotations

import time


class EngineClock:
    """Engine time in epoch seconds, running ``scale`` times faster than the wall clock from
    the moment it is made (``scale=1``: ``time.time()``). A replay at speed ``k`` uses
    ``scale=k`` so that TTLs and the worker's interval shrink with the trace's gaps."""

    def __init__(self, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError("clock scale must be > 0")
        self.scale = scale
        self._t0 = time.time()

    def __call__(self) -> float:
        now = time.time()
        return self._t0 + (now - self._t0) * self.scale


class TraceClock:
    """Engine time set by the requests (``simkv engine serve --clock trace``): seconds on the
    trace's time axis, the arrival time of the latest request (``arrival_s``), never running
    backwards. With it the archive worker has no thread: :meth:`ArchiveWorker.advance` runs the
    passes due before each request, at their own times, as the simulator's worker does."""

    scale = 1.0

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
