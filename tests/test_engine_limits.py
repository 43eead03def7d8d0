"""What a connection or request may cost the engine's HTTP server (engine/simkv_engine/server.py),
met over raw sockets on 127.0.0.1 where a client library would hide it: the body-size limit,
the headers' and the body's read deadline, bounded names, text that is not Unicode, requests
whose client left before they were served, and the warning of an exposed server without a key."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import pytest

pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
httpx = pytest.importorskip("httpx")

from simkv_engine.engine import KVEngine  # noqa: E402
from simkv_engine.models import load_model  # noqa: E402
from simkv_engine.server import MAX_NAME_CHARS, Limits, create_app, is_loopback  # noqa: E402

from simkv.core.scenario import scenario_from_dict  # noqa: E402
from tests.conftest import ROOT, SIMKV  # noqa: E402
from tests.engine_server_helpers import CHUNK, CHUNK_BYTES, KEY, _scenario_file, metrics, running  # noqa: E402

LIMITS = Limits(max_body_bytes=16 * 1024, read_timeout_s=1.0)
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server (GPU tier only) with small limits: ``(url, app)``."""
    sc = scenario_from_dict({"block_size": CHUNK, "tiers": {"gpu": {"capacity_bytes": 64 * CHUNK_BYTES}}})
    engine = KVEngine(sc, load_model("tiny", "cpu", seed=0), disk_path=tmp_path_factory.mktemp("disk"))
    app = create_app(engine, api_key=KEY, limits=LIMITS)
    with running(app) as url:
        yield url, app
    engine.close()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], headers=AUTH, timeout=60) as c:
        yield c


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=15)


def head(path: str, **headers: str) -> bytes:
    """A POST's request line and headers (with the API key)."""
    lines = [f"POST {path} HTTP/1.1", "Host: engine", f"Authorization: Bearer {KEY}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sock: socket.socket) -> tuple[int, dict, dict]:
    """The response read from ``sock``: status, headers (lower-case names), JSON body."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) rather than leaving it open."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def errors(client, code: int) -> float:
    return metrics(client).get(("simkv_request_errors_total", (("code", str(code)),)), 0.0)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server, client):
    before = errors(client, 413)
    with connect(server[0]) as sock:
        sock.sendall(head("/v1/completions", Content_Type="application/json", Content_Length="1000000000"))
        status, headers, body = answer(sock)
        assert status == 413 and headers["connection"] == "close"
        assert body["error"]["code"] == 413 and body["error"]["type"] == "request_too_large"
        assert f"limit of {LIMITS.max_body_bytes} bytes" in body["error"]["message"]
        assert closed_by_server(sock)
    assert errors(client, 413) == before + 1


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(server, client):
    """The body never ends (no last chunk): the server answers once it has read past the limit."""
    with connect(server[0]) as sock:
        sock.sendall(head("/v1/completions", Content_Type="application/json", Transfer_Encoding="chunked"))
        piece = b" " * 4096
        for _ in range(LIMITS.max_body_bytes // len(piece) + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, _, body = answer(sock)
        assert status == 413 and body["error"]["type"] == "request_too_large"
    assert client.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 1}).status_code == 200


def test_a_body_of_exactly_the_limit_is_served(client):
    body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 1}).encode()
    body += b" " * (LIMITS.max_body_bytes - len(body))
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_partial_headers_are_closed_at_the_read_timeout(server):
    """A connection that sends part of its headers, on its own or after a served request, is
    closed by the server once ``read_timeout_s`` has passed (not before)."""
    with connect(server[0]) as fresh, connect(server[0]) as reused:
        reused.sendall(head("/kv/lookup", Content_Type="application/json", Content_Length="15")
                       + b'{"prompt": [1]}')
        assert answer(reused)[0] == 200
        t0 = time.monotonic()
        for sock in (fresh, reused):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: eng")
        for sock in (fresh, reused):
            assert closed_by_server(sock)
        assert time.monotonic() - t0 >= LIMITS.read_timeout_s * 0.9


def test_a_body_that_stops_arriving_gets_408(server, client):
    before = errors(client, 408)
    with connect(server[0]) as sock:
        sock.sendall(head("/v1/completions", Content_Type="application/json", Content_Length="100")
                     + b'{"prompt": ')
        status, headers, body = answer(sock)
        assert status == 408 and headers["connection"] == "close"
        assert body["error"]["type"] == "request_timeout" and "--read-timeout" in body["error"]["message"]
    assert errors(client, 408) == before + 1


@pytest.mark.parametrize("body, needle", [
    ({"prompt": [1], "request_id": "r" * (MAX_NAME_CHARS + 1)}, "request_id: String should have at most"),
    ({"prompt": [1], "model": "m" * (MAX_NAME_CHARS + 1)}, "model: String should have at most"),
    ({"prompt": [1], "prompt_class": "c" * (MAX_NAME_CHARS + 1)}, "prompt_class: String should have at most"),
    ('{"prompt": "ab\\ud800cd"}', "prompt: not valid Unicode text: a lone UTF-16 surrogate at character 2"),
    ('{"prompt": [1], "request_id": "\\udfff"}', "request_id: Input should be a valid string"),
])
def test_long_names_and_lone_surrogates_get_400_on_a_connection_that_stays_open(server, client, body, needle):
    before = errors(client, 400)
    conn = http.client.HTTPConnection(urlsplit(server[0]).netloc, timeout=60)
    try:
        payload = body if isinstance(body, str) else json.dumps(body)
        conn.request("POST", "/v1/completions", payload, {**AUTH, "Content-Type": "application/json"})
        resp = conn.getresponse()
        error = json.loads(resp.read())["error"]
        assert resp.status == 400 and error["code"] == 400 and needle in error["message"], error
        sock = conn.sock
        assert sock is not None                                    # kept alive, then reused
        conn.request("POST", "/v1/completions", json.dumps({"prompt": [1, 2], "max_tokens": 1}),
                     {**AUTH, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["usage"]["completion_tokens"] == 1
        assert conn.sock is sock
    finally:
        conn.close()
    assert errors(client, 400) == before + 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_whose_client_left_before_it_was_served_is_skipped(server, client, stream):
    """Hold the worker, queue a completion over a raw socket and close it: the request is
    cancelled (499, counted) and the worker never runs it."""
    worker, engine = server[1].state.worker, server[1].state.engine
    requests0, gone0 = engine.counters()["requests"], errors(client, 499)
    release = threading.Event()
    held = worker.submit(release.wait)
    try:
        while not held.running():
            time.sleep(0.001)
        body = json.dumps({"prompt": [5] * 40, "max_tokens": 4, "stream": stream}).encode()
        with connect(server[0]) as sock:
            sock.sendall(head("/v1/completions", Content_Type="application/json",
                              Content_Length=str(len(body))) + body)
            deadline = time.monotonic() + 30
            while worker.depth == 0:                       # queued behind the held job
                assert time.monotonic() < deadline
                time.sleep(0.001)
        while errors(client, 499) == gone0:                # the server saw it leave
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        release.set()
    held.result(30)
    assert client.post("/v1/completions", json={"prompt": [7, 8], "max_tokens": 1}).status_code == 200
    assert engine.counters()["requests"] == requests0 + 1   # only the last one ran
    assert errors(client, 499) == gone0 + 1


def test_is_loopback():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.1", "no-such-host.invalid"))


def test_an_exposed_address_without_an_api_key_warns_at_start(tmp_path):
    """The real command on 0.0.0.0 without a key: one warning line on stderr; its --max-body
    is the server's limit."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([*SIMKV, "engine", "serve", str(_scenario_file(tmp_path)), "--host", "0.0.0.0",
                             "--port", "0", "--disk-path", str(tmp_path / "disk"), "--max-body", "1KiB"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        assert "serving at http://0.0.0.0:" in ready, ready
        port = ready.rsplit(":", 1)[1].strip()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", content=b" " * 1025,
                       headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 413 and "limit of 1024 bytes" in r.json()["error"]["message"]
    finally:
        proc.kill()
        proc.wait()
    warnings = [ln for ln in proc.stderr.read().splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: --host 0.0.0.0 without --api-key: anyone who can reach this address "
                        "can use the engine (set --api-key or SIMKV_API_KEY)"]
