"""The per-request result schema: columns, types, version and content hashes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simkv.api import run
from simkv.core.errors import SimkvError
from simkv.core.scenario import load_scenario
from simkv.core.schema import (
    DECODE_COLUMNS,
    REQUEST_COLUMNS,
    REQUEST_SCHEMA,
    SCHEMA_VERSION,
    read_requests,
    request_metadata,
    request_table,
    scenario_sha256,
    trace_sha256,
)
from simkv.core.tiers import TIER_NAMES
from simkv.regress import compare
from simkv.traces.schema import Trace, build_table, read_trace
from tests.conftest import ROOT, SMALL_TRACE, assert_user_error, simkv_cli

SCENARIO = ROOT / "scenarios" / "three-tier-adaptive.yaml"


@pytest.fixture(scope="module")
def three_tier(small_trace):
    return run(SCENARIO, small_trace)


def test_per_tier_columns_follow_the_tier_list() -> None:
    for t in TIER_NAMES:
        assert f"{t}_hit_tokens" in REQUEST_COLUMNS and f"{t}_held_bytes" in REQUEST_COLUMNS
    assert [c for c in REQUEST_COLUMNS if c.endswith("_loaded_bytes")] == [
        f"{t}_loaded_bytes" for t in TIER_NAMES[1:]]
    # Occupancy is never named like traffic.
    assert not {"gpu_bytes", "disk_bytes", "archive_bytes", "bytes_loaded_disk"} & set(REQUEST_COLUMNS)


def test_rows_match_the_schema_and_their_definitions(three_tier) -> None:
    r = three_tier.requests
    assert list(r.columns) == list(REQUEST_COLUMNS)
    pd.testing.assert_series_equal(r["ttft_s"], r["queue_s"] + r["load_s"] + r["prefill_s"],
                                   check_names=False)
    assert (r["hit_tokens"] == sum(r[f"{t}_hit_tokens"] for t in TIER_NAMES)).all()
    assert r["disk_hit_tokens"].sum() > 0 and r["archive_hit_tokens"].sum() > 0
    block_bytes = 16 * load_scenario(SCENARIO).model.bytes_per_token  # small.parquet: block_size 16
    assert (r["disk_loaded_bytes"] == r["disk_hit_tokens"] // 16 * block_bytes).all()
    assert (r["archive_loaded_bytes"] > 0).sum() == (r["archive_hit_tokens"] > 0).sum()


def test_written_rows_carry_version_and_hashes(three_tier, tmp_path) -> None:
    out = three_tier.write(tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    assert pq.read_schema(out / "requests.parquet").remove_metadata() == REQUEST_SCHEMA
    assert request_metadata(out / "requests.parquet") == {
        "simkv_requests_schema_version": str(SCHEMA_VERSION),
        "trace_sha256": summary["trace_sha256"], "scenario_sha256": summary["scenario_sha256"]}
    back = read_requests(out / "requests.parquet")
    pd.testing.assert_frame_equal(back, three_tier.requests)


def test_trace_hash_is_content_not_path(small_trace, tmp_path) -> None:
    copy = tmp_path / "elsewhere.parquet"
    shutil.copy(SMALL_TRACE, copy)
    assert trace_sha256(read_trace(copy)) == trace_sha256(small_trace)
    columns = {n: small_trace.table.column(n).to_pylist()[3:40] for n in small_trace.table.column_names}
    built = build_table(columns, block_size=small_trace.block_size, source="somewhere else")
    assert trace_sha256(built) == trace_sha256(Trace(small_trace.table.slice(3, 37), small_trace.block_size))
    assert trace_sha256(built) != trace_sha256(small_trace)
    assert trace_sha256(Trace(small_trace.table, small_trace.block_size * 2)) != trace_sha256(small_trace)


def test_scenario_hash_ignores_the_trace_path_and_the_engine_only() -> None:
    sc = load_scenario(SCENARIO)
    assert scenario_sha256(replace(sc, trace="/elsewhere/t.parquet")) == scenario_sha256(sc)
    assert scenario_sha256(replace(sc, engine="simpy")) == scenario_sha256(sc)
    assert scenario_sha256(sc.with_overrides(["hardware.gpus=3"])) != scenario_sha256(sc)


def test_request_table_rejects_bad_frames(three_tier) -> None:
    r = three_tier.requests
    with pytest.raises(SimkvError, match="missing \\['ttft_s'\\]"):
        request_table(r.drop(columns="ttft_s"), "t", "s")
    with pytest.raises(SimkvError, match="unknown \\['gpu_bytes'\\]"):
        request_table(r.assign(gpu_bytes=0), "t", "s")
    with pytest.raises(SimkvError, match="'hit_tokens': cannot convert to int64"):
        request_table(r.assign(hit_tokens=r["hit_tokens"] + 0.5), "t", "s")
    with pytest.raises(SimkvError, match="'queue_s': 1 missing"):
        request_table(r.assign(queue_s=r["queue_s"].where(r.index > 0)), "t", "s")


def test_a_fifo_run_leaves_only_the_decode_columns_null(three_tier, small_trace, tmp_path) -> None:
    """Schema version 5 (4 added ``output_tokens``, 5 the remote tier's columns):
    ``output_tokens`` from the trace, never null; a ``fifo`` simulation models no decode, so
    ``e2e_s``, ``tpot_s`` and ``preemptions`` are null, and only they."""
    r = three_tier.requests
    assert SCHEMA_VERSION == 5
    remote = {"remote_hit_tokens", "remote_loaded_bytes", "remote_held_bytes", "remote_storage_dollars"}
    assert remote <= set(r)
    assert r["output_tokens"].tolist() == small_trace.output_tokens.tolist()
    assert r[list(DECODE_COLUMNS)].isna().all().all()
    others = [c for c in REQUEST_COLUMNS if c not in (*DECODE_COLUMNS, "error")]
    assert not r[others].isna().any().any()
    table = request_table(r, "t", "s")
    n = len(r)
    assert {c: (table.schema.field(c).type, table.column(c).null_count) for c in DECODE_COLUMNS} == {
        "e2e_s": (pa.float64(), n), "tpot_s": (pa.float64(), n), "preemptions": (pa.int64(), n)}
    out = three_tier.write(tmp_path / "run")
    back = read_requests(out / "requests.parquet")
    pd.testing.assert_frame_equal(back, r)
    assert back["output_tokens"].dtype == "int64" and back["e2e_s"].isna().all()
    first_null = r.index > 0
    with pytest.raises(SimkvError, match="'prefill_s': 1 missing"):
        request_table(r.assign(prefill_s=r["prefill_s"].where(first_null)), "t", "s")
    with pytest.raises(SimkvError, match="'output_tokens': 1 missing"):   # a trace column: never
        request_table(r.assign(output_tokens=r["output_tokens"].where(first_null)), "t", "s", allow_null=True)
    # a version-3 file (before these columns) is refused with the re-run hint
    v3 = pq.read_table(out / "requests.parquet").drop_columns(["output_tokens", *DECODE_COLUMNS])
    v3 = v3.replace_schema_metadata({b"simkv_requests_schema_version": b"3"})
    pq.write_table(v3, out / "requests.parquet")
    with pytest.raises(SimkvError, match="schema version 3; this simkv reads version 5: re-run"):
        read_requests(out / "requests.parquet")


def test_old_rows_are_refused_naming_the_file(three_tier, tmp_path) -> None:
    out = three_tier.write(tmp_path / "run")
    old = three_tier.requests.rename(columns={"gpu_held_bytes": "gpu_bytes"})
    old.to_parquet(out / "requests.parquet", index=False)  # no schema version: an older simkv
    with pytest.raises(SimkvError, match="no schema version"):
        read_requests(out / "requests.parquet")
    assert_user_error(simkv_cli("report", str(out)), str(out / "requests.parquet"), "re-run")
    table = pa.Table.from_pandas(three_tier.requests, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({b"simkv_requests_schema_version": b"99"}),
                   out / "requests.parquet")
    with pytest.raises(SimkvError, match="schema version 99"):
        read_requests(out / "requests.parquet")


def test_regress_does_not_compare_the_hashes(three_tier) -> None:
    old = {**three_tier.summary, "trace_sha256": "0" * 64, "scenario_sha256": "1" * 64}
    assert compare("case", old, three_tier.summary) == []
