"""The project's promise: hit tokens per tier identical between ``simkv run`` and a replay through
the real engine, request by request, for the deterministic policies. Real parts throughout: the
engine server (the tiny model on the CPU, real LMCache with its CPU and disk backends, an archive
in a local folder) on 127.0.0.1 with ``--clock trace``, ``simkv replay
--speed max --concurrency 1``, and the simulator on the same trace and scenario. The scenarios
are small enough that every tier evicts (or, for the archive, that TTLs expire) many times."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from simkv.core.schema import read_requests
from simkv.traces.schema import write_trace
from tests.conftest import simkv_cli

pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")

BLOCK = 16
TINY_VOCAB = 512
HIT_COLUMNS = tuple(f"{t}_hit_tokens" for t in ("gpu", "cpu", "disk", "remote", "archive"))
INTERVAL_S = 5.0


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    return identity_trace(tmp_path_factory)


def identity_trace(tmp_path_factory) -> Path:
    """60 generated requests of up to 24 blocks of 16 tokens over 150 s: 1109 block references
    to 396 distinct blocks (system prompts, sessions, RAG documents, tools)."""
    from simkv.traces.generator import generate, generator_config

    ov = ["block_size=16", "system_prompt_tokens=96", "tool_schema_tokens=48", "session_context_tokens=64",
          "user_tokens=24", "answer_tokens=8", "rag_tokens=80", "batch_doc_tokens=80", "tool_call_tokens=8",
          "tool_result_tokens=40", "max_context_tokens=400", "n_agent_types=3"]
    gen = generate(generator_config(seed=3, n_requests=60, overrides=ov))
    path = tmp_path_factory.mktemp("identity") / "trace.parquet"
    write_trace(gen, path)
    return path


def _scenario(path: Path, name: str, eviction: str, cpu: int | None, disk: int | None, gpu: int = 12,
              archive: bool = False) -> Path:
    tiers: dict = {"gpu": {"capacity_blocks": gpu, "eviction": eviction},
                   "cpu": {"enabled": cpu is not None, "eviction": eviction},
                   "disk": {"enabled": disk is not None, "eviction": eviction},
                   "archive": {"enabled": archive}}
    for tier, cap in (("cpu", cpu), ("disk", disk)):
        if cap is not None:
            tiers[tier]["capacity_blocks"] = cap
    sc = {"name": name, "block_size": BLOCK, "tiers": tiers, "hardware": {"zero_service_time": True},
          "load_policy": "always"}
    if archive:
        tiers["archive"].update(interval_s=INTERVAL_S, codec="zlib")
        sc["ttl"] = {"heuristic": "static", "scope": "archive", "mode": "fixed", "params": {"ttl": 15.0}}
    out = path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(sc))
    return out


def _serve(scenario: Path, tmp: Path, archive: str | None = None, endpoint: str | None = None,
           remote: str | None = None):
    """The engine server (a subprocess, port 0) on the trace clock; returns (process, url).
    ``remote``: the remote tier's server (redis://HOST:PORT)."""
    code = ("import sys\nfrom simkv.core.scenario import load_scenario\n"
            "from simkv_engine.server import serve\n"
            "from simkv_engine.archive import ArchiveOptions\n"
            "a = ArchiveOptions(sys.argv[2], endpoint_url=sys.argv[3] or None) if sys.argv[2] else None\n"
            "serve(load_scenario(sys.argv[1]), model='tiny', device='cpu', port=0, archive=a,\n"
            "      disk_path=sys.argv[4], clock='trace', remote_url=sys.argv[5] or None,\n"
            "      on_ready=lambda url: print(url, flush=True))\n")
    env = {**os.environ, "PYTHONHASHSEED": "0", "LMCACHE_LOG_LEVEL": "WARNING"}
    log = tmp / "server.log"              # a file, not a pipe nobody reads (a full pipe blocks the server)
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, str(scenario), archive or "", endpoint or "",
                                 str(tmp / "disk"), remote or ""],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    url = proc.stdout.readline().strip() if ready else ""
    if not url.startswith("http"):
        proc.kill()
        pytest.fail(f"the engine server did not start: {log.read_text()[-3000:]}")
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _replay_and_simulate(scenario: Path, trace: Path, tmp: Path, **serve_kw) -> tuple[pd.DataFrame,
                                                                                         pd.DataFrame]:
    from simkv.api import run

    proc, url = _serve(scenario, tmp, **serve_kw)
    try:
        import httpx

        resp = httpx.post(f"{url}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 0}, timeout=60)
        assert resp.status_code == 400 and "arrival_s" in resp.json()["error"]["message"]
        out = tmp / "replay"
        done = simkv_cli("replay", str(scenario), "--trace", str(trace), "--engine", url, "--vocab-size",
                         str(TINY_VOCAB), "--speed", "max", "--concurrency", "1", "--max-tokens", "0",
                         "-o", str(out))
        assert done.returncode == 0, done.stderr
    finally:
        _stop(proc)
    got = read_requests(out / "requests.parquet")
    sim = run(scenario, trace).requests
    assert got["error"].isna().all(), got["error"].dropna().head()
    assert got["request_id"].tolist() == sim["request_id"].tolist()
    return got, sim


def _assert_identical(got: pd.DataFrame, sim: pd.DataFrame) -> None:
    cols = list(HIT_COLUMNS)
    differ = (got[cols].to_numpy() != sim[cols].to_numpy()).any(axis=1)
    table = pd.concat({"sim": sim[cols], "engine": got[cols]}, axis=1)
    first = int(np.argmax(differ))
    assert not differ.any(), f"first divergence at request {first}:\n{table[differ].head().to_string()}"


@pytest.mark.parametrize("eviction", ["lru", "fifo"])
def test_gpu_cpu_disk_hits_per_tier_equal_the_simulators(trace, tmp_path, eviction) -> None:
    """GPU 12, CPU 32, disk 64 blocks (LMCache's backends sized by ``capacity_blocks``): every
    tier evicts and serves hits, and each request's tokens per tier are the simulator's."""
    sc = _scenario(tmp_path, f"three-tier-{eviction}", eviction, cpu=32, disk=64)
    got, sim = _replay_and_simulate(sc, trace, tmp_path)
    for col in ("gpu_hit_tokens", "cpu_hit_tokens", "disk_hit_tokens"):
        assert sim[col].sum() > 0, col                  # every tier serves hits
    _assert_identical(got, sim)


def test_the_scenarios_evict_at_every_tier_and_expire_archive_objects(trace, tmp_path) -> None:
    from simkv.api import run

    summary = run(_scenario(tmp_path, "three-tier-lru", "lru", cpu=32, disk=64), trace).summary
    assert all(summary[f"evictions_{t}"] > 0 for t in ("gpu", "cpu", "disk")), summary
    archive = _scenario(tmp_path, "archive-static", "lru", cpu=None, disk=None, archive=True)
    summary = run(archive, trace).summary
    assert summary["expirations_archive"] > 0 and summary["evictions_gpu"] > 0, summary


def test_archive_hits_with_a_static_ttl_equal_the_simulators_on_the_trace_clock(trace, tmp_path) -> None:
    """GPU 12 blocks, a local-folder archive, a pass every 5 s of trace time, a fixed TTL of
    15 s: chunks are archived, expire, are archived again; each request's archive hits are the
    simulator's because the engine runs each pass at the simulator's time before the request
    that follows it."""
    arrivals = pd.read_parquet(trace, columns=["arrival_s"])["arrival_s"].to_numpy()
    assert not np.isin(arrivals, INTERVAL_S * np.arange(1, 100)).any()   # no arrival at a pass time
    sc = _scenario(tmp_path, "archive-static", "lru", cpu=None, disk=None, archive=True)
    got, sim = _replay_and_simulate(sc, trace, tmp_path, archive=str(tmp_path / "archive"))
    assert sim["archive_hit_tokens"].sum() > 0
    _assert_identical(got, sim)
