"""Offered load: GPU utilisation, disk write demand and lag, the overload warnings."""

from __future__ import annotations

import math

import pytest

from simkv.api import run
from simkv.core.scenario import Scenario, scenario_from_dict
from simkv.metrics.summary import overload_warnings
from simkv.traces.schema import write_trace
from tests.conftest import make_trace, simkv_cli

KV = 1000  # bytes per token: a 4-token block is 4000 bytes
PER_TOKEN = 0.1  # seconds of prefill per token: an 8-token request takes 0.8 s


def scenario(engine: str = "simpy", gpus: int = 1, disk: dict | None = None) -> Scenario:
    return scenario_from_dict({
        "model": {"kv_bytes_per_token": KV},
        "tiers": {"gpu": {"capacity_blocks": 1000}, "disk": disk or {"enabled": False},
                  "archive": {"enabled": False}},
        "hardware": {"prefill_const_s": 0.0, "prefill_per_token_s": PER_TOKEN,
                     "prefill_attn_s": 0.0, "gpus": gpus},
        "engine": engine,
    })


def distinct(n: int, arrivals: list[float]):
    """``n`` requests of two blocks each (8 tokens), no block shared: every one misses."""
    return make_trace([[2 * i, 2 * i + 1] for i in range(n)], arrivals=arrivals)


def test_gpu_utilisation_by_hand() -> None:
    # 10 requests one second apart, 0.8 s of prefill each: 8 s of work over a 9 s span
    res = run(scenario(), distinct(10, [float(i) for i in range(10)]))
    s = res.summary
    assert s["arrival_span_s"] == 9.0
    assert s["gpu_busy_s"] == pytest.approx(10 * 8 * PER_TOKEN)
    assert s["gpu_utilization"] == pytest.approx(8.0 / 9.0)
    assert s["makespan_s"] == pytest.approx(9.8)  # the last request arrives at 9 s, done at 9.8 s
    assert s["ttft_queue_share"] == 0.0  # never two requests in the system at once
    assert s["overload"] == "" and overload_warnings(s) == []


def test_overloaded_gpu_warns_and_suggests_gpus() -> None:
    # arrivals every 0.5 s but 0.8 s of work each: utilisation 8 / 4.5
    trace = distinct(10, [0.5 * i for i in range(10)])
    s = run(scenario(), trace).summary
    assert s["gpu_utilization"] == pytest.approx(8.0 / 4.5)
    assert s["overload"] == "gpu"
    n = math.ceil(8.0 / (4.5 * 0.85))  # 3
    assert s["gpus_suggested"] == n
    assert s["ttft_queue_share"] > 0.3
    (line,) = overload_warnings(s)
    assert "GPU utilisation 1.78" in line and f"hardware.gpus={n}" in line
    # the suggestion is enough
    more = run(scenario(gpus=n), trace).summary
    assert more["gpu_utilization"] == pytest.approx(8.0 / (4.5 * n)) and more["gpu_utilization"] < 0.85
    assert more["overload"] == ""


def test_disk_write_behind() -> None:
    # write-through at 4000 bytes/s: one second per 4000-byte block, two blocks per request,
    # one request a second: the disk needs twice its bandwidth and the queue grows.
    disk = {"enabled": True, "capacity_blocks": 1000, "write_gbps": 4000 / 1e9,
            "write_policy": "write_through", "latency_s": 0.0}
    trace = distinct(10, [float(i) for i in range(10)])
    for engine in ("simpy", "compiled"):
        sc = scenario(engine, disk=disk)
        sc = sc.with_overrides(["hardware.prefill_per_token_s=0.001"])  # 8 ms per request
        s = run(sc, trace).summary
        assert s["disk_write_demand"] == pytest.approx(20 / 9)
        # request i finishes at i + 0.008; its second block is readable at 2 (i + 1) + 0.008
        assert s["disk_write_lag_max_s"] == pytest.approx(9 + 2)
        assert s["disk_write_backlog_s"] == pytest.approx(20.008 - 9.008)
        assert s["overload"] == "disk"
        (line,) = overload_warnings(s)
        assert "disk writes fall behind" in line and "2.22x" in line


def test_load_keys_identical_across_engines(gen_trace) -> None:
    zero = {"hardware": {"zero_service_time": True}, "tiers": {"disk": {"enabled": False}}}
    keys = set()
    for engine in ("fast", "compiled", "simpy"):
        sc = scenario_from_dict({**zero, "engine": engine})
        s = run(sc, gen_trace).summary
        keys.add(tuple(k for k in s if k != "engine"))
        assert s["gpu_utilization"] == 0.0 and s["overload"] == ""
    assert len(keys) == 1
    assert {"gpu_utilization", "disk_write_lag_max_s", "overload"} <= set(next(iter(keys)))


def test_cli_run_prints_one_warning_line(tmp_path) -> None:
    trace = write_trace(distinct(10, [0.5 * i for i in range(10)]), tmp_path / "t.parquet")
    sc = tmp_path / "s.yaml"
    sc.write_text(scenario().to_yaml())
    proc = simkv_cli("run", str(sc), "--trace", str(trace))
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "hardware.gpus=3" in warnings[0]


def test_report_md_calls_out_overload(tmp_path) -> None:
    from simkv.report.markdown import write_report

    res = run(scenario(), distinct(10, [0.5 * i for i in range(10)]))
    rep = write_report(res.write(tmp_path / "run"))
    text = rep.path.read_text()
    assert "[!WARNING]" in text and "hardware.gpus=3" in text
    assert "| **GPU utilisation** | 1.78 |" in text


def test_archive_worker_share_and_flag() -> None:
    """The worker's busy share is PUTs × (compress + upload time per block) / simulated time;
    it is flagged only near 1, where its passes stop keeping up (0.5 merely doubles the pass
    spacing)."""
    def archive(upload_gbps: float) -> Scenario:
        return scenario_from_dict({
            "model": {"kv_bytes_per_token": KV},
            "tiers": {"gpu": {"capacity_blocks": 1000}, "disk": {"enabled": False},
                      "archive": {"enabled": True, "interval_s": 1.0, "compress_gbps": 1.0,
                                  "upload_gbps": upload_gbps}},
            "ttl": {"heuristic": "static", "params": {"ttl": 100.0}},
            "hardware": {"prefill_const_s": 0.0, "prefill_per_token_s": PER_TOKEN,
                         "prefill_attn_s": 0.0},
            "engine": "simpy",
        })
    trace = distinct(10, [float(i) for i in range(10)])
    fast = run(archive(1.0), trace).summary
    block, stored = 4 * KV, 4 * KV / 2.0  # compression_ratio 2 by default
    per_put = block / 1e9 + stored / 1e9
    puts = fast["archive_puts"]
    assert puts >= 10  # blocks computed before the last pass are uploaded
    assert fast["archive_worker_busy_share"] == pytest.approx(puts * per_put / fast["duration_s"])
    assert "archive" not in fast["overload"]
    # 1e-6 GB/s: 2000 s of upload per block, far more than the run lasts
    slow = run(archive(1e-6), trace).summary
    assert slow["archive_worker_busy_share"] >= 0.9
    assert "archive" in slow["overload"]
    assert any("archive worker falls behind" in w for w in overload_warnings(slow))


def test_gpus_suggested_stays_finite_for_arrivals_a_denormal_apart() -> None:
    from simkv.metrics.summary import gpus_suggested

    assert gpus_suggested(1.7, 1.0, 1) == 2          # 1.7 / (1 × 0.85)
    assert gpus_suggested(1.0, 0.0, 3) == 3          # no span: the scenario's GPUs
    assert gpus_suggested(1.0, 5e-324, 1) == 1       # busy / span overflows: the same
