"""The HTTP app over one engine (:func:`create_app`): the endpoints ``POST /v1/completions``
(plain and streamed as server-sent events), ``GET /v1/models``, ``POST /kv/lookup``,
``/kv/hydrate``, ``/kv/clear``, ``/kv/archive``, ``GET /healthz`` and ``GET /metrics``, their
error handlers (the documented JSON error body), and prompt checking. Every engine job goes
through the app's :class:`~simkv_engine.http_jobs.Worker`."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from simkv.core.errors import SimkvError
from simkv_engine.engine import KVEngine
from simkv_engine.engine_types import LOCAL_TIERS, TIERS
from simkv_engine.http_bodies import (
    APIError,
    ByteTokenizer,
    ClearRequest,
    CompletionRequest,
    PromptRequest,
    Tokenizer,
    check_text,
    error_response,
    validation_message,
)
from simkv_engine.http_jobs import (
    CompletedJob,
    CompletionJob,
    Worker,
    archive_pass,
    cancel_when_gone,
    run_completion,
    usage_of,
)
from simkv_engine.http_limits import Limits, LimitsGuard
from simkv_engine.http_metrics import TTFT_BUCKETS, EngineCollector

log = logging.getLogger(__name__)

#: HTTP status of a request whose client closed the connection before the worker started it
#: (nginx's "client closed request"): never sent, only counted.
CLIENT_CLOSED = 499


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
    app.add_middleware(LimitsGuard, api_key=api_key, errors=errors, limits=limits)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(exc))

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
        gone = asyncio.ensure_future(cancel_when_gone(request, future))
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
        job = CompletionJob(tokens, max_tokens, arrival=time.perf_counter(), prompt_class=body.prompt_class,
                            trace_arrival_s=arrival_s)

        def usage(done: CompletedJob) -> dict:
            return usage_of(done, engine.chunk_size, engine.chunk_bytes)

        if not body.stream:
            done = await run(lambda: run_completion(engine, job, ttft), request)
            return JSONResponse({
                "id": rid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": tokenizer.decode(done.ids), "token_ids": done.ids,
                             "logprobs": None, "finish_reason": "length"}],
                "usage": usage(done)})

        loop = asyncio.get_running_loop()
        tokens_q: asyncio.Queue[int | None] = asyncio.Queue()
        job.on_token = lambda t: loop.call_soon_threadsafe(tokens_q.put_nowait, t)
        future = asyncio.ensure_future(run(lambda: run_completion(engine, job, ttft), request))
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

