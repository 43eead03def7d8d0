"""One replay session against an OpenAI-compatible server: probe the engine (model, context,
chunk size, ``/metrics``), record the requests longer than its context as skipped rows or
refuse them, send the rest at their (scaled) arrival times, and turn each response into the
request's row: the trace's columns, what the client measured and what the server reported."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simkv.core.errors import SimkvError
from simkv.core.scenario import Scenario
from simkv.core.schema import ERROR_COLUMN, LOAD_TIERS, REQUEST_COLUMNS
from simkv.core.tiers import TIER_NAMES
from simkv.replay.pacing import Send, pace
from simkv.replay.parts import REPLAY_COLUMNS, PartWriter
from simkv.traces.prompts import PromptBuilder
from simkv.traces.schema import Trace

#: The vocabulary assumed when the server does not report one (the Llama-2-sized shapes').
DEFAULT_VOCAB = 32000
#: How the ``error`` of a request skipped before sending starts (it was never sent).
SKIPPED = "skipped: "


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay: ``speed`` scales the arrival times (``None``: as fast as ``concurrency``
    allows); ``max_tokens`` per request (``None``: the trace's ``output_tokens``);
    ``vocab_size`` (``None``: the server's, else :data:`DEFAULT_VOCAB`); ``timeout_s`` per
    request (send → end of stream); rows are flushed every ``flush_rows`` rows or
    ``flush_s`` seconds; ``skip_too_long``: record requests longer than the engine's context as
    skipped rows instead of refusing the replay."""

    engine_url: str
    speed: float | None = 1.0
    concurrency: int = 64
    max_tokens: int | None = 1
    api_key: str | None = None
    timeout_s: float = 300.0
    vocab_size: int | None = None
    resume: bool = False
    flush_rows: int = 64
    flush_s: float = 5.0
    skip_too_long: bool = False


def request_budget(tr: Trace, i: int, options: ReplayOptions) -> int:
    """Tokens request ``i`` asks to generate (``max_tokens``)."""
    return int(tr.output_tokens[i]) if options.max_tokens is None else options.max_tokens


def too_long(tr: Trace, todo: list[int], options: ReplayOptions, context: Any) -> list[int]:
    """The requests of ``todo`` whose prompt plus ``max_tokens`` exceed the engine's context
    ``context`` (its ``max_model_len``; none when it reports none)."""
    if not isinstance(context, int) or isinstance(context, bool) or context <= 0:
        return []
    return [i for i in todo if int(tr.input_tokens[i]) + request_budget(tr, i, options) > context]


def _refuse_too_long(tr: Trace, over: list[int], todo: list[int], options: ReplayOptions,
                     context: int, url: str) -> None:
    longest = max(over, key=lambda i: int(tr.input_tokens[i]) + request_budget(tr, i, options))
    raise SimkvError(
        f"{url}: {len(over):,} of {len(todo):,} requests exceed the engine's max_model_len of "
        f"{context:,} tokens (the longest, {tr.table.column('request_id')[longest]}, needs "
        f"{int(tr.input_tokens[longest]):,} + {request_budget(tr, longest, options):,}); serve a "
        "model with a longer context, slice the trace, or pass --skip-too-long to record them as "
        "skipped rows")


async def run_session(tr: Trace, scenario: Scenario, out: Path, hashes: tuple[str, str],
                      options: ReplayOptions, todo: list[int], resumed: tuple[int, int], session: int,
                      progress: Callable[[int], Any] | None, on_start: Callable[[int, int, int], Any] | None,
                      ) -> tuple[dict[str, Any], dict[str, int], bool]:
    """Replay the requests ``todo`` of ``tr`` through ``options.engine_url``, appending their rows
    to ``out/parts``; returns the session's record for ``replay.json``, its counts (sent,
    errors, skipped) and whether Ctrl-C interrupted it."""
    import httpx

    from simkv.replay import client as cl

    url = options.engine_url.rstrip("/")
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    limits = httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(options.timeout_s),
                                 limits=limits) as client:
        model = await cl.probe(client, url)
        vocab = _vocab_size(model, options.vocab_size)
        context = model.get("max_model_len")
        over = too_long(tr, todo, options, context)
        if over and not options.skip_too_long:
            _refuse_too_long(tr, over, todo, options, context, url)
        chunk = await cl.chunk_size(client, url)
        if chunk is not None and chunk != tr.block_size:
            raise SimkvError(f"{url}: the engine's chunk size is {chunk} but the trace has block_size "
                             f"{tr.block_size}; serve it with --set block_size={tr.block_size}")
        before = await cl.scrape(client, url)
        if on_start:
            on_start(len(todo) + resumed[0], *resumed)
        writer = PartWriter(out, *hashes, every_rows=options.flush_rows, every_s=options.flush_s)
        counts = {"sent": 0, "errors": 0, "skipped": len(over)}
        t0 = time.monotonic()
        model_name = model.get("id")
        prompts = PromptBuilder(tr, vocab)
        for i in over:
            need = int(tr.input_tokens[i]) + request_budget(tr, i, options)
            reason = f"{SKIPPED}{need} tokens (prompt + max_tokens) exceed max_model_len {context}"
            writer.add(_row(tr, i, cl.Outcome(error=reason), None, t0, session))
            if progress:
                progress(1)
        if over:
            skip = set(over)
            todo = [i for i in todo if i not in skip]

        async def send(s: Send) -> None:
            i = todo[s.index]
            payload = _payload(tr, i, prompts, options, model_name)
            outcome = await cl.complete(client, url, payload, options.timeout_s)
            writer.add(_row(tr, i, outcome, s, t0, session))
            counts["sent"] += 1
            counts["errors"] += outcome.error is not None
            if progress:
                progress(1)

        arrivals = [float(tr.arrival_s[i]) for i in todo]
        interrupted = False
        main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        old = signal.getsignal(signal.SIGINT)
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signal.SIGINT, main.cancel)
        try:
            await pace(arrivals, options.speed, options.concurrency, send)
        except asyncio.CancelledError:
            interrupted = True
            main.uncancel()
        finally:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)
                signal.signal(signal.SIGINT, old)
            writer.flush()
        wall = time.monotonic() - t0
        after = None if interrupted else await cl.scrape(client, url)
    record = {"session": session, "started_unix_s": time.time() - wall, "wall_s": wall,
              "requests_sent": counts["sent"], "errors": counts["errors"], "skipped": counts["skipped"],
              "retried": resumed[1], "interrupted": interrupted, "max_model_len": context,
              "vocab_size": vocab, "engine_chunk_size": chunk, "model": model_name,
              "metrics_before": before, "metrics_after": after,
              "metrics_delta": cl.metric_deltas(before, after)}
    return record, counts, interrupted


def _vocab_size(model: dict[str, Any], option: int | None) -> int:
    reported = model.get("vocab_size")
    if isinstance(reported, int) and reported > 0:
        if option is not None and option != reported:
            raise SimkvError(f"--vocab-size {option}: the engine reports vocab_size {reported}")
        return reported
    return option or DEFAULT_VOCAB


def _payload(tr: Trace, i: int, prompts: PromptBuilder, options: ReplayOptions,
             model: str | None) -> dict[str, Any]:
    rid = str(tr.table.column("request_id")[i])
    tokens = prompts.tokens(i).tolist()
    payload = {"prompt": tokens, "max_tokens": request_budget(tr, i, options), "stream": True,
               "stream_options": {"include_usage": True}, "temperature": 0,
               "ignore_eos": True,   # vLLM: generate exactly max_tokens (simkv's engine always does)
               "request_id": rid, "prompt_class": str(tr.table.column("prompt_class")[i]),
               "arrival_s": float(tr.arrival_s[i])}   # for simkv engine serve --clock trace
    if model:
        payload["model"] = model
    return payload


def _num(d: dict[str, Any] | None, key: str) -> float | None:
    v = d.get(key) if isinstance(d, dict) else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _row(tr: Trace, i: int, o: Any, s: Send | None, t0: float, session: int) -> dict[str, Any]:
    """One request's row: the trace's columns, what the client measured, what the server
    reported (``usage.simkv``: simkv's engine; else ``prompt_tokens_details.cached_tokens``);
    every other column null (unknown), never 0. ``s`` is ``None`` for a request not sent."""
    B = tr.block_size
    n = int(tr.input_tokens[i])
    row: dict[str, Any] = dict.fromkeys((*REQUEST_COLUMNS, *REPLAY_COLUMNS))
    row.update(request_id=str(tr.table.column("request_id")[i]), arrival_s=float(tr.arrival_s[i]),
               prompt_class=str(tr.table.column("prompt_class")[i]), input_tokens=n,
               output_tokens=int(tr.output_tokens[i]), blocks=n // B,
               sent_s=None if s is None else s.sent_s - t0, send_lag_s=None if s is None else s.lag_s,
               total_s=o.total_s, http_status=o.status,
               completion_tokens=o.completion_tokens, session=session)
    if o.error is not None:
        row[ERROR_COLUMN] = o.error
        return row
    row["ttft_s"] = o.ttft_s
    row.update(decode_times(o.ttft_s, o.last_token_s, o.completion_tokens))
    usage = o.usage if isinstance(o.usage, dict) else {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    row["cached_tokens"] = int(cached) if isinstance(cached, int) else None
    sk = usage.get("simkv")
    if isinstance(sk, dict) and isinstance(sk.get("tokens_by_source"), dict):
        by = sk["tokens_by_source"]
        hits = {t: int(by.get(t, 0)) for t in TIER_NAMES}       # a tier the engine lacks served 0
        for t, v in hits.items():
            row[f"{t}_hit_tokens"] = v
        hit = sum(hits.values())
        row.update(hit_tokens=hit, hit_blocks=hit // B)
        row["computed_tokens"] = int(by["computed"]) if "computed" in by else n - hit
        loaded = sk.get("bytes_loaded")
        if isinstance(loaded, dict):
            for t in LOAD_TIERS:
                row[f"{t}_loaded_bytes"] = int(loaded.get(t, 0))
        for key in ("queue_s", "prefill_s", "hydrate_s", "store_s", "decode_s"):
            row[key] = _num(sk, key)
        row["server_ttft_s"] = _num(sk, "ttft_s")
        load, hydrate = _num(sk, "load_s"), _num(sk, "hydrate_s")
        # the simulator's load_s brings every hit block to the GPU, archive fetches included
        row["load_s"] = None if load is None else load + (hydrate or 0.0)
    elif row["cached_tokens"] is not None:                  # vLLM: a total, no tiers
        hit = row["cached_tokens"]
        row.update(hit_tokens=hit, hit_blocks=hit // B, computed_tokens=n - hit)
    return row


def decode_times(ttft_s: float | None, last_token_s: float | None,
                 completion_tokens: int) -> dict[str, float | None]:
    """A served request's ``e2e_s`` (the client's send → last streamed token) and ``tpot_s`` =
    ``(e2e_s − ttft_s) / (completion_tokens − 1)`` (``None``: one token or fewer); its
    ``preemptions`` stay null: the client cannot know them."""
    tpot = None
    if completion_tokens > 1 and last_token_s is not None and ttft_s is not None:
        tpot = (last_token_s - ttft_s) / (completion_tokens - 1)
    return {"e2e_s": last_token_s, "tpot_s": tpot}
