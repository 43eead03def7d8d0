"""The engine's HTTP server (engine/simkv_engine/server.py) as a client meets it: a real uvicorn
server on 127.0.0.1 (the tiny model on the CPU, real LMCache with CPU + disk tiers, chunk 16)
driven with httpx. Skipped where the engine's dependencies are absent (``make install`` installs
them)."""

from __future__ import annotations

import json
import threading
import time

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("transformers", reason="the engine needs transformers (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from simkv_engine.engine import KVEngine  # noqa: E402
from simkv_engine.models import SHAPES, load_model  # noqa: E402
from simkv_engine.server import create_app  # noqa: E402

from simkv.core.scenario import scenario_from_dict  # noqa: E402
from tests.engine_helpers import prompt  # noqa: E402
from tests.engine_server_helpers import (  # noqa: E402
    CHUNK,
    CHUNK_BYTES,
    KEY,
    VOCAB,
    assert_metric_types,
    complete,
    lookup,
    metrics,
    running,
)

CONTEXT = SHAPES["tiny"]["max_position_embeddings"]

GPU_CHUNKS, CPU_CHUNKS, DISK_CHUNKS = 64, 128, 256


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server in a background thread: ``(url, app, model)``; shut down gracefully."""
    model = load_model("tiny", "cpu", seed=0)
    sc = scenario_from_dict({"block_size": CHUNK, "tiers": {
        "gpu": {"capacity_bytes": GPU_CHUNKS * CHUNK_BYTES},
        "cpu": {"enabled": True, "capacity_bytes": CPU_CHUNKS * CHUNK_BYTES},
        "disk": {"enabled": True, "capacity_bytes": DISK_CHUNKS * CHUNK_BYTES}}})
    engine = KVEngine(sc, model, disk_path=tmp_path_factory.mktemp("disk"))
    app = create_app(engine, api_key=KEY, model_name="tiny")
    with running(app) as url:
        yield url, app, model
    engine.close()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def sse_events(client, body: dict) -> list:
    """The events of a streamed completion, in order (``"[DONE]"`` as the string)."""
    events = []
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: "), line
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def greedy(model, tokens: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([tokens]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(tokens):].tolist()


def test_completion_decodes_greedily_and_reports_usage(client, server):
    p = prompt(1, 3 * CHUNK + 5)
    body = complete(client, {"prompt": p, "max_tokens": 6, "request_id": "r-1", "model": "m"})
    assert body["id"] == "r-1" and body["model"] == "m" and body["object"] == "text_completion"
    choice = body["choices"][0]
    assert choice["token_ids"] == greedy(server[2], p, 6) and choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(p) and usage["completion_tokens"] == 6
    assert usage["total_tokens"] == len(p) + 6
    ours = usage["simkv"]
    assert sum(ours["tokens_by_source"].values()) == len(p)
    assert usage["prompt_tokens_details"]["cached_tokens"] == len(p) - ours["tokens_by_source"]["computed"]
    for name in ("queue_s", "load_s", "hydrate_s", "prefill_s", "store_s", "decode_s", "ttft_s"):
        assert ours[name] >= 0, name
    assert ours["ttft_s"] >= ours["queue_s"] + ours["prefill_s"]

    again = complete(client, {"prompt": p, "max_tokens": 0})
    assert again["choices"][0]["token_ids"] == [] and again["usage"]["completion_tokens"] == 0
    assert again["usage"]["simkv"]["tokens_by_source"]["gpu"] == 3 * CHUNK
    assert again["usage"]["simkv"]["bytes_loaded"]["gpu"] == 3 * CHUNK_BYTES


def test_streaming_sends_tokens_then_usage_then_done(client):
    p = prompt(2, 2 * CHUNK + 3)
    plain = complete(client, {"prompt": p, "max_tokens": 5})
    events = sse_events(client, {"prompt": p, "max_tokens": 5, "stream": True,
                                 "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    tokens, usage_chunk = events[:5], events[5]
    assert [e["choices"][0]["token_ids"][0] for e in tokens] == plain["choices"][0]["token_ids"]
    assert "".join(e["choices"][0]["text"] for e in tokens) == plain["choices"][0]["text"]
    assert [e["choices"][0]["finish_reason"] for e in tokens] == [None] * 4 + ["length"]
    assert usage_chunk["choices"] == [] and len(events) == 7
    usage = usage_chunk["usage"]
    by_source = usage["simkv"]["tokens_by_source"]
    assert usage["completion_tokens"] == 5 and by_source["gpu"] == 2 * CHUNK
    assert usage["prompt_tokens_details"]["cached_tokens"] == sum(by_source.values()) - by_source["computed"]

    no_usage = sse_events(client, {"prompt": p, "max_tokens": 2, "stream": True})
    assert len(no_usage) == 3 and all(e["choices"] for e in no_usage[:2]) and no_usage[-1] == "[DONE]"
    prefill_only = sse_events(client, {"prompt": p, "max_tokens": 0, "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert prefill_only[0]["choices"] == [] and prefill_only[0]["usage"]["completion_tokens"] == 0
    assert prefill_only[1:] == ["[DONE]"]


def test_text_prompts_are_utf8_bytes_for_random_weight_shapes(client):
    text = "Grüße, engine! " * 4
    ids = list(text.encode("utf-8"))
    first = complete(client, {"prompt": text, "max_tokens": 1})
    assert first["usage"]["prompt_tokens"] == len(ids)
    assert lookup(client, text) == lookup(client, ids)
    assert lookup(client, ids)["cached_tokens"] == len(ids) // CHUNK * CHUNK


def test_hits_per_tier_agree_with_lookup_and_clear(client):
    p = prompt(3, 4 * CHUNK)             # full chunks only: once cached, the last token is recomputed
    complete(client, {"prompt": p, "max_tokens": 1})

    before = lookup(client, p)
    assert before["tiers"] == ["gpu"] * 4 and before["cached_tokens"] == 4 * CHUNK
    usage = complete(client, {"prompt": p, "max_tokens": 1})["usage"]
    served = usage["simkv"]["tokens_by_source"]
    assert served["gpu"] == before["cached_tokens"] == 4 * CHUNK and served["computed"] == 0
    assert usage["simkv"]["recomputed_tokens"] == 1
    assert usage["prompt_tokens_details"]["cached_tokens"] == 4 * CHUNK - 1    # vLLM's: not computed

    r = client.post("/kv/clear", json={"tiers": ["gpu"]})
    assert r.status_code == 200 and r.json()["cleared"]["gpu"] >= 4
    before = lookup(client, p)
    assert before["tokens_by_source"] == {"gpu": 0, "cpu": 4 * CHUNK, "disk": 0, "remote": 0, "archive": 0}
    served = complete(client, {"prompt": p, "max_tokens": 1})["usage"]["simkv"]["tokens_by_source"]
    assert served == {"gpu": 0, "cpu": 4 * CHUNK, "disk": 0, "remote": 0, "archive": 0, "computed": 0}

    assert client.post("/kv/clear", json={"tiers": ["gpu", "cpu"]}).status_code == 200
    deadline = time.monotonic() + 30               # LMCache writes to disk asynchronously
    while (found := lookup(client, p))["tiers"] != ["disk"] * 4:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    served = complete(client, {"prompt": p, "max_tokens": 1})["usage"]["simkv"]["tokens_by_source"]
    assert served["disk"] == 4 * CHUNK and served["computed"] == 0


def test_metrics_follow_the_requests(client, server):
    m0 = metrics(client)
    p = prompt(4, 2 * CHUNK + 1)
    complete(client, {"prompt": p, "max_tokens": 2})
    second = complete(client, {"prompt": p, "max_tokens": 2})["usage"]["simkv"]
    assert client.post("/v1/completions", json={"prompt": [VOCAB]}).status_code == 400
    m1 = metrics(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return m1[key] - m0.get(key, 0.0)

    assert delta("simkv_requests_total") == 2
    assert delta("simkv_prompt_tokens_by_source_total", source="gpu") == second["tokens_by_source"]["gpu"] > 0
    assert delta("simkv_prompt_tokens_by_source_total", source="computed") == len(p) + 1
    assert delta("simkv_bytes_loaded_total", tier="gpu") == 2 * CHUNK_BYTES
    assert delta("simkv_bytes_stored_total", tier="cpu") == 2 * CHUNK_BYTES
    assert delta("simkv_ttft_seconds_count") == 2
    assert delta("simkv_request_errors_total", code="400") == 1
    assert m1[("simkv_queue_depth", ())] == 0
    engine = server[1].state.engine
    assert m1[("simkv_tier_bytes", (("tier", "gpu"),))] == len(engine.gpu_cache) * CHUNK_BYTES > 0
    assert m1[("simkv_tier_bytes", (("tier", "archive"),))] == 0
    assert_metric_types(client)

    # More chunks than every tier holds: each tier evicts (LMCache's CPU and disk backends too).
    for seed in range(3):
        complete(client, {"prompt": prompt(100 + seed, 100 * CHUNK), "max_tokens": 0})
    deadline = time.monotonic() + 30                  # LMCache writes to disk asynchronously
    for tier, capacity in (("gpu", GPU_CHUNKS), ("cpu", CPU_CHUNKS), ("disk", DISK_CHUNKS)):
        key = ("simkv_evictions_total", (("tier", tier),))
        while (evicted := metrics(client)[key] - m1[key]) < 300 - capacity:
            assert time.monotonic() < deadline, (tier, evicted)
            time.sleep(0.05)


def test_api_key_is_required_except_for_healthz(server, client):
    url = server[0]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions"),
                         ("POST", "/kv/lookup"), ("POST", "/kv/clear"), ("POST", "/kv/hydrate"),
                         ("POST", "/kv/archive")):
        r = httpx.request(method, url + path, json={"prompt": [1]})
        assert r.status_code == 401 and r.json()["error"]["code"] == 401, path
        r = httpx.request(method, url + path, json={"prompt": [1]}, headers={"Authorization": "Bearer no"})
        assert r.status_code == 401, path
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"


@pytest.mark.parametrize("path, body, needle", [
    ("/v1/completions", b'{"prompt": [1, 2', "not valid JSON"),
    ("/v1/completions", b'[1, 2]', "valid dictionary"),
    ("/v1/completions", {"max_tokens": 2}, "prompt: Field required"),
    ("/v1/completions", {"prompt": [1, VOCAB]}, f"token id {VOCAB} at position 1"),
    ("/v1/completions", {"prompt": [-1]}, "outside the vocabulary"),
    ("/v1/completions", {"prompt": [1] * (CONTEXT - 3), "max_tokens": 4}, "exceed the model's context"),
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": "many"}, "max_tokens"),
    ("/v1/completions", {"prompt": [[1, 2]]}, "one prompt per request"),
    ("/v1/completions", {"prompt": [1.5]}, "list of token ids"),
    ("/v1/completions", {"prompt": ""}, "empty"),
    ("/v1/completions", {"prompt": [1], "stream": "yes"}, "stream"),
    ("/kv/lookup", {"prompt": {"text": "x"}}, "list of token ids"),
    ("/kv/clear", {"tiers": ["archive"]}, "never touches the archive"),
    ("/kv/clear", {"tiers": ["ram"]}, "not a local tier"),
    ("/kv/hydrate", {"prompt": [1, 2]}, "no archive tier"),
    ("/kv/archive", {}, "no archive tier"),
    ("/nowhere", {}, "Not Found"),
])
def test_malformed_requests_get_a_4xx_json_error_and_the_server_keeps_serving(client, path, body, needle):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert 400 <= r.status_code < 600 and r.status_code != 500, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["code"] == r.status_code and error["type"]
    assert complete(client, {"prompt": [1, 2, 3], "max_tokens": 1})["usage"]["completion_tokens"] == 1


def test_one_worker_serves_in_arrival_order(client, server):
    """Hold the worker, queue three requests one after another, release: all complete, and each
    waited at least until the release plus the service of those queued before it (FIFO)."""
    worker = server[1].state.worker
    release = threading.Event()
    held = worker.submit(release.wait)
    results: dict[int, dict] = {}
    seen: list[float] = []

    def send(i: int) -> None:
        results[i] = complete(client, {"prompt": prompt(200 + i, 2 * CHUNK + i), "max_tokens": 8})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    try:
        while not held.running():
            time.sleep(0.001)
        for i, thread in enumerate(threads):
            thread.start()
            while worker.depth == i:                      # request i is queued (it has arrived)
                time.sleep(0.001)
            seen.append(time.perf_counter())
        assert metrics(client)[("simkv_queue_depth", ())] == 3
    finally:
        released = time.perf_counter()
        release.set()
    held.result(30)
    for thread in threads:
        thread.join(60)
    served_before = 0.0
    for i in range(3):
        ours = results[i]["usage"]["simkv"]
        assert ours["queue_s"] >= released - seen[i] + served_before, i
        served_before += ours["load_s"] + ours["prefill_s"] + ours["store_s"] + ours["decode_s"]


def test_kv_archive_runs_one_pass_and_says_what_it_did(tmp_path):
    """``POST /kv/archive`` on an engine with a local-folder archive (no background worker):
    the chunks a request stored are uploaded by the pass it triggers, its counts agree with the
    index and ``/metrics``, and after clearing the local tiers the lookup finds them archived."""
    from simkv_engine.archive import ArchiveOptions

    sc = scenario_from_dict({"block_size": CHUNK, "tiers": {
        "gpu": {"capacity_bytes": GPU_CHUNKS * CHUNK_BYTES},
        "cpu": {"enabled": True, "capacity_bytes": CPU_CHUNKS * CHUNK_BYTES},
        "archive": {"enabled": True, "codec": "zlib"}},
        "ttl": {"heuristic": "static", "params": {"ttl": 3600}}})
    engine = KVEngine(sc, load_model("tiny", "cpu", seed=0), disk_path=tmp_path / "disk",
                      archive=ArchiveOptions(tmp_path / "archive", worker_thread=False))
    p = prompt(900, 3 * CHUNK + 5)
    try:
        with running(create_app(engine, api_key=KEY)) as url, \
                httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            complete(c, {"prompt": p, "max_tokens": 0})
            r = c.post("/kv/archive")
            assert r.status_code == 200, r.text
            did = r.json()
            assert did["passes"] == 1 and did["uploads"] == 3 and did["objects"] == 3
            assert did["upload_bytes"]["raw"] == 3 * CHUNK_BYTES
            assert 0 < did["upload_bytes"]["stored"] == engine.archive.snapshot()["stored_bytes"]
            assert did["compress_s"] > 0 and did["upload_s"] > 0 and did["seconds"] > 0
            assert did["codec"] == "zlib" and not any(did["errors"].values())
            assert len(list((tmp_path / "archive").rglob("*.meta.json"))) == 3
            m = metrics(c)
            assert m[("simkv_archive_uploads_total", ())] == 3 and m[("simkv_archive_objects", ())] == 3
            assert m[("simkv_bytes_stored_total", (("tier", "archive"),))] == 3 * CHUNK_BYTES    # raw
            assert m[("simkv_tier_bytes", (("tier", "archive"),))] == did["upload_bytes"]["stored"]
            stored = did["upload_bytes"]["stored"]
            assert m[("simkv_archive_upload_bytes_total", (("kind", "stored"),))] == stored
            assert_metric_types(c)
            c.post("/kv/clear", json={"tiers": ["gpu", "cpu", "disk"]})
            assert lookup(c, p)["tiers"] == ["archive"] * 3
            again = c.post("/kv/archive").json()      # nothing new was referenced
            assert again["uploads"] == 0 and again["objects"] == 3
    finally:
        engine.close()
