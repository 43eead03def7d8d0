"""``simkv sweep``."""

from __future__ import annotations

import json
import signal
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from simkv.cli.console import SetOpt, TraceOpt, console, err_console, interrupt
from simkv.core.errors import Interrupted


def sweep_cmd(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML: the base of every cell.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory (re-run the same "
                                      "command to resume).")],
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="key=v1,v2,... "
                                                   "(repeatable; Cartesian product).")] = None,
    grid_file: Annotated[Path | None, typer.Option(help="YAML grid: key → list of values.")] = None,
    trace: TraceOpt = None,
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
    force: Annotated[bool, typer.Option("--force", help="Re-sweep DIR with another grid (the "
                                        "cells of the same base are reused; sweep.parquet and "
                                        "winner.yaml are replaced).")] = False,
    top: Annotated[int, typer.Option(help="Rows of the final table.")] = 10,
    overrides: SetOpt = None,
) -> None:
    """Run a scenario over a grid of overrides (resumable); one row per cell in sweep.parquet.

    Exit status 1 if any cell failed (the results are kept), 2 for an invalid input."""
    import time

    from simkv.core.fileio import make_dir
    from simkv.sweep import Grid, NoFeasibleCell, SweepOptions, plan_sweep, run_plan
    from simkv.sweep.choose import check_objective, choose_winner, parse_objective
    from simkv.sweep.console import sweep_progress, top_cells_table
    from simkv.sweep.manifest import check_sweep_dir, code_changed

    cells = (Grid.from_file(grid_file) if grid_file else Grid()) + Grid.from_specs(grid or [])
    obj, cons = parse_objective(objective, maximize, constraint or [])
    opts = SweepOptions(backend, workers, ray_address, cell_outputs, retry_failed,  # type: ignore[arg-type]
                        overwrite, force)
    plan = plan_sweep(scenario, trace, cells, overrides or [])
    check_objective(plan, obj, cons)  # a misspelt metric fails now, not after every cell ran
    if out.exists() and not out.is_dir():
        make_dir(out)  # a bad -o fails (one line) before anything is printed
    check_sweep_dir(plan, out, overwrite, force)
    console.print(f"sweep [bold]{escape(plan.base.name)}[/]: {len(plan.cells)} cells over "
                  f"{escape(', '.join(plan.grid.keys)) or 'no keys'} on "
                  f"{escape(str(plan.trace.path))} ({escape(backend)} backend)", highlight=False)

    if code_changed(out):
        err_console.print(f"[yellow]note:[/] {escape(str(out))} holds cells made by other simkv code: "
                          "every cell runs again", highlight=False)
    previous = signal.signal(signal.SIGTERM, interrupt)
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
    ranking = obj.resolve(list(df.columns))
    try:
        win, path = choose_winner(out, df, obj, cons)
    except NoFeasibleCell:
        console.print(top_cells_table(df, top, ranking, cons))
        raise
    console.print(top_cells_table(df, top, ranking, cons, win))
    params = ", ".join(f"{k}={v}" for k, v in win.row.items()
                       if k in plan.grid.keys or k.removeprefix("param.") in plan.grid.keys)
    console.print(f"winner [bold]{win.cell_id}[/] ({escape(params) or 'base scenario'}): "
                  f"{win.column} = {win.value:.6g} ({win.direction}, {win.feasible} feasible of "
                  f"{len(df)}); scenario in [bold]{escape(str(path))}[/]", highlight=False)
    exit_if_failed()
