"""Bad input is one line naming the file and the key (or row), exit 2, never a traceback:
scenario values of the wrong type or out of range, unreadable YAML and Parquet, absurd traces."""

from __future__ import annotations

import dataclasses
import subprocess
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simkv.core.config import load_yaml
from simkv.core.errors import ScenarioError, TraceError
from simkv.core.scenario import ARCHIVE_CODECS, Scenario, load_scenario, scenario_from_dict
from simkv.traces.schema import MAX_ARRIVAL_S, read_trace, write_trace
from tests.conftest import ROOT, SMALL_TRACE, make_trace, simkv_cli

ARCHIVE = ROOT / "scenarios" / "four-tier.yaml"


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, one non-blank line on stderr holding every needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- the scenario's typed fields, all of them ------------------------------------------------


def numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """Every ``int`` or ``float`` field of the scenario tree (optional ones included), dotted."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += numeric_fields(tp, f"{key}.")
            continue
        kinds = set(get_args(tp)) if get_origin(tp) in (typing.Union, types.UnionType) else {tp}
        if str in kinds:
            continue  # a size: '8GiB' is its text form
        for kind in (int, float):
            if kind in kinds:
                out.append((key, kind))
    return out


FIELDS = numeric_fields(Scenario)
BAD = {"string": " 256 ", "numeric string": "5", "bool": True, "nan": float("nan"),
       "inf": float("inf"), "huge": 1e30, "huger": 10**400}


def nested(key: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def test_the_walk_finds_the_numeric_fields() -> None:
    keys = dict(FIELDS)
    assert keys["model.layers"] is int and keys["tiers.archive.interval_s"] is float
    assert keys["block_size"] is int and keys["hardware.gpus"] is int and len(keys) > 25


@pytest.mark.parametrize("what", list(BAD))
def test_every_numeric_field_takes_only_finite_numbers_of_its_range(what: str) -> None:
    value = BAD[what]
    for key, kind in FIELDS:
        if what == "huge" and kind is float:
            continue  # 1e30 is a float
        with pytest.raises(ScenarioError) as exc:
            scenario_from_dict(nested(key, value))
        assert str(exc.value).startswith(f"{key}: "), (key, str(exc.value))


def test_a_ttl_may_be_infinite_but_not_nan() -> None:
    ttl = {"heuristic": "static", "params": {"ttl": float("inf")}}
    sc = scenario_from_dict({"ttl": ttl, "tiers": {"archive": {"enabled": True}}})
    assert sc.ttl.params == ttl["params"]
    for bad in (float("nan"), float("-inf"), "600"):
        with pytest.raises(ScenarioError, match=r"^ttl\.params\.ttl: "):
            scenario_from_dict({"ttl": {"heuristic": "static", "params": {"ttl": bad}},
                                "tiers": {"archive": {"enabled": True}}})


def test_numbers_in_yaml_are_numbers_and_quoted_ones_are_strings(tmp_path: Path) -> None:
    assert load_yaml("a: 1e-9\nb: -2E6\nc: .5e+3\nd: '1e-9'\ne: 1.0e-09\n", "x") == {
        "a": 1e-9, "b": -2e6, "c": 500.0, "d": "1e-9", "e": 1e-9}
    path = tmp_path / "s.yaml"
    path.write_text("tiers:\n  archive: {interval_s: 1e-3}\nmodel: {layers: 4e1}\n")
    sc = load_scenario(path)
    assert sc.tiers.archive.interval_s == 1e-3 and sc.model.layers == 40
    path.write_text("block_size: ' 256 '\n")
    with pytest.raises(ScenarioError, match=r"s\.yaml: block_size: ' 256 ' is not an integer"):
        load_scenario(path)


def test_kv_bytes_per_token_and_gpus_are_bounded() -> None:
    with pytest.raises(ScenarioError, match=r"model\.2\*layers\*kv_heads\*head_dim\*dtype_bytes"):
        scenario_from_dict({"model": {"layers": 2**40}})
    with pytest.raises(ScenarioError, match=r"^hardware\.gpus: 4611686018427387904 is beyond 4096"):
        scenario_from_dict({"hardware": {"gpus": 2**62}})


def test_an_unknown_archive_codec_is_rejected_at_load() -> None:
    with pytest.raises(ScenarioError, match=r"tiers\.archive\.codec: 'lz4' is not one of"):
        scenario_from_dict({"tiers": {"archive": {"codec": "lz4"}}})


def test_the_engine_implements_exactly_the_scenarios_codecs() -> None:
    pytest.importorskip("torch")
    from simkv_engine.archive import CODECS, codec

    assert tuple(CODECS) == ARCHIVE_CODECS
    for name in ARCHIVE_CODECS:
        compress, decompress = codec(name)
        assert decompress(compress(b"kv" * 100)) == b"kv" * 100


# -- traces ----------------------------------------------------------------------------------


def write_table(path: Path, table: pa.Table, block_size: bytes = b"4") -> Path:
    pq.write_table(table.replace_schema_metadata({b"block_size": block_size,
                                                  b"schema_version": b"1"}), path)
    return path


def test_duplicated_parquet_column(tmp_path: Path) -> None:
    table = make_trace([[1], [2]]).table
    dup = pa.Table.from_arrays([*table.columns, table.column("session_id")],
                               names=[*table.column_names, "session_id"])
    path = write_table(tmp_path / "dup.parquet", dup)
    with pytest.raises(TraceError, match=r"dup\.parquet: field 'session_id': column 'session_id' "
                                         r"appears 2 times"):
        read_trace(path)


@pytest.mark.parametrize("raw", [b"99999999999999999999", b" 4 ", b"4.0", b"-4", b"33554432"])
def test_bad_block_size_metadata(tmp_path: Path, raw: bytes) -> None:
    path = write_table(tmp_path / "t.parquet", make_trace([[1], [2]]).table, block_size=raw)
    with pytest.raises(TraceError, match=r"t\.parquet: field 'block_size'"):
        read_trace(path)


@pytest.mark.parametrize("arrival", [1e300, MAX_ARRIVAL_S * 1.5])
def test_arrival_beyond_the_bound(tmp_path: Path, arrival: float) -> None:
    with pytest.raises(TraceError, match=r"row 1: field 'arrival_s': .*<= 1e\+09"):
        make_trace([[1], [2]], arrivals=[0.0, arrival])
    make_trace([[1], [2]], arrivals=[0.0, MAX_ARRIVAL_S])  # the bound itself is fine


# -- the same through the command line -------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    table = make_trace([[1], [2]]).table
    dup = pa.Table.from_arrays([*table.columns, table.column("session_id")],
                               names=[*table.column_names, "session_id"])
    far = make_trace([[1], [2]], arrivals=[0.0, 1e9]).table
    far = far.set_column(0, "arrival_s", pa.array([0.0, 1e300]))
    nul = d / "nul.yaml"
    nul.write_bytes(b"name: a\x00b\n")
    latin = d / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    quoted = d / "quoted.yaml"
    quoted.write_text("block_size: ' 256 '\n")
    span = d / "span.parquet"
    write_trace(make_trace([[i % 3] for i in range(50)], arrivals=np.linspace(0, 1e8, 50).tolist()),
                span)
    return {"dup": write_table(d / "dup.parquet", dup),
            "huge_block": write_table(d / "huge.parquet", table, b"99999999999999999999"),
            "far": write_table(d / "far.parquet", far), "nul": nul, "latin": latin,
            "quoted": quoted, "span": span}


CASES = {
    "layers 1e30": (["run", str(ARCHIVE), "-t", str(SMALL_TRACE), "--set", "model.layers=1e30"],
                    ["error: ", "four-tier.yaml: model.layers: 1e+30 is out of range"]),
    "NUL in YAML": (["run", "{nul}", "-t", str(SMALL_TRACE)], ["error: ", "nul.yaml", "not valid YAML"]),
    "not UTF-8 YAML": (["run", "{latin}", "-t", str(SMALL_TRACE)], ["error: ", "latin.yaml", "not UTF-8"]),
    "quoted number": (["run", "{quoted}", "-t", str(SMALL_TRACE)],
                      ["error: ", "quoted.yaml: block_size: ' 256 ' is not an integer"]),
    "unknown codec": (["run", str(ARCHIVE), "-t", str(SMALL_TRACE), "--set", "tiers.archive.codec=lz4"],
                      ["error: ", "tiers.archive.codec: 'lz4'"]),
    "duplicated column": (["trace", "validate", "{dup}"], ["dup.parquet", "'session_id' appears 2 times"]),
    "huge block_size": (["trace", "validate", "{huge_block}"], ["huge.parquet", "block_size"]),
    "huge block_size run": (["run", str(ARCHIVE), "-t", "{huge_block}"],
                            ["error: ", "huge.parquet", "block_size"]),
    "arrival 1e300": (["run", str(ARCHIVE), "-t", "{far}"],
                      ["error: ", "far.parquet: row 1: field 'arrival_s'"]),
    "interval 1e-9": (["run", str(ARCHIVE), "-t", "{span}", "--set", "tiers.archive.interval_s=1e-9"],
                      ["error: ", "tiers.archive.interval_s: 1e-09 s would take 1e+17 archive passes"]),
    "timeline bin 1e-300": (["run", str(ARCHIVE), "-t", str(SMALL_TRACE), "--set", "timeline_bin_s=1e-300"],
                            ["error: ", "timeline_bin_s: 1e-300 s would take", "timeline bins"]),
    "--set duplicate key": (
        ["run", str(ARCHIVE), "-t", str(SMALL_TRACE), "--set", "tiers={{gpu: 1, gpu: 2}}"],
        ["error: ", "--set 'tiers={gpu: 1, gpu: 2}': duplicate key 'gpu'"]),
    "--set duplicate key in a string": (
        ["run", str(ARCHIVE), "-t", str(SMALL_TRACE), "--set", "name={{a: 1, a: 2}}"],
        ["error: ", "--set 'name={a: 1, a: 2}': duplicate key 'a'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_one_line_errors(files: dict[str, Path], case: str) -> None:
    args, needles = CASES[case]
    assert_one_line_error(simkv_cli(*(a.format(**files) for a in args)), *needles)
