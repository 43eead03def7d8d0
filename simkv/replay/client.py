"""The HTTP side of a replay: one streamed ``POST /v1/completions`` per request, timed at the
client, and the server's ``/v1/models`` and ``/metrics``. OpenAI-compatible, so the same code
drives simkv's engine (``usage.simkv`` reports the tiers) or vLLM (only
``usage.prompt_tokens_details.cached_tokens``, with ``--enable-prompt-tokens-details``)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from simkv.core.errors import SimkvError
from simkv.core.prometheus import parse_metrics


class EngineUnreachable(SimkvError):
    """The engine does not answer (or refuses us) before the first request is sent."""


@dataclass
class Outcome:
    """One request as the client saw it: ``ttft_s`` = send → first streamed token (with no
    token, e.g. ``max_tokens`` 0: → end of the stream); ``last_token_s`` = send → last streamed
    token (likewise); ``total_s`` = send → end of the stream; the server's ``usage`` object
    (``None`` if it sent none); ``completion_tokens``: the usage's count, else the streamed
    chunks with choices; ``error`` (``None``: served)."""

    ttft_s: float | None = None
    last_token_s: float | None = None
    total_s: float | None = None
    usage: dict[str, Any] | None = None
    completion_tokens: int = 0
    status: int | None = None
    error: str | None = None


def _error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's start."""
    text = body.decode(errors="replace")
    try:
        err = json.loads(text).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except (ValueError, AttributeError):
        pass
    return text.strip()[:200]


def describe(exc: BaseException, timeout_s: float | None) -> str:
    """A failed request's ``error`` value: what went wrong, in one line."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return f"timeout: no complete answer within {timeout_s:g} s" if timeout_s else "timeout"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


async def complete(client: httpx.AsyncClient, url: str, payload: dict[str, Any],
                   timeout_s: float | None) -> Outcome:
    """Send one streamed completion and time it; every failure is returned as ``error``,
    never raised (a timeout counts from the send to the end of the stream)."""
    out = Outcome()
    t0 = time.perf_counter()
    done = False
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", f"{url}/v1/completions", json=payload) as resp:
                out.status = resp.status_code
                if resp.status_code != 200:
                    body = await resp.aread()
                    out.error = f"HTTP {resp.status_code}: {_error_message(body)}"
                    return out
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if chunk.get("choices"):
                        out.last_token_s = time.perf_counter() - t0
                        if out.ttft_s is None:
                            out.ttft_s = out.last_token_s
                        out.completion_tokens += 1
                    if chunk.get("usage"):
                        out.usage = chunk["usage"]
                    if "error" in chunk:
                        out.error = f"stream error: {_error_message(data.encode())}"
                        return out
        out.total_s = time.perf_counter() - t0
        reported = out.usage.get("completion_tokens") if isinstance(out.usage, dict) else None
        if isinstance(reported, int) and not isinstance(reported, bool):
            out.completion_tokens = reported  # vLLM may stream several tokens in one chunk
        if not done:
            out.error = "stream ended before [DONE]"
        elif out.ttft_s is None:
            out.ttft_s = out.last_token_s = out.total_s
    except (httpx.HTTPError, TimeoutError, ValueError) as exc:
        out.error = describe(exc, timeout_s)
    return out


async def probe(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """``GET /v1/models``: the engine answers and accepts our key, else
    :class:`EngineUnreachable`. Returns the first model entry."""
    try:
        resp = await client.get(f"{url}/v1/models")
    except httpx.HTTPError as exc:
        raise EngineUnreachable(f"{url}: engine unreachable ({describe(exc, None)})") from None
    if resp.status_code == 401:
        raise EngineUnreachable(f"{url}: the engine refused the API key (HTTP 401; pass --api-key)")
    if resp.status_code != 200:
        raise EngineUnreachable(f"{url}/v1/models: HTTP {resp.status_code}: {_error_message(resp.content)}")
    try:
        models = resp.json().get("data") or [{}]
    except ValueError:
        raise EngineUnreachable(f"{url}/v1/models: not JSON; is this an OpenAI-compatible server?") from None
    return models[0] if isinstance(models[0], dict) else {}


async def chunk_size(client: httpx.AsyncClient, url: str) -> int | None:
    """simkv's engine's chunk size from ``POST /kv/lookup`` (no side effects); ``None`` where the
    server has no such endpoint (vLLM)."""
    try:
        resp = await client.post(f"{url}/kv/lookup", json={"prompt": [1]})
        return int(resp.json()["chunk_size"]) if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float] | None:
    """The kept ``/metrics`` samples; ``None`` if the server serves none."""
    try:
        resp = await client.get(f"{url}/metrics")
    except httpx.HTTPError:
        return None
    return parse_metrics(resp.text) if resp.status_code == 200 else None


def metric_deltas(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """``after − before`` per sample (a sample absent before counts from 0): what this replay
    added to the server's counters (gauges' differences are meaningless; read ``after``)."""
    if before is None or after is None:
        return None
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items())}
