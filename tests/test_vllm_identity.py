"""The simulator against the real vLLM (CPU build, ``make install-vllm``): a replay at concurrency 1
reports ``cached_tokens`` identical, request by request, to ``simkv run``'s hit tokens with
``tiers.gpu.eviction: vllm`` — on the canned vLLM trace (the GPU pool evicts all the time) and on
a Mooncake-format trace (512-token blocks, 16 vLLM blocks each).

One vLLM server for the session, started as a user starts it (``simkv engine vllm --serve``),
its prefix cache reset between traces (vLLM's dev-mode ``/reset_prefix_cache``: a reset pool's
blocks all hold nothing, so the state equals a fresh server's). ``make test`` runs these apart
(``-m vllm``), after the rest."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import (
    ROOT,
    SIMKV,
    START_TIMEOUT_S,
    VLLM_SCENARIO,
    VllmServer,
    assert_user_error,
    free_port,
    simkv_cli,
    start_vllm,
    stop_vllm,
    vllm_python,
)

pytestmark = pytest.mark.vllm

SCENARIO = VLLM_SCENARIO
LMCACHE_SCENARIO = ROOT / "scenarios" / "vllm-lmcache-tiny.yaml"


def replay_and_simulate(server: VllmServer, tmp: Path, *extra: str,
                        scenario: Path = SCENARIO) -> pd.DataFrame:
    """Replay the trace through vLLM (one request at a time, each generating its trace's
    ``output_tokens``) and simulate it; the per-request rows of both, joined."""
    server.reset()
    rep = simkv_cli("replay", str(scenario), "--engine", server.url, "-o", str(tmp / "replay"),
                    "--speed", "max", "--concurrency", "1", "--max-tokens", "trace", *extra)
    assert rep.returncode == 0, rep.stderr
    sim = simkv_cli("run", str(scenario), "-o", str(tmp / "sim"), *extra)
    assert sim.returncode == 0, sim.stderr
    measured = pd.read_parquet(tmp / "replay" / "replay_requests.parquet")
    rows = pd.read_parquet(tmp / "replay" / "requests.parquet")
    simulated = pd.read_parquet(tmp / "sim" / "requests.parquet")
    assert rows["error"].isna().all(), rows["error"].dropna().head()
    return pd.DataFrame({"input_tokens": simulated["input_tokens"], "sim": simulated["hit_tokens"],
                         "sim_gpu": simulated["gpu_hit_tokens"], "sim_cpu": simulated["cpu_hit_tokens"],
                         "sim_disk": simulated["disk_hit_tokens"], "vllm": measured["cached_tokens"],
                         "completion_tokens": measured["completion_tokens"]})


def assert_identical(joined: pd.DataFrame) -> None:
    differ = joined[joined["sim"] != joined["vllm"]]
    assert differ.empty, f"{len(differ)} of {len(joined)} requests differ:\n{differ.head(20)}"


def test_cached_tokens_identical_on_the_canned_trace(vllm_server: VllmServer, tmp_path: Path) -> None:
    joined = replay_and_simulate(vllm_server, tmp_path)
    assert len(joined) == 300
    assert_identical(joined)
    hits = joined["vllm"]
    assert (hits > 0).sum() > 100                      # the trace reuses prefixes ...
    assert ((hits % 64) != 0).any()                    # ... at vLLM's 32-token granularity
    cut = joined[(joined["input_tokens"] % 64 == 0) & (hits > 0)]
    assert (cut["vllm"] < cut["input_tokens"]).all()   # a full hit recomputes its last block
    # the pool evicts: an infinite one would hit more
    big = simkv_cli("run", str(SCENARIO), "-o", str(tmp_path / "big"),
                    "--set", "tiers.gpu.capacity_blocks=100000")
    assert big.returncode == 0, big.stderr
    assert pd.read_parquet(tmp_path / "big" / "requests.parquet")["hit_tokens"].sum() > hits.sum()
    # every request generated its trace's output tokens (their full blocks are cached too)
    from simkv.traces.schema import read_trace
    assert (joined["completion_tokens"].to_numpy()
            == read_trace(ROOT / "traces" / "vllm-tiny.parquet").output_tokens).all()


def prompt_tokens_by_source(replay_dir: Path) -> dict[str, float]:
    """vLLM's ``vllm:prompt_tokens_by_source_total`` added by the replay, per source."""
    delta = json.loads((replay_dir / "replay.json").read_text())["sessions"][-1]["metrics_delta"]
    totals: dict[str, float] = {}
    for sample, value in delta.items():
        found = re.fullmatch(r'vllm:prompt_tokens_by_source_total\{.*source="(\w+)".*\}', sample)
        if found:
            totals[found.group(1)] = totals.get(found.group(1), 0.0) + value
    return totals


def test_lmcache_tiers_under_vllm_give_the_simulated_hits(tmp_path: Path) -> None:
    """vLLM over LMCache's CPU and disk tiers (simkv's CPU connector), its own server: every
    request's cached tokens are the simulator's, and vLLM's split of them (its prefix cache,
    LMCache's transfer) is the simulator's GPU hits and CPU + disk hits."""
    out = tmp_path / "server"
    proc, url = start_vllm(out, scenario=LMCACHE_SCENARIO)
    try:
        joined = replay_and_simulate(VllmServer(url, out, proc), tmp_path, scenario=LMCACHE_SCENARIO)
    finally:
        stop_vllm(proc)
    assert len(joined) == 300
    assert_identical(joined)
    lower = joined["sim_cpu"] + joined["sim_disk"]
    assert joined["sim_cpu"].sum() > 0 and joined["sim_disk"].sum() > 0  # both tiers serve
    by_source = prompt_tokens_by_source(tmp_path / "replay")
    assert by_source["local_cache_hit"] == joined["sim_gpu"].sum()
    assert by_source["external_kv_transfer"] == lower.sum()


def mooncake_rows(n: int = 60, seed: int = 3) -> list[dict[str, object]]:
    """A Mooncake-format trace: conversations that grow by whole 512-token blocks, some sharing
    a system prompt, prompt lengths not a multiple of 512 except a few."""
    rng = random.Random(seed)
    rows, next_id, t = [], 100, 0.0
    systems = [[1, 2], [3]]
    convs: list[list[int]] = []
    for _ in range(n):
        t += rng.uniform(10, 2000)
        if convs and rng.random() < 0.6:
            conv = rng.choice(convs)
            if len(conv) < 6:
                conv.append(next_id)
                next_id += 1
        else:
            conv = [*rng.choice(systems), next_id]
            next_id += 1
            convs.append(conv)
        full = len(conv) - 1
        tail = 0 if rng.random() < 0.15 else rng.randrange(1, 512)
        ids = conv[:full] + ([conv[full]] if tail else [])
        rows.append({"timestamp": int(t), "input_length": full * 512 + tail,
                     "output_length": rng.randrange(1, 40), "hash_ids": ids if tail else conv[:full]})
    return rows


def test_cached_tokens_identical_on_a_mooncake_trace(vllm_server: VllmServer, tmp_path: Path) -> None:
    src = tmp_path / "mooncake.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in mooncake_rows()))
    trace = tmp_path / "mooncake.parquet"
    imp = simkv_cli("trace", "import", "mooncake", str(src), "-o", str(trace))
    assert imp.returncode == 0, imp.stderr
    joined = replay_and_simulate(vllm_server, tmp_path, "--trace", str(trace), "--set", "block_size=512")
    assert_identical(joined)
    assert (joined["vllm"] > 0).sum() > 10 and ((joined["vllm"] % 512) != 0).any()


def test_a_vllm_that_fails_to_start_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([*SIMKV, "engine", "vllm", str(SCENARIO), "--serve", "--port", str(free_port()),
                           "-o", str(tmp_path), "--python", vllm_python(), "--max-model-len", "100000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert_user_error(proc, "vLLM exited with status", "max_model_len", "vllm.log")


def test_a_request_vllm_refuses_is_a_failed_row_with_its_reason(vllm_server: VllmServer,
                                                                tmp_path: Path) -> None:
    """vLLM answers 400 to ``max_tokens: 0``: the replay keeps every row with vLLM's reason, says
    how many failed, exits 1; a prompt longer than vLLM's context is refused before sending."""
    proc = simkv_cli("replay", str(SCENARIO), "--engine", vllm_server.url, "-o", str(tmp_path / "r"),
                     "--speed", "max", "--concurrency", "1", "--limit", "3", "--max-tokens", "0")
    assert proc.returncode == 1, proc.stderr
    assert "3 of 3 request(s) failed" in proc.stderr and "Traceback" not in proc.stderr
    rows = pd.read_parquet(tmp_path / "r" / "requests.parquet")
    assert len(rows) == 3 and rows["error"].str.startswith("HTTP 400: ").all(), rows["error"].tolist()
    assert rows["error"].str.contains("max_tokens").all()
    long = simkv_cli("replay", str(SCENARIO), "--engine", vllm_server.url, "-o", str(tmp_path / "l"),
                     "--speed", "max", "--limit", "3", "--max-tokens", "4000")
    assert_user_error(long, "3 of 3 requests exceed", "max_model_len of 4,064 tokens")


def test_sigterm_mid_replay_stops_vllm_and_the_replay_keeps_every_row(vllm_server: VllmServer,
                                                                     tmp_path: Path) -> None:
    """Last (it stops the session's server): SIGTERM to `simkv engine vllm --serve` while a replay
    runs stops vLLM and its engine core (the process group simkv started is gone) with exit 0;
    the replay records the requests it could not send as failed rows, says how many, exits 1."""
    log = (vllm_server.out / "vllm.log").read_text()
    group = int(re.search(r"\(APIServer pid=(\d+)\)", log).group(1))  # type: ignore[union-attr]
    vllm_server.reset()
    out = tmp_path / "replay"
    replay = subprocess.Popen([*SIMKV, "replay", str(SCENARIO), "--engine", vllm_server.url, "-o", str(out),
                               "--speed", "max", "--concurrency", "1", "--max-tokens", "trace",
                               "--flush-rows", "1", "--timeout", "30"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "parts").glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((out / "parts").glob("*.parquet")), "the replay served nothing"
    vllm_server.proc.send_signal(signal.SIGTERM)
    assert vllm_server.proc.wait(90) == 0
    assert "vLLM stopped" in (vllm_server.proc.stdout.read() if vllm_server.proc.stdout else "")
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    _, err = replay.communicate(timeout=300)
    assert replay.returncode == 1, err
    rows = pd.read_parquet(out / "requests.parquet")
    failed = int(rows["error"].notna().sum())
    assert len(rows) == 300 and 0 < failed < 300
    assert f"{failed} of 300 request(s) failed" in err and "Traceback" not in err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-p", "no:xdist"]))
