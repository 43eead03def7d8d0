"""The ``simkv`` command line: a thin typer layer over the Python API.

User errors (:class:`simkv.errors.SimkvError`) are printed as one red line and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from simkv.errors import Interrupted, SimkvError

app = typer.Typer(
    name="simkv",
    help="Simulate tiered KV-cache policies on LLM inference traces.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
trace_app = typer.Typer(help="Generate, import, inspect and validate Parquet traces.",
                        no_args_is_help=True)
app.add_typer(trace_app, name="trace")

# emoji=False: a user string such as "trace.jsonl:100:" must not print as an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a parameter: key=value (repeatable)."),
]


@trace_app.command("gen")
def trace_gen(
    out: Annotated[Path, typer.Option("-o", "--out", help="Parquet file to write.")],
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    requests: Annotated[int | None, typer.Option(help="Number of requests to generate.")] = None,
    preset: Annotated[str, typer.Option(help="Workload preset: agents, long-horizon (see "
                                        "traces/README.md); --set applies on top.")] = "agents",
    overrides: SetOpt = None,
) -> None:
    """Generate a synthetic agent trace (seeded, byte-for-byte reproducible)."""
    from simkv.traces.generator import generate, generator_config
    from simkv.traces.schema import write_trace
    from simkv.traces.stats import print_stats, trace_stats

    cfg = generator_config(seed=seed, n_requests=requests, overrides=overrides or [], preset=preset)
    trace = generate(cfg)
    write_trace(trace, out)
    console.print(f"wrote {len(trace):,} requests (preset {escape(preset)}) to [bold]{escape(str(out))}[/]")
    print_stats(trace_stats(trace), console=console)


@trace_app.command("import")
def trace_import(
    kind: Annotated[str, typer.Argument(help="Source format: mooncake | lmcache | agent.")],
    inputs: Annotated[list[Path], typer.Argument(help="Input file(s) or directory.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Parquet file to write.")],
    sort: Annotated[bool, typer.Option("--sort", help="Sort by timestamp (stable) instead of "
                                       "rejecting out-of-order rows.")] = False,
    block_size: Annotated[int | None, typer.Option(help="Tokens per block (agent logs; "
                                                   "mooncake is fixed at 512).")] = None,
    model: Annotated[str | None, typer.Option(help="Keep only this model_name (lmcache).")] = None,
) -> None:
    """Import a Mooncake JSONL trace, LMCache lookup-hash logs or an agent-call log."""
    from simkv.traces.importers import import_trace
    from simkv.traces.schema import write_trace

    trace = import_trace(kind, inputs, sort=sort, block_size=block_size, model=model)
    write_trace(trace, out)
    console.print(f"imported {len(trace):,} requests ({escape(kind)}) to [bold]{escape(str(out))}[/]")


@trace_app.command("stats")
def trace_stats_cmd(
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="Parquet trace.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Requests, duration, tokens, unique blocks, infinite-cache hit rate, classes, reuse gaps."""
    from simkv.traces.schema import read_trace
    from simkv.traces.stats import print_stats, trace_stats

    stats = trace_stats(read_trace(trace_path))
    if as_json:
        console.print_json(json.dumps(stats.to_dict()))
    else:
        print_stats(stats, console=console, title=str(trace_path))


@trace_app.command("validate")
def trace_validate(
    traces: Annotated[list[Path], typer.Argument(metavar="TRACE...", help="Parquet trace(s).")],
) -> None:
    """Check Parquet traces against the schema: one line per file (ok, or the first bad row
    and field); exit 2 if any file failed."""
    from simkv.traces.schema import read_trace

    failed = 0
    for path in traces:
        try:
            trace = read_trace(path)
        except SimkvError as exc:
            failed += 1
            err_console.print(f"[red]FAIL[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            continue
        console.print(f"[green]ok[/]   {escape(str(path))}: {len(trace):,} requests, block_size "
                      f"{trace.block_size}, source {escape(trace.source)}", highlight=False,
                      soft_wrap=True)
    if failed:
        raise typer.Exit(SimkvError.exit_code)


@app.command("run")
def run_cmd(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML.")],
    trace: Annotated[Path | None, typer.Option("--trace", "-t", help="Parquet trace (default: "
                                               "the scenario's 'trace').")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output directory.")] = None,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json instead of "
                                          "the table.")] = False,
) -> None:
    """Simulate a trace under a scenario; write per-request rows, timeline and summary.json."""
    import time

    from simkv.api import check_run_dir, run
    from simkv.metrics.summary import overload_warnings
    from simkv.report.console import summary_table

    if out is not None:
        check_run_dir(out)  # before simulating, not after
    t0 = time.perf_counter()
    with progress_bar("simulating") as advance:
        result = run(scenario, trace, overrides=overrides or [], progress=advance)
    wall = time.perf_counter() - t0
    if out is not None:
        result.write(out)
    for line in overload_warnings(result.summary):
        err_console.print(f"[yellow]warning: {escape(line)}[/]", highlight=False, soft_wrap=True)
    if as_json:
        console.print_json(json.dumps(result.summary))
        return
    console.print(summary_table(result.summary))
    n = result.summary["requests"]
    console.print(f"{n:,} requests in {wall:.2f} s ({n / max(wall, 1e-9):,.0f} requests/s, "
                  f"engine {result.summary['engine']})"
                  + (f"; results in [bold]{escape(str(out))}[/]" if out else ""))


# -- curve commands (simkv curve) --


@app.command("curve")
def curve_cmd(
    kind: Annotated[str, typer.Argument(metavar="capacity|ttl",
                                        help="Sweep LRU capacity (blocks) or sliding TTL (s).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")],
    trace: Annotated[Path | None, typer.Option("--trace", "-t", help="Parquet trace (default: "
                                               "the scenario's 'trace').")] = None,
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
    from simkv.curves import run_curve
    from simkv.report.curves import curve_table

    other = ttls if kind == "capacity" else capacities
    if other is not None:
        wrong = "--ttls" if kind == "capacity" else "--capacities"
        raise SimkvError(f"{wrong}: not used by 'simkv curve {kind}'")
    result = run_curve(kind, trace, capacities if kind == "capacity" else ttls, out, scenario)
    console.print(curve_table(result))
    console.print(f"wrote [bold]{escape(str(result.csv))}[/] and [bold]{escape(str(result.png))}[/]")

# -- sweep commands (simkv sweep) --


@app.command("sweep")
def sweep_cmd(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML: the base of every cell.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory (re-run the same "
                                      "command to resume).")],
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="key=v1,v2,... "
                                                   "(repeatable; Cartesian product).")] = None,
    grid_file: Annotated[Path | None, typer.Option(help="YAML grid: key → list of values.")] = None,
    trace: Annotated[Path | None, typer.Option("--trace", "-t", help="Parquet trace (default: "
                                               "the scenario's 'trace').")] = None,
    backend: Annotated[str, typer.Option(help="local | ray.")] = "local",
    workers: Annotated[int | None, typer.Option(help="Processes (local) or CPUs of the local "
                                                "Ray instance; default all cores; 1 = in-process.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Address of an existing Ray cluster.")] = None,
    objective: Annotated[str | None, typer.Option(help="Pick a winner and write winner.yaml: "
                                                  "cost_saved | token_hit_rate | ttft_p90 | any "
                                                  "summary column.")] = None,
    maximize: Annotated[bool | None, typer.Option("--maximize/--minimize", help="Direction for "
                                                  "a column objective (aliases know theirs).")] = None,
    constraint: Annotated[list[str] | None, typer.Option("--constraint", "-c", help="e.g. "
                                                         "'ttft_p90<2.0' (repeatable).")] = None,
    cell_outputs: Annotated[bool, typer.Option(help="Also write each cell's full results to "
                                               "DIR/cells/<id>/.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Re-run cells that errored before.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard the results of a "
                                            "different sweep (other base scenario, trace or "
                                            "--set) already in DIR.")] = False,
    top: Annotated[int, typer.Option(help="Rows of the final table.")] = 10,
    overrides: SetOpt = None,
) -> None:
    """Run a scenario over a grid of overrides (resumable); one row per cell in sweep.parquet.

    Exit status 1 if any cell failed (the results are kept), 2 for an invalid input."""
    import time

    from simkv.sweep import Constraint, Grid, Objective, SweepOptions, plan_sweep, run_plan
    from simkv.sweep.console import sweep_progress, top_cells_table
    from simkv.sweep.core import code_changed, probe_columns, record_objective
    from simkv.sweep.winner import NoFeasibleCell, resolve_column, select_winner

    cells = (Grid.from_file(grid_file) if grid_file else Grid()) + Grid.from_specs(grid or [])
    cons = [Constraint.parse(c) for c in constraint or []]
    if cons and objective is None:
        raise SimkvError("--constraint: give an --objective to choose a winner by")
    obj = Objective(objective, None if maximize is None else "max" if maximize else "min") \
        if objective else None
    opts = SweepOptions(backend, workers, ray_address, cell_outputs, retry_failed,  # type: ignore[arg-type]
                        overwrite)
    plan = plan_sweep(scenario, trace, cells, overrides or [])
    if obj is not None:  # a misspelt metric fails now, not after every cell ran
        columns = probe_columns(plan)
        if columns is not None:
            obj.resolve(columns)
            for c in cons:
                resolve_column(c.metric, columns, f"--constraint {c.text!r}")
    console.print(f"sweep [bold]{escape(plan.base.name)}[/]: {len(plan.cells)} cells over "
                  f"{escape(', '.join(plan.grid.keys)) or 'no keys'} on "
                  f"{escape(str(plan.trace.path))} ({escape(backend)} backend)", highlight=False)

    if code_changed(out):
        err_console.print(f"[yellow]note:[/] {escape(str(out))} holds cells made by other simkv code: "
                          "every cell runs again", highlight=False)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.perf_counter()
    try:
        with (sweep_progress(err_console) if err_console.is_terminal else nullcontext(None)) as progress:
            df = run_plan(plan, out, opts, progress)
    except (Interrupted, KeyboardInterrupt):
        err_console.print(f"finished cells are saved in {escape(str(out))}/cells; re-run to resume",
                          highlight=False)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - t0
    timing = json.loads((out / "timing.json").read_text())
    n_err = int((df["status"] != "ok").sum())
    console.print(f"{len(df)} cells: {len(df) - n_err} ok, {n_err} failed; ran "
                  f"{len(timing['ran'])} in {wall:.1f} s, {timing['skipped']} done before; "
                  f"results in [bold]{escape(str(out / 'sweep.parquet'))}[/]", highlight=False)
    for _, row in df[df["status"] != "ok"].head(5).iterrows():
        err_console.print(f"[red]failed[/] {escape(str(row['cell_id']))}: {escape(str(row['error']))}",
                          highlight=False)

    def exit_if_failed() -> None:
        if n_err:
            err_console.print(f"[red]{n_err} of {len(df)} cells failed[/] (their errors are in "
                              f"{escape(str(out / 'sweep.parquet'))}; fix and re-run with "
                              "--retry-failed)", highlight=False)
            raise typer.Exit(1)

    if obj is None:
        console.print(top_cells_table(df, top))
        exit_if_failed()
        return
    column, direction = obj.resolve(list(df.columns))
    record_objective(out, column, direction, cons)  # simkv report ranks by the same
    (out / "winner.yaml").unlink(missing_ok=True)  # never leave a stale winner behind
    try:
        win = select_winner(df, obj, cons)
    except NoFeasibleCell:
        console.print(top_cells_table(df, top, (column, direction), cons))
        raise
    from simkv.sweep import write_winner

    path = write_winner(out, win)
    console.print(top_cells_table(df, top, (column, direction), cons, win))
    params = ", ".join(f"{k}={v}" for k, v in win.row.items()
                       if k in plan.grid.keys or k.removeprefix("param.") in plan.grid.keys)
    console.print(f"winner [bold]{win.cell_id}[/] ({escape(params) or 'base scenario'}): "
                  f"{column} = {win.value:.6g} ({direction}, {win.feasible} feasible of "
                  f"{len(df)}); scenario in [bold]{escape(str(path))}[/]", highlight=False)
    exit_if_failed()

# -- report and regress commands (simkv report, simkv regress) --


@app.command("report")
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


@app.command("regress")
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
    from rich.table import Table

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
        if not r.mismatches:
            continue
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
        out.print(table)
    console.print(f"[red]{len(bad)} mismatches in {sum(1 for r in results if r.mismatches)} of "
                  f"{len(results)} cases.[/] If the change is deliberate, run 'simkv regress "
                  f"--update' and commit {escape(str(gdir))}.", highlight=False)
    raise typer.Exit(1)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. The total is set on first use.
    Only on a terminal: elsewhere (logs, pipes) rich would leave a blank line behind."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    if not err_console.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed:,}"),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        pending = [0]

        def advance(n: int) -> None:
            pending[0] += n
            if pending[0] >= 2048:
                bar.advance(task, pending[0])
                pending[0] = 0

        yield advance


def print_error(message: str) -> None:
    """One line on stderr: ``error: <message>``, the message printed verbatim (no markup,
    no emoji codes)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                      soft_wrap=True)


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted


def main() -> None:
    """Entry point of the ``simkv`` console script: user errors exit 2 with one line, Ctrl-C
    exits 130 with "interrupted" (raised as :class:`Interrupted`, which click does not turn
    into its "Aborted!" and status 1)."""
    signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except SimkvError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt):
        err_console.print("interrupted", style="yellow", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
