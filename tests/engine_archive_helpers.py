"""Helpers of the engine archive's tests: a manual engine clock, a TCP proxy that injects faults
in front of the S3 server, the scenario, prompts, dropping a prompt's chunks from every local
tier, the logits of a full prefill, and an archived object's metadata. It imports the engine's
dependencies: import it after the test module's ``pytest.importorskip`` lines."""

from __future__ import annotations

import socket
import threading
import time

import torch
from simkv_engine.engine import KVEngine
from simkv_engine.models import SHAPES

from simkv.core.scenario import scenario_from_dict

CHUNK = 16
T0 = 1_800_000_000.0


class Clock:
    """Engine time the test moves by hand."""

    scale = 1.0

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server, to inject faults: ``delay`` seconds
    before each piece of a response is passed on (a stalled endpoint); ``stop()`` closes its
    port and its connections (an unreachable endpoint), ``start()`` reopens the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.delay = 0.0
        self.port = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.05)
        self.port = sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, args=(sock, self._stop), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def _accept(self, sock: socket.socket, stop: threading.Event) -> None:
        with sock:
            while not stop.is_set():
                try:
                    client, _ = sock.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                upstream = socket.create_connection(self.upstream)
                self._conns += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        try:
            while data := src.recv(65536):
                if response and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            src.close()
            dst.close()


def scenario(gpu_chunks: int | None = None, *, ttl: dict | None = None, codec: str = "zstd", **extra):
    gpu = {"capacity_bytes": "unlimited" if gpu_chunks is None else gpu_chunks * _chunk_bytes()}
    return scenario_from_dict({
        "block_size": CHUNK,
        "tiers": {"gpu": gpu, "cpu": {"enabled": True, "capacity_bytes": "32MiB"},
                  "disk": {"enabled": True, "capacity_bytes": "64MiB"},
                  "archive": {"enabled": True, "codec": codec, "interval_s": 60}},
        "ttl": ttl or {"heuristic": "per_class", "params": {"default_ttl": 100, "class_ttl": {"chat": 600}}},
        **extra})


def _chunk_bytes() -> int:
    s = SHAPES["tiny"]
    return CHUNK * 2 * s["num_hidden_layers"] * s["num_key_value_heads"] * s["head_dim"] * 4


def forget_locally(engine: KVEngine, tokens: list[int]) -> None:
    """Drop every chunk from the GPU cache, LMCache's CPU and its disk (after its writes land)."""
    disk = engine._backends["disk"]
    deadline = time.monotonic() + 30
    while not all(disk.contains(k) for k in engine.chunk_keys(tokens)):
        assert time.monotonic() < deadline, "LMCache's disk writes did not finish in 30 s"
        time.sleep(0.01)
    engine.lmcache.clear(tokens[: len(tokens) // CHUNK * CHUNK])
    for key in list(engine.gpu_cache.chunks):
        engine.gpu_cache.policy.drop(key)
        del engine.gpu_cache.chunks[key]
    where = engine.lookup(tokens)
    assert all(t == "archive" for t in where), where


def full_prefill(model, tokens):
    with torch.inference_mode():
        out = model(torch.tensor([tokens]), use_cache=True)
    return out.logits[0], [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def assert_logits_of_a_full_prefill(model, tokens, result) -> None:
    full = full_prefill(model, tokens)[0][len(tokens) - result.computed_tokens:]
    torch.testing.assert_close(result.logits, full, rtol=1e-5, atol=1e-5)


def _meta(location, engine, h: int) -> dict[str, str]:
    loc, _url, client = location
    name = engine.archive.name(h)
    if client is None:
        return engine.archive.store.head(name)[1]
    bucket, prefix = loc.removeprefix("s3://").split("/", 1)
    return client.head_object(Bucket=bucket, Key=f"{prefix}/{name}")["Metadata"]
