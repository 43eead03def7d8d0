"""The ``simkv`` command line: a thin typer layer over the Python API.

User errors (:class:`simkv.errors.SimkvError`) are printed as one red line and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from simkv.errors import SimkvError

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

console = Console()
err_console = Console(stderr=True)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a parameter: key=value (repeatable)."),
]


@trace_app.command("gen")
def trace_gen(
    out: Annotated[Path, typer.Option("-o", "--out", help="Parquet file to write.")],
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    requests: Annotated[int | None, typer.Option(help="Number of requests to generate.")] = None,
    overrides: SetOpt = None,
) -> None:
    """Generate a synthetic agent trace (seeded, byte-for-byte reproducible)."""
    from simkv.traces.generator import generate, generator_config
    from simkv.traces.schema import write_trace
    from simkv.traces.stats import print_stats, trace_stats

    cfg = generator_config(seed=seed, n_requests=requests, overrides=overrides or [])
    trace = generate(cfg)
    write_trace(trace, out)
    console.print(f"wrote {len(trace):,} requests to [bold]{out}[/]")
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
    console.print(f"imported {len(trace):,} requests ({kind}) to [bold]{out}[/]")


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
    """Check Parquet traces against the schema; exit 2 naming the first bad row and field."""
    from simkv.traces.schema import read_trace

    for path in traces:
        trace = read_trace(path)
        console.print(f"[green]ok[/] {path}: {len(trace):,} requests, block_size "
                      f"{trace.block_size}, source {trace.source}")


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

    from simkv.api import run
    from simkv.report.console import summary_table

    t0 = time.perf_counter()
    with progress_bar("simulating") as advance:
        result = run(scenario, trace, overrides=overrides or [], progress=advance)
    wall = time.perf_counter() - t0
    if out is not None:
        result.write(out)
    if as_json:
        console.print_json(json.dumps(result.summary))
        return
    console.print(summary_table(result.summary))
    n = result.summary["requests"]
    console.print(f"{n:,} requests in {wall:.2f} s ({n / max(wall, 1e-9):,.0f} requests/s, "
                  f"engine {result.summary['engine']})"
                  + (f"; results in [bold]{out}[/]" if out else ""))


# -- curve commands (simkv curve) --

# -- sweep commands (simkv sweep) --

# -- report and regress commands (simkv report, simkv regress) --


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. The total is set on first use."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

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


def main() -> None:
    """Entry point of the ``simkv`` console script."""
    try:
        app()
    except SimkvError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
