"""The engine's S3 archive (engine/simkv_engine/archive.py): the tiny model on the CPU with real
LMCache, against moto's S3 server on 127.0.0.1 (a real S3 API over HTTP, boto3 with an endpoint
URL) and the local-folder store. Uploads with the policy's TTL and a checksum, deep-miss
hydration, expiry, the index after a restart, faults injected on the loopback (endpoint down,
stalled, corrupt object) and chunks of another model. Engine time is a manual clock, passes
are run by the test. Skipped where the engine's dependencies are absent."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest

torch = pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("transformers", reason="the engine needs transformers (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
boto3 = pytest.importorskip("boto3", reason="the archive needs boto3")
pytest.importorskip("moto.server", reason="the archive tests need moto[server]")
pytest.importorskip("zstandard", reason="the archive needs zstandard (make install)")

from moto.server import ThreadedMotoServer  # noqa: E402
from simkv_engine.archive import ArchiveConfigError, ArchiveOptions, chunk_hashes  # noqa: E402
from simkv_engine.engine import KVEngine  # noqa: E402
from simkv_engine.models import SHAPES, load_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from simkv.core.errors import ScenarioError  # noqa: E402
from simkv.core.scenario import scenario_from_dict  # noqa: E402
from tests.engine_archive_helpers import (  # noqa: E402
    CHUNK,
    T0,
    Clock,
    Proxy,
    _chunk_bytes,
    _meta,
    assert_logits_of_a_full_prefill,
    forget_locally,
    scenario,
)
from tests.engine_helpers import prompt  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", "cpu", seed=0)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 and a boto3 client of it; credentials from the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent",
                     "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
            mp.setenv(k, v)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        yield url, boto3.client("s3", endpoint_url=url)
        server.stop()


@pytest.fixture
def bucket(s3):
    name = f"kv-{uuid.uuid4().hex[:12]}"
    s3[1].create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_engine(model, tmp_path):
    """``make(location, sc, ...)``: an engine on ``location`` (``s3://...`` with the endpoint
    given, or a folder), engine time from ``clock``, no worker thread unless asked."""
    engines: list[KVEngine] = []

    def make(location, sc=None, *, endpoint_url=None, clock=None, m=None, **opts) -> KVEngine:
        options = ArchiveOptions(location, endpoint_url=endpoint_url, timeout_s=0.5,
                                 clock=clock if clock is not None else Clock(),
                                 worker_thread=opts.pop("worker_thread", False), **opts)
        engine = KVEngine(sc or scenario(), m or model, disk_path=tmp_path / f"disk{len(engines)}",
                          archive=options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(params=["s3", "folder"])
def location(request, tmp_path):
    """Each store: (location, endpoint_url, boto3 client or None)."""
    if request.param == "folder":
        return str(tmp_path / "archive"), None, None
    url, client = request.getfixturevalue("s3")
    name = request.getfixturevalue("bucket")
    return f"s3://{name}/kv", url, client


def test_a_pass_uploads_each_chunk_with_the_policys_ttl_and_a_checksum(location, make_engine, model):
    loc, url, _ = location
    clock = Clock()
    engine = make_engine(loc, endpoint_url=url, clock=clock)
    tokens = prompt(1, 3 * CHUNK + 5)
    engine.serve(tokens, prompt_class="chat")
    assert engine.counters()["archive_uploads"] == 0
    engine.archive.run_pass()
    c = engine.counters()
    assert c["archive_uploads"] == 3 == c["archive_objects"]
    assert c["archive_upload_bytes"]["raw"] == 3 * _chunk_bytes()
    sizes = c["archive_upload_bytes"]
    assert c["archive_compression_ratio"] == sizes["raw"] / sizes["stored"]
    assert c["archive_errors"] == dict.fromkeys(c["archive_errors"], 0)

    keys = engine.chunk_keys(tokens)
    for m, h in enumerate(chunk_hashes(tokens, CHUNK)):
        meta = _meta(location, engine, h)
        held = engine.gpu_cache.chunks[keys[m].chunk_hash].numpy().tobytes()   # what the engine computed
        assert len(held) == int(meta["raw-bytes"]) == _chunk_bytes()
        assert meta["sha256"] == hashlib.sha256(held).hexdigest()
        assert float(meta["ttl"]) == 600.0 and float(meta["deadline"]) == T0 + 600.0
        assert meta["prompt-class"] == "chat" and meta["codec"] == "zstd" and meta["access-count"] == "0"
        assert meta["shape"] == f"2,2,{CHUNK},2,16" and meta["dtype"] == "float32"

    # Nothing referenced since: the next pass uploads nothing.
    engine.archive.run_pass()
    assert engine.counters()["archive_uploads"] == 3


def test_a_deep_miss_hydrates_from_the_archive_with_the_logits_of_a_full_prefill(location, make_engine,
                                                                               model):
    loc, url, _ = location
    engine = make_engine(loc, endpoint_url=url)
    tokens = prompt(2, 3 * CHUNK + 9)
    engine.serve(tokens)
    engine.archive.run_pass()
    forget_locally(engine, tokens)
    assert engine.lookup(tokens) == ["archive"] * 3

    result = engine.serve(tokens, all_logits=True)
    assert result.hit_tokens == {"gpu": 0, "cpu": 0, "disk": 0, "remote": 0, "archive": 3 * CHUNK}
    assert result.computed_tokens == 9 and result.hydrate_s > 0
    assert_logits_of_a_full_prefill(model, tokens, result)
    c = engine.counters()
    assert c["archive_fetches"] == 3 and c["archive_hydrations"] == 3
    assert c["prompt_tokens_by_source"]["archive"] == 3 * CHUNK
    assert c["bytes_loaded"]["archive"] == 3 * _chunk_bytes()
    # Hydrated chunks went into the GPU cache and LMCache.
    assert engine.lookup(tokens) == ["gpu"] * 3
    assert engine.lmcache.lookup(tokens) == 3 * CHUNK

    # The server's /kv/hydrate: the archive's chunks into LMCache and the GPU cache, no prefill.
    forget_locally(engine, tokens)
    assert engine.hydrate(tokens)[0] == 3 * CHUNK
    assert engine.lookup(tokens) == ["gpu"] * 3 and engine.lmcache.lookup(tokens) == 3 * CHUNK
    assert engine.hydrate(tokens)[0] == 0


def test_objects_expire_at_their_deadline_and_a_later_request_recomputes(s3, bucket, make_engine):
    url, client = s3
    clock = Clock()
    engine = make_engine(f"s3://{bucket}/kv", endpoint_url=url, clock=clock)
    tokens = prompt(3, 2 * CHUNK + 1)
    engine.serve(tokens)
    engine.archive.run_pass()
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 2
    forget_locally(engine, tokens)

    clock.t += 100.0                         # the default TTL: due now, not served any more
    assert engine.lookup(tokens) == []
    engine.archive.run_pass()
    assert engine.counters()["expirations"] == {"archive": 2}
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    result = engine.serve(tokens)
    assert result.cached_tokens == 0 and result.computed_tokens == len(tokens)


def test_sliding_ttls_are_refreshed_by_a_metadata_copy(s3, bucket, make_engine):
    url, client = s3
    clock = Clock()
    sc = scenario(ttl={"heuristic": "static", "params": {"ttl": 100}, "mode": "sliding"})
    engine = make_engine(f"s3://{bucket}/kv", sc, endpoint_url=url, clock=clock)
    tokens = prompt(4, 2 * CHUNK + 1)
    engine.serve(tokens)
    engine.archive.run_pass()
    clock.t += 60.0
    engine.serve(tokens)                      # GPU hits: the chunks are candidates again
    engine.archive.run_pass()
    c = engine.counters()
    assert c["archive_refreshes"] == 2 and c["archive_uploads"] == 2
    clock.t += 60.0                           # past the first deadline, before the slid one
    engine.archive.run_pass()
    assert engine.counters()["expirations"] == {"archive": 0}
    for h in chunk_hashes(tokens, CHUNK):
        head = client.head_object(Bucket=bucket, Key=f"kv/{engine.archive.name(h)}")
        assert float(head["Metadata"]["deadline"]) == T0 + 160.0


def test_the_index_is_rebuilt_from_the_bucket_and_close_drains(s3, bucket, make_engine, model):
    url, _ = s3
    first = make_engine(f"s3://{bucket}/kv", endpoint_url=url)
    a, b = prompt(5, 2 * CHUNK + 3), prompt(6, 3 * CHUNK + 3)
    first.serve(a)
    first.archive.run_pass()
    first.serve(b)                           # referenced after the last pass: close() archives it
    first.close()
    assert first.counters()["archive_uploads"] == 5

    second = make_engine(f"s3://{bucket}/kv", endpoint_url=url)
    assert second.counters()["archive_objects"] == 5
    assert second.lookup(a) == ["archive"] * 2 and second.lookup(b) == ["archive"] * 3
    result = second.serve(b, all_logits=True)
    assert result.hit_tokens["archive"] == 3 * CHUNK
    assert_logits_of_a_full_prefill(model, b, result)


def test_a_chunk_archived_by_another_model_is_never_loaded(s3, bucket, make_engine, model):
    url, client = s3
    tokens = prompt(7, 2 * CHUNK + 3)
    first = make_engine(f"s3://{bucket}/kv", endpoint_url=url)
    first.serve(tokens)
    first.archive.run_pass()

    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(**{**SHAPES["tiny"], "num_key_value_heads": 1})).eval()
    second = make_engine(f"s3://{bucket}/kv", endpoint_url=url, m=other)
    assert second.archive.fmt.model != first.archive.fmt.model
    assert second.counters()["archive_objects"] == 0 and second.lookup(tokens) == []
    # Even filed under the other model's name, an object whose layout differs is left out.
    for h in chunk_hashes(tokens, CHUNK):
        client.copy_object(Bucket=bucket, Key=f"kv/{second.archive.name(h)}",
                           CopySource={"Bucket": bucket, "Key": f"kv/{first.archive.name(h)}"})
    third = make_engine(f"s3://{bucket}/kv", endpoint_url=url, m=other)
    c = third.counters()
    assert c["archive_objects"] == 0 and c["archive_rejected_objects"] == 2
    result = third.serve(tokens)
    assert result.cached_tokens == 0


def _archived(make_engine, url: str, bucket: str, tokens: list[int]) -> KVEngine:
    engine = make_engine(f"s3://{bucket}/kv", endpoint_url=url)
    engine.serve(tokens)
    engine.archive.run_pass()
    forget_locally(engine, tokens)
    return engine


@pytest.mark.parametrize("fault", ["unreachable", "timeout"])
def test_an_unreachable_or_stalled_endpoint_falls_back_to_recompute(fault, s3, bucket, make_engine, model):
    url, _ = s3
    proxy = Proxy(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    try:
        tokens = prompt(8, 2 * CHUNK + 3)
        engine = _archived(make_engine, proxy.url, bucket, tokens)
        if fault == "unreachable":
            proxy.stop()
        else:
            proxy.delay = 1.5                 # beyond the client's 0.5 s read timeout
        result = engine.serve(tokens, all_logits=True)
        assert result.cached_tokens == 0 and result.computed_tokens == len(tokens)
        assert_logits_of_a_full_prefill(model, tokens, result)
        errors = engine.counters()["archive_errors"]
        assert errors[fault] >= 1 and sum(errors.values()) == errors[fault]

        # The fault cleared: the archive serves again (the index kept the objects).
        if fault == "unreachable":
            proxy.start()
        else:
            proxy.delay = 0.0
        forget_locally(engine, tokens)
        assert engine.serve(tokens).hit_tokens["archive"] == 2 * CHUNK
    finally:
        proxy.stop()


def test_a_corrupt_object_is_refused_and_the_prefix_ends_there(s3, bucket, make_engine, model):
    url, client = s3
    tokens = prompt(9, 3 * CHUNK + 3)
    engine = _archived(make_engine, url, bucket, tokens)
    key = f"kv/{engine.archive.name(chunk_hashes(tokens, CHUNK)[1])}"
    obj = client.get_object(Bucket=bucket, Key=key)
    body = bytearray(obj["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=obj["Metadata"])

    result = engine.serve(tokens, all_logits=True)
    assert result.hit_tokens["archive"] == CHUNK and result.computed_tokens == len(tokens) - CHUNK
    assert_logits_of_a_full_prefill(model, tokens, result)
    assert engine.counters()["archive_errors"]["corrupt"] == 1
    # The corrupt object left the index; the next request is served.
    forget_locally(engine, tokens)
    assert engine.lookup(tokens) == ["archive"]
    assert engine.serve(tokens).hit_tokens["archive"] == CHUNK


def test_the_worker_thread_runs_passes_on_the_scaled_clock(tmp_path, make_engine):
    from simkv_engine.archive import EngineClock

    sc = scenario(ttl={"heuristic": "static", "params": {"ttl": 1e9}})
    engine = make_engine(str(tmp_path / "archive"), sc, clock=EngineClock(scale=6000.0), worker_thread=True)
    tokens = prompt(10, 2 * CHUNK + 1)
    engine.serve(tokens)                     # interval_s = 60 engine seconds = 10 ms here
    deadline = time.monotonic() + 20
    while engine.counters()["archive_uploads"] < 2:
        assert time.monotonic() < deadline, "the worker thread made no pass in 20 s"
        time.sleep(0.01)
    assert engine.lookup(tokens) == ["gpu", "gpu"]


def test_if_faster_recomputes_where_loading_is_slower(model, tmp_path):
    """The simulator's cut (scenario hardware profile): a disk that takes 10 s per request is
    not read, the CPU (10 us) is."""
    tiers = {"gpu": {"capacity_bytes": 0}, "cpu": {"enabled": True, "capacity_bytes": "32MiB"},
             "disk": {"enabled": True, "capacity_bytes": "64MiB", "latency_s": 10.0}}
    sc = scenario_from_dict({"block_size": CHUNK, "load_policy": "if_faster", "tiers": tiers})
    tokens = prompt(11, 3 * CHUNK + 1)
    with KVEngine(sc, model, disk_path=tmp_path / "disk") as engine:
        engine.serve(tokens)
        assert engine.serve(tokens).hit_tokens["cpu"] == 3 * CHUNK
        disk = engine._backends["disk"]
        deadline = time.monotonic() + 30
        while not all(disk.contains(k) for k in engine.chunk_keys(tokens)):
            assert time.monotonic() < deadline, "LMCache's disk writes did not finish in 30 s"
            time.sleep(0.01)
        engine.lmcache.clear(locations=["LocalCPUBackend"])
        assert engine.lookup(tokens) == ["disk"] * 3
        result = engine.serve(tokens)
        assert result.cached_tokens == 0 and result.computed_tokens == len(tokens)


def test_what_the_engine_cannot_honour_is_a_user_error(model, tmp_path, s3, make_engine):
    with pytest.raises(ScenarioError, match=r"tiers\.archive\.codec: 'lz4'"):
        make_engine(str(tmp_path / "a"), scenario(codec="lz4"))
    with pytest.raises(ScenarioError, match="where the archive lives"):
        KVEngine(scenario(), model, disk_path=tmp_path / "d")
    with pytest.raises(ScenarioError, match=r"ttl\.scope"):
        make_engine(str(tmp_path / "a"), scenario(ttl={"heuristic": "static", "scope": "all"}))
    with pytest.raises(ArchiveConfigError, match="bucket cannot be used"):
        make_engine("s3://no-such-bucket/kv", endpoint_url=s3[0])
