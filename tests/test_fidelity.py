"""``simkv validate``: the simulator against measured results, here real ``simkv run`` result
directories standing in for a replay (the same schema): a run against itself, against runs of
perturbed scenarios whose effect is known, refusals, failed replay rows and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simkv.api import run
from simkv.core.errors import SimkvError
from simkv.core.schema import read_requests
from simkv.fidelity import parse_targets, validate
from simkv.fidelity.diagnose import CAUSES
from simkv.traces.schema import Trace, validate_table, write_trace
from tests.conftest import ROOT, simkv_cli

DEFAULT = ROOT / "scenarios" / "default.yaml"
GPU_ONLY = ["tiers.disk.enabled=false", "load_policy=always"]


def _run(trace: Trace | Path, out: Path, overrides: list[str]) -> Path:
    run(DEFAULT, trace, overrides=overrides).write(out)
    return out


@pytest.fixture(scope="module")
def spread_trace(tmp_path_factory: pytest.TempPathFactory, gen_trace: Trace) -> Path:
    """The generated trace with arrivals 100× further apart (no request waits for another's
    prefill), written to a file so the diagnostics can read it."""
    table = gen_trace.table.set_column(0, "arrival_s", pa.array(gen_trace.arrival_s * 100.0))
    trace = validate_table(table, block_size=gen_trace.block_size, source="test")
    return write_trace(trace, tmp_path_factory.mktemp("trace") / "spread.parquet")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, spread_trace: Path) -> Path:
    return _run(spread_trace, tmp_path_factory.mktemp("runs") / "base", GPU_ONLY)


def test_a_run_against_itself(base_run: Path, tmp_path: Path) -> None:
    res = validate(base_run, base_run, tmp_path / "v")
    d = res.data
    assert d["requests"]["compared"] == len(read_requests(base_run / "requests.parquet"))
    assert d["hit_rate"]["total"]["error"] == 0 and d["hit_rate"]["total"]["sim"] > 0
    assert all(v["error"] in (0, None) for v in d["hit_rate"]["by_tier"].values())
    assert all(v["rel_error"] == 0 for v in d["ttft_s"]["overall"].values())
    assert d["ttft_per_request"]["median_abs_rel_error"] == 0
    assert d["hits"]["identical_fraction"] == 1 and d["divergence"]["first"] == []
    # a fifo simulation models no decode: its e2e target is n/a, not a failure
    assert {t["name"]: t["pass"] for t in d["targets"]} == {
        "ttft_p50": True, "ttft_p90": True, "e2e_p50": None, "ttft_median_abs": True, "hits_identical": True}
    assert d["e2e_s"]["requests"] == 0 and d["e2e_s"]["overall"]["p50"]["rel_error"] is None
    names = {p.name for p in (tmp_path / "v").iterdir()}
    assert {"fidelity.md", "fidelity.json", "ttft_scatter.png", "ttft_error_cdf.png",
            "tier_hits.png"} <= names
    assert json.loads((tmp_path / "v" / "fidelity.json").read_text()) == d
    assert "(bias) +0.00%" in res.markdown.read_text()


def test_scaled_prefill_gives_the_known_ttft_error(spread_trace: Path, tmp_path: Path) -> None:
    """TTFT = prefill_per_token_s × new tokens (no constant, no attention term, no queue, GPU
    hits free): scaling it by 1.25 in the 'measured' run makes every simulated TTFT 1/1.25 of
    the measured one, an error of −20% on every request and percentile."""
    flat = [*GPU_ONLY, "hardware.prefill_const_s=0", "hardware.prefill_attn_s=0",
            "hardware.prefill_per_token_s=1e-5"]
    sim = _run(spread_trace, tmp_path / "sim", flat)
    meas = _run(spread_trace, tmp_path / "meas", [*flat[:-1], "hardware.prefill_per_token_s=1.25e-5"])
    with pytest.raises(SimkvError, match="different scenarios"):
        validate(sim, meas, tmp_path / "v")
    d = validate(sim, meas, tmp_path / "v", ignore_scenario=True).data
    expected = 1 / 1.25 - 1
    for block in [d["ttft_s"]["overall"], *d["ttft_s"]["by_class"].values()]:
        for p in ("p50", "p90", "p99"):
            assert block[p]["rel_error"] == pytest.approx(expected, abs=1e-9)
    pr = d["ttft_per_request"]
    assert pr["median_abs_rel_error"] == pytest.approx(-expected, abs=1e-9)
    assert pr["p90_abs_rel_error"] == pytest.approx(-expected, abs=1e-9)
    assert pr["median_rel_error"] == pytest.approx(expected, abs=1e-9)
    assert d["hits"]["identical_fraction"] == 1
    assert {t["name"]: t["pass"] for t in d["targets"]} == {
        "ttft_p50": False, "ttft_p90": False, "e2e_p50": None, "ttft_median_abs": False,
        "hits_identical": True}
    # a looser target turns the gate around
    loose = parse_targets(["ttft_p50=0.25", "ttft_p90=0.25", "ttft_median_abs=0.25"])
    d2 = validate(sim, meas, tmp_path / "v2", ignore_scenario=True, targets=loose).data
    assert all(t["pass"] is not False for t in d2["targets"])


def test_smaller_gpu_names_the_first_diverging_request(spread_trace: Path, tmp_path: Path) -> None:
    """No service time, GPU only: the 'measured' GPU holds a quarter of the blocks, so some
    requests hit less. The report names the first of them (found here from the rows), its tier
    and both token counts, and the cause is eviction (the block had been stored long before)."""
    zero = [*GPU_ONLY, "hardware.zero_service_time=true", "tiers.gpu.capacity_bytes=null"]
    sim = _run(spread_trace, tmp_path / "sim", [*zero, "tiers.gpu.capacity_blocks=2000"])
    meas = _run(spread_trace, tmp_path / "meas", [*zero, "tiers.gpu.capacity_blocks=500"])
    a, b = read_requests(sim / "requests.parquet"), read_requests(meas / "requests.parquet")
    differ = np.flatnonzero(a["gpu_hit_tokens"].to_numpy() != b["gpu_hit_tokens"].to_numpy())
    assert len(differ) > 0
    i = differ[0]
    d = validate(sim, meas, tmp_path / "v", ignore_scenario=True).data
    dv = d["divergence"]
    first = dv["first"][0]
    assert first["request_id"] == a["request_id"][i]
    assert first["tiers"] == [{"tier": "gpu", "sim": int(a["gpu_hit_tokens"][i]),
                               "measured": int(b["gpu_hit_tokens"][i])}]
    assert dv["requests"] == len(differ)
    assert dv["causes"] == {"eviction": len(differ)}
    assert first["stored_by"] in set(a["request_id"][:i])
    assert d["ttft_per_request"]["undefined"] == d["requests"]["compared"]  # every TTFT is 0
    md = (tmp_path / "v" / "fidelity.md").read_text()
    assert f"`{first['request_id']}`" in md and CAUSES["eviction"] in md


def test_refuses_results_of_different_traces(base_run: Path, gen_trace: Trace, tmp_path: Path) -> None:
    other = _run(gen_trace, tmp_path / "other", GPU_ONLY)  # the same requests, other arrivals
    with pytest.raises(SimkvError, match="different traces") as ei:
        validate(base_run, other, tmp_path / "v", ignore_scenario=True)
    for side in (base_run, other):
        assert pq.read_schema(side / "requests.parquet").metadata[b"trace_sha256"].decode() in str(ei.value)
    # no hashes at all: cannot tell, refused
    bare = tmp_path / "bare"
    bare.mkdir()
    table = pq.read_table(base_run / "requests.parquet")
    meta = {k: v for k, v in table.schema.metadata.items() if k != b"trace_sha256"}
    pq.write_table(table.replace_schema_metadata(meta), bare / "requests.parquet")
    with pytest.raises(SimkvError, match="no trace_sha256"):
        validate(base_run, bare, tmp_path / "v")


def _with_errors(src: Path, dst: Path, failed: list[int]) -> Path:
    """A copy of a run directory whose rows ``failed`` carry an error (and nonsense values)."""
    dst.mkdir()
    table = pq.read_table(src / "requests.parquet")
    err = [("HTTP 500: worker died" if i in failed else None) for i in range(table.num_rows)]
    ttft = table.column("ttft_s").to_numpy().copy()
    ttft[failed] = 0.0
    table = table.set_column(table.schema.get_field_index("ttft_s"), "ttft_s", pa.array(ttft))
    table = table.set_column(table.schema.get_field_index("error"), "error", pa.array(err, pa.string()))
    pq.write_table(table, dst / "requests.parquet")
    (dst / "summary.json").write_text((src / "summary.json").read_text())
    return dst


def test_failed_replay_rows_are_counted_not_compared(base_run: Path, tmp_path: Path) -> None:
    meas = _with_errors(base_run, tmp_path / "meas", [0, 5, 9])
    d = validate(base_run, meas, tmp_path / "v").data
    n = len(read_requests(base_run / "requests.parquet"))
    assert d["requests"] == {"compared": n - 3, "failed": 3, "only_sim": 0, "only_measured": 0}
    assert d["ttft_per_request"]["median_abs_rel_error"] == 0 and d["ttft_per_request"]["undefined"] == 0
    assert d["hits"]["identical_fraction"] == 1
    assert [f["error"] for f in d["failed_examples"]] == ["HTTP 500: worker died"] * 3
    assert "HTTP 500: worker died" in (tmp_path / "v" / "fidelity.md").read_text()


def test_cli(base_run: Path, spread_trace: Path, tmp_path: Path) -> None:
    res = simkv_cli("validate", str(base_run), str(base_run), "-o", str(tmp_path / "v"), "--gate")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "v" / "fidelity.json").is_file() and "pass" in res.stdout
    slow = _run(spread_trace, tmp_path / "slow", [*GPU_ONLY, "hardware.prefill_per_token_s=5e-5"])
    args = ["validate", str(base_run), str(slow), "-o", str(tmp_path / "v2"), "--ignore-scenario"]
    assert simkv_cli(*args).returncode == 0  # targets fail but are only reported
    gated = simkv_cli(*args, "--gate")
    assert gated.returncode == 1 and "FAIL" in gated.stdout
    for bad, fragment in [([str(base_run), str(slow), "-o", str(tmp_path / "v3")], "different scenarios"),
                          ([str(base_run), str(tmp_path / "nope"), "-o", str(tmp_path / "v3")], "nope"),
                          ([str(base_run), str(base_run), "-o", str(tmp_path / "v3"), "--target",
                            "ttft_p42=1"], "--target")]:
        res = simkv_cli("validate", *bad)
        assert res.returncode == 2, res.stderr
        assert fragment in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def _as_vllm(src: Path, dst: Path) -> Path:
    """A copy of a run directory as a replay through vLLM writes it: the total hit tokens only,
    the per-tier hit columns null (vLLM's ``cached_tokens`` does not say which tier)."""
    from simkv.fidelity.compare import HIT_COLUMNS

    dst.mkdir()
    table = pq.read_table(src / "requests.parquet")
    for col in HIT_COLUMNS:
        i = table.schema.get_field_index(col)
        field = table.schema.field(i)
        table = table.set_column(i, field, pa.nulls(table.num_rows, field.type))
    pq.write_table(table, dst / "requests.parquet")
    (dst / "summary.json").write_text((src / "summary.json").read_text())
    return dst


def test_a_replay_with_total_hits_only_compares_totals(base_run: Path, spread_trace: Path,
                                                       tmp_path: Path) -> None:
    """vLLM reports a request's cached tokens, not their tiers: hits compare by total, the
    per-tier measured rates are unknown (not 0), and a differing total is still diagnosed."""
    d = validate(base_run, _as_vllm(base_run, tmp_path / "meas"), tmp_path / "v").data
    assert d["hits"]["identical_fraction"] == 1 and d["hits"]["per_tier"] is False
    assert d["hits"]["identical"] == d["hits"]["total_identical"] == d["requests"]["compared"]
    assert {t["name"]: t["pass"] for t in d["targets"]}["hits_identical"] is True
    assert all(v["measured"] is None and v["error"] is None for v in d["hit_rate"]["by_tier"].values())
    assert d["hit_rate"]["total"]["error"] == 0 and d["divergence"]["requests"] == 0
    md = (tmp_path / "v" / "fidelity.md").read_text()
    assert "the same total hit tokens" in md and "reports no tiers" in md
    assert not (tmp_path / "v" / "tier_hits.png").exists()      # no chart of tiers it does not report
    # a smaller 'measured' GPU: the requests whose totals differ, each diagnosed
    zero = [*GPU_ONLY, "hardware.zero_service_time=true", "tiers.gpu.capacity_bytes=null"]
    sim = _run(spread_trace, tmp_path / "sim", [*zero, "tiers.gpu.capacity_blocks=2000"])
    small = _run(spread_trace, tmp_path / "small", [*zero, "tiers.gpu.capacity_blocks=500"])
    a, b = read_requests(sim / "requests.parquet"), read_requests(small / "requests.parquet")
    differ = int((a["hit_tokens"].to_numpy() != b["hit_tokens"].to_numpy()).sum())
    d2 = validate(sim, _as_vllm(small, tmp_path / "small-vllm"), tmp_path / "v2", ignore_scenario=True).data
    assert differ > 0 and d2["hits"]["identical"] == d2["requests"]["compared"] - differ
    assert d2["divergence"]["requests"] == differ and d2["divergence"]["causes"] == {"eviction": differ}
    assert d2["divergence"]["first"][0]["tiers"] == []


# -- the fidelity targets: cpu and gpu sets, pass / fail / n/a -----------------------------------


def _with_latencies(src: Path, dst: Path, ttft_scale: float, e2e: np.ndarray | None) -> Path:
    """A copy of a run directory with every TTFT multiplied by ``ttft_scale`` and the decode
    columns set by hand: ``e2e_s`` (``None``: null, as a ``fifo`` run leaves it) and ``tpot_s``
    = (e2e − ttft) / 3 (four output tokens each)."""
    dst.mkdir()
    table = pq.read_table(src / "requests.parquet")
    ttft = table.column("ttft_s").to_numpy() * ttft_scale
    cols = {"ttft_s": pa.array(ttft),
            "e2e_s": pa.nulls(table.num_rows, pa.float64()) if e2e is None else pa.array(e2e),
            "tpot_s": pa.nulls(table.num_rows, pa.float64()) if e2e is None else pa.array((e2e - ttft) / 3)}
    for name, values in cols.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    pq.write_table(table, dst / "requests.parquet")
    (dst / "summary.json").write_text((src / "summary.json").read_text())
    return dst


@pytest.fixture(scope="module")
def latency_sides(base_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Hand-built sides: the measured TTFTs 12% above the simulated ones (error 1/1.12 − 1 =
    −10.7%), the measured e2e latencies 1/0.94 of the simulated ones (error −6%); and a side
    without e2e latencies (a ``fifo`` simulation)."""
    d = tmp_path_factory.mktemp("latency")
    n = pq.read_metadata(base_run / "requests.parquet").num_rows
    e2e = 5.0 + np.arange(n) * 0.01
    return {"sim": _with_latencies(base_run, d / "sim", 1.0, e2e),
            "fifo": _with_latencies(base_run, d / "fifo", 1.0, None),
            "meas": _with_latencies(base_run, d / "meas", 1.12, e2e / 0.94)}


def test_targets_pass_fail_and_n_a(latency_sides: dict[str, Path], tmp_path: Path) -> None:
    sim, meas = latency_sides["sim"], latency_sides["meas"]
    cpu = validate(sim, meas, tmp_path / "cpu").data
    assert cpu["target_set"] == "cpu"
    assert cpu["e2e_s"]["overall"]["p50"]["rel_error"] == pytest.approx(-0.06, abs=1e-9)
    assert cpu["e2e_s"]["overall"]["p90"]["rel_error"] == pytest.approx(-0.06, abs=1e-9)
    assert cpu["tpot_s"]["requests"] == cpu["requests"]["compared"]
    assert cpu["tpot_s"]["overall"]["p50"]["rel_error"] is not None
    got = {t["name"]: (t["limit"], t["pass"]) for t in cpu["targets"]}
    assert got == {"ttft_p50": (0.10, False), "ttft_p90": (0.15, True), "e2e_p50": (0.10, True),
                   "ttft_median_abs": (0.15, True), "hits_identical": (1.0, True)}
    gpu = validate(sim, meas, tmp_path / "gpu", target_set="gpu").data
    got = {t["name"]: (t["limit"], t["pass"]) for t in gpu["targets"]}
    assert got == {"ttft_p50": (0.02, False), "ttft_p90": (0.05, False), "e2e_p50": (0.05, False),
                   "ttft_median_abs": (0.05, False), "hits_identical": (1.0, True)}
    assert json.loads((tmp_path / "gpu" / "fidelity.json").read_text())["targets"] == gpu["targets"]
    md = (tmp_path / "gpu" / "fidelity.md").read_text()
    assert "`gpu` targets" in md and r"| e2e p50 \|relative error\| | 6.00% | ≤ 5.00% | **FAIL** |" in md
    assert "## End-to-end latency and TPOT" in md and "| e2e | p50 |" in md
    # a simulation with no e2e latency (fifo): that target is n/a, the others as before
    fifo = validate(latency_sides["fifo"], meas, tmp_path / "fifo", ignore_scenario=True).data
    e2e = next(t for t in fifo["targets"] if t["name"] == "e2e_p50")
    assert e2e["pass"] is None and e2e["value"] is None and e2e["shown"] == "n/a"
    assert fifo["e2e_s"]["requests"] == 0 and fifo["tpot_s"]["overall"]["p50"]["sim"] is None
    md = (tmp_path / "fifo" / "fidelity.md").read_text()
    assert r"| e2e p50 \|relative error\| | n/a | ≤ 10.00% | n/a |" in md


def test_cli_prints_the_targets_table(latency_sides: dict[str, Path], tmp_path: Path) -> None:
    sim, meas, fifo = latency_sides["sim"], latency_sides["meas"], latency_sides["fifo"]
    res = simkv_cli("validate", str(sim), str(meas), "-o", str(tmp_path / "v"), "--targets", "gpu")
    assert res.returncode == 0, res.stderr                     # failed targets are only reported
    assert "fidelity targets (gpu)" in res.stdout
    lines = {ln.split("│")[1].strip(): ln for ln in res.stdout.splitlines() if ln.count("│") == 5}
    assert "6.00%" in lines["e2e p50 |relative error|"] and "FAIL" in lines["e2e p50 |relative error|"]
    assert "pass" in next(v for k, v in lines.items() if k.startswith("requests with identical"))
    # n/a is not a failure: the same TTFTs, no e2e on the simulated side, gated
    ok = simkv_cli("validate", str(fifo), str(sim), "-o", str(tmp_path / "v2"), "--gate",
                   "--ignore-scenario")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "n/a" in next(ln for ln in ok.stdout.splitlines() if "e2e p50" in ln)
    gated = simkv_cli("validate", str(sim), str(meas), "-o", str(tmp_path / "v3"), "--gate")
    assert gated.returncode == 1 and "FAIL" in gated.stdout     # cpu: TTFT p50 10.7% > 10%
    bad = simkv_cli("validate", str(sim), str(meas), "-o", str(tmp_path / "v4"), "--targets", "tpu")
    assert bad.returncode == 2 and "--targets 'tpu'" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
