"""Shared fixtures: canned traces, hand-made traces, and the CLI as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from simkv.traces.schema import Trace, build_table

ROOT = Path(__file__).resolve().parents[1]
SMALL_TRACE = ROOT / "traces" / "small.parquet"
SIMKV = [sys.executable, "-m", "simkv.cli"]


def make_trace(
    requests: Sequence[Sequence[int]],
    *,
    block_size: int = 4,
    arrivals: Sequence[float] | None = None,
    tails: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
) -> Trace:
    """A trace from block-hash lists: request ``i`` has ``len(requests[i]) * block_size +
    tails[i]`` input tokens and arrives at ``arrivals[i]`` (default ``i`` seconds)."""
    n = len(requests)
    arrivals = list(arrivals) if arrivals is not None else [float(i) for i in range(n)]
    tails = list(tails) if tails is not None else [0] * n
    return build_table(
        {
            "arrival_s": arrivals,
            "request_id": [f"r{i}" for i in range(n)],
            "session_id": [""] * n,
            "prompt_class": list(classes) if classes is not None else ["chat"] * n,
            "input_tokens": [len(b) * block_size + t for b, t in zip(requests, tails, strict=True)],
            "output_tokens": [1] * n,
            "block_hashes": [list(b) for b in requests],
        },
        block_size=block_size,
        source="test",
    )


def simkv_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``simkv ARGS`` in a subprocess, as a user would."""
    return subprocess.run([*SIMKV, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def small_trace() -> Trace:
    from simkv.traces.schema import read_trace

    return read_trace(SMALL_TRACE)


@pytest.fixture(scope="session")
def gen_trace() -> Trace:
    """A short generated trace (fast to simulate with every engine)."""
    from simkv.traces.generator import generate, generator_config

    return generate(generator_config(seed=7, n_requests=400))
