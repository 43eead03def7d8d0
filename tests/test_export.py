"""``simkv trace export mooncake``: the inverse of the Mooncake importer, checked by round trips
through real files (the bundled trace, a generated trace at Mooncake's block size, hand-made
edge cases) and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simkv.core.errors import SimkvError
from simkv.traces.export import mooncake_hash_ids, mooncake_lines, write_mooncake
from simkv.traces.generator import generate, generator_config
from simkv.traces.importers import import_mooncake
from simkv.traces.schema import Trace, write_trace
from tests.conftest import make_trace, simkv_cli


def _same_requests(a: Trace, b: Trace) -> None:
    """Same rows: arrivals (to the ms, relative to the first), token counts."""
    assert len(a) == len(b)
    ms = np.rint(a.arrival_s * 1000)
    assert np.allclose(b.arrival_s, (ms - ms[0]) / 1000, rtol=0, atol=1e-9)
    assert np.abs(b.arrival_s - (a.arrival_s - a.arrival_s[0])).max() <= 0.001
    assert np.array_equal(a.input_tokens, b.input_tokens)
    assert np.array_equal(a.output_tokens, b.output_tokens)


def _blocks(t: Trace) -> list[list[int]]:
    return t.table.column("block_hashes").to_pylist()


def test_exact_round_trip_at_mooncakes_block_size(tmp_path: Path) -> None:
    trace = generate(generator_config(seed=3, n_requests=300, preset="long-horizon",
                                      overrides=["block_size=512"]))
    back = import_mooncake(write_mooncake(trace, tmp_path / "t.jsonl"))
    _same_requests(trace, back)
    assert _blocks(back) == _blocks(trace)
    assert back.block_size == 512
    # the file has a hash_id for each partial block too, as aiperf expects
    lines = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    for row in lines:
        assert len(row["hash_ids"]) == -(-row["input_length"] // 512)
        assert isinstance(row["timestamp"], int)


def test_round_trip_of_the_bundled_trace_merges_blocks(small_trace: Trace, tmp_path: Path) -> None:
    """small.parquet has 256-token blocks: each hash_id stands for two, and two requests share
    ``floor(k / 2)`` hash_ids where they shared ``k`` blocks."""
    path = tmp_path / "small.jsonl"
    write_mooncake(small_trace, path)
    back = import_mooncake(path)
    _same_requests(small_trace, back)
    ids, counts = mooncake_hash_ids(small_trace)
    full = small_trace.input_tokens // 512
    starts = np.cumsum(counts) - counts
    assert _blocks(back) == [ids[s:s + f].tolist() for s, f in zip(starts, full, strict=True)]
    a, b = _blocks(small_trace), _blocks(back)
    for r in range(0, len(a) - 1, 5):
        k = next((i for i, (x, y) in enumerate(zip(a[r], a[r + 1], strict=False)) if x != y),
                 min(len(a[r]), len(a[r + 1])))
        k2 = next((i for i, (x, y) in enumerate(zip(b[r], b[r + 1], strict=False)) if x != y),
                  min(len(b[r]), len(b[r + 1])))
        assert k2 == k // 2
    # distinct pairs of blocks stay distinct
    assert len(np.unique(back.block_hashes_flat)) == len(
        {tuple(x[i:i + 2]) for x in a for i in range(0, len(x) - 1, 2)})


def test_edge_cases_and_dense_ids(tmp_path: Path) -> None:
    # empty prompt, tail only, exact multiple, blocks + tail; hash 7 shared by three requests
    trace = make_trace([[], [], [7, 8], [7, 8, 9]], block_size=512, tails=[0, 5, 0, 1],
                       arrivals=[0.0, 0.0004, 1.25, 2.0])
    rows = [json.loads(x) for x in mooncake_lines(trace, dense_ids=True).splitlines()]
    assert [r["timestamp"] for r in rows] == [0, 0, 1250, 2000]
    assert [r["hash_ids"] for r in rows] == [[], [0], [1, 2], [1, 2, 3, 4]]
    path = write_mooncake(trace, tmp_path / "d.jsonl", dense_ids=True)
    assert _blocks(import_mooncake(path)) == [[], [], [1, 2], [1, 2, 3]]
    raw = write_mooncake(trace, tmp_path / "r.jsonl")
    assert _blocks(import_mooncake(raw)) == _blocks(trace)


def test_tail_ids_are_unique_per_request() -> None:
    trace = make_trace([[1], [1], [1]], block_size=512, tails=[3, 3, 0])
    ids, counts = mooncake_hash_ids(trace)
    assert counts.tolist() == [2, 2, 1]
    assert ids[0] == ids[2] == ids[4] == 1 and ids[1] != ids[3] and ids[1] != 1


def test_block_sizes_that_cannot_be_expressed() -> None:
    trace = make_trace([[1, 2]], block_size=256)
    for bs in (384, 128, 0):
        with pytest.raises(SimkvError, match="block"):
            mooncake_hash_ids(trace, bs)
    ids, _ = mooncake_hash_ids(trace, 256)  # the trace's own size: ids kept
    assert ids.tolist() == [1, 2]


def test_cli_export(small_trace: Trace, tmp_path: Path) -> None:
    src = write_trace(make_trace([[1, 2], [1, 3]], block_size=512, tails=[1, 0]), tmp_path / "t.parquet")
    res = simkv_cli("trace", "export", "mooncake", str(src), "-o", str(tmp_path / "out" / "t.jsonl"))
    assert res.returncode == 0, res.stderr
    back = simkv_cli("trace", "import", "mooncake", str(tmp_path / "out" / "t.jsonl"), "-o",
                     str(tmp_path / "back.parquet"))
    assert back.returncode == 0, back.stderr
    (tmp_path / "file").write_text("x")
    for args, fragment in [(("mooncake", str(src), "-o", str(tmp_path / "file" / "t.jsonl")), "file"),
                           (("mooncake", str(src), "-o", str(tmp_path)), "is a directory"),
                           (("mooncake", str(src), "-o", str(tmp_path / "x.jsonl"), "--block-size",
                             "700"), "never split"),
                           (("lmcache", str(src), "-o", str(tmp_path / "x.jsonl")), "unknown export"),
                           (("mooncake", str(tmp_path / "nope.parquet"), "-o", str(tmp_path / "x.jsonl")),
                            "nope.parquet")]:
        res = simkv_cli("trace", "export", *args)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr
        assert fragment in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "x.jsonl").exists()
