"""Simulator speed beside LMCache's cache simulator, in the same process, as ratios.

    python bench/bench_sim.py [--trace traces/medium.parquet] [--capacity 4000] [--repeat 3]
    python bench/bench_sim.py --memory 1000000     # peak RSS of a 1M-request run

Reports requests/s and blocks/s of:
  * LMCache ``simulate(fast=True)`` (single LRU tier, no time) — the reference;
  * simkv's parity mode (``scenarios/parity-lru.yaml``: fast engine, and the SimPy engine);
  * simkv's parity mode with vLLM's continuous batching and decode (``hardware.scheduler:
    vllm``, the analytic step time: the engine stepping through every token of every request);
  * simkv's full three-tier TTL model (``scenarios/three-tier-adaptive.yaml``), and the same
    with the host-memory tier on (``--set tiers.cpu.enabled=true``; it must run compiled too);
and checks that the parity hit rates are identical. Best of ``--repeat`` runs each; the
compiled kernel is warmed up once before timing.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simkv.api import run  # noqa: E402
from simkv.traces.export import to_lmcache_events  # noqa: E402
from simkv.traces.schema import Trace, build_table, read_trace  # noqa: E402


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def tiled(trace: Trace, n: int) -> Trace:
    """``n`` requests made by repeating ``trace`` with fresh hashes and shifted times (built as
    arrays: Python lists of tens of millions of hashes would dwarf the run being measured)."""
    import numpy as np
    import pyarrow as pa

    m = len(trace)
    reps = -(-n // m)
    hashes, offsets = trace.block_hashes_flat, trace.block_offsets
    span = float(trace.arrival_s[-1]) + 1.0
    with np.errstate(over="ignore"):  # uint64 wrap-around is the intent
        values = np.concatenate([hashes + np.uint64(rep) * np.uint64(0x9E3779B97F4A7C15)
                                 for rep in range(reps)])
    starts = np.concatenate([offsets[:-1] + rep * offsets[-1] for rep in range(reps)])[:n]
    ends = np.append(starts, starts[-1] + offsets[(n - 1) % m + 1] - offsets[(n - 1) % m])
    rep_of = np.arange(n) // m
    row = np.arange(n) % m
    cols = {
        "arrival_s": trace.arrival_s[row] + rep_of * span,
        "request_id": [f"{r}-{i}" for r, i in zip(rep_of.tolist(), row.tolist(), strict=True)],
        "session_id": trace.column("session_id")[row],
        "prompt_class": trace.column("prompt_class")[row],
        "input_tokens": trace.input_tokens[row],
        "output_tokens": trace.output_tokens[row],
        "block_hashes": pa.ListArray.from_arrays(pa.array(ends), pa.array(values[:ends[-1]])),
    }
    return build_table(cols, block_size=trace.block_size, source=f"tiled:{trace.source}")


def memory(args: argparse.Namespace) -> None:
    """Peak resident memory of a full three-tier run on ``--memory`` requests (child process)."""
    if args.child:
        trace = read_trace(args.child)
        t0 = time.perf_counter()
        res = run(ROOT / "scenarios" / args.scenario, trace)
        wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{len(trace):,} requests, {args.scenario}: {wall:.1f} s, peak RSS {rss:,.0f} MiB, "
              f"token hit rate {res.summary['token_hit_rate']:.4f}")
        return
    path = Path("/tmp/simkv-bench-1m.parquet")
    from simkv.traces.schema import write_trace

    write_trace(tiled(read_trace(args.trace), args.memory), path)
    subprocess.run([sys.executable, __file__, "--child", str(path), "--scenario", args.scenario],
                   check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=str(ROOT / "traces" / "medium.parquet"))
    ap.add_argument("--capacity", type=int, default=4000, help="LRU capacity in blocks (parity mode)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory", type=int, default=0, help="measure peak RSS on N requests instead")
    ap.add_argument("--scenario", default="three-tier-adaptive.yaml")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory or args.child:
        memory(args)
        return

    from lmcache.tools.cache_simulator.simulator import simulate

    trace = read_trace(args.trace)
    n, blocks = len(trace), len(trace.block_ids_flat)
    print(f"trace {args.trace}: {n:,} requests, {blocks:,} blocks, capacity {args.capacity:,} blocks")
    events = to_lmcache_events(trace)
    bpc = trace.block_size * 131072
    parity = ROOT / "scenarios" / "parity-lru.yaml"
    cap = [f"tiers.gpu.capacity_blocks={args.capacity}"]
    run(parity, trace, overrides=cap)  # warm the compiled kernel

    t_lmc, ref = best_of(lambda: simulate(events, args.capacity * bpc, bpc, fast=True), args.repeat)
    t_fast, fast = best_of(lambda: run(parity, trace, overrides=[*cap, "engine=fast"]), args.repeat)
    t_simpy, slow = best_of(lambda: run(parity, trace, overrides=[*cap, "engine=simpy"]), args.repeat)
    batching = [*cap, "hardware.scheduler=vllm", "hardware.zero_service_time=false"]
    run(parity, trace, overrides=batching)  # warm the scheduler's kernel
    t_batch, batch = best_of(lambda: run(parity, trace, overrides=batching), args.repeat)
    t_full, full = best_of(lambda: run(ROOT / "scenarios" / args.scenario, trace), args.repeat)
    cpu_on = ["tiers.cpu.enabled=true"]
    t_cpu, with_cpu = best_of(lambda: run(ROOT / "scenarios" / args.scenario, trace, overrides=cpu_on),
                              args.repeat)

    rates = {ref["token_hit_rate"], fast.summary["token_hit_rate"], slow.summary["token_hit_rate"]}
    assert len(rates) == 1, f"parity broken: {rates}"
    print(f"parity token hit rate {ref['token_hit_rate']:.6f} (identical in all three)\n")
    rows = (("LMCache simulate(fast=True)", t_lmc), ("simkv parity, fast engine", t_fast),
            ("simkv parity, SimPy engine", t_simpy),
            ("simkv parity + vLLM batching and decode", t_batch),
            (f"simkv full model ({args.scenario})", t_full),
            ("  the same with tiers.cpu.enabled", t_cpu))
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}s} {'requests/s':>12s} {'blocks/s':>12s} {'vs LMCache':>11s}")
    for name, t in rows:
        print(f"{name:{width}s} {n / t:12,.0f} {blocks / t:12,.0f} {t_lmc / t:10.2f}x")
    print(f"\nvLLM batching: token hit rate {batch.summary['token_hit_rate']:.4f}, "
          f"{batch.summary['throughput_output_tokens_per_s']:,.0f} output tokens/s simulated, "
          f"engine {batch.summary['engine']}")
    print(f"full model: token hit rate {full.summary['token_hit_rate']:.4f}, "
          f"engine {full.summary['engine']}")
    print(f"with the CPU tier: token hit rate {with_cpu.summary['token_hit_rate']:.4f} "
          f"(from cpu {with_cpu.summary['token_hit_rate_cpu']:.4f}), engine {with_cpu.summary['engine']}")


if __name__ == "__main__":
    main()
