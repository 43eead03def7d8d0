"""The engine's reach into LMCache's internals (engine/simkv_engine/lmcache_glue.py) against the
installed LMCache: each internal it names is there and means what the engine takes it to mean,
so an LMCache upgrade that moves one fails here, by name. The tiny model on the CPU, real
LMCache with CPU and disk backends."""

from __future__ import annotations

import os
from concurrent.futures import Executor

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")

from simkv_engine import lmcache_glue  # noqa: E402
from simkv_engine.engine import KVEngine  # noqa: E402
from simkv_engine.models import load_model  # noqa: E402

from simkv.core.scenario import scenario_from_dict  # noqa: E402
from tests.engine_helpers import prompt  # noqa: E402

CHUNK = 16


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    sc = scenario_from_dict({"block_size": CHUNK,
                             "tiers": {"gpu": {"capacity_bytes": 0},
                                       "cpu": {"enabled": True, "capacity_bytes": "32MiB"},
                                       "disk": {"enabled": True, "capacity_bytes": "64MiB"}}})
    with KVEngine(sc, load_model("tiny", "cpu", seed=0), disk_path=tmp_path_factory.mktemp("disk")) as e:
        yield e


def test_the_backends_keys_counts_files_and_read_pool_are_lmcaches(engine):
    backends = lmcache_glue.local_backends(engine.lmcache)
    names = {t: type(b).__name__ for t, b in backends.items()}
    assert names == lmcache_glue.BACKENDS | {"remote": "NoneType"}     # no remote tier here
    cpu, disk = backends["cpu"], backends["disk"]
    tokens = prompt(1, 3 * CHUNK + 5)
    keys = lmcache_glue.chunk_keys(engine.lmcache, tokens[:3 * CHUNK])
    assert len(keys) == 3 and not any(cpu.contains(k) for k in keys)
    before = lmcache_glue.cpu_chunks(cpu), lmcache_glue.disk_chunks(disk)

    engine.serve(tokens)
    lmcache_glue.wait_disk_writes(disk, 30.0, 0.001)
    assert not disk.disk_worker.put_tasks                     # the wait waited for the writes
    assert all(cpu.contains(k) and disk.contains(k) for k in keys)   # the keys the store used
    assert lmcache_glue.cpu_chunks(cpu) == before[0] + 3
    assert lmcache_glue.disk_chunks(disk) == before[1] + 3
    assert set(keys) <= set(lmcache_glue.disk_keys(disk))
    assert all(os.path.isfile(lmcache_glue.disk_file_path(disk, k)) for k in keys)
    assert isinstance(lmcache_glue.disk_read_pool(disk), Executor)


def test_touching_a_cpu_chunk_makes_it_the_last_to_be_evicted(engine):
    cpu = lmcache_glue.local_backends(engine.lmcache)["cpu"]
    tokens = prompt(2, 3 * CHUNK)
    engine.serve(tokens)
    keys = engine.chunk_keys(tokens)
    assert list(cpu.hot_cache)[-3:] == keys                   # LRU: stored in prompt order
    lmcache_glue.touch_cpu(cpu, keys[0])
    assert list(cpu.hot_cache)[-3:] == [keys[1], keys[2], keys[0]]
    lmcache_glue.touch_cpu(cpu, object())                      # a chunk it does not hold: nothing
    assert list(cpu.hot_cache)[-3:] == [keys[1], keys[2], keys[0]]
