"""The measurement: :func:`calibrate` runs a plan on a probe (the prefill grid, loads and
stores per tier, the archive, the request overhead, stores into full tiers) and fits the
profile; :func:`open_probe` opens the probe the CLI asked for."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from simkv_engine.calibrate.archive_measure import _measure_archive
from simkv_engine.calibrate.document import Calibration, _profile
from simkv_engine.calibrate.inprocess import InProcessProbe
from simkv_engine.calibrate.plan import LOCAL_TIERS, CalibrationError, FreshPrompts, Plan, overhead_lengths
from simkv_engine.calibrate.probe import Probe, Served, _expect, _hits
from simkv_engine.calibrate.vllm_probe import http_probe


def calibrate(probe: Probe, plan: Plan, *, scenario: Any = None,
              advance: Callable[[int], None] = lambda n: None) -> Calibration:
    """Measure ``plan`` on ``probe`` and fit the profile. ``scenario``: where the analytic
    defaults of tiers not measured come from (simkv's defaults if ``None``)."""
    from simkv.core.scenario import Scenario

    scenario = scenario or Scenario()
    C = probe.chunk_size
    plan.check(C, probe.context)
    if probe.prefill_only:
        plan = dataclasses.replace(plan, tiers=False)
    need = max(plan.cached_tokens[-1] // C, max(plan.chunks) if plan.tiers else 0)
    if probe.gpu_chunks is not None and probe.gpu_chunks < need:
        raise CalibrationError(f"tiers.gpu.capacity_bytes: the GPU cache holds {probe.gpu_chunks} chunks, "
                               f"the calibration needs {need} there (raise it, or shrink --cached-tokens "
                               "/ --chunks)")
    fresh = FreshPrompts(probe.vocab_size, plan.seed, probe.prompt_salt)
    runs = plan.warmup + plan.repeats
    notes: list[str] = probe.notes()
    local = [t for t in LOCAL_TIERS if t in probe.tiers]

    def counted(served: Served) -> Served:
        advance(1)
        return served

    # Prefill over the grid.
    new, cached = plan.new_tokens, plan.cached_tokens
    seconds = np.zeros((len(new), len(cached)))
    for (i, n), (j, c) in itertools.product(enumerate(new), enumerate(cached)):
        samples = []
        for rep in range(runs):
            probe.clear(local)
            prefix, suffix = fresh(c), fresh(n)
            if c:
                counted(probe.serve(prefix))
            what = f"prefill n={n} c={c}"
            if not probe.prefill_only:      # else the served hits below are the check
                _expect(probe, prefix + suffix, ["gpu"] * (c // C), what)
            r = counted(probe.serve(prefix + suffix))
            _hits(r, "gpu", c, what)
            if rep >= plan.warmup:
                samples.append(r.prefill_s)
        seconds[i, j] = float(np.median(samples))

    # Loads per tier, stores.
    loads: dict[str, dict[int, list[float]]] = {}
    stores: dict[str, dict[int, list[float]]] = {"store": {}, "disk_write": {}, "admit": {}}
    chunk_bytes = probe.chunk_bytes
    cold_dropped = False
    for k in plan.chunks if plan.tiers else []:
        for rep in range(runs):
            keep = rep >= plan.warmup
            probe.clear(local)
            prompt = fresh(k * C + 1)
            full, want = prompt[: k * C], k * C
            what = f"load of {k} chunks"
            _expect(probe, prompt, [], what)
            first = counted(probe.serve(prompt))
            _hits(first, "gpu", 0, what)
            timed: dict[str, Served] = {}
            if keep:
                stores["store"].setdefault(k, []).append(first.store_s)
            if "disk" in probe.tiers:
                # LMCache's disk writes were queued by the serve: time them from its end. Where
                # the wait clears the GPU and CPU tiers, on a prompt of their own.
                if probe.wait_clears:
                    probe.clear(local)
                    other = fresh(k * C + 1)
                    counted(probe.serve(other))
                    waited = probe.wait_on_disk(other[: k * C])
                    probe.clear(local)
                    prompt = fresh(k * C + 1)
                    full = prompt[: k * C]
                    first = counted(probe.serve(prompt))
                    _hits(first, "gpu", 0, what)
                else:
                    waited = probe.wait_on_disk(full)
                if keep:
                    stores["disk_write"].setdefault(k, []).append(waited)
            r = counted(probe.serve(prompt))
            _hits(r, "gpu", want, f"{what} from gpu")
            timed["gpu"] = r
            if chunk_bytes is None and r.bytes_loaded.get("gpu"):
                chunk_bytes = r.bytes_loaded["gpu"] // k
            if "cpu" in probe.tiers:
                probe.clear(["gpu"])
                _expect(probe, prompt, ["cpu"] * k, f"{what} from cpu")
                timed["cpu"] = r = counted(probe.serve(prompt))
                _hits(r, "cpu", want, f"{what} from cpu")
                if keep:
                    stores["admit"].setdefault(k, []).append(r.store_s)
            if "disk" in probe.tiers:
                probe.wait_on_disk(full)
                for label in ("disk_cold", "disk_warm"):
                    probe.clear(["gpu", "cpu"])
                    if label == "disk_cold":
                        cold_dropped = probe.drop_disk_cache()
                    _expect(probe, prompt, ["disk"] * k, f"{what} from disk")
                    timed[label] = r = counted(probe.serve(prompt))
                    _hits(r, "disk", want, f"{what} from disk")
            if keep:
                for label, s in timed.items():
                    loads.setdefault(label, {}).setdefault(k, []).append(s.load_s)

    archive = None
    if plan.tiers and "archive" in probe.tiers:
        archive = _measure_archive(probe, plan, fresh, counted, local, notes)
        if archive is not None:
            loads["archive"], loads["archive_hydrate"] = archive.pop("loads"), archive.pop("hydrates")

    # The request overhead: fresh prompts (misses), served as the replay sends them.
    rest: dict[int, list[float]] = {}
    latency: dict[int, list[float]] = {}
    for n in [] if probe.prefill_only else overhead_lengths(plan, probe.context):
        for rep in range(runs):
            probe.clear(local)
            r = counted(probe.serve_timed(fresh(n)))
            if rep < plan.warmup or r.ttft_s is None:
                continue
            rest.setdefault(n // C, []).append(r.ttft_s - (r.queue_s or 0.0) - r.load_s - r.prefill_s
                                               - r.store_s)
            if r.client_ttft_s is not None:
                latency.setdefault(n, []).append(r.client_ttft_s - r.ttft_s)
    stores["rest"], stores["latency"] = rest, latency

    # Stores into full tiers: LMCache evicts inside the store (the disk backend scans its index
    # and removes a file per chunk). Fill the disk tier with fresh prompts until it evicts, then
    # time stores of k computed chunks, each of which now evicts one disk chunk.
    if "disk" in probe.tiers and plan.tiers and probe.disk_evictions() is not None:
        probe.clear(local)
        fill = min(probe.context or 4096, 4096) - 1
        start = probe.disk_evictions() or 0
        for _ in range(10_000):
            probe.serve(fresh(fill))
            if (probe.disk_evictions() or 0) > start:
                break
        full: dict[int, list[float]] = {}
        for k in plan.chunks:
            for rep in range(runs):
                r = counted(probe.serve(fresh(k * C + 1)))
                if rep >= plan.warmup:
                    full.setdefault(k, []).append(r.store_s)
        stores["store_full"] = full
        probe.clear(local)

    return _profile(probe, plan, scenario, seconds, loads, stores, chunk_bytes, notes,
                    cold_dropped=cold_dropped, archive=archive)


@contextlib.contextmanager
def open_probe(*, engine: str | None, api_key: str | None, scenario: Any, model: str, device: str,
               disk_path: str | Path | None, archive: str | None = None,
               archive_endpoint: str | None = None, block_size: int | None = None):
    """The probe the CLI asked for, closed on exit."""
    probe: Probe = (http_probe(engine, api_key, block_size) if engine else
                    InProcessProbe(scenario, model, device, disk_path, archive, archive_endpoint))
    try:
        yield probe
    finally:
        probe.close()
