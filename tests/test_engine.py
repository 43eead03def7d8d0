"""The engine (engine/): the tiny model on the CPU with real LMCache (CPU + disk backends):
our connector's round trip, prefix semantics, logits of a continued prefill, and the
per-tier hit accounting of the walk. Skipped where the engine's dependencies are absent
(``make install`` installs them)."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("transformers", reason="the engine needs transformers (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")

from simkv_engine.engine import EngineError, KVEngine  # noqa: E402
from simkv_engine.models import SHAPES, ModelError, load_model  # noqa: E402

from simkv.core.errors import ScenarioError  # noqa: E402
from simkv.core.scenario import scenario_from_dict  # noqa: E402
from tests.engine_helpers import engine_factory, prompt  # noqa: E402

CHUNK = 16


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", "cpu", seed=0)


def scenario(gpu_chunks: int | None = 0, *, cpu: bool = True, disk: bool = True, **extra):
    """``gpu_chunks``: the GPU cache's capacity in chunks of the tiny model (via bytes)."""
    gpu = {"capacity_bytes": "unlimited" if gpu_chunks is None else gpu_chunks * _chunk_bytes()}
    return scenario_from_dict({
        "block_size": CHUNK,
        "tiers": {"gpu": gpu, "cpu": {"enabled": cpu, "capacity_bytes": "32MiB"},
                  "disk": {"enabled": disk, "capacity_bytes": "64MiB"}},
        **extra})


def _chunk_bytes() -> int:
    """A chunk's K and V over all layers, float32 (the tiny model's dtype on the CPU)."""
    s = SHAPES["tiny"]
    return CHUNK * 2 * s["num_hidden_layers"] * s["num_key_value_heads"] * s["head_dim"] * 4


@pytest.fixture
def make_engine(model, tmp_path):
    yield from engine_factory(lambda i, sc=None: KVEngine(sc or scenario(), model,
                                                           disk_path=tmp_path / f"disk{i}"))


def random_kv(engine: KVEngine, tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (1, engine.kv.kv_heads, tokens, engine.kv.head_dim)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
            for _ in range(engine.kv.layers)]


def wait_on_disk(engine: KVEngine, tokens: list[int]) -> None:
    """LMCache writes to disk asynchronously: wait (bounded) until every full chunk is there."""
    disk = engine._backends["disk"]
    deadline = time.monotonic() + 30
    keys = engine.chunk_keys(tokens)
    while not all(disk.contains(k) for k in keys):
        assert time.monotonic() < deadline, "LMCache's disk writes did not finish in 30 s"
        time.sleep(0.01)


def test_engine_is_healthy_and_sized_from_the_scenario(make_engine):
    engine = make_engine(scenario(gpu_chunks=3))
    assert engine.lmcache.is_healthy()
    assert engine.chunk_bytes == _chunk_bytes()
    assert engine.gpu_cache.capacity == 3
    assert engine.lmcache.config.chunk_size == CHUNK
    assert engine.lmcache.metadata.kv_shape == (2, 2, CHUNK, 2, 16)


def test_connector_round_trip_is_bit_exact_from_cpu_and_disk(make_engine):
    engine = make_engine()
    tokens = prompt(1, 3 * CHUNK)
    kv = random_kv(engine, len(tokens))
    engine.lmcache.store(tokens, kvcaches=kv)
    assert engine.lmcache.lookup(tokens) == 3 * CHUNK
    assert engine.lookup(tokens) == ["cpu"] * 3

    got = engine._empty_kv(len(tokens))
    assert bool(engine.lmcache.retrieve(tokens, kvcaches=got).all())
    for (k, v), (k2, v2) in zip(kv, got, strict=True):
        assert torch.equal(k, k2) and torch.equal(v, v2)

    wait_on_disk(engine, tokens)
    engine.lmcache.clear(locations=["LocalCPUBackend"])
    assert engine.lookup(tokens) == ["disk"] * 3
    got = engine._empty_kv(len(tokens))
    assert bool(engine.lmcache.retrieve(tokens, kvcaches=got).all())
    for (k, v), (k2, v2) in zip(kv, got, strict=True):
        assert torch.equal(k, k2) and torch.equal(v, v2)


def test_a_shared_prefix_hits_exactly_the_shared_full_chunks(make_engine):
    engine = make_engine()
    a = prompt(2, 4 * CHUNK + 5)
    b = a[: 2 * CHUNK + 7] + prompt(3, 3 * CHUNK)       # shares 2 full chunks and 7 more tokens
    first = engine.serve(a)
    assert first.cached_tokens == 0 and first.computed_tokens == len(a)
    assert engine.lmcache.lookup(b) == 2 * CHUNK
    assert engine.lookup(b) == ["cpu", "cpu"]
    result = engine.serve(b)
    assert result.hit_tokens == {"gpu": 0, "cpu": 2 * CHUNK, "disk": 0, "remote": 0, "archive": 0}
    assert result.computed_tokens == len(b) - 2 * CHUNK


def test_a_prompt_of_full_chunks_recomputes_only_its_last_token(make_engine):
    engine = make_engine()
    a = prompt(4, 3 * CHUNK)
    engine.serve(a)
    result = engine.serve(a)
    assert result.hit_tokens["cpu"] == 3 * CHUNK and result.computed_tokens == 0
    assert result.recomputed_tokens == 1


def _full_logits(model, tokens):
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("tier", ["gpu", "cpu", "disk"])
def test_prefill_continued_from_loaded_kv_matches_a_full_prefill(make_engine, model, tier):
    engine = make_engine(scenario(gpu_chunks=None if tier == "gpu" else 0))
    tokens = prompt(5, 3 * CHUNK + 9)
    engine.serve(tokens)
    if tier == "disk":
        wait_on_disk(engine, tokens)
        engine.lmcache.clear(locations=["LocalCPUBackend"])
    result = engine.serve(tokens, all_logits=True)
    assert result.hit_tokens[tier] == 3 * CHUNK
    full = _full_logits(model, tokens)[3 * CHUNK:]
    # The loaded KV is bit-exact; the logits are not bit-identical on the CPU (the attention of
    # 9 new tokens over 57 runs other kernels than the full 57 x 57), so a tight tolerance.
    assert result.logits.shape == full.shape
    torch.testing.assert_close(result.logits, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(result.logits.argmax(-1), full.argmax(-1))


def test_per_tier_accounting_with_a_small_gpu_cache(make_engine):
    engine = make_engine(scenario(gpu_chunks=2))
    a = prompt(6, 4 * CHUNK + 3)
    b = prompt(7, 2 * CHUNK + 1)

    r1 = engine.serve(a)
    assert r1.hit_tokens == {"gpu": 0, "cpu": 0, "disk": 0, "remote": 0, "archive": 0}
    assert r1.computed_tokens == len(a)
    assert len(engine.gpu_cache) == 2 and engine.gpu_cache.evictions == 2   # LRU kept chunks 2, 3

    assert engine.lookup(a) == ["cpu", "cpu", "gpu", "gpu"]
    r2 = engine.serve(a)
    assert r2.hit_tokens == {"gpu": 2 * CHUNK, "cpu": 2 * CHUNK, "disk": 0, "remote": 0, "archive": 0}
    assert r2.computed_tokens == 3

    r3 = engine.serve(b)                                   # evicts a's chunks from the GPU cache
    assert r3.cached_tokens == 0
    assert not any(k.chunk_hash in engine.gpu_cache for k in engine.chunk_keys(a))

    wait_on_disk(engine, a)
    engine.lmcache.clear(locations=["LocalCPUBackend"])
    assert engine.lookup(a) == ["disk"] * 4
    r4 = engine.serve(a)
    assert r4.hit_tokens == {"gpu": 0, "cpu": 0, "disk": 4 * CHUNK, "remote": 0, "archive": 0}
    assert r4.computed_tokens == 3
    for r in (r1, r2, r3, r4):
        assert r.load_s >= 0 and r.prefill_s > 0 and r.store_s >= 0


def test_lookup_has_no_side_effects(make_engine):
    engine = make_engine(scenario(gpu_chunks=2))
    a = prompt(8, 2 * CHUNK + 1)
    engine.serve(a)
    order = list(engine.gpu_cache.policy.order)
    assert engine.lookup(a) == ["gpu", "gpu"]
    assert list(engine.gpu_cache.policy.order) == order


def test_bad_configuration_and_input_are_user_errors(model, make_engine, tmp_path):
    with pytest.raises(ScenarioError, match="block_size"):
        KVEngine(scenario_from_dict({}), model, disk_path=tmp_path)
    with pytest.raises(ScenarioError, match=r"tiers\.disk\.enabled"):
        KVEngine(scenario(), model)
    with pytest.raises(ScenarioError, match="offline"):
        KVEngine(scenario_from_dict({"block_size": CHUNK, "tiers": {"gpu": {"eviction": "belady"}}}),
                 model, disk_path=tmp_path)
    with pytest.raises(ModelError, match="neither a shape"):
        load_model(str(tmp_path / "nowhere"))
    engine = make_engine()
    with pytest.raises(EngineError, match="token ids"):
        engine.serve([1, 2, SHAPES["tiny"]["vocab_size"]])
    with pytest.raises(EngineError, match="empty"):
        engine.serve([])


@pytest.mark.gpu
@pytest.mark.parametrize("tier", ["gpu", "cpu", "disk"])
def test_prefill_continued_from_each_tier_on_cuda(tmp_path, tier):
    """On a GPU (bf16, our connector's pinned batched copies): KV loaded from each tier continues
    the prefill with the logits of a full prefill (bf16 kernels differ by shape: a tolerance)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu_model = load_model("tiny", "cuda")
    sc = scenario(gpu_chunks=None if tier == "gpu" else 0)
    with KVEngine(sc, gpu_model, disk_path=tmp_path) as engine:
        tokens = prompt(9, 3 * CHUNK + 3)
        engine.serve(tokens)
        if tier == "disk":
            engine.clear(["cpu"])
        result = engine.serve(tokens, all_logits=True)
        assert result.hit_tokens[tier] == 3 * CHUNK
        full = _full_logits(gpu_model, tokens)[3 * CHUNK:]
        torch.testing.assert_close(result.logits.float(), full.float(), rtol=2e-2, atol=2e-2)


def test_counters_add_up(make_engine):
    """The counters snapshot: tokens by source sum to the prompt tokens served, bytes loaded
    follow the hits, and a snapshot is a copy (later requests do not change it)."""
    engine = make_engine(scenario(gpu_chunks=None))
    a = prompt(1, 4 * CHUNK + 3)
    first = engine.serve(a)
    snap = engine.counters()
    second = engine.serve(a)
    after = engine.counters()
    assert snap["requests"] == 1 and after["requests"] == 2
    assert sum(after["prompt_tokens_by_source"].values()) == 2 * len(a)
    assert after["prompt_tokens_by_source"]["gpu"] == second.hit_tokens["gpu"] == 4 * CHUNK
    assert after["prompt_tokens_by_source"]["computed"] == first.computed_tokens + second.computed_tokens
    assert after["bytes_loaded"]["gpu"] == 4 * _chunk_bytes()
    assert after["bytes_stored"]["gpu"] == 4 * _chunk_bytes() == after["bytes_stored"]["cpu"]
    assert after["tier_bytes"]["gpu"] == 4 * _chunk_bytes() == after["tier_bytes"]["cpu"]    # held now
    assert snap["prompt_tokens_by_source"]["gpu"] == 0


def test_a_fully_cached_prompt_is_served_from_its_tiers(make_engine):
    """Every chunk of a prompt of full chunks cached: all are loaded and counted as hits (as the
    simulator counts them), only the last token is recomputed, and its logits equal a full
    prefill's (the recompute runs over the loaded KV of the others)."""
    engine = make_engine(scenario(gpu_chunks=None))
    p = prompt(7, 4 * CHUNK)
    first = engine.serve(p)
    again = engine.serve(p)
    assert first.recomputed_tokens == 0 and first.computed_tokens == 4 * CHUNK
    assert again.hit_tokens["gpu"] == 4 * CHUNK and again.computed_tokens == 0
    assert again.recomputed_tokens == 1
    torch.testing.assert_close(again.logits, first.logits, rtol=1e-4, atol=1e-5)
    engine.clear(["gpu"])
    cpu = engine.serve(p)
    assert cpu.hit_tokens["cpu"] == 4 * CHUNK and cpu.recomputed_tokens == 1
    torch.testing.assert_close(cpu.logits, first.logits, rtol=1e-4, atol=1e-5)


def test_the_tiny_long_shape_serves_prompts_beyond_the_tiny_context():
    """``tiny-long``: the tiny shape with a context long enough for Mooncake's prompts."""
    from simkv_engine.models import kv_shape_of

    long, tiny = load_model("tiny-long"), load_model("tiny")
    assert long.config.max_position_embeddings >= 32768 > tiny.config.max_position_embeddings
    assert kv_shape_of(long) == kv_shape_of(tiny)
    assert {k: v for k, v in SHAPES["tiny-long"].items() if k != "max_position_embeddings"} == \
        {k: v for k, v in SHAPES["tiny"].items() if k != "max_position_embeddings"}
    ids = torch.randint(0, long.config.vocab_size, (1, 5000))
    with torch.inference_mode():
        logits = long(input_ids=ids, logits_to_keep=1).logits
    assert logits.shape == (1, 1, long.config.vocab_size) and torch.isfinite(logits).all()
