"""``simkv replay``: drive an OpenAI-compatible server (simkv's engine, or vLLM) with a trace's
requests at their arrival times and write what it measured as a run directory whose rows join
``simkv run``'s of the same trace and scenario (same schema, same hashes, same request ids).

Files in the output directory: ``parts/`` (the rows as measured, appended; see
:mod:`simkv.replay.parts`), then, once every request has a row, ``requests.parquet`` (the
per-request schema, trace order, each request's latest row), ``replay_requests.parquet``
(the replay's own columns),
``summary.json`` (the hit and TTFT metrics computed from the served rows, as ``simkv run``
computes them), ``scenario.yaml`` and ``replay.json`` (engine, pacing, per session the
server's ``/metrics`` counters before and after and their deltas, errors).

``--resume`` sends the requests with no row and retries those whose latest row failed (or was
skipped); a retried request's new row replaces the failed one in ``requests.parquet``, and
``parts/`` keeps every attempt. Before sending anything, each request's prompt plus the tokens
it asks for is checked against the engine's ``max_model_len`` (``GET /v1/models``): requests
that exceed it are refused, or with ``skip_too_long`` recorded as rows whose ``error`` starts
with :data:`~simkv.replay.session.SKIPPED`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from simkv.api import check_run_dir, clear_run_dir, resolve_inputs, slice_summary
from simkv.core.errors import SimkvError
from simkv.core.fileio import atomic_write, make_dir
from simkv.core.scenario import Scenario
from simkv.core.schema import (
    ERROR_COLUMN,
    REQUEST_COLUMNS,
    request_table,
    scenario_sha256,
    trace_sha256,
    write_requests,
)
from simkv.metrics.summary import hit_metrics, ttft_metrics
from simkv.replay.parts import REPLAY_COLUMNS, read_parts
from simkv.replay.session import SKIPPED, ReplayOptions, run_session
from simkv.traces.schema import Trace
from simkv.traces.slicing import TraceSlice
from simkv.version import __version__


@dataclass
class ReplayResult:
    """What a replay session did: rows it measured (``sent``), of which ``errors`` failed,
    requests already served before it (``resumed``), earlier failed or skipped ones sent again
    (``retried``), ones skipped as too long (``skipped``); ``interrupted``: stopped by Ctrl-C (no
    final files then; the rows are in ``out/parts``); ``summary``: the final summary otherwise
    (its ``requests_failed`` counts the requests whose latest row failed)."""

    out: Path
    sent: int
    errors: int
    resumed: int
    interrupted: bool
    summary: dict[str, Any] | None
    retried: int = 0
    skipped: int = 0


def prepare_out(out: Path, resume: bool) -> None:
    """Refuse ``out`` unless it is new, empty or an earlier run directory; one holding a
    replay's parts only with ``resume``."""
    if (out / "parts").is_dir() and not resume:
        raise SimkvError(f"{out}: holds a replay's rows (parts/); pass --resume to continue it, "
                         "or choose a new directory for -o")
    if not resume:
        check_run_dir(out)
        if out.is_dir():          # an earlier run's report and timeline would describe another run
            clear_run_dir(out)
            (out / "timeline.parquet").unlink(missing_ok=True)


def replay(scenario: Scenario | str | Path, trace: Trace | str | Path | None, out: str | Path,
           options: ReplayOptions, *, overrides: list[str] | None = None,
           trace_slice: TraceSlice | None = None,
           progress: Callable[[int], Any] | None = None,
           on_start: Callable[[int, int, int], Any] | None = None) -> ReplayResult:
    """Replay ``trace`` (default: the scenario's), or its slice ``trace_slice``, through
    ``options.engine_url`` into ``out``.

    ``on_start(total, served, retried)`` is called once the engine answered; ``progress(1)`` per
    row. Failed requests are rows with ``error`` set; an engine that does not answer at the
    start is a :class:`~simkv.replay.client.EngineUnreachable` before any row, and requests
    longer than its context a :class:`SimkvError` (unless ``options.skip_too_long``)."""
    scenario, tr = resolve_inputs(scenario, trace, overrides, trace_slice)
    out = Path(out)
    prepare_out(out, options.resume)
    hashes = (trace_sha256(tr), scenario_sha256(scenario))
    latest = read_parts(out, *hashes).drop_duplicates("request_id", keep="last")
    served = set(latest.loc[latest[ERROR_COLUMN].isna(), "request_id"])
    ids = tr.table.column("request_id").to_pylist()
    todo = [i for i, rid in enumerate(ids) if rid not in served]
    retried = len(latest) - len(served)
    make_dir(out)
    session = _next_session(out)
    record, counts, interrupted = asyncio.run(
        run_session(tr, scenario, out, hashes, options, todo, (len(ids) - len(todo), retried), session,
                 progress, on_start))
    _append_session(out, options, record)
    summary = None if interrupted else finalize(out, tr, scenario, options, trace_slice)
    return ReplayResult(out, counts["sent"], counts["errors"], len(ids) - len(todo), interrupted, summary,
                        retried, counts["skipped"])


def finalize(out: Path, tr: Trace, scenario: Scenario, options: ReplayOptions,
             trace_slice: TraceSlice | None = None) -> dict[str, Any]:
    """Once every request has a row: write ``requests.parquet`` (trace order, one row per
    request: its latest, so a retry replaces a failure), ``replay_requests.parquet``,
    ``summary.json`` and ``scenario.yaml``."""
    hashes = (trace_sha256(tr), scenario_sha256(scenario))
    rows = read_parts(out, *hashes).drop_duplicates("request_id", keep="last")
    order = {rid: k for k, rid in enumerate(tr.table.column("request_id").to_pylist())}
    rows = rows.assign(_order=rows["request_id"].map(order)).sort_values("_order", kind="stable")
    rows = rows.drop(columns="_order").reset_index(drop=True)
    if len(rows) != len(order):
        raise SimkvError(f"{out}: {len(order) - len(rows)} request(s) have no row; run again with --resume")
    table = request_table(rows[list(REQUEST_COLUMNS)], *hashes, allow_null=True)
    atomic_write(out / "requests.parquet", lambda p: write_requests(table, p))
    extra = rows[["request_id", *REPLAY_COLUMNS]]
    atomic_write(out / "replay_requests.parquet", lambda p: extra.to_parquet(p, index=False))
    summary = replay_summary(rows, tr, scenario, options, trace_slice)
    atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    ran = replace(scenario, trace=os.path.normpath(tr.path) if tr.path else None).relative_to(out)
    atomic_write(out / "scenario.yaml", lambda p: p.write_text(ran.to_yaml()))
    return summary


def replay_summary(rows: pd.DataFrame, tr: Trace, scenario: Scenario, options: ReplayOptions,
                   trace_slice: TraceSlice | None = None) -> dict[str, Any]:
    """The summary of a replay: identification as ``simkv run`` writes it, counts (failed: sent
    and failed; skipped: never sent), and the hit and TTFT metrics of the served rows
    (:func:`~simkv.metrics.summary.hit_metrics`, :func:`~simkv.metrics.summary.ttft_metrics`;
    ``ttft_s`` measured at the client)."""
    served = rows[rows[ERROR_COLUMN].isna()]
    skipped = int(rows[ERROR_COLUMN].str.startswith(SKIPPED).fillna(False).sum())
    return {
        "scenario": scenario.name,
        "trace": os.path.normpath(tr.path) if tr.path else None,
        "trace_source": tr.source,
        **slice_summary(trace_slice),
        "trace_sha256": trace_sha256(tr),
        "scenario_sha256": scenario_sha256(scenario),
        "engine": "replay",
        "engine_url": options.engine_url,
        "simkv_version": __version__,
        "requests": len(rows),
        "requests_failed": int(len(rows) - len(served) - skipped),
        "requests_skipped": skipped,
        "block_size": tr.block_size,
        **hit_metrics(served),
        **ttft_metrics(served),
    }


def _next_session(out: Path) -> int:
    return len(_read_replay_json(out).get("sessions", []))


def _read_replay_json(out: Path) -> dict[str, Any]:
    path = out / "replay.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise SimkvError(f"{path}: not valid JSON: {exc}") from None


def _append_session(out: Path, options: ReplayOptions, record: dict[str, Any]) -> None:
    """``replay.json``: the engine and pacing of the latest session, and every session's record."""
    data = _read_replay_json(out)
    sessions = [*data.get("sessions", []), record]
    data = {"engine_url": options.engine_url, "speed": "max" if options.speed is None else options.speed,
            "concurrency": options.concurrency,
            "max_tokens": "trace" if options.max_tokens is None else options.max_tokens,
            "timeout_s": options.timeout_s,
            "errors": sum(s["errors"] for s in sessions), "sessions": sessions}
    atomic_write(out / "replay.json", lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))
