"""The engine's remote tier: LMCache's remote backend on a real Redis-protocol server (the session's
``kv_store``), behind the engine's tier walk: loads bit-exact, TTL expiry a miss, counters per
tier, and the scenarios it refuses."""

from __future__ import annotations

import socket
import time

import pytest
import yaml

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")

from simkv_engine.backends import TierBackend  # noqa: E402
from simkv_engine.engine import EngineError, KVEngine  # noqa: E402
from simkv_engine.kvstore import KVStoreServer  # noqa: E402
from simkv_engine.models import load_model  # noqa: E402

from simkv.core.errors import ScenarioError  # noqa: E402
from simkv.core.lmcache import lmcache_config  # noqa: E402
from simkv.core.scenario import scenario_from_dict  # noqa: E402
from tests import test_replay_identity as identity  # noqa: E402
from tests.conftest import assert_user_error, simkv_cli  # noqa: E402
from tests.engine_helpers import engine_factory, prompt  # noqa: E402

CHUNK = 16


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return identity.identity_trace(tmp_path_factory)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", "cpu", seed=0)


def scenario(*, cpu: bool = False, ttl_s: float | None = None, **extra):
    """GPU cache of nothing (every chunk comes from below), an optional CPU tier, the remote tier."""
    remote: dict = {"enabled": True, "ttl_s": ttl_s, **extra.pop("remote", {})}
    return scenario_from_dict({
        "block_size": CHUNK,
        "tiers": {"gpu": {"capacity_bytes": 0}, "cpu": {"enabled": cpu, "capacity_bytes": "32MiB"},
                  "disk": {"enabled": False}, "remote": remote},
        **extra})


@pytest.fixture
def store(kv_store: KVStoreServer) -> KVStoreServer:
    kv_store.client().flushdb()
    return kv_store


@pytest.fixture
def make_engine(model, store):
    yield from engine_factory(lambda i, sc=None, **kwargs: KVEngine(
        sc or scenario(), model, remote_url=store.url, deterministic=True, **kwargs))


def full_prefill(model, tokens):
    with torch.inference_mode():
        return model(torch.tensor([tokens]), use_cache=True)


@pytest.mark.parametrize("cpu", [False, True])
def test_a_chunk_gone_from_the_gpu_is_served_from_the_remote_store_bit_exact(make_engine, model, store, cpu):
    engine = make_engine(scenario(cpu=cpu))
    assert [t.name for t in engine.tiers] == ["gpu", *(["cpu"] if cpu else []), "remote"]
    remote = engine.tier("remote")
    assert isinstance(remote, TierBackend) and not remote.local and remote.writes_through
    # a remote read fills the CPU (LMCache's write-back): such a chunk is written to no tier
    assert [t.name for t in engine._targets(remote)] == []
    assert [t.name for t in engine._targets(None)] == [*(["cpu"] if cpu else []), "remote"]
    tokens = prompt(5, 3 * CHUNK + 9)
    engine.serve(tokens)
    assert store.client().dbsize() == 3                    # landed: the deterministic wait
    if cpu:
        engine.clear(["cpu"])
    assert engine.lookup(tokens) == ["remote"] * 3
    result = engine.serve(tokens, all_logits=True)
    assert result.hit_tokens == {"gpu": 0, "cpu": 0, "disk": 0, "remote": 3 * CHUNK, "archive": 0}
    full = full_prefill(model, tokens)
    loaded = result.past_key_values
    for layer, ref in zip(loaded.layers, full.past_key_values.layers, strict=True):
        assert torch.equal(layer.keys[:, :, :3 * CHUNK], ref.keys[:, :, :3 * CHUNK])
        assert torch.equal(layer.values[:, :, :3 * CHUNK], ref.values[:, :, :3 * CHUNK])
    torch.testing.assert_close(result.logits, full.logits[0, 3 * CHUNK:], rtol=1e-5, atol=1e-5)
    if cpu:   # LMCache writes a remote read back into the CPU backend: the next read is the CPU's
        assert engine.lookup(tokens) == ["cpu"] * 3


def test_an_expired_key_is_a_miss(make_engine, store):
    engine = make_engine(scenario(ttl_s=1))
    tokens = prompt(6, 2 * CHUNK)
    engine.serve(tokens)
    client = store.client()
    assert all(0 < client.pttl(k) <= 1000 for k in client.scan_iter())
    assert engine.lookup(tokens) == ["remote"] * 2
    deadline = time.monotonic() + 5
    while client.dbsize() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.lookup(tokens) == []
    result = engine.serve(tokens)
    assert result.hit_tokens["remote"] == 0 and result.computed_tokens == len(tokens)
    assert engine.counters()["expirations"] == {"remote": 2}


def test_counters_per_tier_include_the_remote(make_engine, store):
    engine = make_engine()
    a, b = prompt(7, 2 * CHUNK + 3), prompt(8, 3 * CHUNK)
    engine.serve(a)
    engine.serve(b)
    engine.serve(a)
    c = engine.counters()
    chunk_bytes = engine.chunk_bytes
    assert c["prompt_tokens_by_source"]["remote"] == 2 * CHUNK
    assert c["bytes_loaded"]["remote"] == 2 * chunk_bytes
    # 5 chunks put, then the 2 served by the remote put again by the next store? No: a chunk a
    # tier served is not written back to it, so 5 puts hold 5 keys.
    assert c["bytes_stored"]["remote"] == 5 * chunk_bytes
    assert c["tier_bytes"]["remote"] == 5 * chunk_bytes
    assert c["expirations"] == {"remote": 0}
    store.client().flushdb()                                # gone from the server: counted once
    assert engine.counters()["tier_bytes"]["remote"] == 0
    assert engine.counters()["expirations"] == {"remote": 5}
    assert engine.health() == []


def test_a_closed_port_is_one_error_naming_the_url(model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]               # closed once the block ends
    url = f"redis://127.0.0.1:{port}"
    with pytest.raises(EngineError, match=f"^{url}: the remote KV store does not answer"):
        KVEngine(scenario(), model, remote_url=url)


def test_serve_with_a_closed_remote_port_is_one_error_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sc = tmp_path / "remote.yaml"
    sc.write_text(yaml.safe_dump({"block_size": CHUNK, "tiers": {"remote": {"enabled": True}}}))
    proc = simkv_cli("engine", "serve", str(sc), "--port", "0", "--remote", f"redis://127.0.0.1:{port}")
    assert_user_error(proc, f"redis://127.0.0.1:{port}: the remote KV store does not answer")


@pytest.mark.parametrize(("sc", "needle"), [
    (lambda: scenario(), "needs the remote KV store's URL"),
    (lambda: scenario(ttl_s=1.5), "tiers.remote.ttl_s: 1.5"),
    (lambda: scenario(remote={"capacity_blocks": 10}), "tiers.remote.capacity"),
    (lambda: scenario(ttl={"heuristic": "static", "scope": "remote"}), "ttl.scope: 'remote'"),
])
def test_the_engine_refuses_what_lmcaches_remote_backend_cannot_do(model, sc, needle):
    with pytest.raises(ScenarioError, match=needle):
        KVEngine(sc(), model)


def test_the_vllm_setup_still_refuses_the_remote_tier():
    with pytest.raises(ScenarioError, match="the vLLM setup does not build LMCache's remote backend"):
        lmcache_config(scenario(), "/tmp/disk")


@pytest.mark.parametrize("cpu", [None, 32])
def test_remote_hits_per_tier_equal_the_simulators_on_the_trace_clock(trace, tmp_path, store, cpu):
    """GPU 12 blocks (CPU 32 or none) over an unlimited remote store without TTL, the trace of
    tests/test_replay_identity.py replayed through the engine server: each request's tokens per
    tier are the simulator's (the remote store holds every chunk ever stored; what the GPU and
    CPU evicted comes back from it)."""
    tiers = {"gpu": {"capacity_blocks": 12}, "cpu": {"enabled": cpu is not None, "capacity_blocks": cpu},
             "disk": {"enabled": False}, "remote": {"enabled": True}}
    sc = tmp_path / "remote.yaml"
    sc.write_text(yaml.safe_dump({"name": "remote", "block_size": identity.BLOCK, "tiers": tiers,
                                  "hardware": {"zero_service_time": True}, "load_policy": "always"}))
    got, sim = identity._replay_and_simulate(sc, trace, tmp_path, remote=store.url)
    assert sim["remote_hit_tokens"].sum() > 0 and sim["gpu_hit_tokens"].sum() > 0
    if cpu:
        assert sim["cpu_hit_tokens"].sum() > 0
    identity._assert_identical(got, sim)
