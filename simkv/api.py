"""The Python API: ``run(scenario, trace) -> Result``. The CLI, sweeps and notebooks call it.

The engine that runs it comes from :mod:`simkv.model.engines` (``simpy``, ``compiled``,
``fast``; ``engine: auto`` picks the fastest the scenario allows and the summary's
``engine_skipped`` says why the faster ones could not run it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from simkv.core.errors import ScenarioError, SimkvError
from simkv.core.fileio import atomic_write, is_temp_file, make_dir
from simkv.core.scenario import Scenario, load_scenario
from simkv.core.schema import request_table, scenario_sha256, trace_sha256, write_requests
from simkv.metrics import request_frame, summarize, timeline_frame
from simkv.metrics.timeline import check_timeline_bins
from simkv.model.engines import ENGINES, select_engine
from simkv.traces.schema import Trace, read_trace
from simkv.traces.slicing import TraceSlice, slice_trace
from simkv.version import __version__


@dataclass
class Result:
    """A run's outputs: the summary, one row per request (the columns of
    :data:`~simkv.core.schema.REQUEST_SCHEMA`), and the timeline."""

    scenario: Scenario
    summary: dict[str, Any]
    requests: pd.DataFrame
    timeline: pd.DataFrame

    def write(self, out_dir: str | Path) -> Path:
        """Write ``summary.json``, ``requests.parquet``, ``timeline.parquet`` and the resolved
        ``scenario.yaml`` (with the trace actually run) into ``out_dir``, each atomically.

        ``out_dir`` must be new, empty or an earlier run directory; in an earlier one the
        report (``report.md`` and the charts it shows) is removed, since it describes the
        earlier run. Any other non-empty directory is refused, so nothing else is mixed up
        with or overwritten by a run's files."""
        out = make_dir(Path(out_dir))
        clear_run_dir(out)
        atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(self.summary, indent=2) + "\n"))
        table = request_table(self.requests, self.summary["trace_sha256"], self.summary["scenario_sha256"])
        atomic_write(out / "requests.parquet", lambda p: write_requests(table, p))
        atomic_write(out / "timeline.parquet", lambda p: self.timeline.to_parquet(p, index=False))
        # The trace actually run, not the scenario file's default (relative to the run
        # directory, so the file re-runs from anywhere); an in-memory trace has no file.
        trace = self.summary.get("trace")
        ran = replace(self.scenario, trace=trace).relative_to(out)
        atomic_write(out / "scenario.yaml", lambda p: p.write_text(ran.to_yaml()))
        return out


RUN_FILES = ("summary.json", "requests.parquet", "timeline.parquet", "scenario.yaml")
_REPORT_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)/\\]+\.png)\)")


def check_run_dir(out: str | Path) -> None:
    """Refuse ``out`` as a run's output directory unless it is new, empty or an earlier run
    directory (has ``summary.json``); the CLI checks this before simulating."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SimkvError(f"{out}: exists and is not a directory (the output directory)")
    entries = [p for p in out.iterdir() if not is_temp_file(p)] if out.is_dir() else []
    if entries and not (out / "summary.json").is_file():
        names = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise SimkvError(f"{out}: not empty ({names}) and not a simkv run directory (no "
                         "summary.json); choose a new or empty directory for -o")


def clear_run_dir(out: Path) -> None:
    """Prepare ``out`` for a run's files (see :func:`check_run_dir`); in an earlier run
    directory remove its report (``report.md`` and the PNG charts it links), which would
    otherwise describe the earlier run beside the new one."""
    check_run_dir(out)
    report = out / "report.md"
    if report.is_file():
        for name in _REPORT_IMAGE.findall(report.read_text(errors="replace")):
            (out / name).unlink(missing_ok=True)
        report.unlink()


def resolve_trace(scenario: Scenario, trace: Trace | str | Path | None,
                  scenario_path: Path | None = None) -> Trace:
    """The trace to run: the argument, else the scenario's ``trace`` key (made absolute by
    :func:`~simkv.core.scenario.load_scenario` when it lies beside the scenario file, else relative to
    the working directory). A missing file is a :class:`SimkvError` naming where it looked."""
    if isinstance(trace, Trace):
        return trace
    if trace is None:
        if scenario.trace is None:
            raise SimkvError("no trace given: pass --trace or set 'trace' in the scenario")
        trace = Path(scenario.trace)
        if not trace.exists() and not trace.is_absolute():
            looked = [str(trace.resolve())]
            if scenario_path is not None:
                looked.insert(0, str((scenario_path.parent / trace).resolve()))
            raise SimkvError(f"{scenario_path or 'scenario'}: trace {scenario.trace}: no such file "
                             f"(looked for {' and '.join(dict.fromkeys(looked))})")
    return read_trace(trace)


def slice_summary(trace_slice: TraceSlice | None) -> dict[str, str]:
    """``{"trace_slice": ...}`` for a sliced run or replay, nothing for a whole trace (so a
    whole trace's summary is what it always was)."""
    return {} if trace_slice is None or trace_slice.is_whole else {"trace_slice": trace_slice.describe()}


def check_block_size(scenario: Scenario, trace: Trace) -> None:
    """Refuse a trace whose block size is not the scenario's ``block_size`` (when it sets one)."""
    if scenario.block_size is not None and scenario.block_size != trace.block_size:
        raise ScenarioError(f"block_size: scenario says {scenario.block_size} but the trace "
                            f"{trace.path or ''} has block_size {trace.block_size}")


def resolve_inputs(scenario: Scenario | str | Path, trace: Trace | str | Path | None,
                   overrides: list[str] | None = None,
                   trace_slice: TraceSlice | None = None) -> tuple[Scenario, Trace]:
    """The scenario (loaded from a YAML path, ``overrides`` applied) and its trace (``trace``, or
    the scenario's own, relative to the scenario file; cut to ``trace_slice``), their block
    sizes checked to agree: what ``run`` and ``replay`` start from."""
    scenario_path = None
    if isinstance(scenario, str | Path):
        scenario_path = Path(scenario)
        scenario = load_scenario(scenario_path, overrides)
    elif overrides:
        scenario = scenario.with_overrides(overrides)
    tr = slice_trace(resolve_trace(scenario, trace, scenario_path), trace_slice)
    check_block_size(scenario, tr)
    return scenario, tr


def run(
    scenario: Scenario | str | Path,
    trace: Trace | str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    progress: Callable[[int], Any] | None = None,
    on_start: Callable[[int], Any] | None = None,
    trace_slice: TraceSlice | None = None,
) -> Result:
    """Simulate ``trace`` under ``scenario`` (a :class:`Scenario` or a YAML path), or the slice
    ``trace_slice`` of it (:mod:`simkv.traces.slicing`; the summary's ``trace_slice`` says which).
    ``on_start(requests)`` is called once the trace is read; ``progress(n)`` as requests finish."""
    scenario, tr = resolve_inputs(scenario, trace, overrides, trace_slice)
    check_timeline_bins(scenario.timeline_bin_s, float(tr.arrival_s[-1]))  # before simulating
    if on_start is not None:
        on_start(len(tr))
    engine, skipped = select_engine(scenario)
    rec = ENGINES.get(engine).run(scenario, tr, progress)
    rec.cache.release()  # the metrics read its counters only
    requests = request_frame(tr, scenario, rec.cache, rec.log)
    summary = {
        "scenario": scenario.name,
        "trace": os.path.normpath(tr.path) if tr.path else None,
        "trace_source": tr.source,
        **slice_summary(trace_slice),
        "trace_sha256": trace_sha256(tr),
        "scenario_sha256": scenario_sha256(scenario),
        "engine": engine,
        "engine_skipped": "; ".join(f"{k}: {v}" for k, v in skipped.items()),
        "simkv_version": __version__,
        **summarize(requests, scenario, rec),
    }
    timeline = timeline_frame(requests, scenario.timeline_bin_s)
    return Result(scenario, summary, requests, timeline)

