"""``simkv trace gen|import|export|stats|validate``."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from simkv.cli.console import SetOpt, console, err_console, progress_bar
from simkv.cli.slicing import slice_options
from simkv.core.errors import SimkvError
from simkv.traces.slicing import TraceSlice

trace_app = typer.Typer(help="Generate, import, export, inspect and validate Parquet traces.",
                        no_args_is_help=True)


@trace_app.command("gen")
def trace_gen(
    out: Annotated[Path, typer.Option("-o", "--out", help="Parquet file to write.")],
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    requests: Annotated[int | None, typer.Option(help="Number of requests to generate.")] = None,
    preset: Annotated[str, typer.Option(help="Workload preset: agents, long-horizon (see "
                                        "traces/README.md); --set applies on top.")] = "agents",
    overrides: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar (it is drawn on "
                                        "stderr, and only on a terminal).")] = False,
) -> None:
    """Generate a synthetic agent trace (seeded, byte-for-byte reproducible)."""
    from simkv.traces.generator import generate, generator_config
    from simkv.traces.schema import write_trace
    from simkv.traces.stats import print_stats, trace_stats

    cfg = generator_config(seed=seed, n_requests=requests, overrides=overrides or [], preset=preset)
    bar = nullcontext(None) if quiet else progress_bar("generating", step=1,
                                                       total=lambda: cfg.n_requests)
    with bar as advance:
        trace = generate(cfg, progress=advance)
    write_trace(trace, out)
    console.print(f"wrote {len(trace):,} requests (preset {escape(preset)}) to [bold]{escape(str(out))}[/]")
    print_stats(trace_stats(trace), console=console)


@trace_app.command("import")
@slice_options
def trace_import(
    kind: Annotated[str, typer.Argument(help="Source format: mooncake | lmcache | agent.")],
    inputs: Annotated[list[Path], typer.Argument(help="Input file(s) or directory.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Parquet file to write.")],
    sort: Annotated[bool, typer.Option("--sort", help="Sort by timestamp (stable) instead of "
                                       "rejecting out-of-order rows.")] = False,
    block_size: Annotated[int | None, typer.Option(help="Tokens per block (agent logs; "
                                                   "mooncake is fixed at 512).")] = None,
    model: Annotated[str | None, typer.Option(help="Keep only this model_name (lmcache).")] = None,
    trace_slice: TraceSlice | None = None,
) -> None:
    """Import a Mooncake JSONL trace, LMCache lookup-hash logs or an agent-call log; the slice
    options keep part of it (the same rows 'simkv run' and 'simkv replay' keep with them)."""
    from simkv.traces.importers import import_trace
    from simkv.traces.schema import write_trace

    trace = import_trace(kind, inputs, sort=sort, block_size=block_size, model=model, trace_slice=trace_slice)
    write_trace(trace, out)
    sliced = f" (a slice: {trace_slice.describe()})" if trace_slice else ""
    console.print(f"imported {len(trace):,} requests ({escape(kind)}){escape(sliced)} to "
                  f"[bold]{escape(str(out))}[/]", highlight=False)


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


@trace_app.command("export")
def trace_export(
    kind: Annotated[str, typer.Argument(help="Target format: mooncake (Mooncake / aiperf "
                                        "mooncake_trace JSONL).")],
    trace_path: Annotated[Path, typer.Argument(metavar="TRACE", help="Parquet trace.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="JSONL file to write.")],
    block_size: Annotated[int, typer.Option(help="Tokens per hash_id: the format's 512, or a "
                                            "multiple of the trace's block size (runs of blocks "
                                            "are merged; tell the reader, e.g. aiperf, if not "
                                            "512).")] = 512,
    dense_ids: Annotated[bool, typer.Option("--dense-ids", help="Renumber hash_ids 0, 1, ... "
                                            "in order of first appearance.")] = False,
) -> None:
    """Export a trace as Mooncake JSONL (timestamp ms, input_length, output_length, hash_ids):
    what 'simkv trace import mooncake' reads back."""
    from simkv.traces.export import MOONCAKE_BLOCK_SIZE, write_mooncake
    from simkv.traces.schema import read_trace

    if kind != "mooncake":
        raise SimkvError(f"unknown export format {kind!r}; valid formats: mooncake")
    trace = read_trace(trace_path)
    write_mooncake(trace, out, block_size, dense_ids=dense_ids)
    merged = (f", {block_size // trace.block_size} blocks of {trace.block_size} tokens per hash_id"
              if block_size != trace.block_size else "")
    console.print(f"exported {len(trace):,} requests (mooncake, block size {block_size}{merged}) "
                  f"to [bold]{escape(str(out))}[/]", highlight=False)
    if block_size != MOONCAKE_BLOCK_SIZE:
        err_console.print(f"[yellow]warning: block size {block_size} is not Mooncake's "
                          f"{MOONCAKE_BLOCK_SIZE}: readers must be told (simkv trace import "
                          "mooncake reads 512 only)[/]", highlight=False)
