"""Trace validation: empty traces, columns of the wrong type, and `simkv trace validate` on
several files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simkv.core.errors import TraceError
from simkv.traces.schema import build_table, read_trace, trace_schema, write_trace
from tests.conftest import ROOT, make_trace, simkv_cli


def write_table(table: pa.Table, path: Path, block_size: int = 4) -> Path:
    """Write ``table`` as a Parquet trace file with the metadata ``read_trace`` needs."""
    pq.write_table(table.replace_schema_metadata({b"block_size": str(block_size).encode()}), path)
    return path


def empty_trace(tmp_path: Path) -> Path:
    return write_table(trace_schema().empty_table(), tmp_path / "empty.parquet")


def good_table() -> pa.Table:
    return make_trace([[1, 2], [1, 2, 3]], tails=[1, 0]).table


def test_empty_trace_is_rejected(tmp_path: Path) -> None:
    path = empty_trace(tmp_path)
    with pytest.raises(TraceError, match="no requests") as ei:
        read_trace(path)
    assert ei.value.path == str(path)
    with pytest.raises(TraceError, match="no requests"):
        make_trace([])


@pytest.mark.parametrize("command", [
    ["trace", "validate"],
    ["trace", "stats"],
    ["run", "scenarios/default.yaml", "--trace"],
    ["curve", "capacity", "-o", "{out}", "--trace"],
    ["sweep", "scenarios/default.yaml", "-o", "{out}", "--grid", "tiers.gpu.capacity_bytes=1GiB,2GiB",
     "--workers", "1", "--trace"],
], ids=["validate", "stats", "run", "curve", "sweep"])
def test_empty_trace_every_command(tmp_path: Path, command: list[str]) -> None:
    path = empty_trace(tmp_path)
    args = [a.replace("{out}", str(tmp_path / "out")) for a in command]
    proc = simkv_cli(*args, str(path), cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(path) in proc.stderr
    assert "no requests" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("column", "values", "expected"), [
    ("input_tokens", pa.array(["9", "12"]), "int32"),
    ("output_tokens", pa.array(["1", "1"]), "int32"),
    ("arrival_s", pa.array(["0.0", "1.0"]), "double"),
    ("arrival_s", pa.array(["0.0", "1.0"]).dictionary_encode(), "double"),
    ("block_hashes", pa.array([["1", "2"], ["1", "2", "3"]]), "list<item: uint64 not null>"),
    ("request_id", pa.array([1, 2]), "string"),
    ("input_tokens", pa.array([True, False]), "int32"),
], ids=["input_tokens", "output_tokens", "arrival_s", "arrival_s-dict", "block_hashes",
        "request_id", "bool"])
def test_wrong_column_type_is_rejected(tmp_path: Path, column: str, values: pa.Array,
                                       expected: str) -> None:
    table = good_table()
    table = table.set_column(table.column_names.index(column), column, values)
    path = write_table(table, tmp_path / "t.parquet")
    with pytest.raises(TraceError) as ei:
        read_trace(path)
    assert ei.value.path == str(path)
    assert ei.value.field == column
    assert f"expected {expected}" in str(ei.value)


def test_lossless_casts_within_a_family_are_accepted(tmp_path: Path) -> None:
    """Narrower or wider numbers (an int64 token count, float32 arrivals, int64 hashes) are
    the same data: they still load, in the canonical types."""
    table = good_table()
    for name, arr in (("input_tokens", pa.array([9, 12], pa.int64())),
                      ("arrival_s", pa.array([0.0, 1.0], pa.float32())),
                      ("block_hashes", pa.array([[1, 2], [1, 2, 3]], pa.list_(pa.int64())))):
        table = table.set_column(table.column_names.index(name), name, arr)
    trace = read_trace(write_table(table, tmp_path / "t.parquet"))
    assert trace.table.schema.equals(trace_schema(), check_metadata=False)
    assert trace.input_tokens.tolist() == [9, 12]


def test_build_table_rejects_numbers_as_text() -> None:
    cols = {name: good_table().column(name).to_pylist() for name in good_table().column_names}
    cols["input_tokens"] = ["9", "12"]
    with pytest.raises(TraceError) as ei:
        build_table(cols, block_size=4, source="test")
    assert ei.value.field == "input_tokens"


def test_validate_checks_every_file(tmp_path: Path) -> None:
    good = write_trace(make_trace([[1], [1, 2]]), tmp_path / "good.parquet")
    table = good_table()
    table = table.set_column(table.column_names.index("input_tokens"), "input_tokens",
                             pa.array(["9", "12"]))
    bad = write_table(table, tmp_path / "bad.parquet")
    missing = tmp_path / "missing.parquet"
    empty = empty_trace(tmp_path)
    proc = simkv_cli("trace", "validate", str(bad), str(good), str(missing), str(empty),
                     str(good), cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    ok_lines = proc.stdout.splitlines()
    assert len(ok_lines) == 2 and all(str(good) in ln and ln.startswith("ok") for ln in ok_lines)
    fail_lines = proc.stderr.splitlines()
    assert len(fail_lines) == 3
    assert all(ln.startswith("FAIL") for ln in fail_lines)
    assert str(bad) in fail_lines[0] and "'input_tokens'" in fail_lines[0]
    assert "expected int32" in fail_lines[0]
    assert str(missing) in fail_lines[1] and "no such file" in fail_lines[1]
    assert str(empty) in fail_lines[2] and "no requests" in fail_lines[2]

    proc = simkv_cli("trace", "validate", str(good), str(good), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


# -- issue 17 item 10: a disk write that had not landed is write timing, not eviction ------------


def _diverging(tmp_path: Path, second_arrival: float, measured: list[str]) -> dict:
    """Request r0 stores blocks 1-8 at 0 s, r1 pushes them out of an 8-block GPU tier at 1 s, r2
    asks for them again at ``second_arrival`` from the disk (write-through). The simulated run
    uses the default scenario; the "measured" one the same with ``measured`` overrides."""
    from simkv.api import run
    from simkv.fidelity import validate

    a, b = list(range(1, 9)), list(range(101, 109))
    path = write_trace(make_trace([a, b, a], block_size=16, arrivals=[0.0, 1.0, second_arrival]),
                       tmp_path / "t.parquet")
    common = ["tiers.gpu.capacity_bytes=null", "tiers.gpu.capacity_blocks=8", "load_policy=always"]
    scenario = ROOT / "scenarios" / "default.yaml"
    run(scenario, path, overrides=common).write(tmp_path / "sim")
    run(scenario, path, overrides=[*common, *measured]).write(tmp_path / "meas")
    return validate(tmp_path / "sim", tmp_path / "meas", tmp_path / "v", ignore_scenario=True).data


def test_a_disk_write_not_landed_yet_is_write_timing(tmp_path: Path) -> None:
    """A slow disk on the measured side: r2 arrives 1.5 s after r0's prefill, before r0's 16 MiB
    reached the disk at 10 MB/s (1.7 s), so it hits fewer disk blocks there: write timing."""
    d = _diverging(tmp_path, 1.5, ["tiers.disk.write_gbps=0.01"])
    (first,) = d["divergence"]["first"]
    assert first["request_id"] == "r2" and first["stored_by"] == "r0"
    assert first["tiers"][0]["tier"] == "disk" and first["tiers"][0]["sim"] > first["tiers"][0]["measured"]
    assert first["store_in_flight"] == {"sim": False, "measured": False}  # the prefills had ended
    assert first["cause"] == "write_timing", first
    landed = first["write_not_landed"]
    assert landed["tier"] == "disk" and landed["missed_on"] == "measured"
    assert landed["gap_s"] < landed["write_s"]
    assert landed["write_s"] >= 8 * 16 * 131072 / 0.01e9  # r0's 8 blocks at 10 MB/s
    md = (tmp_path / "v" / "fidelity.md").read_text()
    assert "| write_timing |" in md and "the disk write takes" in md


def test_a_block_evicted_long_after_its_write_is_eviction(tmp_path: Path) -> None:
    """The control: a 4-block disk on the measured side and r2 arriving 9 s after every write
    landed: the block was evicted, not in flight."""
    d = _diverging(tmp_path, 10.0, ["tiers.disk.capacity_bytes=null", "tiers.disk.capacity_blocks=4"])
    (first,) = d["divergence"]["first"]
    assert first["cause"] == "eviction" and "write_not_landed" not in first
