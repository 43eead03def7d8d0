"""Per-request and summary metrics of the batching time model (``hardware.scheduler: vllm``):
queue, prefill, TTFT, end-to-end latency, time per output token and preemptions from a request
log's first-token and finish times; their summary keys, present under batching only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from simkv.api import run
from simkv.core.scenario import Scenario, scenario_from_dict
from simkv.core.schema import DECODE_COLUMNS, request_table
from simkv.metrics import request_frame, summarize
from simkv.model.engines import ENGINES, RunRecord
from simkv.traces.schema import Trace, validate_table
from tests.conftest import ROOT, make_trace

B = 256  # the example table profile's block size
ARRIVAL = [0.0, 0.5, 1.0]
OUTPUT_TOKENS = [1, 5, 3]
# The batching model's times, by hand: first scheduled, loaded, first token, last token.
START = [0.0, 0.6, 1.25]
LOAD = [0.0, 0.01, 0.0]
FIRST = [0.05, 0.7, 1.5]
FINISH = [0.05, 1.1, 1.9]
PREEMPTIONS = [0, 1, 0]
NOCACHE_FIRST = [0.06, 0.75, 1.6]
NOCACHE_FINISH = [0.06, 1.7, 2.0]
#: The summary keys a batched run adds (docs/metrics.md, "Latency"); absent under fifo.
DECODE_SUMMARY_KEYS = {
    "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
    "queue_p50_s", "queue_p90_s", "queue_p99_s", "throughput_requests_per_s",
    "throughput_output_tokens_per_s", "preemptions"}


def _trace() -> Trace:
    """Three requests sharing a prefix, with 1, 5 and 3 output tokens."""
    t = make_trace([[1, 2], [1, 2, 3], [7]], block_size=B, arrivals=ARRIVAL, tails=[1, 0, 2])
    i = t.table.column_names.index("output_tokens")
    table = t.table.set_column(i, "output_tokens", pa.array(OUTPUT_TOKENS, pa.int32()))
    return validate_table(table, block_size=B, source="test")


def _scenario(hardware: dict | None = None) -> Scenario:
    return scenario_from_dict({"engine": "simpy", "block_size": B, "hardware": hardware or {},
                               "tiers": {"disk": {"enabled": False}}})


def _batched(sc: Scenario, tr: Trace) -> RunRecord:
    """A real run's record whose log is then filled by hand as the batching model would."""
    rec = ENGINES.get("simpy").run(sc, tr)
    log = rec.log
    log.keep_decode()
    for i in range(len(tr)):
        log.start_s[i], log.load_s[i] = START[i], LOAD[i]
        log.first_token_s[i], log.finish_s[i], log.preemptions[i] = FIRST[i], FINISH[i], PREEMPTIONS[i]
    return rec


def _parts(rec: RunRecord) -> tuple:
    """What request_frame reads of a run record: its cache and its log."""
    return rec.cache, rec.log


@pytest.fixture
def nocache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The no-cache first-token times of the batching model (simkv.model.batching; by hand here,
    so the per-request arithmetic is checked on its own)."""
    monkeypatch.setattr("simkv.metrics.requests._nocache_times",
                        lambda sc, tr: (np.array(NOCACHE_FIRST), np.array(NOCACHE_FINISH)))


def test_batched_rows_follow_their_definitions(nocache: None) -> None:
    sc, tr = _scenario(), _trace()
    rec = _batched(sc, tr)
    r = request_frame(tr, sc, rec.cache, rec.log)
    arrival, start, load = np.array(ARRIVAL), np.array(START), np.array(LOAD)
    first, finish = np.array(FIRST), np.array(FINISH)
    np.testing.assert_array_equal(r["queue_s"], start - arrival)
    np.testing.assert_array_equal(r["load_s"], load)
    np.testing.assert_array_equal(r["prefill_s"], first - start - load)
    np.testing.assert_array_equal(r["ttft_s"], first - arrival)
    np.testing.assert_array_equal(r["ttft_nocache_s"], np.array(NOCACHE_FIRST) - arrival)
    np.testing.assert_array_equal(r["e2e_s"], finish - arrival)
    # (e2e − ttft) / (O − 1); undefined (null) for the request with one output token
    np.testing.assert_array_equal(r["tpot_s"], [np.nan, (1.1 - 0.7) / 4, (1.9 - 1.5) / 2])
    assert r["preemptions"].tolist() == PREEMPTIONS and r["preemptions"].dtype == np.int64
    assert r["output_tokens"].tolist() == OUTPUT_TOKENS
    np.testing.assert_allclose(r["ttft_s"], r["queue_s"] + r["load_s"] + r["prefill_s"], rtol=1e-12)
    table = request_table(r, "t", "s")                      # the one null: tpot_s of r0
    assert {c: table.column(c).null_count for c in DECODE_COLUMNS} == {
        "e2e_s": 0, "tpot_s": 1, "preemptions": 0}


def test_latency_outside_the_worker_is_in_ttft_and_e2e(nocache: None, tmp_path: Path) -> None:
    """A table profile's ``request`` latency (outside the engine's worker) is added to TTFT and
    e2e exactly as under fifo, so TPOT (their difference) does not see it."""
    doc = yaml.safe_load((ROOT / "profiles" / "example-table.yaml").read_text())
    doc["request"] = {"latency_const_s": 0.002, "latency_per_token_s": 1e-6}
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(doc))
    sc, tr = _scenario({"profile": str(profile)}), _trace()
    plain = request_frame(tr, _scenario(), *_parts(_batched(_scenario(), tr)))
    r = request_frame(tr, sc, *_parts(_batched(sc, tr)))
    latency = 0.002 + tr.input_tokens * 1e-6
    for col in ("ttft_s", "e2e_s", "ttft_nocache_s"):
        np.testing.assert_allclose(r[col] - plain[col], latency, rtol=1e-9)
    for col in ("queue_s", "load_s", "prefill_s", "tpot_s", "preemptions"):
        np.testing.assert_array_equal(r[col], plain[col])


def test_streams_at_counts_the_other_requests_being_streamed() -> None:
    from simkv.metrics.requests import streams_at

    first, finish = np.array([0.05, 0.7, 0.9]), np.array([0.8, 1.1, 1.9])
    # at each first token: r0 alone; r1 beside r0 (0.05 <= 0.7 <= 0.8); r2 beside r1
    assert streams_at(first, finish, first).tolist() == [0, 1, 1]
    # at each last token: r0 beside r1; r1 beside r2; r2 alone (a bound counts: same step)
    assert streams_at(first, finish, finish).tolist() == [1, 1, 0]
    assert streams_at(first, finish, np.array([0.8, 0.7, 2.0])).tolist() == [1, 1, 0]


def test_latency_per_stream_grows_with_the_streams_beside_a_token(nocache: None, tmp_path: Path) -> None:
    """A table profile's ``step.latency_s`` and ``latency_per_stream_s``: TTFT and e2e each get
    ``latency_s + latency_per_stream_s · S``, ``S`` the other requests streamed at that token."""
    doc = yaml.safe_load((ROOT / "profiles" / "example-table.yaml").read_text())
    doc["step"] = {"const_s": 0.01, "per_prefill_token_s": 0.0, "per_decode_seq_s": 0.0,
                   "per_context_token_s": 0.0, "prefill_attn_s": 0.0, "latency_s": 0.004,
                   "latency_per_stream_s": 0.001}
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(doc))
    sc, tr = _scenario({"profile": str(profile)}), _trace()
    rec = _batched(sc, tr)
    for i, (f, e) in enumerate(zip([0.05, 0.7, 0.9], [0.8, 1.1, 1.9], strict=True)):
        rec.log.first_token_s[i], rec.log.finish_s[i] = f, e
    base = _batched(_scenario(), tr)
    for i, (f, e) in enumerate(zip([0.05, 0.7, 0.9], [0.8, 1.1, 1.9], strict=True)):
        base.log.first_token_s[i], base.log.finish_s[i] = f, e
    plain = request_frame(tr, _scenario(), *_parts(base))
    r = request_frame(tr, sc, *_parts(rec))
    np.testing.assert_allclose(r["ttft_s"] - plain["ttft_s"], 0.004 + 0.001 * np.array([0, 1, 1]), rtol=1e-9)
    np.testing.assert_allclose(r["e2e_s"] - plain["e2e_s"], 0.004 + 0.001 * np.array([1, 1, 0]), rtol=1e-9)
    # the no-cache baseline: the streams of its own run (first 0.06, 0.75, 1.6; finish 0.06, 1.7, 2.0)
    np.testing.assert_allclose(r["ttft_nocache_s"] - plain["ttft_nocache_s"],
                               0.004 + 0.001 * np.array([0, 0, 1]), rtol=1e-9)
    for col in ("queue_s", "load_s", "prefill_s", "preemptions"):
        np.testing.assert_array_equal(r[col], plain[col])


def test_summary_has_the_decode_keys_under_batching_only(nocache: None) -> None:
    sc, tr = _scenario(), _trace()
    fifo = ENGINES.get("simpy").run(sc, tr)
    fifo_summary = summarize(request_frame(tr, sc, fifo.cache, fifo.log), sc, fifo)
    assert not DECODE_SUMMARY_KEYS & set(fifo_summary)
    rec = _batched(sc, tr)
    s = summarize(request_frame(tr, sc, rec.cache, rec.log), sc, rec)
    assert set(s) >= DECODE_SUMMARY_KEYS
    e2e = np.array(FINISH) - np.array(ARRIVAL)
    assert [s["e2e_p50_s"], s["e2e_p90_s"], s["e2e_p99_s"]] == np.percentile(e2e, [50, 90, 99]).tolist()
    tpot = [(1.1 - 0.7) / 4, (1.9 - 1.5) / 2]                       # r0 has one output token
    assert [s["tpot_p50_s"], s["tpot_p90_s"]] == np.percentile(tpot, [50, 90]).tolist()
    queue = np.array(START) - np.array(ARRIVAL)
    assert [s["queue_p50_s"], s["queue_p90_s"]] == np.percentile(queue, [50, 90]).tolist()
    span = 1.9 - 0.0                                               # last finish − first arrival
    assert s["throughput_requests_per_s"] == 3 / span
    assert s["throughput_output_tokens_per_s"] == (1 + 5 + 3) / span
    assert s["preemptions"] == 1
    # everything else is the fifo summary's keys
    assert set(s) - DECODE_SUMMARY_KEYS == set(fifo_summary)


@pytest.mark.skipif(importlib.util.find_spec("simkv.model.batching") is None,
                    reason="simkv.model.batching (the batching time model) does not exist yet")
def test_nocache_baseline_is_the_batching_model_without_cache() -> None:
    """Under ``scheduler: vllm`` the no-cache TTFT is the batching model's first token of the same
    trace with every cache tier off, less the arrival."""
    from simkv.model.batching import nocache_times

    sc = _scenario({"scheduler": "vllm"})
    tr = _trace()
    r = run(sc, tr).requests
    np.testing.assert_array_equal(r["ttft_nocache_s"], nocache_times(sc, tr)[0] - tr.arrival_s)
    assert r["e2e_s"].notna().all() and r["preemptions"].notna().all()


def test_console_and_report_show_the_decode_rows_of_a_batched_run(nocache: None) -> None:
    from simkv.report.console import summary_table
    from simkv.report.markdown import headline_rows
    from tests.test_console import assert_intact, render

    sc, tr = _scenario(), _trace()
    fifo = ENGINES.get("simpy").run(sc, tr)
    rec = _batched(sc, tr)
    summaries = {name: {"scenario": "s", **summarize(request_frame(tr, sc, r.cache, r.log), sc, r)}
                 for name, r in (("fifo", fifo), ("batched", rec))}
    labels = ["e2e p50 / p90", "TPOT p50 / p90", "queue p50 / p90", "throughput", "preemptions"]
    batched = summary_table(summaries["batched"])
    assert_intact(batched, skip=1)
    text = "\n".join(render(batched))
    assert all(label in text for label in labels)
    assert "600 ms / 840 ms" in text and "1.58 req/s" in text      # e2e p50 / p90; 3 / 1.9 s
    assert not any(label in "\n".join(render(summary_table(summaries["fifo"]))) for label in labels)
    rows = {row[0]: row[1:] for row in headline_rows(summaries["batched"])}
    assert rows["TPOT p50 / p90"] == ["150 ms / 190 ms", "p99 199 ms"]
    assert rows["preemptions"] == ["1", ""]
    assert not set(labels) & {row[0] for row in headline_rows(summaries["fifo"])}
