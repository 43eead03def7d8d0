"""The engine's tiers behind one protocol (``simkv_engine.backends.TierBackend``): every backend
the engine builds satisfies it, in one list fastest first, and behaves as it says on the real
engine (the tiny model on the CPU, real LMCache, an archive in a folder): a chunk written is
held, reads back the same KV, shows in the counters, and is gone after a clear."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("transformers", reason="the engine needs transformers (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")

from simkv_engine.archive import ArchiveOptions  # noqa: E402
from simkv_engine.backends import Chunk, Prompt, TierBackend  # noqa: E402
from simkv_engine.connector import HFKVConnector  # noqa: E402
from simkv_engine.engine import EngineError, KVEngine  # noqa: E402
from simkv_engine.models import load_model  # noqa: E402

from simkv.core.scenario import scenario_from_dict  # noqa: E402
from tests.engine_archive_helpers import CHUNK, Clock, _chunk_bytes, scenario  # noqa: E402
from tests.engine_helpers import prompt  # noqa: E402

CHUNK_BYTES = _chunk_bytes()


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", "cpu", seed=0)


@pytest.fixture
def engine(model, tmp_path):
    options = ArchiveOptions(str(tmp_path / "archive"), clock=Clock(), worker_thread=False)
    with KVEngine(scenario(), model, disk_path=tmp_path / "disk", archive=options, deterministic=True) as e:
        yield e


def _kv(engine: KVEngine, tokens: int, seed: int | None = None):
    g = torch.Generator().manual_seed(seed or 0)
    shape = (1, engine.kv.kv_heads, tokens, engine.kv.head_dim)
    make = (lambda: torch.randn(shape, generator=g)) if seed is not None else (lambda: torch.zeros(shape))
    return [(make(), make()) for _ in range(engine.kv.layers)]


def _prompt(engine: KVEngine, tokens: list[int]) -> Prompt:
    return Prompt(tokens, engine.chunk_keys(tokens), engine.chunk_hashes(tokens))


def _same(a, b, chunks: int) -> bool:
    n = chunks * CHUNK
    return all(torch.equal(x[0][:, :, :n], y[0][:, :, :n]) and torch.equal(x[1][:, :, :n], y[1][:, :, :n])
               for x, y in zip(a, b, strict=True))


def test_every_tier_is_a_backend_in_one_list_fastest_first(engine):
    assert [t.name for t in engine.tiers] == ["gpu", "cpu", "disk", "archive"]
    assert all(isinstance(t, TierBackend) for t in engine.tiers)
    assert [t.local for t in engine.tiers] == [True, True, True, False]
    # The order-specific steps, as data: the GPU admits every chunk, LMCache's tiers are written
    # through, a disk read fills the CPU (so a chunk read from disk is written to neither).
    assert [t.name for t in engine._targets(None)] == ["cpu", "disk"]
    assert {s: [t.name for t in engine._targets(engine.tier(s))] for s in ("gpu", "cpu", "disk", "archive")} \
        == {"gpu": [], "cpu": ["disk"], "disk": [], "archive": ["cpu", "disk"]}


def test_without_a_cpu_tier_the_disk_is_written_by_an_lmcache_store_and_fills_nothing(model, tmp_path):
    sc = scenario_from_dict({"block_size": CHUNK, "tiers": {
        "gpu": {"capacity_bytes": 0}, "cpu": {"enabled": False},
        "disk": {"enabled": True, "capacity_bytes": "64MiB"}}})
    with KVEngine(sc, model, disk_path=tmp_path / "disk", deterministic=True) as e:
        assert [t.name for t in e.tiers] == ["gpu", "disk"]
        disk = e.tier("disk")
        assert disk is not None and disk.fills_on_read == ()
        tokens = prompt(3, 2 * CHUNK)
        p, kv = _prompt(e, tokens), _kv(e, 2 * CHUNK, seed=3)
        assert disk.write(p, [0, 1], kv) == {"disk"}
        disk.flush(30)
        assert all(disk.contains(p.chunk(m)) for m in range(2))
        back = _kv(e, 2 * CHUNK)
        assert disk.read(p, back, 0, 2) == 2 and _same(back, kv, 2)
        assert disk.clear(30) == 2 and disk.counters().chunks == 0


@pytest.mark.parametrize("name", ["gpu", "cpu", "disk"])
def test_a_local_tier_writes_holds_reads_counts_and_clears_a_chunk(engine, name):
    tier = engine.tier(name)
    assert tier is not None and tier.name == name and tier in engine.tiers
    tokens = prompt(1, 2 * CHUNK + 3)
    p, kv = _prompt(engine, tokens), _kv(engine, 2 * CHUNK + 3, seed=1)
    assert not any(t.contains(p.chunk(m)) for t in engine.tiers for m in range(2))
    before = tier.counters()
    if name == "disk":                # the disk is handed the CPU's copy: the CPU holds it first
        assert engine.tier("cpu").write(p, [0, 1], kv) == {"cpu", "disk"}   # one store reaches both
        tier.flush(30)
        assert tier.clear(30) == 2 and not tier.contains(p.chunk(0))
        before = tier.counters()
    reached = tier.write(p, [0, 1], kv)
    assert name in reached
    tier.flush(30)
    assert all(tier.contains(p.chunk(m)) for m in range(2))
    assert not tier.contains(Chunk(engine.chunk_keys(prompt(2, CHUNK))[0]))   # another prompt's

    c = tier.counters()
    assert (c.chunks, c.bytes) == (2, 2 * CHUNK_BYTES)
    assert c.stored_bytes - before.stored_bytes == 2 * CHUNK_BYTES
    assert engine.counters()["tier_bytes"][name] == 2 * CHUNK_BYTES

    if name == "disk":                # LMCache reads the CPU's copy first: read the disk's own
        engine.tier("cpu").clear(30)
    back = _kv(engine, 2 * CHUNK)
    assert tier.read(p, back, 0, 2) == 2 and _same(back, kv, 2)
    fmt = engine.archive.fmt
    assert tier.peek(p.chunk(1), fmt) == fmt.to_bytes(HFKVConnector.gather(kv, CHUNK, 2 * CHUNK))

    assert tier.clear(30) == 2
    assert tier.counters().chunks == 0 and not tier.contains(p.chunk(0))
    assert engine.counters()["tier_bytes"][name] == 0
    assert tier.counters().evictions == 0           # a clear is not an eviction
    assert tier.health() == []


def test_the_archive_backend_holds_what_a_pass_uploaded_and_reads_it_back(engine):
    archive = engine.tier("archive")
    assert archive is not None and not archive.local and not archive.writes_through
    tokens = prompt(5, 3 * CHUNK + 1)
    engine.serve(tokens, prompt_class="chat")
    p = _prompt(engine, tokens)
    assert not any(archive.contains(p.chunk(m)) for m in range(3))
    engine.archive.run_pass()
    assert all(archive.contains(p.chunk(m)) for m in range(3))
    c = archive.counters()
    assert c.chunks == 3 and c.stored_bytes == 3 * CHUNK_BYTES
    assert c.bytes == engine.counters()["tier_bytes"]["archive"] > 0

    held = [engine.gpu_cache.chunks[k.chunk_hash] for k in p.keys]
    back = _kv(engine, 3 * CHUNK)
    assert archive.read(p, back, 0, 3) == 3
    for m, chunk in enumerate(held):
        assert torch.equal(HFKVConnector.gather(back, m * CHUNK, (m + 1) * CHUNK), chunk)
    assert archive.counters().extra["archive_hydrations"] == 3
    assert archive.write(p, [0], back) == frozenset()     # written by the worker's passes only
    with pytest.raises(EngineError, match="not cleared"):
        archive.clear(30)
