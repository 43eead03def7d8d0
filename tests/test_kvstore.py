"""The remote tier's groundwork: a real Redis-protocol server (simkv_engine.kvstore) and LMCache's
remote backend on it, per-key TTL included."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import torch
from lmcache.utils import mock_up_broadcast_fn, mock_up_broadcast_object_fn
from lmcache.v1.cache_engine import LMCacheEngine, LMCacheEngineBuilder
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.standalone.manager import StandaloneLMCacheManager
from redis.backoff import NoBackoff
from redis.retry import Retry
from simkv_engine import lmcache_glue
from simkv_engine.connector import HFKVConnector
from simkv_engine.engine_types import EngineError
from simkv_engine.kvstore import KVStoreServer, lmcache_remote_options
from simkv_engine.models import KVShape

from simkv.core.lmcache import GIB
from tests.conftest import ROOT, SIMKV, assert_user_error, simkv_cli

#: The tiny model's KV shape (models.SHAPES["tiny"] in float32): 512 bytes a token.
TINY = KVShape(layers=2, kv_heads=2, head_dim=16, dtype=torch.float32)
CHUNK = 16
CHUNKS = 3


def test_server_starts_serves_and_stops_leaving_nothing() -> None:
    with KVStoreServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}"
        client = server.client()
        assert client.set("k", b"v", ex=60) and client.get("k") == b"v"
        assert client.ttl("k") == 60
        assert client.config_get("save") == {"save": ""}          # nothing written to disk
        pid, folder = server.proc.pid, server._dir
        assert folder is not None and Path(folder).is_dir()
        client.close()
    assert not Path(f"/proc/{pid}").exists()                     # stopped and reaped
    assert not Path(folder).exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0)).ping()
    server.stop()                                                 # idempotent


def test_kvstore_command_serves_until_sigterm() -> None:
    proc = subprocess.Popen([*SIMKV, "engine", "kvstore", "--port", "0", "--maxmemory", "1MiB",
                             "--policy", "volatile-ttl"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "kvstore serving at redis://127.0.0.1:" in line, line + proc.stderr.read()
        client = redis.Redis.from_url(line.split("serving at", 1)[1].strip())
        assert client.config_get("maxmemory") == {"maxmemory": str(1 << 20)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-ttl"}
        pid = client.info("server")["process_id"]
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "kvstore stopped" in out
    assert not Path(f"/proc/{pid}").exists()


def test_kvstore_command_refuses_an_unknown_policy_in_one_line() -> None:
    assert_user_error(simkv_cli("engine", "kvstore", "--policy", "lru"), "--policy", "'lru'", "volatile-ttl")


def test_a_taken_port_is_one_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EngineError, match=f"did not start on 127.0.0.1:{port}"):
            KVStoreServer(port).start()


@pytest.mark.parametrize(("url", "ttl", "needle"), [
    ("valkey://127.0.0.1:6379", None, "redis://HOST:PORT"),
    ("redis://127.0.0.1:6379", 0, "ttl_s"),
    ("redis://127.0.0.1:6379", 1.5, "ttl_s"),
    ("redis://127.0.0.1:6379", True, "ttl_s"),
])
def test_lmcache_remote_options_refuse_bad_input(url: str, ttl: object, needle: str) -> None:
    with pytest.raises(EngineError, match=needle):
        lmcache_remote_options(url, ttl)  # type: ignore[arg-type]


def test_lmcache_remote_options_without_ttl_set_none() -> None:
    opts = lmcache_remote_options("redis://127.0.0.1:6379")
    assert opts["remote_url"] == "valkey://127.0.0.1:6379"
    assert "valkey_enable_ttl" not in opts["extra_config"]


def remote_only_lmcache(url: str, ttl_s: int | None, instance_id: str) -> StandaloneLMCacheManager:
    """LMCache as the engine builds it (standalone manager, our connector), with its remote
    backend on ``url`` and no CPU or disk tier: the CPU backend is only its staging buffer."""
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=CHUNK, local_cpu=False, max_local_cpu_size=8 * TINY.chunk_bytes(CHUNK) / GIB,
        local_disk=None, max_local_disk_size=0.0, lmcache_instance_id=instance_id,
        save_unfull_chunk=False, **lmcache_remote_options(url, ttl_s))
    metadata = LMCacheMetadata(
        model_name="simkv-engine/llama", world_size=1, local_world_size=1, worker_id=0,
        local_worker_id=0, kv_dtype=TINY.dtype, kv_shape=TINY.lmcache_kv_shape(CHUNK), chunk_size=CHUNK)
    manager = StandaloneLMCacheManager(
        config=config, metadata=metadata, gpu_connector=HFKVConnector(TINY, torch.device("cpu")),
        broadcast_fn=mock_up_broadcast_fn, broadcast_object_fn=mock_up_broadcast_object_fn)
    manager.post_init()
    return manager


@pytest.fixture
def remote_lmcache(kv_store: KVStoreServer) -> Iterator[LMCacheEngine]:
    """LMCache whose only tier is the session's server, keys written with a 1 s TTL."""
    kv_store.client().flushdb()
    manager = remote_only_lmcache(kv_store.url, 1, "simkv-test-kvstore")
    lmc = manager.lmcache_engine
    assert lmc is not None and lmc.is_healthy()
    assert [n for n in lmc.storage_manager.storage_backends if n != "LocalCPUBackend"] == ["RemoteBackend"]
    try:
        yield lmc
    finally:
        manager.stop_services()
        LMCacheEngineBuilder.destroy("simkv-test-kvstore")


def kv_layers(tokens: int, seed: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer a (K, V) of ``tokens`` tokens: random from ``seed``, or zeros (None)."""
    gen = torch.Generator().manual_seed(seed or 0)
    shape = (1, TINY.kv_heads, tokens, TINY.head_dim)
    return [tuple(torch.randn(shape, generator=gen) if seed is not None else torch.zeros(shape)
                  for _ in "KV") for _ in range(TINY.layers)]  # type: ignore[misc]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_lmcache_remote_round_trip_and_ttl_expiry(kv_store: KVStoreServer,
                                                  remote_lmcache: LMCacheEngine) -> None:
    lmc, client = remote_lmcache, kv_store.client()
    n = CHUNKS * CHUNK
    tokens = list(range(1, n + 1))
    stored = kv_layers(n, seed=1)
    lmc.store(tokens, kvcaches=stored)
    keys = [key.to_string().encode() for key in lmcache_glue.chunk_keys(lmc, tokens)]
    # The remote put is asynchronous: each chunk one key, its bytes, with the TTL set at the put.
    assert wait_for(lambda: client.exists(*keys) == CHUNKS)
    assert sorted(client.keys()) == sorted(keys)
    for key in keys:
        assert client.strlen(key) == TINY.chunk_bytes(CHUNK)
        assert 0 < client.pttl(key) <= 1000
    ttl_before = max(client.pttl(key) for key in keys)

    loaded = kv_layers(n, seed=None)
    got = lmc.retrieve(tokens, kvcaches=loaded)
    assert bool(got.all())
    for (k0, v0), (k1, v1) in zip(stored, loaded, strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert max(client.pttl(key) for key in keys) <= ttl_before    # a get does not refresh the TTL

    assert wait_for(lambda: client.exists(*keys) == 0)            # expired in the server
    assert lmc.lookup(tokens=tokens, lookup_id="after-ttl", pin=False) == 0
    assert not bool(lmc.retrieve(tokens, kvcaches=kv_layers(n, seed=None)).any())
