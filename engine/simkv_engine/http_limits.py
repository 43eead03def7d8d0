"""What one connection or request may cost the engine's HTTP server (:class:`Limits`): the
body's size and read time, checked by the ASGI middleware :class:`LimitsGuard` (which also
checks the API key and counts error responses; it reads every body before the app sees it), and
the headers' read time, by uvicorn's HTTP/1.1 protocol with a deadline
(:class:`DeadlineH11Protocol`, installed by :func:`server_config`)."""

from __future__ import annotations

import asyncio
import functools
import secrets
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from prometheus_client import Counter
from uvicorn.protocols.http.h11_impl import H11Protocol

from simkv_engine.http_bodies import error_response


@dataclass(frozen=True)
class Limits:
    """What one connection or request may cost the server. ``max_body_bytes``: the largest
    request body (a larger ``Content-Length`` is refused before any of the body is read, a
    chunked body once it passes the limit: 413). ``read_timeout_s``: a connection has this long
    to send a request's complete headers (from its opening, or from the previous response;
    else it is closed), and then this long again for the body (else 408)."""

    max_body_bytes: int = 4 * 1024 * 1024
    read_timeout_s: float = 10.0


class LimitsGuard:
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


class DeadlineH11Protocol(H11Protocol):
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
    :class:`Limits` (:class:`DeadlineH11Protocol`), and no limit on the graceful shutdown (the
    queued requests finish)."""
    limits: Limits = app.state.limits
    return uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=None,
                          http=functools.partial(DeadlineH11Protocol, read_timeout_s=limits.read_timeout_s))

