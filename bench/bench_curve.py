"""Benchmark: the 30-point capacity curve in one pass vs. LMCache's per-capacity sweep.

    .venv/bin/python bench/bench_curve.py [TRACE]      (default: traces/medium.parquet)

simkv computes the whole token-hit-rate-vs-capacity curve with one stack-distance pass
(:func:`simkv.curves.capacity_curve`); LMCache's cache simulator answers one capacity per
``simulate(fast=True)`` call, so its sweep runs it once per point. Both run here, in this
process, on the same trace and the same 30 capacities (log-uniform, 1%-100% of the unique
blocks); the script asserts identical hit rates at every point and prints both wall times.

The simkv timing starts from the Parquet file (read, block-id factorisation, the pass, the
30 lookups); LMCache gets its event list prepared before its clock starts. Numba's JIT
compilation (or cache load) is excluded: one untimed warm-up call on a tiny trace runs first
and its time is reported on its own line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BPC = 1 << 20  # kv_bytes_per_chunk for LMCache: capacity C blocks = C * BPC bytes


def main(argv: list[str]) -> int:
    from lmcache.tools.cache_simulator.simulator import simulate

    from simkv.curves import capacity_curve, default_capacities
    from simkv.traces.export import to_lmcache_events
    from simkv.traces.schema import build_table, read_trace

    path = Path(argv[1]) if len(argv) > 1 else ROOT / "traces" / "medium.parquet"

    # JIT warm-up (untimed in the comparison): compile or load the cached kernels.
    t0 = time.perf_counter()
    tiny = build_table({"arrival_s": [0.0, 1.0], "request_id": ["a", "b"],
                        "session_id": ["", ""], "prompt_class": ["chat", "chat"],
                        "input_tokens": [2, 2], "output_tokens": [1, 1],
                        "block_hashes": [[1, 2], [1, 3]]}, block_size=1, source="warmup")
    capacity_curve(tiny, [1])
    warmup = time.perf_counter() - t0

    # simkv: one pass from the file.
    t0 = time.perf_counter()
    trace = read_trace(path)
    trace.block_ids_flat  # noqa: B018 (decode + factorise now, to time the pass apart)
    t1 = time.perf_counter()
    capacities = default_capacities(trace, 30)
    curve = capacity_curve(trace, capacities)
    t2 = time.perf_counter()
    t_simkv, t_pass = t2 - t0, t2 - t1

    # LMCache: one simulate(fast=True) per capacity, as its own sweep does.
    events = to_lmcache_events(trace)
    t0 = time.perf_counter()
    lm_rates = [simulate(events, int(c) * BPC, BPC, fast=True)["token_hit_rate"]
                for c in capacities.tolist()]
    t_lmcache = time.perf_counter() - t0

    ours = curve["token_hit_rate"].tolist()
    bad = [(int(c), a, b) for c, a, b in zip(capacities.tolist(), ours, lm_rates, strict=True)
           if a != b]
    assert not bad, f"hit rates differ at (capacity, simkv, lmcache): {bad[:5]}"

    n_refs = len(trace.block_ids_flat)
    print(f"trace            : {path} ({len(trace):,} requests, {n_refs:,} block references, "
          f"{trace.n_unique_blocks:,} unique blocks)")
    print(f"capacities       : {len(capacities)} points, {capacities[0]:,} .. {capacities[-1]:,} blocks")
    print(f"numba warm-up    : {warmup:.3f} s (JIT compile / cache load; untimed below)")
    print(f"simkv one pass   : {t_simkv:.3f} s (read + factorise {t_simkv - t_pass:.3f} s, "
          f"pass + {len(capacities)} lookups {t_pass:.3f} s)")
    print(f"{'lmcache x' + str(len(capacities)):<17s}: {t_lmcache:.3f} s "
          f"({t_lmcache / len(capacities):.3f} s per simulate(fast=True))")
    print(f"speed-up         : {t_lmcache / t_simkv:.1f}x (target >= 20x)")
    print(f"identical        : all {len(capacities)} hit rates equal (==); "
          f"{ours[0]:.4%} .. {ours[-1]:.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
