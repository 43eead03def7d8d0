"""The LMCache lookup-hash log importer: merged logs, the model filter, request ids, hash
collisions, parity with LMCache's own hashes, and bad lines that name file, line and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simkv.core.errors import TraceError
from simkv.traces.hashing import hex_to_u64
from simkv.traces.importers import import_lmcache
from tests.importer_helpers import assert_names, blocks, infinite_hit_rate, jsonl

# ---------------------------------------------------------------------------------------------
# LMCache
# ---------------------------------------------------------------------------------------------


def ev(ts: float, hashes: list[str], seq_len: int | None = None, *, chunk: int = 256,
       model: str = "m1", rid: str = "") -> dict[str, Any]:
    """One LMCache lookup event, shaped as LookupHashLoggingSubscriber writes it."""
    return {"timestamp": ts, "request_id": rid, "model_name": model, "chunk_size": chunk,
            "seq_len": len(hashes) * chunk + 10 if seq_len is None else seq_len,
            "dtypes": ["bfloat16"], "shapes": [[2, 32, chunk, 8, 128]],
            "chunk_hashes": hashes}


def lmcache_logs(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "logs"
    d.mkdir()
    a = jsonl(d / "lookup_hashes_20260101_000000_000000.jsonl", [
        ev(100.0, ["0xaa", "0xbb"], rid="a1"),
        ev(103.0, ["0xaa", "0xcc"], rid="a2"),
        ev(104.0, ["0xdd"], model="m2", rid="a3"),
    ])
    b = jsonl(d / "lookup_hashes_20260101_000001_000001.jsonl", [
        ev(101.5, ["0xaa", "0xbb", "0xee"], rid="b1"),
        ev(103.0, ["0x" + "ab" * 32], rid="b2"),  # a 64-digit hash, hashed down
    ])
    return a, b


def test_lmcache_merge_is_stable_by_timestamp(tmp_path: Path) -> None:
    a, b = lmcache_logs(tmp_path)
    for inputs in ([a, b], [a.parent]):
        trace = import_lmcache(inputs)
        t = trace.table
        assert t.column("request_id").to_pylist() == ["a1", "b1", "a2", "b2", "a3"]
        assert t.column("arrival_s").to_pylist() == [0.0, 1.5, 3.0, 3.0, 4.0]
        assert t.column("model").to_pylist() == ["m1", "m1", "m1", "m1", "m2"]
        assert t.column("output_tokens").to_pylist() == [0] * 5
        assert trace.block_size == 256
        assert blocks(trace)[0] == [0xAA, 0xBB]
        assert blocks(trace)[3] == [hex_to_u64("0x" + "ab" * 32)]
    # the other order of files: ties go to the file given first
    trace = import_lmcache([b, a])
    assert trace.table.column("request_id").to_pylist() == ["a1", "b1", "b2", "a2", "a3"]


def test_lmcache_unsorted_without_sort_is_an_error(tmp_path: Path) -> None:
    a, b = lmcache_logs(tmp_path)
    with pytest.raises(TraceError) as ei:
        import_lmcache([a, b], sort=False)
    assert_names(ei.value, b, 1, "timestamp")


def test_lmcache_model_filter(tmp_path: Path) -> None:
    a, b = lmcache_logs(tmp_path)
    trace = import_lmcache([a, b], model="m2")
    assert trace.table.column("request_id").to_pylist() == ["a3"]
    assert trace.table.column("arrival_s").to_pylist() == [0.0]
    with pytest.raises(TraceError, match="no lookup event has model_name 'm3'"):
        import_lmcache([a, b], model="m3")


def test_lmcache_request_id_fallback_and_repeats(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "x.jsonl", [ev(1, ["0x1"]), ev(2, ["0x2"], rid="r"),
                                         ev(3, ["0x1"], rid="r")])
    trace = import_lmcache([path])
    assert trace.table.column("request_id").to_pylist() == ["x.jsonl:1", "r", "r#2"]


def test_lmcache_collision_is_reported(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "x.jsonl", [ev(1, ["0xff"]), ev(2, ["0x1", "0x00ff"])])
    with pytest.raises(TraceError) as ei:
        import_lmcache([path])
    assert_names(ei.value, path, 2, "chunk_hashes")
    assert "collision" in str(ei.value)
    assert "'0xff'" in str(ei.value) and "'0x00ff'" in str(ei.value)


def test_lmcache_parity_with_lmcache(tmp_path: Path) -> None:
    """Same events, same order, same token totals and the same infinite-cache hit rate as
    LMCache's own cache simulator."""
    sim = pytest.importorskip("lmcache.tools.cache_simulator.simulator")
    a, b = lmcache_logs(tmp_path)
    for inputs, model in [([a.parent], None), ([a.parent], "m1"), ([b, a], None)]:
        events = sim.load_lookup_events(inputs, model=model)
        trace = import_lmcache(inputs, model=model)
        assert len(trace) == len(events)
        assert int(trace.input_tokens.sum()) == sum(e["seq_len"] for e in events)
        assert [len(bl) for bl in blocks(trace)] == [len(e["chunk_hashes"]) for e in events]
        assert trace.table.column("request_id").to_pylist() == [e["request_id"] for e in events]
        result = sim.simulate(events, cache_capacity_bytes=10**12, kv_bytes_per_chunk=1)
        assert infinite_hit_rate(trace) == pytest.approx(result["token_hit_rate"])


LMCACHE_BAD: list[tuple[str, str, str, str]] = [
    ("non-hex", json.dumps(ev(5, ["0xzz"])), "chunk_hashes", "not hexadecimal"),
    ("negative-hex", json.dumps(ev(5, ["-0x5"])), "chunk_hashes", "not hexadecimal"),
    ("hash-not-str", json.dumps(ev(5, [5])), "chunk_hashes", "strings"),  # type: ignore[list-item]
    ("count", json.dumps(ev(5, ["0x1"], seq_len=600)), "chunk_hashes", "2 full chunks"),
    ("chunk-size", json.dumps(ev(5, ["0x1"], chunk=512)), "chunk_size", "differs"),
    ("zero-chunk", json.dumps(ev(5, [], seq_len=0, chunk=0)), "chunk_size", ">= 1"),
    ("no-time", json.dumps({k: v for k, v in ev(5, []).items() if k != "timestamp"}),
     "timestamp", "missing"),
    ("unknown", json.dumps({**ev(5, []), "extra": 1}), "extra", "unknown key"),
]


@pytest.mark.parametrize(("line2", "field", "fragment"),
                         [c[1:] for c in LMCACHE_BAD], ids=[c[0] for c in LMCACHE_BAD])
def test_lmcache_bad_line(tmp_path: Path, line2: str, field: str, fragment: str) -> None:
    path = jsonl(tmp_path / "lookup_hashes_1.jsonl", [json.dumps(ev(1, ["0xaa"])), line2])
    with pytest.raises(TraceError) as ei:
        import_lmcache([tmp_path])
    assert_names(ei.value, path, 2, field)
    assert fragment in str(ei.value)


def test_lmcache_directory_without_logs(tmp_path: Path) -> None:
    jsonl(tmp_path / "other.jsonl", [ev(1, [])])
    with pytest.raises(TraceError, match=r"no lookup_hashes_\*\.jsonl files") as ei:
        import_lmcache([tmp_path])
    assert ei.value.path == str(tmp_path)
