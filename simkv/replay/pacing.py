"""Sending requests at the trace's arrival times: an absolute schedule, a cap on requests in
flight.

Request ``i`` is due at ``t0 + (arrival_i − arrival_0) / speed`` (``speed=None``: "max", every
request due at once). Each is slept towards from the schedule's start, not from the previous
send, so lateness does not accumulate. With ``concurrency`` requests in flight a due request
waits for a slot; ``lag_s = sent − due`` records how late it went out (≥ 0; a late client
distorts the arrival process the engine sees, so the lag belongs with the results).
Requests are sent in trace order, one after another (a later request never overtakes an
earlier one waiting for a slot).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Clock(Protocol):
    """What the pacer needs of time: ``now()`` in seconds and ``sleep(seconds)``."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The real clock (monotonic)."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


@dataclass(frozen=True)
class Send:
    """One request as sent: its index in the schedule, when it was due and when it went out
    (clock seconds), ``lag_s = sent_s − due_s``."""

    index: int
    due_s: float
    sent_s: float

    @property
    def lag_s(self) -> float:
        return self.sent_s - self.due_s


def due_offsets(arrivals: Sequence[float], speed: float | None) -> list[float]:
    """Seconds after the start at which each request is due: ``(arrival_i − arrival_0) /
    speed``, or all 0 for ``speed=None`` (as fast as the concurrency cap allows)."""
    if not arrivals:
        return []
    if speed is None:
        return [0.0] * len(arrivals)
    if not speed > 0:
        raise ValueError("speed must be > 0")
    first = arrivals[0]
    return [(a - first) / speed for a in arrivals]


async def pace(arrivals: Sequence[float], speed: float | None, concurrency: int,
               send: Callable[[Send], Awaitable[Any]], clock: Clock | None = None) -> None:
    """Call ``send(Send)`` for each arrival on the schedule above, at most ``concurrency`` at a
    time; return when every send has finished. ``send`` must not raise (it records its own
    failures); if one does, or this is cancelled, the sends in flight are cancelled."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    clock = clock or WallClock()
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task] = set()
    failed: list[BaseException] = []

    async def run(s: Send) -> None:
        try:
            await send(s)
        finally:
            slots.release()

    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())

    start = clock.now()
    try:
        for i, offset in enumerate(due_offsets(arrivals, speed)):
            due = start + offset
            wait = due - clock.now()
            if wait > 0:
                await clock.sleep(wait)
            await slots.acquire()
            if failed:
                raise failed[0]
            task = asyncio.create_task(run(Send(i, due, clock.now())))
            tasks.add(task)
            task.add_done_callback(done)
        while tasks:
            await asyncio.wait(set(tasks))
        if failed:
            raise failed[0]
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
