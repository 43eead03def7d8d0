"""``simkv replay``, the client without an engine: pacing on a fake clock, the metrics text and
its deltas, the parts and their resume, and the completion count of a stream whose chunks carry
several tokens (a stub HTTP server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import heapq
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from simkv.core.errors import SimkvError
from simkv.core.prometheus import parse_metrics
from simkv.core.schema import REQUEST_COLUMNS
from simkv.replay.client import metric_deltas
from simkv.replay.pacing import Send, pace
from simkv.replay.parts import PartWriter, part_files, read_parts


# -- pacing on a fake clock ---------------------------------------------------------------------
class FakeClock:
    """Virtual time: ``sleep`` parks the caller until :meth:`run` advances time to its wake-up
    (earliest first, once every task is blocked); ``overshoot`` is added to every sleep (a late
    wake-up, as a loaded machine gives)."""

    def __init__(self, overshoot: float = 0.0) -> None:
        self.t = 0.0
        self.overshoot = overshoot
        self.waiters: list[tuple[float, int, asyncio.Future]] = []
        self.seq = 0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiters, (self.t + max(seconds, 0.0) + self.overshoot, self.seq, fut))
        self.seq += 1
        await fut

    def run(self, coro) -> None:
        async def main() -> None:
            task = asyncio.create_task(coro)
            while not task.done():
                for _ in range(50):                 # let every runnable task block
                    await asyncio.sleep(0)
                if task.done():
                    break
                assert self.waiters, "deadlock: nothing sleeps and nothing runs"
                t, _, fut = heapq.heappop(self.waiters)
                self.t = max(self.t, t)
                fut.set_result(None)
            task.result()

        asyncio.run(main())


def paced(arrivals, speed, concurrency, service_s, overshoot=0.0) -> list[Send]:
    clock = FakeClock(overshoot)
    sends: list[Send] = []

    async def send(s: Send) -> None:
        sends.append(s)
        await clock.sleep(service_s)

    clock.run(pace(arrivals, speed, concurrency, send, clock))
    return sends


def test_requests_go_out_at_their_scaled_arrival_times_when_slots_are_free() -> None:
    arrivals = [10.0, 11.0, 11.0, 15.0]
    sends = paced(arrivals, speed=2.0, concurrency=4, service_s=1.5)
    assert [s.index for s in sends] == [0, 1, 2, 3]
    assert [s.sent_s for s in sends] == [(a - arrivals[0]) / 2.0 for a in arrivals]
    assert all(s.lag_s == 0 for s in sends)


def test_a_request_due_while_every_slot_is_busy_waits_and_its_lag_is_recorded() -> None:
    # one slot, 1.5 s per request: each goes out when the previous one ends
    sends = paced([0.0, 1.0, 1.0, 5.0], speed=2.0, concurrency=1, service_s=1.5)
    due = [0.0, 0.5, 0.5, 2.5]
    ends = np.cumsum([1.5] * 4)
    expect_sent = [max(d, prev_end) for d, prev_end in zip(due, [0.0, *ends[:-1]], strict=True)]
    assert [s.due_s for s in sends] == due
    assert [s.sent_s for s in sends] == expect_sent
    assert [s.lag_s for s in sends] == [s - d for s, d in zip(expect_sent, due, strict=True)]


def test_speed_max_sends_as_fast_as_the_concurrency_allows() -> None:
    sends = paced([0.0, 100.0, 200.0, 300.0], speed=None, concurrency=2, service_s=1.0)
    assert [s.sent_s for s in sends] == [0.0, 0.0, 1.0, 1.0]


def test_late_wake_ups_do_not_accumulate() -> None:
    """Each request is slept towards from the start (absolute), so a wake-up 0.1 s late makes
    every request 0.1 s late, not the n-th one n × 0.1 s."""
    sends = paced([0.0, 1.0, 2.0, 3.0, 4.0], speed=1.0, concurrency=8, service_s=0.0, overshoot=0.1)
    assert [round(s.lag_s, 9) for s in sends] == [0.0, 0.1, 0.1, 0.1, 0.1]


# -- prompts, metrics text, parts -----------------------------------------------------------------
def test_metrics_text_keeps_the_cache_counters_and_their_deltas() -> None:
    before = parse_metrics('# HELP x\nsimkv_requests_total 3.0\nprocess_cpu 9\n'
                           'vllm:prefix_cache_hits_total{model_name="m"} 10\n')
    after = parse_metrics('simkv_requests_total 5.0\nvllm:prefix_cache_hits_total{model_name="m"} 14\n'
                          'simkv_prompt_tokens_by_source_total{source="gpu"} 32\n')
    assert before == {"simkv_requests_total": 3.0, 'vllm:prefix_cache_hits_total{model_name="m"}': 10.0}
    assert metric_deltas(before, after) == {
        "simkv_prompt_tokens_by_source_total{source=\"gpu\"}": 32.0, "simkv_requests_total": 2.0,
        'vllm:prefix_cache_hits_total{model_name="m"}': 4.0}
    assert metric_deltas(None, after) is None
    # vLLM's timings: their sums and counts (where a replay's TTFT goes), not their buckets
    timings = parse_metrics('vllm:time_to_first_token_seconds_sum{model_name="m"} 1.5\n'
                            'vllm:time_to_first_token_seconds_count{model_name="m"} 10\n'
                            'vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 4\n'
                            'vllm:request_prefill_time_seconds_sum{model_name="m"} 0.9\n'
                            'vllm:num_requests_running{model_name="m"} 2\n')
    assert timings == {'vllm:time_to_first_token_seconds_sum{model_name="m"}': 1.5,
                       'vllm:time_to_first_token_seconds_count{model_name="m"}': 10.0,
                       'vllm:request_prefill_time_seconds_sum{model_name="m"}': 0.9}


def _row(rid: str) -> dict:
    return {c: None for c in REQUEST_COLUMNS} | {"request_id": rid, "arrival_s": 0.0, "prompt_class": "x",
                                                 "input_tokens": 20, "output_tokens": 1, "blocks": 1,
                                                 "ttft_s": 0.5}


def test_parts_are_appended_atomically_and_refuse_another_trace(tmp_path) -> None:
    w = PartWriter(tmp_path, "t" * 64, "s" * 64, every_rows=2, every_s=1e9)
    for rid in ("a", "b", "c"):
        w.add(_row(rid))
    assert len(part_files(tmp_path)) == 1          # "c" still buffered
    w.flush()
    w2 = PartWriter(tmp_path, "t" * 64, "s" * 64)   # a resumed session numbers on
    w2.add(_row("d"))
    w2.flush()
    assert [p.name for p in part_files(tmp_path)] == [f"part-{i:05d}.parquet" for i in range(3)]
    rows = read_parts(tmp_path, "t" * 64, "s" * 64)
    assert rows["request_id"].tolist() == ["a", "b", "c", "d"]
    assert rows["hit_tokens"].isna().all()                            # unknown stays null
    assert not [p for p in (tmp_path / "parts").iterdir() if p.name.startswith(".")]
    with pytest.raises(Exception, match="another trace"):
        read_parts(tmp_path, "u" * 64, "s" * 64)


def test_parts_of_an_older_schema_are_refused(tmp_path) -> None:
    """A replay's parts written before schema version 4 (no ``output_tokens``, no decode
    columns) cannot be resumed into version-4 rows: refused, naming the part."""
    w = PartWriter(tmp_path, "t" * 64, "s" * 64)
    w.add(_row("a"))
    w.flush()
    (path,) = part_files(tmp_path)
    old = pq.read_table(path)
    pq.write_table(old.drop_columns(["output_tokens", "e2e_s", "tpot_s", "preemptions"]), path)
    with pytest.raises(SimkvError, match=f"{path}: rows of another per-request schema"):
        read_parts(tmp_path, "t" * 64, "s" * 64)


def test_completion_tokens_are_the_servers_count_when_chunks_carry_several(tmp_path) -> None:
    """vLLM streams several tokens in one chunk when the client lags: the usage's
    ``completion_tokens`` is the count, not the number of chunks."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    from simkv.replay.client import complete

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            usage = {"prompt_tokens": 4, "completion_tokens": 5}
            for event in ({"choices": [{"text": "ab", "index": 0}]},
                          {"choices": [{"text": "cde", "index": 0}]}, {"choices": [], "usage": usage}):
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        async def go():
            async with httpx.AsyncClient() as client:
                return await complete(client, f"http://127.0.0.1:{server.server_address[1]}",
                                      {"prompt": [1, 2, 3, 4], "max_tokens": 5}, 10.0)
        out = asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    assert out.error is None and out.completion_tokens == 5
