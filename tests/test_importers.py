"""Importers: Mooncake JSONL, LMCache lookup-hash logs, agent logs → validated traces.

Every input is a real file under ``tmp_path``. Bad input must come back as a TraceError naming
the file, the 1-based line and the field, and through the CLI as exit status 2 without a
traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from simkv.errors import SimkvError, TraceError
from simkv.traces.hashing import chain_block_hashes, hex_to_u64
from simkv.traces.importers import (
    IMPORTERS,
    import_agent_log,
    import_lmcache,
    import_mooncake,
    import_trace,
)
from simkv.traces.schema import Trace, read_trace, write_trace

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def jsonl(path: Path, rows: list[Any], *, separators: tuple[str, str] | None = None) -> Path:
    """Write ``rows`` one per line; a ``str`` row is written verbatim (for broken lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r, separators=separators) for r in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def mc(ts: float, n_in: int, ids: list[int], n_out: int = 10) -> dict[str, Any]:
    """One Mooncake row (keys in Mooncake's order)."""
    return {"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": ids}


def blocks(trace: Trace) -> list[list[int]]:
    return trace.table.column("block_hashes").to_pylist()


def infinite_hit_rate(trace: Trace) -> float:
    """Token hit rate with an unbounded cache, prefix semantics: a request hits the run of
    its leading blocks that appeared in any earlier request."""
    seen: set[int] = set()
    hit = 0
    for bl in blocks(trace):
        prefix = 0
        while prefix < len(bl) and bl[prefix] in seen:
            prefix += 1
        hit += prefix * trace.block_size
        seen.update(bl)
    return hit / int(trace.input_tokens.sum())


def assert_names(exc: TraceError, path: Path, line: int | None, field: str | None) -> None:
    """The error (object and message) names the file, the line and the field."""
    msg = str(exc)
    assert exc.path == str(path) and str(path) in msg
    assert exc.line == line
    if line is not None:
        assert f"{path}:{line}" in msg
    assert exc.field == field
    if field is not None:
        assert f"field '{field}'" in msg


def simkv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``simkv`` console script (or ``python -m simkv.cli``) as a user would."""
    script = Path(sys.executable).with_name("simkv")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "simkv.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------
# Mooncake
# ---------------------------------------------------------------------------------------------

MOONCAKE_ROWS = [
    mc(1000, 1100, [1, 2, 3]),  # 2 full blocks + partial: keep [1, 2]
    mc(1500, 1024, [1, 2]),  # exactly 2 blocks, no partial hash
    mc(1500, 2000, [1, 2, 7, 8]),  # 3 full + partial: keep [1, 2, 7]
    mc(4000.5, 300, [9]),  # no full block: keep []
    mc(5000, 0, []),  # empty prompt
]


def test_mooncake_import(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "mc.jsonl", MOONCAKE_ROWS)
    trace = import_mooncake(path)
    t = trace.table
    assert len(trace) == 5 and trace.block_size == 512
    assert trace.source == "mooncake:mc.jsonl"
    assert t.column("arrival_s").to_pylist() == [0.0, 0.5, 0.5, 3.0005, 4.0]
    assert t.column("request_id").to_pylist() == ["1", "2", "3", "4", "5"]
    assert t.column("input_tokens").to_pylist() == [1100, 1024, 2000, 300, 0]
    assert t.column("output_tokens").to_pylist() == [10] * 5
    assert blocks(trace) == [[1, 2], [1, 2], [1, 2, 7], [], []]
    assert set(t.column("session_id").to_pylist()) == {""}
    assert set(t.column("prompt_class").to_pylist()) == {"unknown"}
    assert t.schema.field("block_hashes").type == pa.list_(
        pa.field("item", pa.uint64(), nullable=False))


def test_mooncake_infinite_hit_rate_by_hand(tmp_path: Path) -> None:
    rows = [
        mc(0, 1536, [10, 11, 12]),  # 3 blocks, all new: hit 0
        mc(1, 1600, [10, 11, 13, 14]),  # keep [10, 11, 13]: hit 2 blocks = 1024
        mc(2, 1024, [20, 11]),  # 20 is new: prefix 0 although 11 was seen
        mc(3, 700, [20, 21]),  # keep [20]: hit 1 block = 512
    ]
    trace = import_mooncake(jsonl(tmp_path / "mc.jsonl", rows))
    expected = (0 + 1024 + 0 + 512) / (1536 + 1600 + 1024 + 700)
    assert infinite_hit_rate(trace) == pytest.approx(expected)


def test_mooncake_hash_ids_are_the_integers(tmp_path: Path) -> None:
    big = 2**64 - 1
    trace = import_mooncake(jsonl(tmp_path / "mc.jsonl", [mc(0, 1024, [0, big])]))
    assert blocks(trace) == [[0, big]]


def test_mooncake_all_readers_agree(tmp_path: Path) -> None:
    """Canonical lines (regex reader), compact JSON (pyarrow.json reader) and a file with a
    blank line (line-by-line reader) give the same trace."""
    rows = [mc(i * 7, 512 * (i % 5) + i % 3, list(range(i % 5 + (i % 3 > 0)))) for i in range(60)]
    canonical = import_mooncake(jsonl(tmp_path / "a.jsonl", rows))
    compact = import_mooncake(jsonl(tmp_path / "b.jsonl", rows, separators=(",", ":")))
    assert canonical.table.equals(compact.table)
    gap = tmp_path / "c.jsonl"
    gap.write_text("\n" + (tmp_path / "a.jsonl").read_text().replace("\n", "\r\n"))
    slow = import_mooncake(gap)
    assert slow.table.drop_columns("request_id").equals(
        canonical.table.drop_columns("request_id"))
    assert slow.table.column("request_id").to_pylist() == [str(i) for i in range(2, 62)]


def test_mooncake_fast_readers_are_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """The speed depends on it: canonical lines never reach pyarrow.json or json.loads, and
    compact lines never reach json.loads."""
    from simkv.traces.importers import reader as importers

    rows = [mc(i, 1000, [i, i + 1]) for i in range(30)]

    def boom(*args: object) -> None:
        raise AssertionError("slower reader used")

    monkeypatch.setattr(importers, "_read_slow", boom)
    monkeypatch.setattr(importers, "_read_fast", boom)
    assert len(import_mooncake(jsonl(tmp_path / "a.jsonl", rows))) == 30
    monkeypatch.undo()
    monkeypatch.setattr(importers, "_read_slow", boom)
    assert len(import_mooncake(jsonl(tmp_path / "b.jsonl", rows, separators=(",", ":")))) == 30


def test_mooncake_sort_is_stable(tmp_path: Path) -> None:
    rows = [mc(3000, 512, [1]), mc(1000, 512, [2]), mc(3000, 512, [3]), mc(1000, 512, [4])]
    path = jsonl(tmp_path / "mc.jsonl", rows)
    with pytest.raises(TraceError) as ei:
        import_mooncake(path)
    assert_names(ei.value, path, 2, "timestamp")
    assert "--sort" in str(ei.value)
    trace = import_mooncake(path, sort=True)
    assert trace.table.column("request_id").to_pylist() == ["2", "4", "1", "3"]
    assert trace.table.column("arrival_s").to_pylist() == [0.0, 0.0, 2.0, 2.0]
    assert blocks(trace) == [[2], [4], [1], [3]]


GOOD = json.dumps(mc(0, 512, [1]))
MOONCAKE_BAD: list[tuple[str, str, str | None, str]] = [
    # (id, third line, field, message fragment)
    ("invalid-json", '{"timestamp": 1, "input_length": ', None, "invalid JSON"),
    ("not-object", "[1, 2, 3]", None, "expected a JSON object"),
    ("duplicate-key", '{"timestamp": 1, "timestamp": 2, "input_length": 0, "output_length": 1, '
     '"hash_ids": []}', None, "appears twice"),
    ("nan", '{"timestamp": NaN, "input_length": 1, "output_length": 1, "hash_ids": []}', None,
     "NaN"),
    ("missing", '{"timestamp": 1, "input_length": 512, "output_length": 1}', "hash_ids",
     "missing"),
    ("null", '{"timestamp": 1, "input_length": null, "output_length": 1, "hash_ids": []}',
     "input_length", "null"),
    ("bool", '{"timestamp": 1, "input_length": true, "output_length": 1, "hash_ids": []}',
     "input_length", "integer"),
    ("float-length", json.dumps(mc(1, 512.0, [1])), "input_length", "integer"),  # type: ignore[arg-type]
    ("str-length", json.dumps(mc(1, 512, [1], n_out="5")), "output_length", "integer"),  # type: ignore[arg-type]
    ("str-time", json.dumps(mc("1", 512, [1])), "timestamp", "number"),  # type: ignore[arg-type]
    ("negative-length", json.dumps(mc(1, -1, [])), "input_length", ">= 0"),
    ("huge-length", json.dumps(mc(1, 2**31, [])), "input_length", "<="),
    ("overflow-length", json.dumps(mc(1, 10**20, [])), "input_length", "<="),
    ("overflow-time", '{"timestamp": 1e999, "input_length": 1, "output_length": 1, '
     '"hash_ids": []}', "timestamp", "finite"),
    ("negative-hash", json.dumps(mc(1, 512, [-1])), "hash_ids", "2**64"),
    ("huge-hash", json.dumps(mc(1, 512, [2**64])), "hash_ids", "2**64"),
    ("float-hash", json.dumps(mc(1, 512, [1.0])), "hash_ids", "integers"),  # type: ignore[list-item]
    ("hash-not-list", json.dumps(mc(1, 512, 7)), "hash_ids", "list"),  # type: ignore[arg-type]
    ("too-many", json.dumps(mc(1, 1024, [1, 2, 3])), "hash_ids", "has 3 hash_ids"),
    ("too-few", json.dumps(mc(1, 1024, [1])), "hash_ids", "has 1 hash_ids"),
    ("unknown-key", json.dumps({**mc(1, 512, [1]), "prio": 1}), "prio", "unknown key"),
    ("decreasing", json.dumps(mc(-5, 512, [1])), "timestamp", "earlier"),
]


@pytest.mark.parametrize("blank", [False, True], ids=["dense", "blank-line"])
@pytest.mark.parametrize(("bad", "field", "fragment"),
                         [c[1:] for c in MOONCAKE_BAD], ids=[c[0] for c in MOONCAKE_BAD])
def test_mooncake_bad_line(tmp_path: Path, bad: str, field: str | None, fragment: str,
                           blank: bool) -> None:
    """Dense files go through the fast readers first, files with a blank line (which still
    counts as a line) straight to the line-by-line reader: same error either way."""
    rows = [GOOD, "", bad, GOOD] if blank else [GOOD, bad, GOOD]
    path = jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TraceError) as ei:
        import_mooncake(path)
    assert_names(ei.value, path, 3 if blank else 2, field)
    assert fragment in str(ei.value)


def test_mooncake_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"timestamp": "\xff"}\n')
    with pytest.raises(TraceError) as ei:
        import_mooncake(path)
    assert_names(ei.value, path, 2, None)
    assert "UTF-8" in str(ei.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_mooncake_no_requests(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(TraceError, match="no requests") as ei:
        import_mooncake(path)
    assert ei.value.path == str(path)


def test_mooncake_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file") as ei:
        import_mooncake(tmp_path / "nope.jsonl")
    assert ei.value.path == str(tmp_path / "nope.jsonl")
    with pytest.raises(TraceError, match="is a directory"):
        import_mooncake(tmp_path)


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


# ---------------------------------------------------------------------------------------------
# Agent log
# ---------------------------------------------------------------------------------------------


def call(rid: str, t: float, segments: list[list[Any]], **extra: Any) -> dict[str, Any]:
    n = sum(s[1] for s in segments)
    return {"arrival_s": t, "request_id": rid, "input_tokens": n, "output_tokens": 5,
            "prompt_segments": segments, **extra}


def test_agent_log_shared_prefix(tmp_path: Path) -> None:
    sys_seg = ["sys:coder:v3", 600]
    path = jsonl(tmp_path / "agent.jsonl", [
        call("c1", 0.0, [sys_seg, ["tools:coder", 300], ["sess-1:turn-1", 200]],
             session_id="sess-1", prompt_class="system", model="llama-8b", tool_name="grep",
             cost_per_mtok=0.5),
        call("c2", 1.5, [sys_seg, ["tools:coder", 300], ["sess-2:turn-1", 250]],
             session_id="sess-2", parent_request_id="c1", reuse_prob=0.25, temperature=0.7,
             prompt_key="k"),
        call("c3", 2.0, [["sys:other", 600], ["tools:coder", 300]]),
    ])
    trace = import_agent_log(path, block_size=256)
    t = trace.table
    b1, b2, b3 = blocks(trace)
    assert len(b1) == 1100 // 256 and len(b2) == 1150 // 256 and len(b3) == 900 // 256
    assert b1[:3] == b2[:3]  # 900 shared tokens = 3 full blocks
    assert b1[3] != b2[3]
    assert b1[0] != b3[0]  # another system prompt shares nothing
    assert b1 == chain_block_hashes([("sys:coder:v3", 600), ("tools:coder", 300),
                                     ("sess-1:turn-1", 200)], 256)
    assert t.column("session_id").to_pylist() == ["sess-1", "sess-2", ""]
    assert t.column("prompt_class").to_pylist() == ["system", "unknown", "unknown"]
    assert t.column("model").to_pylist() == ["llama-8b", None, None]
    assert t.column("reuse_prob").to_pylist() == [None, 0.25, None]
    assert t.column("parent_request_id").to_pylist() == [None, "c1", None]
    assert trace.source == "agent:agent.jsonl" and trace.block_size == 256


def test_agent_log_timestamp_ms_and_sort(tmp_path: Path) -> None:
    rows = [{**call("a", 0, [["s", 10]]), "timestamp_ms": 5000},
            {**call("b", 0, [["s", 10]]), "timestamp_ms": 2000},
            {**call("c", 0, [["s", 10]]), "timestamp_ms": 5000}]
    for r in rows:
        del r["arrival_s"]
    path = jsonl(tmp_path / "agent.jsonl", rows)
    with pytest.raises(TraceError) as ei:
        import_agent_log(path)
    assert_names(ei.value, path, 2, "timestamp_ms")
    trace = import_agent_log(path, sort=True)
    assert trace.table.column("request_id").to_pylist() == ["b", "a", "c"]
    assert trace.table.column("arrival_s").to_pylist() == [0.0, 3.0, 3.0]


AGENT_BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("sum", {**call("x", 1, [["s", 10]]), "input_tokens": 11}, "prompt_segments", "sum to 10"),
    ("unknown", {**call("x", 1, [["s", 10]]), "latency": 3}, "latency", "unknown key"),
    ("segment-shape", call("x", 1, [["s", 10, 1]]), "prompt_segments", "pairs"),
    ("both-times", {**call("x", 1, [["s", 10]]), "timestamp_ms": 5}, "arrival_s", "both"),
    ("no-time", {k: v for k, v in call("x", 1, [["s", 1]]).items() if k != "arrival_s"},
     "arrival_s", "no time"),
    ("mixed-times", {**{k: v for k, v in call("x", 1, [["s", 1]]).items() if k != "arrival_s"},
                     "timestamp_ms": 5}, "timestamp_ms", "one time field"),
    ("dup-id", call("a", 1, [["s", 10]]), "request_id", "repeats"),
    ("negative-arrival", call("x", -1, [["s", 10]]), "arrival_s", ">= 0"),
    ("reuse-prob", call("x", 1, [["s", 10]], reuse_prob=2), "reuse_prob", "<= 1"),
    ("bad-model", call("x", 1, [["s", 10]], model=3), "model", "string"),
]


@pytest.mark.parametrize(("row", "field", "fragment"),
                         [c[1:] for c in AGENT_BAD], ids=[c[0] for c in AGENT_BAD])
def test_agent_log_bad_line(tmp_path: Path, row: dict[str, Any], field: str,
                            fragment: str) -> None:
    path = jsonl(tmp_path / "agent.jsonl", [call("a", 0.5, [["s", 10]]), row])
    with pytest.raises(TraceError) as ei:
        import_agent_log(path)
    assert_names(ei.value, path, 2, field)
    assert fragment in str(ei.value)


# ---------------------------------------------------------------------------------------------
# dispatch, CLI, round trip
# ---------------------------------------------------------------------------------------------


def test_import_trace_dispatch_and_option_errors(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "mc.jsonl", MOONCAKE_ROWS)
    assert set(IMPORTERS) == {"mooncake", "lmcache", "agent"}
    assert import_trace("mooncake", [path]).table.equals(import_mooncake(path).table)
    assert len(import_trace("mooncake", [path], block_size=512)) == 5
    for kwargs, fragment in [({"block_size": 256}, "fixed block size"),
                             ({"model": "m"}, "--model"),
                             ({}, "valid kinds")]:
        kind = "bogus" if not kwargs else "mooncake"
        with pytest.raises(SimkvError, match=fragment):
            import_trace(kind, [path], **kwargs)
    with pytest.raises(SimkvError, match="exactly one"):
        import_trace("mooncake", [path, path])
    with pytest.raises(SimkvError, match="--block-size"):
        import_trace("lmcache", [path], block_size=256)
    with pytest.raises(SimkvError, match="--model"):
        import_trace("agent", [path], model="m")
    with pytest.raises(SimkvError, match="positive"):
        import_trace("agent", [path], block_size=0)


def test_cli_import_ok_and_bad(tmp_path: Path) -> None:
    good = jsonl(tmp_path / "mc.jsonl", MOONCAKE_ROWS)
    out = tmp_path / "out.parquet"
    res = simkv("trace", "import", "mooncake", str(good), "-o", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert read_trace(out).table.equals(import_mooncake(good).table)

    bad = jsonl(tmp_path / "bad.jsonl", [GOOD, json.dumps(mc(1, 1024, [1, 2, 3]))])
    res = simkv("trace", "import", "mooncake", str(bad), "-o", str(out), cwd=tmp_path)
    assert res.returncode == 2
    assert f"{bad}:2: field 'hash_ids'" in res.stderr
    assert "Traceback" not in res.stderr

    res = simkv("trace", "import", "mooncake", str(good), "--model", "x", "-o", str(out),
                cwd=tmp_path)
    assert res.returncode == 2 and "--model" in res.stderr and "Traceback" not in res.stderr


def test_round_trip(tmp_path: Path) -> None:
    mooncake = import_mooncake(jsonl(tmp_path / "mc.jsonl", MOONCAKE_ROWS))
    agent = import_agent_log(jsonl(tmp_path / "agent.jsonl", [
        call("c1", 0.0, [["sys", 600]], model="m", cost_per_mtok=1.0, tool_name="t"),
        call("c2", 1.0, [["sys", 600], ["u", 7]], prompt_key="k"),
    ]))
    for trace in (mooncake, agent):
        back = read_trace(write_trace(trace, tmp_path / "t.parquet"))
        assert back.table.equals(trace.table)
        assert (back.block_size, back.source) == (trace.block_size, trace.source)
