"""``simkv run``, ``simkv curve``, ``simkv report`` and ``simkv regress``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from simkv.cli.console import SetOpt, TraceOpt, console, err_console, progress_bar, run_notes
from simkv.cli.slicing import slice_options
from simkv.core.errors import SimkvError
from simkv.traces.slicing import TraceSlice

if TYPE_CHECKING:
    from rich.table import Table

    from simkv.regress import CaseResult


@slice_options
def run_cmd(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML.")],
    trace: TraceOpt = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output directory.")] = None,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json instead of "
                                          "the table.")] = False,
    trace_slice: TraceSlice | None = None,
) -> None:
    """Simulate a trace under a scenario; write per-request rows, timeline and summary.json.

    A progress bar shows on stderr when it is a terminal (not with --json)."""
    import time
    from contextlib import nullcontext

    from simkv.api import check_run_dir, run
    from simkv.metrics.summary import overload_warnings
    from simkv.report.console import summary_table

    if out is not None:
        check_run_dir(out)  # before simulating, not after
    t0 = time.perf_counter()
    total: list[int | None] = [None]
    bar = (nullcontext(lambda n: None) if as_json
           else progress_bar("simulating", step=256, total=lambda: total[0]))
    with bar as advance:
        result = run(scenario, trace, overrides=overrides or [], progress=advance,
                     on_start=lambda n: total.__setitem__(0, n), trace_slice=trace_slice)
    wall = time.perf_counter() - t0
    if out is not None:
        result.write(out)
    for line in overload_warnings(result.summary):
        err_console.print(f"[yellow]warning: {escape(line)}[/]", highlight=False, soft_wrap=True)
    run_notes(result, out)
    if as_json:
        console.print_json(json.dumps(result.summary))
        return
    console.print(summary_table(result.summary))
    n = result.summary["requests"]
    console.print(f"{n:,} requests in {wall:.2f} s ({n / max(wall, 1e-9):,.0f} requests/s, "
                  f"engine {result.summary['engine']})"
                  + (f"; results in [bold]{escape(str(out))}[/]" if out else ""))


def curve_cmd(
    kind: Annotated[str, typer.Argument(metavar="capacity|ttl",
                                        help="Sweep LRU capacity (blocks) or sliding TTL (s).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")],
    trace: TraceOpt = None,
    capacities: Annotated[str | None, typer.Option(help="Capacities in blocks, e.g. 1000,5000 "
                                                   "(default: 30 points, 1%-100% of unique "
                                                   "blocks).")] = None,
    ttls: Annotated[str | None, typer.Option(help="TTLs in seconds, e.g. 10,60,600 (default: "
                                             "30 points, 1 s to the trace duration).")] = None,
    scenario: Annotated[Path | None, typer.Option(help="Scenario for the trace and the model's "
                                                  "bytes per block (its tiers are ignored).")] = None,
) -> None:
    """Exact hit-rate curve in one pass (LRU capacity or sliding TTL); writes CSV + PNG.

    capacity: one LRU GPU tier of each size (scenarios/parity-lru.yaml); ttl: an unlimited
    tier under a sliding static TTL (ttl.scope=all). Zero service time in both; each point
    equals `simkv run` in that configuration.
    """
    from simkv.report.curves import curve_table, run_curve

    other = ttls if kind == "capacity" else capacities
    if other is not None:
        wrong = "--ttls" if kind == "capacity" else "--capacities"
        raise SimkvError(f"{wrong}: not used by 'simkv curve {kind}'")
    result = run_curve(kind, trace, capacities if kind == "capacity" else ttls, out, scenario)
    console.print(curve_table(result))
    console.print(f"wrote [bold]{escape(str(result.csv))}[/] and [bold]{escape(str(result.png))}[/]")


def report_cmd(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A run directory (simkv run -o) "
                                              "or a sweep directory (simkv sweep -o).")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Where to write report.md and "
                                             "the PNG charts (default: DIR).")] = None,
    objective: Annotated[str | None, typer.Option(
        help="Rank sweep cells by cost_saved | token_hit_rate | ttft_p90, or any metric with an "
             "optional :max / :min (default: the sweep's objective, else token_hit_rate).")] = None,
    top: Annotated[int, typer.Option(help="How many top cells a sweep report lists.")] = 10,
) -> None:
    """Charts (PNG) and a Markdown report from a run or a sweep directory."""
    from simkv.report.markdown import write_report

    rep = write_report(directory, out, objective=objective, top=top)
    console.print(f"{rep.kind} report: [bold]{escape(str(rep.path))}[/]", highlight=False)
    for c in rep.charts:
        if c.file:
            console.print(f"  [green]chart[/] {escape(str(c.file))}: {escape(c.title)}", highlight=False)
        else:
            console.print(f"  [dim]skipped {escape(c.title)}: {escape(str(c.note))}[/]", highlight=False)


def regress_cmd(
    update: Annotated[bool, typer.Option("--update", help="Rewrite the golden files from this "
                                         "run (accepts a deliberate change).")] = False,
    golden_dir: Annotated[Path | None, typer.Option("--golden-dir", help="Golden files "
                                                    "(default: reports/golden).")] = None,
    cases: Annotated[list[str] | None, typer.Option("--case", help="Run only this case "
                                                    "(repeatable).")] = None,
) -> None:
    """Run the regression cases on the canned traces; compare every metric with the golden
    files (exit 1 on any mismatch)."""
    from simkv import regress as rg

    gdir = golden_dir or rg.DEFAULT_GOLDEN_DIR
    selected = rg.select_cases(cases)
    if not update:
        rg.require_goldens(selected, gdir)
    results = []
    for case in selected:
        with err_console.status(f"running {case.name}"):
            res = rg.update_case(case, gdir) if update else rg.check_case(case, gdir)
        results.append(res)
        n = len(rg.flatten(res.summary))
        where = f"{res.wall_s:.1f} s"
        if update:
            changed = ", ".join(m.metric for m in res.mismatches[:6])
            more = f" and {len(res.mismatches) - 6} more" if len(res.mismatches) > 6 else ""
            detail = f": {len(res.mismatches)} metrics changed ({changed}{more})" if res.mismatches else ""
            console.print(escape(f"{res.golden_status} {rg.golden_path(gdir, case)} ({where}){detail}"),
                          highlight=False)
        elif res.mismatches:
            console.print(f"[red]FAIL[/] {escape(case.name)}: {len(res.mismatches)} of {n} metrics differ "
                          f"({where})", highlight=False)
        else:
            console.print(f"[green]ok[/]   {escape(case.name)}: {n} metrics match ({where})", highlight=False)
        for note in res.input_notes:
            console.print(f"     [yellow]changed since the golden file:[/] {escape(note)}",
                          highlight=False)
    if update:
        return
    bad = [m for r in results for m in r.mismatches]
    if not bad:
        console.print(f"[green]all {len(results)} regression cases match {escape(str(gdir))}[/]",
                      highlight=False)
        return
    # CI logs are not terminals: print full rows there rather than folding at 80 columns
    out = console if console.is_terminal else Console(width=max(console.width, 160))
    for r in results:
        if r.mismatches:
            out.print(_mismatch_table(r))
    console.print(f"[red]{len(bad)} mismatches in {sum(1 for r in results if r.mismatches)} of "
                  f"{len(results)} cases.[/] If the change is deliberate, run 'simkv regress "
                  f"--update' and commit {escape(str(gdir))}.", highlight=False)
    raise typer.Exit(1)


def _mismatch_table(r: CaseResult) -> Table:
    """One row per metric of case ``r`` that differs from its golden file; numbers get their
    difference Δ = now − golden and, when golden ≠ 0, the relative one Δ / |golden|."""
    from rich.table import Table

    table = Table(title=f"mismatches: {r.case.name}", header_style="bold")
    for col in ("metric", "golden", "now", "tolerance", "note"):
        table.add_column(col, justify="right" if col in ("golden", "now") else "left",
                         overflow="fold")
    for m in r.mismatches:
        note = m.note
        if not note and isinstance(m.golden, int | float) and isinstance(m.now, int | float):
            diff = m.now - m.golden
            note = f"Δ {diff:+.3g}" + (f" (rel {diff / abs(m.golden):+.1e})" if m.golden else "")
        table.add_row(m.metric, "—" if m.golden is None else repr(m.golden),
                      "—" if m.now is None else repr(m.now), str(m.tolerance or "—"), note)
    return table
