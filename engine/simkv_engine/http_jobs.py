"""The engine's side of the HTTP server: one :class:`Worker` thread owns the engine and runs
every job that touches it, one at a time in arrival order; a completion job
(:class:`CompletionJob`, run by :func:`run_completion`) is the engine's prefill step then greedy
decoding, its ``usage`` object made by :func:`usage_of`; :func:`archive_pass` runs and reports
one archive pass; :func:`cancel_when_gone` drops a job whose client left before it started."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from prometheus_client import Histogram

from simkv_engine.engine import KVEngine
from simkv_engine.engine_types import TIERS, RequestResult
from simkv_engine.http_bodies import APIError


class Worker:
    """One thread running jobs one at a time in submission order (FIFO). A job's exception goes
    to its future; the thread keeps serving."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="simkv-engine-worker", daemon=True)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def depth(self) -> int:
        """Jobs waiting for the worker (not counting the one it is running)."""
        return self._jobs.qsize()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        if self._stopping:
            raise APIError(503, "the server is shutting down", "service_unavailable")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def stop(self) -> None:
        """Finish every queued job, then end the thread."""
        self._stopping = True
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:      # delivered to the request, never fatal to the worker
                future.set_exception(exc)


async def cancel_when_gone(request: Request, future: concurrent.futures.Future) -> bool:
    """Wait until the client disconnects, then cancel ``future`` unless the worker has started
    it; returns whether it was cancelled (so never run)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    return future.cancel()


@dataclass
class CompletionJob:
    """One completion job: its tokens, and (streaming) where each generated token goes."""

    tokens: list[int]
    max_tokens: int
    arrival: float
    prompt_class: str | None = None
    trace_arrival_s: float | None = None
    on_token: Callable[[int | None], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class CompletedJob:
    result: RequestResult
    ids: list[int]
    queue_s: float
    decode_s: float
    ttft_s: float


def usage_of(done: CompletedJob, chunk_size: int, chunk_bytes: int) -> dict[str, Any]:
    """The ``usage`` object: OpenAI's fields, vLLM's ``prompt_tokens_details.cached_tokens``
    (prompt tokens not computed = ``prompt_tokens - computed - recomputed``: a prompt served
    entirely from the tiers recomputes its last token, as vLLM does) and ours
    under ``simkv``. ``bytes_loaded[tier] = tokens from that tier / chunk_size * chunk_bytes``
    (as the engine's counters count them)."""
    r = done.result
    by_source = {s: int(r.hit_tokens[s]) for s in TIERS}
    by_source["computed"] = int(r.computed_tokens)
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": len(done.ids),
        "total_tokens": r.prompt_tokens + len(done.ids),
        "prompt_tokens_details": {"cached_tokens": r.prompt_tokens - r.computed_tokens
                                  - r.recomputed_tokens},
        "simkv": {
            "tokens_by_source": by_source,
            "recomputed_tokens": r.recomputed_tokens,
            "bytes_loaded": {s: by_source[s] // chunk_size * chunk_bytes for s in TIERS},
            "queue_s": done.queue_s,
            "load_s": r.load_s,
            "hydrate_s": r.hydrate_s,
            "prefill_s": r.prefill_s,
            "store_s": r.store_s,
            "decode_s": done.decode_s,
            "ttft_s": done.ttft_s,
        },
    }


def run_completion(engine: KVEngine, job: CompletionJob, ttft: Histogram) -> CompletedJob:
    """Run in the worker: the prefill step, then greedy decoding, each token handed to
    ``job.on_token`` as soon as it exists (``None`` at the end)."""
    start = time.perf_counter()
    try:
        if job.trace_arrival_s is not None:   # the trace clock: the passes due first
            engine.advance(job.trace_arrival_s)
        result = engine.serve(job.tokens, prompt_class=job.prompt_class)
        ids: list[int] = []
        first = last = time.perf_counter()
        tokens = engine.decode(result, job.max_tokens)
        try:
            for token in tokens:
                last = time.perf_counter()
                if not ids:
                    first = last
                ids.append(token)
                if job.on_token is not None:
                    job.on_token(token)
                if job.cancelled.is_set():
                    break
        finally:
            tokens.close()
    finally:
        if job.on_token is not None:
            job.on_token(None)
    done = CompletedJob(result, ids, queue_s=start - job.arrival, decode_s=last - first,
                        ttft_s=first - job.arrival)
    ttft.observe(done.ttft_s)
    return done


def archive_pass(archive: Any) -> dict[str, Any]:
    """Run one pass of ``archive`` (an :class:`~simkv_engine.archive.ArchiveWorker`) now and say
    what it did: the change of the worker's counters over it (uploads, their raw and stored bytes,
    seconds compressing and in PUTs, refreshes, expirations, skipped candidates, errors by kind;
    a background pass that finishes while this one waits for it is counted too), the index's
    objects after it, the codec and the pass's wall seconds."""
    before = archive.snapshot()
    t0 = time.perf_counter()
    archive.run_pass()
    seconds = time.perf_counter() - t0
    after = archive.snapshot()

    def delta(key: str) -> Any:
        return after[key] - before[key]

    return {"passes": delta("passes"), "uploads": delta("uploads"),
            "upload_bytes": {"raw": delta("upload_raw_bytes"), "stored": delta("upload_stored_bytes")},
            "compress_s": delta("compress_s"), "upload_s": delta("upload_s"),
            "refreshes": delta("refreshes"), "expirations": delta("expirations"), "skipped": delta("skipped"),
            "errors": {k: after["errors"][k] - before["errors"][k] for k in after["errors"]},
            "objects": after["objects"], "codec": archive.codec_name, "seconds": seconds}
