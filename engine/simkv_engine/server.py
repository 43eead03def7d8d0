"""The engine over HTTP (FastAPI + uvicorn), OpenAI-compatible where it overlaps so the same
client drives this engine or vLLM: ``POST /v1/completions``, ``GET /v1/models``, plus
``POST /kv/lookup``, ``/kv/hydrate``, ``/kv/clear``, ``/kv/archive``, ``GET /healthz`` and
``GET /metrics``.

Serving model: one worker thread owns the :class:`~simkv_engine.engine.KVEngine` and runs every
job that touches it (completions, lookups, hydrations, clears, archive passes) one at a time in arrival order
(FIFO, no batching); the HTTP handlers validate and tokenize on the event loop, enqueue, and
await. A completion is the engine's prefill step (load the cached prefix tier by tier, prefill
the rest, store) then greedy decoding of ``max_tokens`` tokens over the prompt's KV; generated
tokens are never stored in the cache, and decoding never stops early (no EOS stop, as vLLM
with ``ignore_eos``), so ``finish_reason`` is always ``length``. Times in ``usage.simkv``:
``queue_s`` arrival (the request validated) → worker start; ``load_s`` / ``hydrate_s`` /
``prefill_s`` / ``store_s`` from the engine; ``decode_s`` first token → last token;
``ttft_s`` arrival → first token (the end of the prefill step when ``max_tokens`` is 0).

Limits (:class:`Limits`, engine/README.md): the body's size and read time (the middleware
:class:`_Guard`, which reads every body before the app sees it), the headers' read time
(:class:`_H11Protocol`, through :func:`server_config`) and the length of names; a job whose
client disconnected before the worker started it is never run.

Text prompts: a checkpoint folder's own tokenizer (with its special tokens, as vLLM's
completions do); the named random-weight shapes (and a checkpoint without a tokenizer) use
:class:`ByteTokenizer` (a prompt's UTF-8 bytes are its token ids).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import ipaddress
import json
import logging
import math
import queue
import re
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from simkv.errors import SimkvError
from simkv.scenario import Scenario
from simkv_engine.archive import ArchiveOptions, TraceClock
from simkv_engine.engine import LOCAL_TIERS, TIERS, EngineError, KVEngine, RequestResult
from simkv_engine.integrity import default_disk_folder

log = logging.getLogger(__name__)

#: vLLM's TTFT histogram buckets (seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
#: The label of each dict-valued engine value in ``/metrics`` (others: ``tier``).
COUNTER_LABELS = {"prompt_tokens_by_source": "source", "archive_errors": "kind",
                  "archive_upload_bytes": "kind", "disk_errors": "kind"}
#: Engine values that are levels (what is there now), not running totals: Prometheus gauges,
#: named without ``_total``.
GAUGES = {"tier_bytes": "KV bytes each tier holds now (the archive: the stored, compressed bytes of "
                        "the objects in its index).",
          "archive_objects": "Objects in the archive's index now.",
          "archive_stored_bytes": "Stored (compressed) bytes of the objects in the archive's index now.",
          "archive_compression_ratio": "Raw / stored bytes over all archive uploads (0 before the first)."}
COUNTER_HELP = {
    "requests": "Completions served by the engine.",
    "prompt_tokens_by_source": "Prompt tokens by where their KV came from (a tier, or computed).",
    "bytes_loaded": "KV bytes loaded from each tier into the prefill.",
    "bytes_stored": "KV bytes stored into each tier (the archive: raw bytes uploaded).",
    "evictions": "Chunks evicted from each tier by its capacity policy.",
    "expirations": "Chunks expired from each tier by their TTL.",
    "archive_uploads": "Chunks uploaded to the archive.",
    "archive_fetches": "Chunks fetched from the archive.",
    "archive_errors": "Archive operations that failed, by kind.",
    "disk_errors": "Disk-tier chunks not served (unreadable, length, checksum, unverified) and disk "
                   "writes that failed (write), by kind.",
    "lmcache_alloc_failures": "LMCache's failed CPU-pool allocations.",
}
#: HTTP status of a request whose client closed the connection before the worker started it
#: (nginx's "client closed request"): never sent, only counted.
CLIENT_CLOSED = 499
#: The longest ``request_id``, ``model``, ``prompt_class`` or tier name accepted (characters).
MAX_NAME_CHARS = 256


@dataclass(frozen=True)
class Limits:
    """What one connection or request may cost the server. ``max_body_bytes``: the largest
    request body (a larger ``Content-Length`` is refused before any of the body is read, a
    chunked body once it passes the limit: 413). ``read_timeout_s``: a connection has this long
    to send a request's complete headers (from its opening, or from the previous response;
    else it is closed), and then this long again for the body (else 408)."""

    max_body_bytes: int = 4 * 1024 * 1024
    read_timeout_s: float = 10.0


class APIError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """An OpenAI-style error body: ``{"error": {"message", "type", "code"}}``."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


# -- tokenizers -----------------------------------------------------------------------------------
class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """The tokenizer of the random-weight shapes: a text's UTF-8 bytes are its token ids (so
    every id is < 256, inside any vocabulary of at least 256); an id decodes to the byte
    ``id % 256``, invalid UTF-8 to U+FFFD. Deterministic and dependency-free; the text of a
    random model's output is meaningless anyway."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i % 256 for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A checkpoint's tokenizer: ``encode`` adds its special tokens (BOS), as vLLM's completions
    endpoint does; ``decode`` skips them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer for ``--model spec``: a checkpoint folder's own when it has one, else
    :class:`ByteTokenizer`."""
    path = Path(spec)
    if path.is_dir():
        from transformers import AutoTokenizer

        try:
            return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("model %s has no usable tokenizer (%s); text prompts use UTF-8 bytes", spec, exc)
    return ByteTokenizer()


# -- request bodies -------------------------------------------------------------------------------
def check_text(text: str) -> str:
    """``text`` if it can be encoded as UTF-8 (JSON's ``\\ud800`` escapes decode to lone
    surrogates, which cannot), else a :class:`ValueError` naming the character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode text: a lone UTF-16 surrogate at character "
                         f"{exc.start}") from None
    return text


#: A free string a client names something with (echoed back): short; pydantic refuses lone
#: surrogates in a ``str`` field itself.
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class CompletionRequest(_Body):
    prompt: Any = Field(...)
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = 16
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    model: Name | None = None
    prompt_class: Name | None = None
    request_id: Name | None = None
    arrival_s: float | None = None


class PromptRequest(_Body):
    prompt: Any = Field(...)


class ClearRequest(_Body):
    tiers: list[Name] = Field(default_factory=lambda: list(TIERS), max_length=16)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return f"the body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}"
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts) or "invalid request"


# -- the worker -----------------------------------------------------------------------------------
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


# -- metrics --------------------------------------------------------------------------------------
def _metric_name(key: str) -> str:
    return "simkv_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class EngineCollector(Collector):
    """``/metrics`` from :meth:`KVEngine.counters` at scrape time: a number becomes the counter
    ``simkv_<key>_total`` (the gauge ``simkv_<key>`` for the levels of :data:`GAUGES`), a dict
    ``{label: number}`` the same with the label named by :data:`COUNTER_LABELS` (``tier`` by
    default); plus the worker's queue depth (a gauge). The snapshot is read on the event loop,
    not through the worker, so a scrape never waits behind a long request."""

    def __init__(self, engine: KVEngine, worker: Worker) -> None:
        self.engine = engine
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        for key, value in self.engine.counters().items():
            kind = GaugeMetricFamily if key in GAUGES else CounterMetricFamily
            doc = GAUGES.get(key) or COUNTER_HELP.get(key, f"The engine's counter {key}.")
            if isinstance(value, dict):
                label = COUNTER_LABELS.get(key, "tier")
                family = kind(_metric_name(key), doc, labels=[label])
                for name, n in value.items():
                    family.add_metric([str(name)], float(n))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                family = kind(_metric_name(key), doc, value=float(value))
            else:
                continue
            yield family
        yield GaugeMetricFamily("simkv_queue_depth", "Jobs waiting for the engine's worker "
                                "(completions, lookups, hydrations, clears), not counting the one running.",
                                value=self.worker.depth)


class _Guard:
    """ASGI middleware in front of every request: the API key (every path but ``/healthz``), the
    body's size limit and read timeout (:class:`Limits`; the body is read here, in full, before
    the app sees it) and the count of error responses by status code."""

    def __init__(self, app: Any, api_key: str | None, errors: Counter, limits: Limits) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.errors = errors
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.errors.labels(code=str(message["status"])).inc()
            await send(message)

        async def refuse(status: int, message: str, kind: str, close: bool = True) -> None:
            """An error response; with ``close``, the connection is closed after it (the rest of
            the body unread)."""
            response = error_response(status, message, kind)
            if close:
                response.headers["connection"] = "close"
            await response(scope, receive, counting_send)

        headers = dict(scope.get("headers") or [])
        limit = self.limits.max_body_bytes
        too_big = (f"the request body is larger than the server's limit of {limit} bytes "
                   "(simkv engine serve --max-body)")
        if int(headers.get(b"content-length", b"0")) > limit:     # h11 checked it is a number
            await refuse(413, too_big, "request_too_large")
            return
        if self.expected is not None and scope["path"] != "/healthz" \
                and not secrets.compare_digest(headers.get(b"authorization", b""), self.expected):
            await refuse(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                         close=False)
            return
        body = bytearray()
        try:
            async with asyncio.timeout(self.limits.read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":      # the client left
                        return
                    body += message.get("body", b"")
                    if len(body) > limit or not message.get("more_body", False):
                        break
        except TimeoutError:
            await refuse(408, f"the request body did not arrive within {self.limits.read_timeout_s:g} s "
                         "(simkv engine serve --read-timeout)", "request_timeout")
            return
        if len(body) > limit:
            await refuse(413, too_big, "request_too_large")
            return
        pending = [{"type": "http.request", "body": bytes(body), "more_body": False}]
        del body

        async def replay() -> dict:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, counting_send)


async def _cancel_when_gone(request: Request, future: concurrent.futures.Future) -> bool:
    """Wait until the client disconnects, then cancel ``future`` unless the worker has started
    it; returns whether it was cancelled (so never run)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    return future.cancel()


# -- completions ----------------------------------------------------------------------------------
@dataclass
class _Completion:
    """One completion job: its tokens, and (streaming) where each generated token goes."""

    tokens: list[int]
    max_tokens: int
    arrival: float
    prompt_class: str | None = None
    trace_arrival_s: float | None = None
    on_token: Callable[[int | None], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Done:
    result: RequestResult
    ids: list[int]
    queue_s: float
    decode_s: float
    ttft_s: float


def usage_of(done: _Done, chunk_size: int, chunk_bytes: int) -> dict[str, Any]:
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


def _complete(engine: KVEngine, job: _Completion, ttft: Histogram) -> _Done:
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
    done = _Done(result, ids, queue_s=start - job.arrival, decode_s=last - first,
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


def _sse(data: Any) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


# -- the app --------------------------------------------------------------------------------------
def create_app(engine: KVEngine, *, api_key: str | None = None, model_name: str = "tiny",
               tokenizer: Tokenizer | None = None, trace_clock: bool = False,
               limits: Limits = Limits()) -> FastAPI:
    """The HTTP app over ``engine``. Its lifespan starts the worker and, at shutdown, lets it
    finish every queued job; the caller owns (and closes) the engine. ``trace_clock``: every
    completion must carry ``arrival_s`` (its trace arrival time, seconds), and the worker moves
    the engine's clock there before serving it (:meth:`KVEngine.advance`); without it
    ``arrival_s`` is ignored. ``limits``: the body's (here) and the headers' (serve it with
    :func:`server_config`)."""
    tokenizer = tokenizer or ByteTokenizer()
    worker = Worker()
    registry = CollectorRegistry()
    ttft = Histogram("simkv_ttft_seconds", "Server-side time to first token: arrival to the first "
                     "generated token (the end of the prefill step when max_tokens is 0).",
                     buckets=TTFT_BUCKETS, registry=registry)
    errors = Counter("simkv_request_errors", "HTTP responses with an error status, by code.",
                     ["code"], registry=registry)
    registry.register(EngineCollector(engine, worker))
    vocab = int(engine.model.config.vocab_size)
    context = int(getattr(engine.model.config, "max_position_embeddings", 0) or 0) or None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(title="simkv engine", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.worker = worker
    app.state.registry = registry
    app.state.limits = limits
    app.add_middleware(_Guard, api_key=api_key, errors=errors, limits=limits)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error")

    def prompt_tokens(prompt: Any) -> list[int]:
        """A prompt (text or token ids) as checked token ids."""
        if isinstance(prompt, str):
            try:
                tokens = tokenizer.encode(check_text(prompt))
            except ValueError as exc:
                raise APIError(400, f"prompt: {exc}") from None
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                              for t in prompt):
            tokens = prompt
        else:
            raise APIError(400, "prompt: a string or a list of token ids (ints); one prompt per request")
        if not tokens:
            raise APIError(400, "prompt: empty (at least one token is needed)")
        for i, t in enumerate(tokens):
            if not 0 <= t < vocab:
                raise APIError(400, f"prompt: token id {t} at position {i} is outside the "
                               f"vocabulary [0, {vocab})")
        return tokens

    async def run(fn: Callable[[], Any], request: Request) -> Any:
        """Run ``fn`` in the worker; engine errors become 400, anything else 500. A job whose
        client disconnects before the worker starts it is never run: 499 (counted, not sent)."""
        future = worker.submit(fn)
        gone = asyncio.ensure_future(_cancel_when_gone(request, future))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if gone.done() and not gone.cancelled() and gone.result():
                raise APIError(CLIENT_CLOSED, "the client closed the connection before the engine "
                               "started the request", "client_closed_request") from None
            raise
        except APIError:
            raise
        except SimkvError as exc:
            raise APIError(400, str(exc)) from None
        except Exception as exc:
            log.exception("the engine failed on a request")
            raise APIError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error") from None
        finally:
            gone.cancel()

    @app.get("/healthz")
    async def healthz() -> Response:
        """503 when nothing can be served; 200 ``{"status": "degraded", "reasons": [...]}`` while
        a tier fails and requests go on by recompute (``KVEngine.health``); else ``ok``."""
        if not worker.alive:
            return error_response(503, "the engine's worker is not running", "service_unavailable")
        reasons = engine.health()
        if reasons:
            return JSONResponse({"status": "degraded", "reasons": reasons})
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "simkv", "max_model_len": context,
                                            "vocab_size": engine.model.config.vocab_size}]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/kv/lookup")
    async def kv_lookup(body: PromptRequest, request: Request) -> dict:
        tokens = prompt_tokens(body.prompt)
        tiers = await run(lambda: engine.lookup(tokens), request)
        c = engine.chunk_size
        return {"prompt_tokens": len(tokens), "chunk_size": c, "tiers": tiers,
                "tokens_by_source": {s: tiers.count(s) * c for s in TIERS},
                "cached_tokens": len(tiers) * c}

    @app.post("/kv/hydrate")
    async def kv_hydrate(body: PromptRequest, request: Request) -> dict:
        tokens = prompt_tokens(body.prompt)
        if engine.archive is None:
            raise APIError(501, "/kv/hydrate: this engine has no archive tier (tiers.archive.enabled "
                           "and --archive)", "not_implemented_error")
        n, seconds = await run(lambda: engine.hydrate(tokens), request)
        return {"hydrated_tokens": n, "seconds": seconds}

    @app.post("/kv/archive")
    async def kv_archive(request: Request) -> dict:
        if engine.archive is None:
            raise APIError(501, "/kv/archive: this engine has no archive tier (tiers.archive.enabled "
                           "and --archive)", "not_implemented_error")
        archive = engine.archive
        return await run(lambda: archive_pass(archive), request)

    @app.post("/kv/clear")
    async def kv_clear(body: ClearRequest, request: Request) -> dict:
        for tier in body.tiers:
            if tier == "archive":
                raise APIError(400, "tiers: /kv/clear never touches the archive")
            if tier not in LOCAL_TIERS:
                raise APIError(400, f"tiers: {tier!r} is not a local tier ({', '.join(LOCAL_TIERS)})")
        return {"cleared": await run(lambda: engine.clear(body.tiers), request)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        tokens = prompt_tokens(body.prompt)
        if context is not None and len(tokens) + max_tokens > context:
            raise APIError(400, f"prompt: {len(tokens)} tokens plus max_tokens {max_tokens} exceed the "
                           f"model's context of {context} tokens")
        rid = body.request_id or f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        name = body.model or model_name
        arrival_s = None
        if trace_clock:
            arrival_s = body.arrival_s
            if arrival_s is None:
                raise APIError(400, "arrival_s: required: this engine runs on the trace clock "
                               "(--clock trace); send each request's trace arrival time in seconds")
            if not math.isfinite(arrival_s) or arrival_s < 0:
                raise APIError(400, f"arrival_s: {arrival_s!r} is not a time (finite, >= 0)")
        job = _Completion(tokens, max_tokens, arrival=time.perf_counter(), prompt_class=body.prompt_class,
                          trace_arrival_s=arrival_s)

        def usage(done: _Done) -> dict:
            return usage_of(done, engine.chunk_size, engine.chunk_bytes)

        if not body.stream:
            done = await run(lambda: _complete(engine, job, ttft), request)
            return JSONResponse({
                "id": rid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": tokenizer.decode(done.ids), "token_ids": done.ids,
                             "logprobs": None, "finish_reason": "length"}],
                "usage": usage(done)})

        loop = asyncio.get_running_loop()
        tokens_q: asyncio.Queue[int | None] = asyncio.Queue()
        job.on_token = lambda t: loop.call_soon_threadsafe(tokens_q.put_nowait, t)
        future = asyncio.ensure_future(run(lambda: _complete(engine, job, ttft), request))
        first_token = asyncio.ensure_future(tokens_q.get())
        await asyncio.wait({first_token, future}, return_when=asyncio.FIRST_COMPLETED)
        if first_token.done():
            first = first_token.result()
        else:                                  # the job ended without a token (it was skipped)
            first_token.cancel()
            first = None
        if first is None and not future.done():
            await asyncio.wait({future})
        if first is None and future.exception() is not None:
            job.cancelled.set()
            raise future.exception()           # an error before any token: a plain error response
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(choices: list, **extra: Any) -> str:
            data = {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": choices, **extra}
            return _sse(data)

        async def events() -> Any:
            ids: list[int] = []
            sent = 0
            token = first
            try:
                while token is not None:
                    ids.append(token)
                    text = tokenizer.decode(ids)
                    last = len(ids) == max_tokens
                    delta = ""
                    if last or not text.endswith("\ufffd"):     # hold back a partial character
                        delta, sent = text[sent:], len(text)
                    yield chunk([{"index": 0, "text": delta, "token_ids": [token], "logprobs": None,
                                  "finish_reason": "length" if last else None}])
                    token = await tokens_q.get()
                try:
                    done = await future
                except APIError as exc:
                    yield _sse({"error": {"message": exc.message, "type": exc.kind, "code": exc.status}})
                else:
                    if include_usage:
                        yield chunk([], usage=usage(done))
                yield "data: [DONE]\n\n"
            finally:
                job.cancelled.set()            # the client went away: stop decoding

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


# -- serving --------------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one), or an
    :class:`EngineError` naming the address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise EngineError(f"--host {host} --port {port}: cannot listen there "
                          f"({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback one (only this machine can
    connect); an unresolvable name counts as not."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _H11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline on a request's headers: a connection
    that has not sent a request's complete headers ``read_timeout_s`` after it opened, or after
    the previous response, is closed. (uvicorn's ``timeout_keep_alive`` closes an idle
    connection, but one that sent part of a request waits forever; h11 caps the headers' size.)"""

    def __init__(self, *args: Any, read_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout_s = read_timeout_s
        self._headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_headers_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_headers_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
        super().connection_lost(exc)

    def _arm_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
        self._headers_timer = self.loop.call_later(self.read_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        self._headers_timer = None
        between_requests = self.cycle is None or self.cycle.response_complete
        if between_requests and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: FastAPI, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's configuration for ``app``: its lifespan on, the headers' deadline of its
    :class:`Limits` (:class:`_H11Protocol`), and no limit on the graceful shutdown (the queued
    requests finish)."""
    limits: Limits = app.state.limits
    return uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=None,
                          http=functools.partial(_H11Protocol, read_timeout_s=limits.read_timeout_s))


@contextmanager
def _graceful_signals() -> Iterator[None]:
    """While uvicorn serves, SIGINT and SIGTERM only start its graceful shutdown: uvicorn
    re-raises the signal to the previous handler after it, which here does nothing (so the
    process exits 0, not by the signal)."""
    handlers = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def serve(scenario: Scenario, *, model: str = "tiny", device: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, api_key: str | None = None, disk_path: str | Path | None = None,
          archive: ArchiveOptions | str | Path | None = None, log_level: str = "warning",
          on_ready: Callable[[str], None] | None = None, clock: str = "wall",
          limits: Limits = Limits()) -> None:
    """Build the model and the engine for ``scenario`` and serve them until SIGINT / SIGTERM:
    then stop accepting, finish the queued requests, close LMCache (the archive worker finishes
    its pass and runs a last one) and return. ``disk_path`` (LMCache's disk tier) defaults to a
    temporary folder removed at exit; ``archive`` (where ``tiers.archive`` lives: ``s3://bucket/
    prefix`` or a folder, see :class:`ArchiveOptions`) is required when the scenario enables it.
    ``on_ready(url)`` is called once the server accepts connections. ``clock``: ``wall`` (engine
    time is the wall clock, or ``archive.clock_scale`` times it; the archive worker is a thread)
    or ``trace`` (engine time is each request's ``arrival_s``; the archive's passes run in the
    worker before the request they precede; LMCache's disk writes are done before the next
    request: see :meth:`KVEngine.advance`). ``limits``: what a connection or request may cost."""
    import torch

    from simkv_engine.models import load_model

    if clock not in ("wall", "trace"):
        raise EngineError(f"--clock: {clock!r} is not wall or trace")
    sock = bind(host, port)
    url = url_of(sock)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with default_disk_folder() if disk_path is None else contextlib.nullcontext(disk_path) as tmp:
        hf_model = load_model(model, device)
        tokenizer = load_tokenizer(model)
        trace = clock == "trace"
        if trace and archive is not None:
            opts = archive if isinstance(archive, ArchiveOptions) else ArchiveOptions(archive)
            archive = dataclasses.replace(opts, clock=TraceClock(), worker_thread=False)
        with KVEngine(scenario, hf_model, disk_path=tmp, archive=archive,
                      deterministic=trace) as engine:
            app = create_app(engine, api_key=api_key, model_name=model, tokenizer=tokenizer,
                             trace_clock=trace, limits=limits)
            config = server_config(app, log_level)

            class Server(uvicorn.Server):
                async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                    await super().startup(sockets)
                    if self.started and on_ready is not None:
                        on_ready(url)

            with _graceful_signals():
                Server(config).run(sockets=[sock])
