"""Benchmark ``simkv sweep``: an alpha x base_ttl grid of the full three-tier model.

Runs the same grid with the local backend at each ``--workers`` count (default 1 and 2) and on
a local Ray instance, each into a fresh directory, reports the wall times and the speed-up
over one worker (target >= 1.8x with 2 workers on 2 cores), and asserts that every run wrote
a byte-identical ``sweep.parquet``.

    .venv/bin/python bench/bench_sweep.py                          # 100 cells, medium trace
    .venv/bin/python bench/bench_sweep.py --requests 2000          # first 2000 requests only
    .venv/bin/python bench/bench_sweep.py --cells 16 --no-ray      # a 4 x 4 grid
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from simkv.sweep import sweep
from simkv.sweep.backends import available_cpus
from simkv.traces.schema import Trace, read_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0]
BASE_TTLS = [30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400]


@dataclass
class Timing:
    """One sweep: wall time, Ray start-up (apart), and the CPU seconds the cells used; on a
    busy machine ``cell_cpu_s / wall_s`` (cores actually kept busy) explains a low speed-up."""

    backend: str
    workers: int
    wall_s: float
    startup_s: float = 0.0
    cell_cpu_s: float = 0.0
    speedup: float | None = None


def pick(values: list, n: int) -> list:
    """``n`` values spread evenly over ``values`` (all of them for ``n >= len``)."""
    if n >= len(values):
        return list(values)
    return [values[round(i * (len(values) - 1) / max(n - 1, 1))] for i in range(n)]


def grid_for(cells: int) -> dict[str, list]:
    """An alpha x base_ttl grid of about ``cells`` cells (10 x 10 for 100)."""
    n_alpha = min(len(ALPHAS), max(1, math.isqrt(cells)))
    n_ttl = min(len(BASE_TTLS), max(1, math.ceil(cells / n_alpha)))
    return {"ttl.params.alpha": pick(ALPHAS, n_alpha), "ttl.params.base_ttl": pick(BASE_TTLS, n_ttl)}


def truncated(trace_path: Path, requests: int | None, tmp: Path) -> Path:
    """The trace, or its first ``requests`` requests written to ``tmp``."""
    if requests is None:
        return trace_path
    tr = read_trace(trace_path)
    if requests >= len(tr):
        return trace_path
    cut = Trace(table=tr.table.slice(0, requests), block_size=tr.block_size, source=tr.source)
    out = tmp / f"{trace_path.stem}-{requests}.parquet"
    write_trace(cut, out)
    return out


def run_one(scenario: Path, trace: Path, grid: dict, out: Path, backend: str, workers: int) -> Timing:
    startup = 0.0
    started_ray = False
    if backend == "ray":
        import logging

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
        startup = time.perf_counter() - t0
        started_ray = True
    try:
        t0 = time.perf_counter()
        df = sweep(scenario, trace, grid, out_dir=out, backend=backend, workers=workers)  # type: ignore[arg-type]
        wall = time.perf_counter() - t0
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    bad = df[df["status"] != "ok"]
    assert bad.empty, f"{len(bad)} cells failed: {bad['error'].iloc[0]}"
    cpu = sum(json.loads((out / "timing.json").read_text())["cell_cpu_s"].values())
    return Timing(backend, workers, wall, startup, cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", type=Path, default=ROOT / "traces" / "medium.parquet")
    ap.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "three-tier-adaptive.yaml")
    ap.add_argument("--requests", type=int, default=None, help="Keep only the first N requests.")
    ap.add_argument("--cells", type=int, default=100, help="Grid size (10 x 10 at most).")
    ap.add_argument("--workers", default="1,2", help="Local worker counts to time (comma-separated; "
                    "empty for none).")
    ap.add_argument("--ray-workers", type=int, default=2, help="CPUs of the local Ray instance.")
    ap.add_argument("--no-ray", action="store_true", help="Skip the Ray backend.")
    ap.add_argument("--repeat", type=int, default=1, help="Rounds; the best wall time counts.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="simkv-bench-sweep-") as tmp_name:
        tmp = Path(tmp_name)
        trace = truncated(args.trace, args.requests, tmp)
        n_requests = len(read_trace(trace))
        grid = grid_for(args.cells)
        n_cells = math.prod(len(v) for v in grid.values())
        print(f"{n_cells} cells ({' x '.join(f'{len(v)} {k}' for k, v in grid.items())}) of "
              f"{args.scenario.name} on {args.trace.name} ({n_requests:,} requests); "
              f"{available_cpus()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

        runs = [("local", int(w)) for w in args.workers.split(",") if w.strip()]
        if not args.no_ray:
            runs.append(("ray", args.ray_workers))
        best: dict[str, Timing] = {}
        outputs: dict[str, bytes] = {}
        for rnd in range(args.repeat):  # rounds interleave the backends, so load drifts hit all
            for backend, workers in runs:
                name = f"{backend}-{workers}"
                out = tmp / f"{name}-{rnd}"
                t = run_one(args.scenario, trace, grid, out, backend, workers)
                data = (out / "sweep.parquet").read_bytes()
                assert outputs.setdefault(name, data) == data, f"{name} is not reproducible"
                if name not in best or t.wall_s < best[name].wall_s:
                    best[name] = t
                print(f"  {backend:5} workers={workers}: {t.wall_s:8.1f} s "
                      f"({t.wall_s / n_cells:.2f} s/cell)"
                      + (f", + {t.startup_s:.1f} s Ray start" if backend == "ray" else "")
                      + f"; cells used {t.cell_cpu_s:.1f} CPU-s = {t.cell_cpu_s / t.wall_s:.2f} "
                      f"cores busy  [load {os.getloadavg()[0]:.1f}]", flush=True)
        timings = list(best.values())
        if args.repeat > 1:
            print(f"best of {args.repeat}: " + ", ".join(f"{k} {t.wall_s:.1f} s" for k, t in best.items()))

        base = next((t for t in timings if t.backend == "local" and t.workers == 1), None)
        for t in timings:
            t.speedup = base.wall_s / t.wall_s if base else None
        ref_name, ref = next(iter(outputs.items()))
        for name, data in outputs.items():
            assert data == ref, f"sweep.parquet of {name} differs from {ref_name}"
        print(f"identical sweep.parquet across {', '.join(outputs)}: yes")
        for t in timings:
            if t.speedup is not None and t is not base:
                target = "  (target >= 1.8x: " + ("met" if t.speedup >= 1.8 else "NOT met") + ")" \
                    if t.backend == "local" and t.workers == 2 else ""
                print(f"  speed-up {t.backend} x{t.workers} vs local x1: {t.speedup:.2f}x{target}")
        if args.json:
            args.json.write_text(json.dumps({
                "cells": n_cells, "requests": n_requests, "trace": str(args.trace),
                "grid": grid, "timings": [asdict(t) for t in timings]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
