"""The Mooncake JSONL importer, the importers' dispatch, ``simkv trace import`` and the round
trip of imported traces through Parquet.

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

from simkv.core.errors import SimkvError, TraceError
from simkv.traces.importers import IMPORTERS, import_agent_log, import_mooncake, import_trace
from simkv.traces.schema import read_trace, write_trace
from tests.importer_helpers import assert_names, blocks, call, infinite_hit_rate, jsonl


def mc(ts: float, n_in: int, ids: list[int], n_out: int = 10) -> dict[str, Any]:
    """One Mooncake row (keys in Mooncake's order)."""
    return {"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": ids}


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
