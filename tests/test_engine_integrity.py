"""What the engine checks around LMCache's disk tier (engine/simkv_engine/integrity.py), with the
tiny model on the CPU and real LMCache: damaged disk files are misses (counted, dropped, never
promoted or archived), a full filesystem (a real small tmpfs) degrades /healthz instead of
freezing the engine, a bad --disk-path is one line and exit 2, LMCache's allocator warnings are
counted and rate-limited, and default disk folders of dead engines do not pile up. Skipped
where the engine's dependencies are absent."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("transformers", reason="the engine needs transformers (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from simkv_engine.archive import ArchiveOptions  # noqa: E402
from simkv_engine.engine import KVEngine  # noqa: E402
from simkv_engine.integrity import default_disk_folder, remove_stale_disk_folders  # noqa: E402
from simkv_engine.models import SHAPES, load_model  # noqa: E402
from simkv_engine.server import create_app  # noqa: E402

from simkv.core.scenario import scenario_from_dict  # noqa: E402
from tests.conftest import ROOT, SIMKV, assert_user_error  # noqa: E402
from tests.engine_helpers import prompt  # noqa: E402
from tests.engine_server_helpers import metrics, running  # noqa: E402

CHUNK = 16
S = SHAPES["tiny"]
CHUNK_BYTES = CHUNK * 2 * S["num_hidden_layers"] * S["num_key_value_heads"] * S["head_dim"] * 4
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", "cpu", seed=0)


def tiers(**extra) -> dict:
    return {"block_size": CHUNK, "tiers": {"gpu": {"capacity_bytes": 64 * CHUNK_BYTES},
                                           "cpu": {"enabled": True, "capacity_bytes": 128 * CHUNK_BYTES},
                                           "disk": {"enabled": True, "capacity_bytes": "8MiB"},
                                           **extra}}


def full_prefill_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0, -1]


def chunk_file(engine: KVEngine, tokens: list[int], m: int) -> Path:
    disk = engine._backends["disk"]
    return Path(disk.dict[engine.chunk_keys(tokens)[m]].path)


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "nan":
        path.write_bytes(torch.full((size // 4,), math.nan).numpy().tobytes())
    elif how == "random":
        path.write_bytes(os.urandom(size))
    elif how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(100)
    elif how == "deleted":
        path.unlink()
    elif how == "one_bit":
        raw = bytearray(path.read_bytes())
        raw[size // 2] ^= 1
        path.write_bytes(bytes(raw))


KIND = {"nan": "checksum", "random": "checksum", "one_bit": "checksum", "truncated": "length",
        "deleted": "unreadable"}


@pytest.fixture(scope="module")
def engine(model, tmp_path_factory):
    with KVEngine(scenario_from_dict(tiers()), model, disk_path=tmp_path_factory.mktemp("disk"),
                  deterministic=True) as e:
        yield e


@pytest.mark.parametrize("how", list(KIND))
def test_a_damaged_disk_chunk_is_a_miss_counted_dropped_and_rewritten(engine, model, how):
    tokens = prompt(list(KIND).index(how), 4 * CHUNK + 3)
    engine.serve(tokens)
    engine.clear(["gpu", "cpu"])
    assert engine.lookup(tokens) == ["disk"] * 4
    bad = chunk_file(engine, tokens, 1)
    damage(bad, how)
    before = engine.counters()["disk_errors"]

    result = engine.serve(tokens)

    # Chunk 0 from disk; the damaged chunk 1 and everything after it recomputed, correctly.
    assert result.hit_tokens["disk"] == CHUNK and result.computed_tokens == 3 * CHUNK + 3
    torch.testing.assert_close(result.logits[-1], full_prefill_logits(model, tokens), rtol=1e-5, atol=1e-5)
    after = engine.counters()["disk_errors"]
    assert {k: after[k] - before[k] for k in after} == {k: int(k == KIND[how]) for k in after}
    # The bad entry left the disk tier and was written again from the recomputed KV: served
    # from disk once more, with a full prefill's logits.
    engine.clear(["gpu", "cpu"])
    assert engine.lookup(tokens) == ["disk"] * 4
    again = engine.serve(tokens)
    assert again.hit_tokens["disk"] == 4 * CHUNK and engine.counters()["disk_errors"] == after
    torch.testing.assert_close(again.logits[-1], full_prefill_logits(model, tokens), rtol=1e-5, atol=1e-5)


def test_a_damaged_disk_chunk_is_never_uploaded_to_the_archive(model, tmp_path):
    sc = scenario_from_dict({**tiers(archive={"enabled": True, "codec": "zlib", "interval_s": 60}),
                             "ttl": {"heuristic": "static", "scope": "archive", "params": {"ttl": 600}}})
    options = ArchiveOptions(tmp_path / "archive", clock=lambda: T0, worker_thread=False)
    with KVEngine(sc, model, disk_path=tmp_path / "disk", archive=options, deterministic=True) as engine:
        tokens = prompt(50, 3 * CHUNK)
        engine.serve(tokens)
        engine.clear(["gpu", "cpu"])                    # the worker reads the chunks from disk
        damage(chunk_file(engine, tokens, 2), "random")
        engine.archive.run_pass()
        hashes = engine.chunk_hashes(tokens)
        assert sorted(engine.archive.index) == sorted(hashes[:2])
        assert engine.counters()["disk_errors"]["checksum"] == 1
        assert engine.lookup(tokens) == ["disk", "disk"]   # dropped from disk, not archived


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"a full filesystem needs a small tmpfs, and mount is not permitted here "
                    f"({done.stderr.strip() or done.returncode})")


def test_a_full_disk_degrades_health_and_requests_go_on_by_recompute(model, tmp_path):
    disk_dir = tmp_path / "small"
    _mount_tmpfs(disk_dir, "96k")                      # 12 chunks of 8 KiB; LMCache's budget: 8 MiB
    try:
        engine = KVEngine(scenario_from_dict(tiers()), model, disk_path=disk_dir)
        try:
            with running(create_app(engine, model_name="tiny")) as url, \
                    httpx.Client(base_url=url, timeout=60) as client:
                assert client.get("/healthz").json() == {"status": "ok"}
                for seed in range(8):                 # 32 chunks for a filesystem of 12
                    r = client.post("/v1/completions", json={"prompt": prompt(100 + seed, 4 * CHUNK),
                                                             "max_tokens": 1})
                    assert r.status_code == 200, r.text
                _wait_for_disk_writes(engine)
                health = client.get("/healthz")
                assert health.status_code == 200 and health.json()["status"] == "degraded", health.text
                assert "No space left on device" in health.json()["reasons"][0]
                m = metrics(client)
                files = list(disk_dir.glob("*.pt"))
                assert 0 < len(files) < 32
                assert m[("simkv_disk_errors_total", (("kind", "write"),))] == 32 - len(files)
                assert m[("simkv_bytes_stored_total", (("tier", "disk"),))] == len(files) * CHUNK_BYTES
                assert len(engine._backends["disk"].dict) == len(files)
                assert not any(disk_dir.glob("*.pt.*"))   # no partial file left behind
                # A chunk whose write failed is not on disk: served from elsewhere or recomputed.
                engine.clear(["gpu", "cpu"])
                served = client.post("/v1/completions", json={"prompt": prompt(107, 4 * CHUNK),
                                                               "max_tokens": 1}).json()["usage"]["simkv"]
                assert served["tokens_by_source"]["disk"] < 4 * CHUNK

                # Space freed: writes land again and the engine is healthy.
                assert client.post("/kv/clear", json={"tiers": ["disk"]}).status_code == 200
                r = client.post("/v1/completions", json={"prompt": prompt(200, 2 * CHUNK), "max_tokens": 1})
                assert r.status_code == 200
                _wait_for_disk_writes(engine)
                assert client.get("/healthz").json() == {"status": "ok"}
                assert engine.lookup(prompt(200, 2 * CHUNK)) == ["gpu", "gpu"]
                engine.clear(["gpu", "cpu"])
                assert engine.lookup(prompt(200, 2 * CHUNK)) == ["disk", "disk"]
        finally:
            engine.close()
    finally:
        subprocess.run(["umount", "-l", str(disk_dir)], check=False)


def _wait_for_disk_writes(engine: KVEngine) -> None:
    disk = engine._backends["disk"]
    deadline = time.monotonic() + 30
    while disk.disk_worker.put_tasks:
        assert time.monotonic() < deadline, "LMCache's disk writes never finished"
        time.sleep(0.01)


def test_a_disk_path_that_is_a_file_or_under_one_is_one_line_and_exit_2(tmp_path):
    sc = tmp_path / "sc.yaml"
    sc.write_text("block_size: 16\ntiers:\n  cpu: {enabled: true, capacity_bytes: 4MiB}\n"
                  "  disk: {enabled: true, capacity_bytes: 8MiB}\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for path in (a_file, a_file / "below"):
        done = subprocess.run([*SIMKV, "engine", "serve", str(sc), "--port", "0", "--disk-path", str(path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert_user_error(done, f"--disk-path: {path}")


def test_a_failed_lmcache_init_leaves_no_thread_behind(model, tmp_path, monkeypatch):
    """LMCache's own init failure (the engine's folder check bypassed): no thread of it is left
    that would keep the process from exiting."""
    import simkv_engine.engine as engine_module

    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(engine_module, "check_disk_folder", lambda path: path)
    before = set(threading.enumerate())
    with pytest.raises(engine_module.EngineError, match="not healthy"):
        KVEngine(scenario_from_dict(tiers()), model, disk_path=tmp_path / "a-file")
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
    assert left == []


def test_lmcache_allocation_failures_are_counted_and_shown_once_in_a_while(engine):
    from lmcache.v1.memory_management import AddressManager

    shown: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = shown.append                       # type: ignore[method-assign]
    logger = logging.getLogger("lmcache.v1.memory_management")
    logger.addHandler(handler)
    before = engine.counters()["lmcache_alloc_failures"]
    try:
        pool = AddressManager(4096)
        for _ in range(50):
            with pytest.raises(RuntimeError, match="Failed to allocate"):
                pool.allocate(1 << 20)
    finally:
        logger.removeHandler(handler)
    assert engine.counters()["lmcache_alloc_failures"] - before == 50
    assert len(shown) <= 1


def test_default_disk_folders_are_removed_on_exit_and_after_a_crash(tmp_path):
    with pytest.raises(RuntimeError), default_disk_folder(tmp_path) as folder:
        assert folder.is_dir() and folder.name.startswith("simkv-disk-")
        raise RuntimeError("a crash at startup")
    assert not folder.exists()
    # A process killed while holding its folder: the next start removes it, a live one stays.
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                              "from simkv_engine.integrity import default_disk_folder\n"
                              f"with default_disk_folder({str(tmp_path)!r}) as f:\n"
                              "    print(f, flush=True); time.sleep(600)"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    dead = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert dead.is_dir()
    with default_disk_folder(tmp_path) as live:
        assert not dead.exists()
        assert remove_stale_disk_folders(tmp_path) == [] and live.is_dir()
