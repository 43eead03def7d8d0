"""``simkv calibrate``: measure the engine and write a ``kind: table`` hardware profile."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from simkv.cli.console import SetOpt, console, err_console
from simkv.core.errors import SimkvError


def _ints(key: str, text: str | None) -> list[int] | None:
    """``"16,64,256"`` → ``[16, 64, 256]``."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SimkvError(f"{key}: expected comma-separated integers, got {text!r}") from None


def _engine_module() -> Any:
    try:
        from simkv_engine import calibrate
    except ImportError as exc:
        raise SimkvError(f"simkv calibrate needs the engine package simkv-engine (torch, transformers, "
                         f"LMCache; `make install`): {exc}") from None
    return calibrate


def _pct(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.1%}"


def _summary(cal: Any) -> None:
    t = Table(title="prefill (seconds)", title_justify="left")
    for col in ("new", "cached", "measured", "table", "table LOO err", "analytic", "analytic err"):
        t.add_column(col, justify="right")
    for r in cal.prefill_rows:
        t.add_row(f"{r['new']:,}", f"{r['cached']:,}", f"{r['measured_s']:.4g}", f"{r['table_s']:.4g}",
                  _pct(r["table_loo_rel"]), f"{r['analytic_s']:.4g}", _pct(r["analytic_rel"]))
    console.print(t)
    if cal.load_rows:
        t = Table(title="load / store (seconds; fit = per_request + chunks x per_block)",
                  title_justify="left")
        for col in ("what", "chunks", "measured", "fit", "fit err"):
            t.add_column(col, justify="right")
        for r in cal.load_rows:
            t.add_row(escape(r["what"]), str(r["chunks"]), f"{r['measured_s']:.4g}", f"{r['fit_s']:.4g}",
                      _pct(r["rel"]))
        console.print(t)
    step = cal.doc.get("step")
    if step:
        from simkv.core.profiles import STEP_KEYS

        t = Table(title="steps (seconds; fit = " + " + ".join(
            f"{step[k]:.3g}{x}" for k, x in zip(STEP_KEYS, ("", "*P", "*D", "*K", "*A", "*C"), strict=True))
            + ")", title_justify="left")
        for col in ("P", "D", "K", "A", "C", "measured", "fit", "fit err"):
            t.add_column(col, justify="right")
        for p in step["points"]:
            t.add_row(f"{p['prefill_tokens']:,}", str(p["decode_seqs"]), f"{p['context_tokens']:,}",
                      f"{p['attn_tokens']:,}", f"{p.get('prefill_context_tokens', 0):,}",
                      f"{p['seconds']:.4g}", f"{p['fitted_s']:.4g}",
                      _pct(abs(p["fitted_s"] - p["seconds"]) / p["seconds"]))
        console.print(t)
        e = step["fit_error"]
        console.print(f"step fit: median error {_pct(e['median_rel'])}, max {_pct(e['max_rel'])} over "
                      f"{e['points']} points", highlight=False)
        if "latency_s" in step:
            per = step.get("latency_per_stream_s")
            console.print(f"latency outside the engine core: {step['latency_s'] * 1e3:.2f} ms"
                          + (f" + {per * 1e3:.3f} ms per stream decoding beside the request"
                             if per is not None else ""), highlight=False)
    for note in cal.notes:
        console.print(f"note: {escape(note)}", highlight=False)


def calibrate_cmd(
    out: Annotated[Path, typer.Option("-o", "--out", help="Profile file to write (profiles/NAME.yaml).")],
    engine: Annotated[str | None, typer.Option("--engine", help="URL of a running `simkv engine "
                                               "serve`, or of a vLLM server (the prefill grid only, "
                                               "timed at the client).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="The server's API key.")] = None,
    in_process: Annotated[Path | None, typer.Option(
        "--in-process", metavar="SCENARIO", help="Build the model and engine here from this "
        "scenario.")] = None,
    overrides: SetOpt = None,
    model: Annotated[str, typer.Option(help="Model (in-process): tiny | llama-1b | llama-8b | "
                                       "PATH.")] = "tiny",
    device: Annotated[str | None, typer.Option(help="cpu | cuda (in-process; default: cuda if there "
                                               "is one).")] = None,
    disk_path: Annotated[Path | None, typer.Option(
        help="Folder for LMCache's disk files (in-process; default: beside the output file).")] = None,
    archive: Annotated[str | None, typer.Option(
        help="Where tiers.archive is measured (in-process): s3://bucket/prefix or a folder; the "
             "calibration writes into a folder of its own there and deletes it (default: a local "
             "folder beside the disk files).")] = None,
    archive_endpoint: Annotated[str | None, typer.Option(
        help="S3 endpoint URL for --archive s3://... (any S3 API; default: AWS).")] = None,
    grid: Annotated[str | None, typer.Option(help="quick | full (default: quick on the CPU or over "
                                             "HTTP, full on a GPU).")] = None,
    new_tokens: Annotated[str | None, typer.Option(help="New tokens of the prefill grid, e.g. "
                                                   "1,16,64.")] = None,
    cached_tokens: Annotated[str | None, typer.Option(help="Cached tokens of the grid (multiples of the "
                                                      "block size), e.g. 0,64,256.")] = None,
    chunks: Annotated[str | None, typer.Option(help="Chunks per load measurement, e.g. 1,2,4,8.")] = None,
    repeats: Annotated[int | None, typer.Option(help="Timed runs per point (the median is kept).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Discarded runs before them.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts.")] = 0,
    block_size: Annotated[int | None, typer.Option(
        help="vLLM: the profile's block size, the trace's (a multiple of vLLM's; default: vLLM's).")] = None,
    steps: Annotated[bool, typer.Option(
        "--steps", help="vLLM: also measure step times (prefill-only, decode-only and, with "
                        "--step-mixed, mixed steps of a batching vLLM) and fit the profile's step "
                        "section (docs/vllm.md).")] = False,
    step_prefill: Annotated[str, typer.Option(
        help="--steps: prompt lengths of the prefill-only steps (each within one step: at most "
             "vLLM's --max-num-batched-tokens).")] = "1,16,64,128,256,512",
    step_cached: Annotated[str, typer.Option(
        help="--steps: cached tokens before the prefill-only steps' new tokens (multiples of vLLM's "
             "block size; the prefix is served first).")] = "0",
    step_decode: Annotated[str, typer.Option(
        help="--steps: decoding sequences of the decode-only steps (at most vLLM's "
             "--max-num-seqs).")] = "1,2,4,8,16",
    step_lengths: Annotated[str, typer.Option(
        help="--steps: prompt length of the decoding sequences.")] = "64,512,1536",
    step_tokens: Annotated[int, typer.Option(
        help="--steps: tokens timed per decoding sequence once all of them decode.")] = 24,
    step_mixed: Annotated[str, typer.Option(
        help="--steps: decoding streams beside which every prefill point is measured again (mixed "
             "steps; prompts of the middle --step-lengths value); they also fit the latency outside "
             "the engine per stream (step.latency_per_stream_s). Empty: none.")] = "",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Measure prefill, load and store times on the engine (through KVEngine.serve, the path requests
    take) and write a table hardware profile with its fit errors. Against vLLM (no /kv/lookup):
    the prefill grid only, as client TTFTs (docs/vllm.md)."""
    if (engine is None) == (in_process is None):
        raise SimkvError("calibrate: give exactly one of --engine URL or --in-process SCENARIO")
    if out.exists() and not overwrite:
        raise SimkvError(f"{out}: exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise SimkvError(f"{out}: no such folder {out.parent}")
    if engine is not None and (overrides or model != "tiny" or device or disk_path or archive
                               or archive_endpoint):
        raise SimkvError("calibrate: --set, --model, --device, --disk-path, --archive and "
                         "--archive-endpoint are for --in-process (the server has its own)")
    if in_process is not None and block_size is not None:
        raise SimkvError("calibrate: --block-size is for --engine on a vLLM server (in-process: "
                         "--set block_size=N)")
    if steps and engine is None:
        raise SimkvError("calibrate: --steps measures a vLLM server's batching; give --engine URL")
    lists = {k: _ints(f"--{k.replace('_', '-')}", v)
             for k, v in (("new_tokens", new_tokens), ("cached_tokens", cached_tokens), ("chunks", chunks))}
    cal_mod = _engine_module()

    scenario = None
    if in_process is not None:
        from simkv.core.scenario import load_scenario

        scenario = load_scenario(in_process, overrides or [])
        if scenario.block_size is None:
            raise SimkvError(f"{in_process}: block_size: the engine's chunk size; set it "
                             "(e.g. --set block_size=256)")
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
    grid = grid or ("full" if device == "cuda" else "quick")

    with cal_mod.open_probe(engine=engine, api_key=api_key, scenario=scenario, model=model,
                            device=device or "cpu", disk_path=disk_path or out.parent.resolve(),
                            archive=archive, archive_endpoint=archive_endpoint,
                            block_size=block_size) as probe:
        plan = cal_mod.Plan.make(grid, probe.chunk_size, repeats=repeats, warmup=warmup, seed=seed, **lists)
        plan.check(probe.chunk_size, probe.context)
        step_plan = None
        if steps:
            if not isinstance(probe, cal_mod.VLLMProbe):
                raise SimkvError(f"--steps: {engine} is not a vLLM server (step times are vLLM's batching)")
            grids = (("--step-prefill", step_prefill), ("--step-decode", step_decode),
                     ("--step-lengths", step_lengths))
            step_plan = cal_mod.StepPlan(
                *(_ints(key, v) for key, v in grids), decode_tokens=step_tokens, repeats=plan.repeats,
                warmup=plan.warmup, prefill_cached=_ints("--step-cached", step_cached),
                mixed_seqs=_ints("--step-mixed", step_mixed) if step_mixed.strip() else [])
            step_plan.check(probe.context, probe.vllm_block)
        total = cal_mod.steps(plan, probe.tiers, probe.wait_clears, probe.prefill_only)
        total += cal_mod.step_runs(step_plan) if step_plan else 0
        src = escape(engine or str(in_process))
        what = ("vLLM: no tiers, no server timings" if probe.prefill_only else
                f"{len(plan.chunks)} chunk counts, tiers {', '.join(probe.tiers)}")
        err_console.print(f"calibrating {src}: {len(plan.new_tokens)}x{len(plan.cached_tokens)} prefill "
                          f"grid, {what}, {plan.warmup} warm-up + {plan.repeats} timed runs each",
                          highlight=False, soft_wrap=True)
        if err_console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=err_console, transient=True) as bar:
                task = bar.add_task("calibrating", total=total)
                cal = cal_mod.calibrate(probe, plan, scenario=scenario,
                                        advance=lambda n: bar.advance(task, n))
                if step_plan:
                    cal_mod.add_steps(cal, probe, step_plan, seed, lambda n: bar.advance(task, n))
        else:
            cal = cal_mod.calibrate(probe, plan, scenario=scenario)
            if step_plan:
                cal_mod.add_steps(cal, probe, step_plan, seed)
    cal_mod.write_profile(cal, out)
    _summary(cal)
    console.print(f"wrote [bold]{escape(str(out))}[/] (use: hardware: {{profile: {escape(str(out))}}})")
