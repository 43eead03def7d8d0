"""The engine's HTTP server (engine/simkv_engine/server.py) as a client meets it: a real uvicorn
server on 127.0.0.1 (the tiny model on the CPU, real LMCache with CPU + disk tiers, chunk 16)
driven with httpx; and the real ``simkv engine serve`` command in a subprocess. Skipped where
the engine's dependencies are absent (``make install`` installs them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("transformers", reason="the engine needs transformers (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from simkv_engine.engine import KVEngine  # noqa: E402
from simkv_engine.models import SHAPES, load_model  # noqa: E402
from simkv_engine.server import bind, create_app, server_config, url_of  # noqa: E402

from simkv.scenario import scenario_from_dict  # noqa: E402
from tests.conftest import ROOT, SIMKV, assert_user_error  # noqa: E402

CHUNK = 16
KEY = "test-key"
VOCAB = SHAPES["tiny"]["vocab_size"]
CONTEXT = SHAPES["tiny"]["max_position_embeddings"]
CHUNK_BYTES = CHUNK * 2 * SHAPES["tiny"]["num_hidden_layers"] * SHAPES["tiny"]["num_key_value_heads"] \
    * SHAPES["tiny"]["head_dim"] * 4
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


@contextmanager
def running(app):
    """``app`` served by uvicorn (as ``simkv engine serve`` serves it) on a free port of
    127.0.0.1 in a background thread: its URL."""
    sock = bind("127.0.0.1", 0)
    srv = uvicorn.Server(server_config(app))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock)
    finally:
        srv.should_exit = True
        thread.join(30)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def prompt(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (n,), generator=g).tolist()


def complete(client, body: dict) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def lookup(client, p) -> dict:
    r = client.post("/kv/lookup", json={"prompt": p})
    assert r.status_code == 200, r.text
    return r.json()


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


def metrics(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


#: The levels in ``/metrics`` (what is there now): gauges, named without ``_total``.
LEVELS = {"simkv_queue_depth", "simkv_tier_bytes", "simkv_archive_objects", "simkv_archive_stored_bytes",
          "simkv_archive_compression_ratio"}


def assert_metric_types(client) -> None:
    """Levels are gauges (no ``_total``), the engine's other values counters (``_total``);
    prometheus_client's ``*_created`` timestamps aside."""
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)
                if f.name.startswith("simkv_") and not f.name.endswith("_created")}
    for name, family in families.items():
        if name in LEVELS:
            assert family.type == "gauge" and all(s.name == name for s in family.samples), name
        elif family.type == "counter":
            assert all(s.name == f"{name}_total" for s in family.samples), name
        else:
            assert family.type == "histogram" and name == "simkv_ttft_seconds", (name, family.type)
    assert {"simkv_queue_depth", "simkv_tier_bytes", "simkv_requests", "simkv_bytes_stored"} <= set(families)


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
    assert before["tokens_by_source"] == {"gpu": 0, "cpu": 4 * CHUNK, "disk": 0, "archive": 0}
    served = complete(client, {"prompt": p, "max_tokens": 1})["usage"]["simkv"]["tokens_by_source"]
    assert served == {"gpu": 0, "cpu": 4 * CHUNK, "disk": 0, "archive": 0, "computed": 0}

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


# -- the real command -----------------------------------------------------------------------------
def _scenario_file(tmp_path: Path, name: str = "engine.yaml", **extra) -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump({"block_size": CHUNK, "tiers": {
        "gpu": {"capacity_bytes": "1MiB"}, "cpu": {"enabled": True, "capacity_bytes": "4MiB"},
        "disk": {"enabled": True, "capacity_bytes": "8MiB"}}, **extra}))
    return path


def test_engine_serve_command_serves_then_drains_on_sigterm(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "1"}      # the command re-runs itself with 0
    proc = subprocess.Popen([*SIMKV, "engine", "serve", str(_scenario_file(tmp_path)), "--port", "0",
                             "--api-key", KEY, "--disk-path", str(tmp_path / "disk")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split("serving at ")[1].strip()
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            assert complete(c, {"prompt": "hello engine", "max_tokens": 2})["usage"]["completion_tokens"] == 2
            # SIGTERM while a request streams: it finishes, then the process exits 0.
            with c.stream("POST", "/v1/completions", json={"prompt": [1] * 40, "max_tokens": 64,
                                                            "stream": True}) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: {")
                proc.send_signal(signal.SIGTERM)
                rest = [ln for ln in lines if ln]
        assert len(rest) == 64 and rest[-1] == "data: [DONE]"
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "warning:" not in stderr     # loopback, with a key


def test_engine_serve_command_user_errors(tmp_path):
    sc = _scenario_file(tmp_path)
    run = lambda *args: subprocess.run([*SIMKV, "engine", "serve", *args], cwd=ROOT,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    assert_user_error(run(str(sc), "--set", "tiers.gpu.bogus=1"), "tiers.gpu.bogus")
    assert_user_error(run(str(_scenario_file(tmp_path, "no-chunk.yaml", block_size=None))), "block_size")
    assert_user_error(run(str(sc), "--log-level", "loud"), "--log-level")
    assert_user_error(run(str(sc), "--max-body", "lots"), "--max-body", "'lots' is not a size")
    assert_user_error(run(str(sc), "--max-body", "0"), "--max-body", "must be a size > 0")
    assert_user_error(run(str(sc), "--max-body", "2GiB"), "--max-body", "at most 1GiB")
    assert_user_error(run(str(sc), "--disk-path", ""), "--disk-path", "an empty path")
    assert_user_error(run(str(sc), "--read-timeout", "0"), "--read-timeout", "must be > 0")
    with bind("127.0.0.1", 0) as taken:
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_user_error(run(str(sc), "--port", port), "--port " + port, "cannot listen")
