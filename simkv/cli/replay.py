"""``simkv replay``: a trace through a real engine over HTTP (simkv's, or vLLM).

Exit status: 0 when every request was served (or skipped with --skip-too-long), 1 when any
request's latest row failed (the results are written; ``--resume`` retries them), 2 on a user
error before any row, 130 when interrupted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from simkv.cli.console import SetOpt, TraceOpt, console, err_console, progress_bar
from simkv.cli.slicing import slice_options
from simkv.core.errors import Interrupted, SimkvError
from simkv.traces.slicing import TraceSlice


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise SimkvError(f"--speed {text!r}: a factor > 0 (2 = twice as fast) or 'max'")
    return value


def _max_tokens(text: str) -> int | None:
    if text == "trace":
        return None
    if not text.isdigit():
        raise SimkvError(f"--max-tokens {text!r}: an integer >= 0 or 'trace'")
    return int(text)


@slice_options
def replay_cmd(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML (the one the engine serves).")],
    engine: Annotated[str, typer.Option("--engine", help="Base URL of the OpenAI-compatible server, "
                                        "e.g. http://127.0.0.1:8000.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")],
    trace: TraceOpt = None,
    overrides: SetOpt = None,
    speed: Annotated[str, typer.Option(help="Arrival-time scale: 2 replays twice as fast; 'max' "
                                       "sends as fast as --concurrency allows.")] = "1.0",
    concurrency: Annotated[int, typer.Option(min=1, help="Most requests in flight; a request due "
                                             "while all are busy waits (its send lag is recorded).")] = 64,
    max_tokens: Annotated[str, typer.Option(
        "--max-tokens", help="Tokens to generate per request; 'trace': the trace's output_tokens. "
        "Default 1: the simulator models TTFT, not decoding.")] = "1",
    api_key: Annotated[str | None, typer.Option("--api-key", help="Bearer token of the server.")] = None,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a request may take (send to "
                                           "end of stream) before it is recorded as failed.")] = 300.0,
    vocab_size: Annotated[int | None, typer.Option(
        "--vocab-size", min=2, help="Token ids are drawn below this (default: the server's, "
        "else 32000).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a replay in -o: requests "
                                         "served are not sent again; failed or skipped ones are "
                                         "retried (their new row replaces the old).")] = False,
    skip_too_long: Annotated[bool, typer.Option(
        "--skip-too-long", help="Record requests longer than the engine's max_model_len as "
        "skipped rows instead of refusing the replay.")] = False,
    flush_rows: Annotated[int, typer.Option(min=1, help="Write the rows measured as a part every "
                                            "this many rows ...")] = 64,
    flush_seconds: Annotated[float, typer.Option(min=0.0, help="... or this many seconds.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json instead of "
                                          "the table.")] = False,
    trace_slice: TraceSlice | None = None,
) -> None:
    """Replay a trace through a real engine at its arrival times; write per-request rows (the
    schema of 'simkv run'), summary.json and replay.json. Exit 1 when any request failed."""
    from simkv.replay.driver import ReplayOptions, replay

    options = ReplayOptions(engine_url=engine, speed=_speed(speed), concurrency=concurrency,
                            max_tokens=_max_tokens(max_tokens), api_key=api_key, timeout_s=timeout,
                            vocab_size=vocab_size, resume=resume, flush_rows=flush_rows,
                            flush_s=flush_seconds, skip_too_long=skip_too_long)
    totals: list[int | None] = [None]

    def started(total: int, served: int, retried: int) -> None:
        totals[0] = total - served
        if served or retried:
            again = f"; retrying {retried:,} that failed or were skipped" if retried else ""
            err_console.print(f"resuming: {served:,} of {total:,} requests already served{again}",
                              highlight=False)

    with progress_bar("replaying", step=1, total=lambda: totals[0]) as advance:
        result = replay(scenario, trace, out, options, overrides=overrides or [], trace_slice=trace_slice,
                        progress=advance, on_start=started)
    if result.interrupted:
        err_console.print(
            f"[yellow]interrupted: {result.sent:,} rows measured in this session are kept in "
            f"{escape(str(out / 'parts'))}; continue with the same command and --resume[/]",
            highlight=False, soft_wrap=True)
        raise Interrupted
    summary = result.summary or {}
    failed, skipped = summary.get("requests_failed", 0), summary.get("requests_skipped", 0)
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        from simkv.metrics.format import fmt_pct, fmt_seconds

        console.print(f"{summary.get('requests', 0):,} requests ({result.sent:,} sent now, "
                      f"{failed:,} failed, {skipped:,} skipped); token hit rate "
                      f"{fmt_pct(summary.get('token_hit_rate'))}, TTFT p50 "
                      f"{fmt_seconds(summary.get('ttft_p50_s'))} p90 "
                      f"{fmt_seconds(summary.get('ttft_p90_s'))} "
                      f"(client); results in [bold]{escape(str(out))}[/]", highlight=False)
    if skipped:
        err_console.print(f"[yellow]{skipped:,} request(s) skipped: longer than the engine's "
                          f"max_model_len (see the 'error' column)[/]", highlight=False, soft_wrap=True)
    if failed:
        err_console.print(f"[red]{failed:,} of {summary.get('requests', 0):,} request(s) failed[/] (the "
                          f"'error' column of {escape(str(out / 'requests.parquet'))}); retry them "
                          "with the same command and --resume", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
