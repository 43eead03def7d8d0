"""The engine's speed now: two reference steps timed by vLLM's own clock, one TSV line per sample.

    python reports/fidelity/engine_drift.py URL [--tag TAG] [--count N] [--every SECONDS]

A sample empties the prefix cache and times, by vLLM's ``/metrics`` (the engine core's clock,
not the client's), the prefill of 512 new tokens alone (``request_prefill_time_seconds``, the
median of 3) and one sequence of a 512-token prompt decoding 32 tokens
(``inter_token_latency_seconds``, their mean). The batching study (``make-batch.sh``) takes three
before and after the calibration, before every replay and after the last, so a replay's
simulation can be read against the engine's speed at that time rather than at the
calibration's. Needs an otherwise idle server. Prints ``utc  tag  prefill512_ms  decode1_ms``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "engine"))
from simkv_engine.calibrate.streams import DecodingStreams, metric_sum
from simkv_engine.calibrate.vllm_probe import VLLMProbe

PREFILL = "vllm:request_prefill_time_seconds"
ITL = "vllm:inter_token_latency_seconds"


def _growth(probe: VLLMProbe, before: str, name: str) -> tuple[float, float]:
    """``name``'s sum and count grown since the ``/metrics`` text ``before``."""
    after = probe.client.get("/metrics").text
    return tuple((metric_sum(after, name + s) or 0.0) - (metric_sum(before, name + s) or 0.0)
                 for s in ("_sum", "_count"))  # type: ignore[return-value]


def sample(probe: VLLMProbe, rng: np.random.Generator) -> tuple[float, float]:
    """(prefill of 512 tokens, gap between decoded tokens of one sequence), seconds."""
    prefills = []
    for _ in range(3):
        probe.clear(["gpu"])
        before = probe.client.get("/metrics").text
        probe.serve(rng.integers(1, 512, 512).tolist())
        prefills.append(_growth(probe, before, PREFILL)[0])
    probe.clear(["gpu"])
    streams = DecodingStreams(probe, [rng.integers(1, 512, 512).tolist()])
    before = probe.client.get("/metrics").text
    streams.wait_tokens(32)
    total, count = _growth(probe, before, ITL)
    streams.stop()
    return statistics.median(prefills), total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--tag", default="-")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--every", type=float, default=0.0, help="seconds from one sample's start to the next")
    args = ap.parse_args()
    probe = VLLMProbe(args.url)
    rng = np.random.default_rng(0)
    for i in range(args.count):
        t0 = time.monotonic()
        prefill, decode = sample(probe, rng)
        now = time.strftime("%H:%M:%S", time.gmtime())
        print(f"{now}\t{args.tag}\t{1000 * prefill:.2f}\t{1000 * decode:.2f}", flush=True)
        if i + 1 < args.count:
            time.sleep(max(args.every - (time.monotonic() - t0), 0.0))


if __name__ == "__main__":
    main()
