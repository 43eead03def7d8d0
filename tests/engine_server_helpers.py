"""Helpers of the engine server's tests: the tiny model's chunk and its bytes, the API key, an app
served by uvicorn on 127.0.0.1 in a thread, prompts, requests and ``/metrics`` as a client reads
them, and a scenario file for the real command. It imports the engine's dependencies: import it
after the test module's ``pytest.importorskip`` lines."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from simkv_engine.models import SHAPES
from simkv_engine.server import bind, server_config, url_of

CHUNK = 16
KEY = "test-key"
VOCAB = SHAPES["tiny"]["vocab_size"]
CHUNK_BYTES = CHUNK * 2 * SHAPES["tiny"]["num_hidden_layers"] * SHAPES["tiny"]["num_key_value_heads"] \
    * SHAPES["tiny"]["head_dim"] * 4


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


def complete(client, body: dict) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def lookup(client, p) -> dict:
    r = client.post("/kv/lookup", json={"prompt": p})
    assert r.status_code == 200, r.text
    return r.json()


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


# -- for the real command (``simkv engine serve``) -------------------------------------------------
def _scenario_file(tmp_path: Path, name: str = "engine.yaml", **extra) -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump({"block_size": CHUNK, "tiers": {
        "gpu": {"capacity_bytes": "1MiB"}, "cpu": {"enabled": True, "capacity_bytes": "4MiB"},
        "disk": {"enabled": True, "capacity_bytes": "8MiB"}}, **extra}))
    return path
