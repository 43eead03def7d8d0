"""``simkv replay`` end to end through the real engine server (the tiny model on the CPU, real
LMCache, real HTTP on 127.0.0.1): rows join ``simkv run``'s request by request, an interrupted
replay resumes with each request exactly once, failed requests are rows, and a wrong block size or
an unreachable engine is refused before any row."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from simkv.core.schema import read_requests, request_metadata
from simkv.replay.parts import part_files
from simkv.traces.schema import build_table, write_trace
from tests.conftest import assert_user_error, simkv_cli

pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")

BLOCK = 16
GPU_BLOCKS = 64
TINY_VOCAB = 512


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A generated trace of the tiny shape (block size 16; its last request moved 10^5 s later so
    a paced replay is still running when interrupted) and a deterministic scenario: one LRU GPU
    tier of 64 blocks, no other tier, zero service time."""
    from simkv.traces.generator import generate, generator_config

    d = tmp_path_factory.mktemp("replay")
    ov = ["block_size=16", "system_prompt_tokens=96", "tool_schema_tokens=48", "session_context_tokens=64",
          "user_tokens=24", "answer_tokens=8", "rag_tokens=80", "batch_doc_tokens=80", "tool_call_tokens=8",
          "tool_result_tokens=40", "max_context_tokens=600", "n_agent_types=3"]
    gen = generate(generator_config(seed=3, n_requests=40, overrides=ov))
    cols = gen.table.to_pydict()
    # a repeat of request 5 with its tail cut: a prompt of whole blocks, all cached
    for values in cols.values():
        values.insert(6, values[5])
    cols["request_id"][6] = "whole-blocks-repeat"
    cols["input_tokens"][6] = len(cols["block_hashes"][6]) * BLOCK
    cols["arrival_s"][-1] = cols["arrival_s"][-2] + 1e5
    trace = build_table(cols, block_size=gen.block_size, source="test")
    write_trace(trace, d / "trace.parquet")
    scenario = {"name": "replay-lru", "block_size": BLOCK,
                "tiers": {"gpu": {"capacity_blocks": GPU_BLOCKS, "eviction": "lru"},
                          "cpu": {"enabled": False}, "disk": {"enabled": False},
                          "archive": {"enabled": False}},
                "hardware": {"zero_service_time": True}, "load_policy": "always"}
    (d / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    return {"trace": d / "trace.parquet", "scenario": d / "scenario.yaml", "dir": d}


@pytest.fixture(scope="module")
def engine(files):
    """The engine server (a subprocess, port 0) serving the scenario with the tiny model."""
    code = ("import sys\nfrom simkv.core.scenario import load_scenario\n"
            "from simkv_engine.server import serve\n"
            "serve(load_scenario(sys.argv[1]), model='tiny', device='cpu', port=0,\n"
            "      on_ready=lambda url: print(url, flush=True))\n")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(files["scenario"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    url = proc.stdout.readline().strip() if ready else ""
    if not url.startswith("http"):
        proc.kill()
        pytest.fail(f"the engine server did not start: {proc.stderr.read()[-2000:]}")
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _post(url: str, path: str, body: dict) -> dict:
    import httpx

    resp = httpx.post(f"{url}{path}", json=body, timeout=60)
    resp.raise_for_status()
    return resp.json()


def _replay(files, engine, out: Path, *extra: str):
    return simkv_cli("replay", str(files["scenario"]), "--trace", str(files["trace"]), "--engine", engine,
                     "--vocab-size", str(TINY_VOCAB), "-o", str(out), *extra)


def test_replay_rows_join_simkv_run_request_by_request(files, engine, tmp_path) -> None:
    """GPU-only LRU, zero service time, one request in flight (the server then sees them in
    trace order): the engine's GPU hits equal the simulator's for every request, including a
    fully cached prompt of whole blocks (the engine loads every chunk and recomputes only the
    last token for its logits, counted apart as ``recomputed_tokens``)."""
    from simkv.api import run

    _post(engine, "/kv/clear", {"tiers": ["gpu"]})
    proc = _replay(files, engine, tmp_path / "out", "--speed", "max", "--concurrency", "1")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    got = read_requests(out / "requests.parquet")
    sim = run(files["scenario"], files["trace"])
    meta = request_metadata(out / "requests.parquet")
    assert meta["trace_sha256"] == sim.summary["trace_sha256"]
    assert meta["scenario_sha256"] == sim.summary["scenario_sha256"]
    assert got["request_id"].tolist() == sim.requests["request_id"].tolist()
    assert got["error"].isna().all()
    n, full = sim.requests["input_tokens"], sim.requests["hit_blocks"] == sim.requests["blocks"]
    all_cached = (n % BLOCK == 0) & full & (sim.requests["blocks"] > 0)
    assert all_cached.any()                         # the trace exercises the last-token recompute
    differ = got["gpu_hit_tokens"] != sim.requests["gpu_hit_tokens"]
    assert not differ.any(), pd.DataFrame({"sim": sim.requests["gpu_hit_tokens"],
                                           "engine": got["gpu_hit_tokens"]})[differ]
    assert (got[["cpu_hit_tokens", "disk_hit_tokens", "archive_hit_tokens"]] == 0).all().all()
    assert (got["hit_tokens"] == got["gpu_hit_tokens"]).all() and got["gpu_hit_tokens"].sum() > 0
    assert got["ttft_s"].gt(0).all() and got["queue_s"].notna().all()
    for col in ("ttft_nocache_s", "prefix_blocks", "gpu_seconds_saved", "gpu_held_bytes", "preemptions"):
        assert got[col].isna().all(), col          # unknown to the client: null, never 0
    assert got["output_tokens"].tolist() == sim.requests["output_tokens"].tolist()
    assert (got["e2e_s"] >= got["ttft_s"]).all() and got["tpot_s"].isna().all()  # one token each
    extra = pd.read_parquet(out / "replay_requests.parquet")
    assert (extra["computed_tokens"] == got["input_tokens"] - got["hit_tokens"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == len(sim.requests) and summary["requests_failed"] == 0
    assert summary["hit_tokens"] == got["hit_tokens"].sum()
    assert summary["token_hit_rate"] == pytest.approx(got["hit_tokens"].sum() / got["input_tokens"].sum())
    rj = json.loads((out / "replay.json").read_text())
    delta = rj["sessions"][0]["metrics_delta"]
    assert delta["simkv_requests_total"] == len(got)
    assert delta['simkv_prompt_tokens_by_source_total{source="gpu"}'] == got["gpu_hit_tokens"].sum()
    assert rj["errors"] == 0 and rj["speed"] == "max"


def test_an_interrupted_replay_resumes_with_each_request_once(files, engine, tmp_path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "simkv.cli", "replay", str(files["scenario"]), "--trace",
           str(files["trace"]), "--engine", engine, "--vocab-size", str(TINY_VOCAB), "-o", str(out),
           "--speed", "50", "--concurrency", "2", "--flush-rows", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(part_files(out)) < 3:               # the last request is due 2000 s from now
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (out / "requests.parquet").exists()
    kept = pd.concat([pq.read_table(p).to_pandas() for p in part_files(out)])
    assert 3 <= len(kept) < 41 and kept["request_id"].is_unique

    again = _replay(files, engine, out)          # without --resume: refused, nothing touched
    assert_user_error(again, "--resume")
    done = _replay(files, engine, out, "--resume", "--speed", "max")
    assert done.returncode == 0, done.stderr
    rows = pd.concat([pq.read_table(p).to_pandas() for p in part_files(out)])
    assert len(rows) == 41 and rows["request_id"].is_unique
    got = read_requests(out / "requests.parquet")
    trace_ids = pq.read_table(files["trace"]).column("request_id").to_pylist()
    assert got["request_id"].tolist() == trace_ids
    assert set(rows.loc[rows["session"] == 0, "request_id"]) == set(kept["request_id"])
    assert len(json.loads((out / "replay.json").read_text())["sessions"]) == 2


def test_requests_longer_than_the_engine_context_are_refused_or_skipped(files, engine, tmp_path) -> None:
    """More tokens asked for than the tiny model's context (its max_model_len, 4096, from GET
    /v1/models): refused before any request is sent, in one line; with --skip-too-long every
    request is a skipped row with its reason, and the replay completes (exit 0)."""
    args = ("replay", str(files["scenario"]), "--trace", str(files["trace"]), "--engine", engine,
            "--max-tokens", "100000", "--speed", "max")
    refused = simkv_cli(*args, "-o", str(tmp_path / "refused"))
    assert_user_error(refused, "41 of 41 requests", "max_model_len of 4,096", "--skip-too-long")
    assert part_files(tmp_path / "refused") == []
    proc = simkv_cli(*args, "--skip-too-long", "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "41 request(s) skipped" in proc.stderr
    got = read_requests(tmp_path / "out" / "requests.parquet")
    assert len(got) == 41 and got["error"].str.startswith("skipped: ").all()
    assert got["error"].str.contains("max_model_len 4096").all()
    assert got[["ttft_s", "hit_tokens", "gpu_hit_tokens"]].isna().all().all()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["requests_skipped"] == 41 and summary["requests_failed"] == 0
    assert summary["token_hit_rate"] is None


class FlakyEngine:
    """A real OpenAI-style HTTP server on 127.0.0.1 that answers 503 to its first ``fail_first``
    completions (an engine that crashed and came back) and serves the rest with ``max_tokens``
    streamed tokens, ``token_gap_s`` apart; it reports ``max_model_len`` and records the request
    ids it was sent."""

    def __init__(self, fail_first: int = 0, max_model_len: int = 4096, token_gap_s: float = 0.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.fail_first, self.max_model_len = fail_first, max_model_len
        self.sent: list[str] = []
        lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True    # each streamed token leaves when written

            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._json(200, {"data": [{"id": "flaky", "max_model_len": engine.max_model_len,
                                               "vocab_size": TINY_VOCAB}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/completions":
                    self._json(404, {"error": {"message": "not found"}})
                    return
                with lock:
                    engine.sent.append(body["request_id"])
                    fail = len(engine.sent) <= engine.fail_first
                if fail:
                    self._json(503, {"error": {"message": "engine crashed"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                tokens = body["max_tokens"]
                usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": tokens,
                         "prompt_tokens_details": {"cached_tokens": 0}}
                token = {"choices": [{"text": "x", "index": 0}]}
                for k in range(tokens):
                    if k:
                        time.sleep(token_gap_s)
                    self.wfile.write(f"data: {json.dumps(token)}\n\n".encode())
                self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        class Server(ThreadingHTTPServer):
            request_queue_size = 128          # the replay opens up to 64 connections at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_resume_retries_the_failed_requests_and_a_failed_replay_exits_1(files, tmp_path) -> None:
    """An engine that fails the first 5 requests: the replay writes every row, says how many
    failed and how to retry, and exits 1; --resume sends only those 5 again, their new rows
    replace the failed ones (one row per request, trace order) and it exits 0. parts/ keeps
    both attempts."""
    out = tmp_path / "out"
    with FlakyEngine(fail_first=5) as server:
        first = _replay(files, server.url, out, "--speed", "max", "--concurrency", "1")
        assert first.returncode == 1, first.stderr
        assert "Traceback" not in first.stderr
        assert "5 of 41 request(s) failed" in first.stderr and "--resume" in first.stderr
        got = read_requests(out / "requests.parquet")
        failed = got.loc[got["error"].notna(), "request_id"].tolist()
        assert failed == server.sent[:5] and got["error"].dropna().eq("HTTP 503: engine crashed").all()
        assert json.loads((out / "summary.json").read_text())["requests_failed"] == 5

        again = _replay(files, server.url, out, "--resume", "--speed", "max")
        assert again.returncode == 0, again.stderr
        assert "36 of 41 requests already served; retrying 5" in again.stderr
        assert sorted(server.sent[41:]) == sorted(failed)
    got = read_requests(out / "requests.parquet")
    assert got["error"].isna().all() and got["ttft_s"].notna().all()
    assert got["request_id"].tolist() == pq.read_table(files["trace"]).column("request_id").to_pylist()
    extra = pd.read_parquet(out / "replay_requests.parquet")
    assert set(extra.loc[extra["session"] == 1, "request_id"]) == set(failed)
    rows = pd.concat([pq.read_table(p).to_pandas() for p in part_files(out)])
    assert len(rows) == 46 and rows["error"].notna().sum() == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests_failed"] == 0 and summary["requests"] == 41


def test_too_long_requests_are_skipped_explicitly_and_the_rest_served(files, tmp_path) -> None:
    """An engine whose context is shorter than some prompts: with --skip-too-long those are
    skipped rows (never sent), the others served; --resume with a longer context sends them."""
    n = pq.read_table(files["trace"]).column("input_tokens").to_numpy()
    ids = pq.read_table(files["trace"]).column("request_id").to_pylist()
    context = int(np.median(n))
    long_ids = [rid for rid, k in zip(ids, n, strict=True) if k + 1 > context]
    out = tmp_path / "out"
    with FlakyEngine(max_model_len=context) as server:
        refused = _replay(files, server.url, out, "--speed", "max")
        assert_user_error(refused, f"{len(long_ids)} of 41 requests", f"max_model_len of {context}",
                          f"needs {n.max()} + 1")
        proc = _replay(files, server.url, out, "--speed", "max", "--skip-too-long")
        assert proc.returncode == 0, proc.stderr
        assert sorted(server.sent) == sorted(set(ids) - set(long_ids))
    got = read_requests(out / "requests.parquet")
    assert got.loc[got["error"].notna(), "request_id"].tolist() == long_ids
    assert json.loads((out / "summary.json").read_text())["requests_skipped"] == len(long_ids)
    with FlakyEngine(max_model_len=4096) as server:
        again = _replay(files, server.url, out, "--speed", "max", "--resume")
        assert again.returncode == 0, again.stderr
        assert sorted(server.sent) == sorted(long_ids)
    assert read_requests(out / "requests.parquet")["error"].isna().all()


def test_a_replay_of_a_slice_joins_the_run_of_the_same_slice(files, tmp_path) -> None:
    from simkv.api import run
    from simkv.traces.slicing import TraceSlice

    spec = TraceSlice(limit=7, sample=0.5, sample_by="request", seed=1)
    with FlakyEngine() as server:
        proc = _replay(files, server.url, tmp_path / "out", "--speed", "max", "--concurrency", "1",
                       "--limit", "7", "--sample", "0.5", "--sample-by", "request", "--sample-seed", "1")
        assert proc.returncode == 0, proc.stderr
        assert len(server.sent) == 7
    sim = run(files["scenario"], files["trace"], trace_slice=spec)
    meta = request_metadata(tmp_path / "out" / "requests.parquet")
    assert meta["trace_sha256"] == sim.summary["trace_sha256"]
    got = read_requests(tmp_path / "out" / "requests.parquet")
    assert got["request_id"].tolist() == sim.requests["request_id"].tolist() == server.sent
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["trace_slice"] == sim.summary["trace_slice"]


def test_a_replay_fills_the_decode_columns(files, tmp_path) -> None:
    """Three tokens streamed 10 ms apart: ``e2e_s`` is the client's send → last token (between
    the first token and the end of the stream), ``tpot_s`` = (e2e − ttft) / (tokens − 1), null
    with a single token; ``preemptions`` stays null (the client cannot know it);
    ``output_tokens`` is the trace's whatever ``--max-tokens`` asked."""
    trace_out = pq.read_table(files["trace"]).column("output_tokens").to_pylist()[:4]
    with FlakyEngine(token_gap_s=0.01) as server:
        for tokens in ("3", "1"):
            proc = _replay(files, server.url, tmp_path / tokens, "--speed", "max", "--concurrency", "1",
                           "--limit", "4", "--max-tokens", tokens)
            assert proc.returncode == 0, proc.stderr
    got = read_requests(tmp_path / "3" / "requests.parquet")
    extra = pd.read_parquet(tmp_path / "3" / "replay_requests.parquet")
    assert got["output_tokens"].tolist() == trace_out
    assert (extra["completion_tokens"] == 3).all()
    assert (got["ttft_s"] <= got["e2e_s"]).all() and (got["e2e_s"] <= extra["total_s"]).all()
    np.testing.assert_allclose(got["tpot_s"], (got["e2e_s"] - got["ttft_s"]) / 2, rtol=1e-12)
    assert got["tpot_s"].notna().all() and got["preemptions"].isna().all()
    one = read_requests(tmp_path / "1" / "requests.parquet")
    assert one["tpot_s"].isna().all() and (one["e2e_s"] == one["ttft_s"]).all()
    assert one["preemptions"].isna().all()


def test_a_vocabulary_the_engine_contradicts_is_refused(files, engine, tmp_path) -> None:
    proc = simkv_cli("replay", str(files["scenario"]), "--trace", str(files["trace"]), "--engine", engine,
                     "--vocab-size", "100000", "-o", str(tmp_path / "out"))
    assert_user_error(proc, "--vocab-size", "100000", "512")


def test_a_block_size_mismatch_is_refused(files, tmp_path) -> None:
    proc = simkv_cli("replay", str(files["scenario"]), "--trace", str(files["trace"]), "--engine",
                     "http://127.0.0.1:9", "--set", "block_size=32", "-o", str(tmp_path / "out"))
    assert_user_error(proc, "block_size", "32", "16")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_engine_is_refused_before_any_row(files, tmp_path) -> None:
    import socket

    with socket.socket() as s:                      # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _replay(files, f"http://127.0.0.1:{port}", tmp_path / "out")
    assert_user_error(proc, "unreachable", str(port))
    assert part_files(tmp_path / "out") == []
