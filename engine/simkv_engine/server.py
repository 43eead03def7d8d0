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
:class:`~simkv_engine.http_limits.LimitsGuard`, which reads every body before the app sees it),
the headers' read time (:class:`~simkv_engine.http_limits.DeadlineH11Protocol`, through
:func:`server_config`) and the length of names; a job whose client disconnected before the
worker started it is never run.

Text prompts: a checkpoint folder's own tokenizer (with its special tokens, as vLLM's
completions do); the named random-weight shapes (and a checkpoint without a tokenizer) use
:class:`~simkv_engine.http_bodies.ByteTokenizer` (a prompt's UTF-8 bytes are its token ids).

This module starts the server (:func:`serve`: the model, the engine, the socket, uvicorn and the
signals) and keeps the server's public names; its parts: the app and its endpoints
(:mod:`simkv_engine.http_app`), the request bodies and tokenizers
(:mod:`simkv_engine.http_bodies`), the limits (:mod:`simkv_engine.http_limits`), the worker and
its jobs (:mod:`simkv_engine.http_jobs`) and ``/metrics`` (:mod:`simkv_engine.http_metrics`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from simkv.core.scenario import Scenario
from simkv_engine.archive import ArchiveOptions, TraceClock
from simkv_engine.engine import EngineError, KVEngine
from simkv_engine.http_app import create_app
from simkv_engine.http_bodies import MAX_NAME_CHARS, load_tokenizer
from simkv_engine.http_jobs import archive_pass
from simkv_engine.http_limits import Limits, server_config
from simkv_engine.integrity import default_disk_folder

#: The server's names its callers import from here (the CLI, the calibration, tests, benchmarks).
__all__ = ["MAX_NAME_CHARS", "Limits", "archive_pass", "bind", "create_app", "is_loopback", "serve",
           "server_config", "url_of"]


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
          limits: Limits = Limits(), remote_url: str | None = None) -> None:
    """Build the model and the engine for ``scenario`` and serve them until SIGINT / SIGTERM:
    then stop accepting, finish the queued requests, close LMCache (the archive worker finishes
    its pass and runs a last one) and return. ``disk_path`` (LMCache's disk tier) defaults to a
    temporary folder removed at exit; ``archive`` (where ``tiers.archive`` lives: ``s3://bucket/
    prefix`` or a folder, see :class:`ArchiveOptions`) is required when the scenario enables it.
    ``on_ready(url)`` is called once the server accepts connections. ``clock``: ``wall`` (engine
    time is the wall clock, or ``archive.clock_scale`` times it; the archive worker is a thread)
    or ``trace`` (engine time is each request's ``arrival_s``; the archive's passes run in the
    worker before the request they precede; LMCache's disk writes are done before the next
    request: see :meth:`KVEngine.advance`). ``limits``: what a connection or request may cost.
    ``remote_url``: the Redis-protocol server of ``tiers.remote`` (redis://HOST:PORT)."""
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
                      deterministic=trace, remote_url=remote_url) as engine:
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
