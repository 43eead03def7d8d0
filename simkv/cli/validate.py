"""``simkv validate SIM_DIR REPLAY_DIR -o DIR``: the simulator against a measured replay."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from simkv.cli.console import console, err_console


def validate_cmd(
    sim_dir: Annotated[Path, typer.Argument(metavar="SIM_DIR", help="Simulated run (simkv run -o).")],
    replay_dir: Annotated[Path, typer.Argument(metavar="REPLAY_DIR", help="Measured results of "
                                               "the same trace and scenario (a replay).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write fidelity.md, "
                                      "fidelity.json and the charts.")],
    trace: Annotated[Path | None, typer.Option("--trace", "-t", help="The trace, for block-level "
                                               "diagnostics (default: the runs' scenario.yaml).")] = None,
    target_set: Annotated[str, typer.Option(
        "--targets", metavar="cpu|gpu", help="Which fidelity targets: cpu (TTFT p50 / p90 within "
        "10% / 15%, e2e p50 10%, per-request median 15%) or gpu (2% / 5%, 5%, 5%).")] = "cpu",
    targets: Annotated[list[str] | None, typer.Option(
        "--target", help="Override a target's limit: NAME=LIMIT, NAME one of ttft_p50, ttft_p90, "
                         "e2e_p50, ttft_median_abs, hits_identical (repeatable).")] = None,
    gate: Annotated[bool, typer.Option("--gate", help="Exit 1 if a target fails (CI on a GPU); "
                                       "otherwise targets are only reported.")] = False,
    ignore_scenario: Annotated[bool, typer.Option(
        "--ignore-scenario", help="Compare results of different scenarios (a sensitivity study); "
                                  "different traces are always refused.")] = False,
) -> None:
    """Compare a simulated run with a measured replay per request: hit rates, TTFT errors,
    diverging hits and their likely causes, and the fidelity targets as pass/fail."""
    from rich.table import Table

    from simkv.fidelity import parse_targets, validate

    res = validate(sim_dir, replay_dir, out, ignore_scenario=ignore_scenario, trace=trace,
                   target_set=target_set, targets=parse_targets(targets, target_set))
    d = res.data
    table = Table(title=f"fidelity targets ({escape(target_set)})", header_style="bold")
    for col in ("target", "value", "limit", "result"):
        table.add_column(col, justify="right" if col in ("value", "limit") else "left")
    for t in d["targets"]:
        result = "n/a" if t["pass"] is None else ("[green]pass[/]" if t["pass"] else "[red]FAIL[/]")
        table.add_row(escape(t["label"]), t["shown"], t["limit_shown"], result)
    console.print(table)
    r = d["requests"]
    console.print(f"{r['compared']:,} requests compared, {r['failed']:,} failed in the replay; "
                  f"{d['hits']['identical']:,} with identical hits; report [bold]"
                  f"{escape(str(res.markdown))}[/]", highlight=False)
    first = d["divergence"]["first"]
    if first:
        f0 = first[0]
        tiers = ", ".join(f"{t['tier']} {t['sim']:,} vs {t['measured']:,}" for t in f0["tiers"])
        err_console.print(f"[yellow]hits first diverge at request {escape(f0['request_id'])} "
                          f"({escape(tiers)}; likely {f0['cause']})[/]", highlight=False, soft_wrap=True)
    if gate and res.failed_targets:
        raise typer.Exit(1)
