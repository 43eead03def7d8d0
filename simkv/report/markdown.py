"""``simkv report DIR``: charts plus a ``report.md`` that embeds them, for a run or a sweep.

:func:`write_report` is the entry point; it detects the kind of directory, draws the charts
(:mod:`simkv.report.charts`) into the output directory and writes ``report.md`` beside them,
linking the PNGs by relative path so the folder can be moved or committed as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from simkv.core.errors import SimkvError
from simkv.core.fileio import atomic_write, make_dir
from simkv.core.tiers import TIER_NAMES
from simkv.metrics.format import (
    OVERLOAD_CAPTION,
    fmt_bytes,
    fmt_dollars,
    fmt_metric,
    fmt_num,
    fmt_param,
    fmt_pct,
    fmt_seconds,
    metric_label,
    overload_flags,
)
from simkv.metrics.objectives import Constraint
from simkv.metrics.summary import overload_warnings
from simkv.report.charts import Chart, run_charts, sweep_charts
from simkv.report.console import decode_rows, load_rows
from simkv.report.data import Objective, RunData, SweepData, detect, load_run, load_sweep, parse_objective

TIERS = TIER_NAMES
TOP_COLUMNS = ("token_hit_rate", "cost_saved_dollars", "ttft_p90_s")


@dataclass
class Report:
    """What :func:`write_report` produced."""

    kind: Literal["run", "sweep"]
    path: Path
    charts: list[Chart] = field(default_factory=list)
    objective: Objective | None = None

    @property
    def files(self) -> list[Path]:
        return [self.path.parent / c.file for c in self.charts if c.file]


def write_report(directory: str | Path, out_dir: str | Path | None = None, *,
                 objective: str | None = None, top: int = 10) -> Report:
    """Write the charts and ``report.md`` for a run or sweep ``directory`` into ``out_dir``
    (default: the directory itself). ``objective`` ranks the sweep's cells (default: the
    sweep's own ``objective`` in ``sweep.yaml``, else ``token_hit_rate``)."""
    src = Path(directory)
    kind = detect(src)
    out = make_dir(Path(out_dir) if out_dir is not None else src)
    if top < 1:
        raise SimkvError(f"--top must be >= 1, got {top}")
    if kind == "run":
        run = load_run(src)
        charts = run_charts(run, out)
        text = run_markdown(run, charts)
        obj = None
    else:
        sweep = load_sweep(src)
        obj = parse_objective(objective or str(sweep.spec.get("objective") or "token_hit_rate"))
        if obj.metric not in sweep.cells.columns:
            metrics = [c for c in sweep.cells.columns if c not in sweep.params
                       and pd.api.types.is_numeric_dtype(sweep.cells[c])]
            raise SimkvError(f"{src / 'sweep.parquet'}: no metric column {obj.metric!r} to rank "
                             f"by (--objective); numeric columns: {', '.join(metrics)}")
        charts = sweep_charts(sweep, obj, out)
        text = sweep_markdown(sweep, obj, charts, top)
    path = out / "report.md"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return Report(kind, path, charts, obj)


# -- Markdown helpers --------------------------------------------------------------------------


def shown_path(path: str | Path | None) -> str:
    """A path as a report shows it: relative to the working directory when it lies inside it
    (a report committed with the repository names no machine's directories)."""
    if path is None:
        return "unknown"
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (``align``: ``l`` or ``r`` per column)."""
    align = align or ["l"] * len(header)
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def _charts_md(charts: list[Chart]) -> str:
    parts = []
    for c in charts:
        if c.file:
            parts.append(f"### {c.title}\n\n![{c.title}]({c.file})\n")
    skipped = [c for c in charts if c.skipped]
    if skipped:
        parts.append("Not drawn, because they do not apply here:\n\n"
                     + "\n".join(f"- {c.title}: {c.note}" for c in skipped) + "\n")
    return "\n".join(parts)


# -- run report --------------------------------------------------------------------------------


def headline_rows(s: dict[str, Any]) -> list[list[str]]:
    """The run's headline metrics as (metric, value, detail) rows."""

    def g(k: str, default: Any = 0) -> Any:
        return s.get(k, default)

    measured = "duration_s" not in s       # a replay: hits and TTFTs measured, no costs or occupancy
    rows = [
        ["requests", f"{g('requests'):,}",
         "measured by a replay" if measured else f"{fmt_seconds(g('duration_s', 0.0))} simulated"],
        ["token hit rate", fmt_pct(g("token_hit_rate", 0.0)),
         " / ".join(f"{t} {fmt_pct(g(f'token_hit_rate_{t}', 0.0))}" for t in TIERS
                    if t != "cpu" or g("insertions_cpu") or g("storage_peak_bytes_cpu")
                    or g("token_hit_rate_cpu"))],
    ]
    by_class = s.get("token_hit_rate_by_class")
    if isinstance(by_class, dict) and by_class:
        rows.append(["token hit rate by class", "",
                     ", ".join(f"{c} {fmt_pct(v, 1)}" for c, v in sorted(by_class.items()))])
    rows.append(["block hit ratio", fmt_pct(g("block_hit_ratio", 0.0)),
                 f"requests full-hit {fmt_pct(g('request_full_hit_ratio', 0.0), 1)}, "
                 f"any-hit {fmt_pct(g('request_any_hit_ratio', 0.0), 1)}"])
    for t in TIERS:
        if not g(f"insertions_{t}") and not g(f"storage_peak_bytes_{t}"):
            continue
        rows.append([f"{t}: evictions / expirations",
                     f"{g(f'evictions_{t}'):,} / {g(f'expirations_{t}'):,}",
                     f"{fmt_num(g(f'evictions_per_request_{t}', 0.0), '.2f')} evictions per request"])
        rows.append([f"{t}: storage mean / peak",
                     f"{fmt_bytes(g(f'storage_mean_bytes_{t}', 0.0))} / "
                     f"{fmt_bytes(g(f'storage_peak_bytes_{t}', 0.0))}",
                     f"{g(f'storage_gb_hours_{t}', 0.0):.2f} GB-h"])
    for p in (50, 90, 99):
        rows.append([f"TTFT p{p}", fmt_seconds(g(f"ttft_p{p}_s", 0.0)),
                     f"without cache {fmt_seconds(g(f'ttft_nocache_p{p}_s', 0.0))}"])
    rows += [list(row) for row in decode_rows(s)]
    archive = sum(g(k, 0.0) for k in ("archive_storage_dollars", "archive_request_dollars",
                                      "transfer_dollars"))
    rows += [[("**" + label + "**") if over else label, value, detail]
             for label, value, detail, over in load_rows(s)]
    if measured and "cost_saved_dollars" not in s:
        return [*rows, ["cost saved", "n/a", "not measured (simkv run the same trace and scenario "
                        "for GPU time saved and archive dollars)"]]
    rows += [
        ["GPU time saved", fmt_seconds(g("gpu_seconds_saved", 0.0)),
         fmt_dollars(g("gpu_dollars_saved", 0.0))],
        ["archive $ (storage + requests + transfer)", fmt_dollars(archive),
         f"{g('archive_puts'):,} PUT, {g('archive_refreshes'):,} refresh, {g('archive_gets'):,} GET"],
        ["**cost saved**", f"**{fmt_dollars(g('cost_saved_dollars', 0.0))}**",
         f"{g('tokens_avoided'):,} tokens avoided"],
    ]
    return rows


def idle_hints(run: RunData) -> list[str]:
    """:func:`simkv.report.tiers.idle_tier_hints` for a run directory (none for a replay, or
    when its ``scenario.yaml`` no longer loads)."""
    from simkv.core.scenario import load_scenario
    from simkv.report.tiers import idle_tier_hints

    path = run.path / "scenario.yaml"
    if "duration_s" not in run.summary or not path.is_file():
        return []
    try:
        return idle_tier_hints(run.summary, load_scenario(path))
    except SimkvError:
        return []


def run_markdown(run: RunData, charts: list[Chart]) -> str:
    """``report.md`` for one run."""
    s = run.summary
    desc = run.scenario.get("description") or ""
    kind = "replay" if s.get("engine") == "replay" else "run"
    lines = [f"# simkv {kind} report: {s.get('scenario', run.path.name)}", ""]
    if desc:
        lines += [f"{desc}", ""]
    lines += [f"- run directory: `{shown_path(run.path)}`",
              f"- trace: `{shown_path(s.get('trace'))}` ({s.get('trace_source', 'unknown source')}), "
              f"{s.get('requests', 0):,} requests, block size {s.get('block_size', '?')} tokens",
              f"- engine: {s.get('engine', '?')}, simkv {s.get('simkv_version', '?')}", ""]
    warnings = overload_warnings(s) if "gpu_utilization" in s else []
    if warnings:
        lines += ["> [!WARNING]", "> **The simulated system is overloaded.** These numbers describe a "
                  "system that cannot keep up with the trace:", ">"]
        lines += [f"> - {w}" for w in warnings]
        lines += [""]
    idle = idle_hints(run)
    if idle:
        lines += ["> [!NOTE]", "> **A configured tier served nothing.**", ">"]
        lines += [f"> - {h[:1].upper() + h[1:]}" for h in idle]
        lines += [""]
    lines += ["## Headline metrics", "",
              md_table(["metric", "value", "detail"], headline_rows(s), ["l", "r", "l"]), "",
              "## Charts", "", _charts_md(charts)]
    return "\n".join(lines).rstrip() + "\n"


# -- sweep report ------------------------------------------------------------------------------


def feasible_cells(sweep: SweepData) -> pd.DataFrame:
    """The successful cells that satisfy every constraint the sweep recorded in ``sweep.yaml``
    (the same rule as the winner's)."""
    ok = sweep.ok
    for text in sweep.spec.get("constraints") or []:
        ok = ok[Constraint.parse(str(text)).mask(ok)]
    return ok


def top_cells(sweep: SweepData, objective: Objective, n: int) -> pd.DataFrame:
    """The ``n`` best feasible cells by the objective (stable order on ties)."""
    ok = feasible_cells(sweep).dropna(subset=[objective.metric])
    return ok.sort_values(objective.metric, ascending=objective.direction == "min",
                          kind="stable").head(n)


def top_cells_table(sweep: SweepData, objective: Objective, n: int) -> str:
    """The top cells as a Markdown table: rank, cell, swept parameters, objective, the
    headline metrics and, where a cell overloads a resource, the console's ``warn`` column."""
    best = top_cells(sweep, objective, n)
    metrics = [objective.metric] + [m for m in TOP_COLUMNS if m != objective.metric and m in best.columns]
    header = ["rank"] + (["cell"] if "cell_id" in best.columns else []) + list(sweep.params)
    header += [("**" + metric_label(m) + "**") if m == objective.metric else metric_label(m)
               for m in metrics]
    rows = []
    for rank, (_, r) in enumerate(best.iterrows(), start=1):
        row = [str(rank)] + ([str(r["cell_id"])] if "cell_id" in best.columns else [])
        row += [fmt_param(r[p]) for p in sweep.params]
        row += [fmt_metric(m, r[m]) for m in metrics]
        rows.append(row)
    align = ["r"] + (["l"] if "cell_id" in best.columns else []) + ["l"] * len(sweep.params)
    align += ["r"] * len(metrics)
    flags = [overload_flags(v) for v in best["overload"]] if "overload" in best.columns else []
    if any(flags):  # the console's warn column and its caption
        header.append("warn")
        rows = [[*r, f] for r, f in zip(rows, flags, strict=True)]
        return md_table(header, rows, [*align, "l"]) + f"\n\n{OVERLOAD_CAPTION}"
    return md_table(header, rows, align)


def sweep_markdown(sweep: SweepData, objective: Objective, charts: list[Chart], top: int) -> str:
    """``report.md`` for a sweep."""
    cells, ok, failed = sweep.cells, sweep.ok, sweep.failed
    lines = [f"# simkv sweep report: {sweep.path.name}", "",
             f"- sweep directory: `{shown_path(sweep.path)}`"]
    if sweep.base_scenario:
        lines.append(f"- base scenario: `{sweep.base_scenario}`")
    if isinstance(sweep.spec.get("trace"), str):
        lines.append(f"- trace: `{shown_path(sweep.path / sweep.spec['trace'])}`")
    if sweep.spec.get("set"):
        lines.append(f"- base overrides (--set): {', '.join(f'`{o}`' for o in sweep.spec['set'])}")
    lines.append(f"- cells: {len(cells)} ({len(ok)} ok, {len(failed)} failed)")
    lines.append(f"- objective: {objective.label}")
    constraints = sweep.spec.get("constraints") or []
    if constraints:
        n_feasible = len(feasible_cells(sweep))
        lines.append(f"- constraints: {', '.join(f'`{c}`' for c in constraints)} "
                     f"({n_feasible} of {len(ok)} successful cells satisfy them)")
    if sweep.winner is not None:
        lines.append(f"- winner: `winner.yaml` (scenario `{sweep.winner.get('name', '?')}`)")
    lines += ["", "## Grid", ""]
    grid_rows = []
    for p in sweep.params:
        values = sorted(cells[p].dropna().unique(), key=lambda v: (str(type(v)), v))
        grid_rows.append([f"`{p}`", str(len(values)), ", ".join(fmt_param(v) for v in values)])
    lines += [md_table(["parameter", "values", "swept over"], grid_rows, ["l", "r", "l"])
              if grid_rows else "No swept parameter found.", ""]
    if objective.metric == "cost_saved_dollars" and len(ok) and (ok[objective.metric] < 0).all():
        lines += ["> [!WARNING]", "> No cell saves money: every cell's cost saved is negative, "
                  "so the best cell is the one that loses least. Under these prices the cache "
                  "(or its archive) costs more than the prefill it avoids.", ""]
    shown = min(top, len(top_cells(sweep, objective, top)))
    lines += [f"## Top {f'{shown} ' if shown else ''}cells by {metric_label(objective.metric)}", ""]
    lines += [top_cells_table(sweep, objective, top) if shown else
              ("No cell succeeded." if not len(ok) else "No cell satisfies the constraints."), ""]
    lines += ["## Charts", "", _charts_md(charts)]
    if len(failed):
        lines += ["## Failed cells", ""]
        rows = []
        for _, r in failed.iterrows():
            err = str(r.get("error") or "").strip().splitlines()
            rows.append([str(r.get("cell_id", "")), ", ".join(f"{p}={fmt_param(r[p])}" for p in sweep.params),
                         err[-1] if err else ""])
        lines += [md_table(["cell", "parameters", "error"], rows), ""]
    return "\n".join(lines).rstrip() + "\n"
