"""``simkv calibrate``: the fits (pure numpy) and the in-process calibration of the tiny model on
the CPU with real LMCache, whose profile loads and drives ``simkv run``; CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from simkv.core.profiles import TableProfile, bilinear, load_profile
from simkv.core.scenario import Scenario
from simkv.core.tiers import ARCHIVE
from tests.conftest import make_trace, simkv_cli

CHUNK = 16


# -- the fits (no engine) -----------------------------------------------------------------

def _fits():
    return pytest.importorskip("simkv_engine.calibrate", reason="the engine package (make install)")


def test_analytic_fit_recovers_known_constants() -> None:
    cal = _fits()
    n, c = np.meshgrid([1, 256, 1024, 4096, 16384], [0, 4096, 32768], indexing="ij")
    const, per_token, attn = 0.0311, 2.53e-5, 5.55e-10
    y = const + per_token * n + attn * n * (n + c)
    got = cal.fit_analytic(n, c, y)
    assert got == pytest.approx((const, per_token, attn), rel=1e-6)


def test_analytic_fit_keeps_constants_non_negative() -> None:
    cal = _fits()
    n, c = np.meshgrid([1, 64, 256], [0, 256], indexing="ij")
    y = 0.002 - 1e-6 * n + 0.0 * c          # a falling line: the free fit's slope is negative
    const, per_token, attn = cal.fit_analytic(n, c, np.maximum(y, 1e-4))
    assert min(const, per_token, attn) >= 0.0


def test_line_fit_recovers_per_request_and_per_block() -> None:
    cal = _fits()
    ks = [1, 2, 4, 8, 16]
    assert cal.fit_line(ks, [3e-4 + 2e-5 * k for k in ks]) == pytest.approx((3e-4, 2e-5), rel=1e-9)


def test_leave_one_out_is_zero_on_a_plane_and_not_on_a_curve() -> None:
    cal = _fits()
    new, cached = np.array([1.0, 16, 64, 256]), np.array([0.0, 64, 256])
    nn, cc = np.meshgrid(new, cached, indexing="ij")
    plane = 1e-3 + 2e-6 * nn + 3e-7 * cc               # bilinear interpolation is exact on it
    assert np.allclose(cal.leave_one_out(new, cached, plane), 0.0, atol=1e-12)
    curve = 1e-3 + 1e-8 * nn * nn
    loo = cal.leave_one_out(new, cached, curve)
    # Row 2 (n=64) predicted from n=16 and n=256: the chord lies above the parabola.
    expect = (bilinear(new[[0, 1, 3]], cached, curve[[0, 1, 3]], np.array([64.0]), np.array([0.0]))[0]
              - curve[2, 0]) / curve[2, 0]
    assert loo[2, 0] == pytest.approx(expect)
    assert expect > 0.05


def test_table_format_takes_load_gpu_and_a_calibration_block(tmp_path: Path) -> None:
    from simkv.core.errors import ScenarioError

    example = Path(__file__).resolve().parents[1] / "profiles" / "example-table.yaml"
    doc = yaml.safe_load(example.read_text())
    doc["load"]["gpu"] = {"per_block_s": 1e-5, "per_request_s": 0.0}
    doc["calibration"] = {"plan": {"repeats": 3}}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(doc))
    assert isinstance(load_profile(tmp_path / "ok.yaml"), TableProfile)
    doc["load"]["gpu"] = {"per_block_s": -1.0, "per_request_s": 0.0}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ScenarioError, match=r"bad\.yaml: load\.gpu\.per_block_s: must be >= 0"):
        load_profile(tmp_path / "bad.yaml")
    doc["load"]["gpu"] = {"per_block_s": 0.0, "per_request_s": 0.0}
    doc["calibration"] = 3
    (tmp_path / "bad2.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ScenarioError, match=r"bad2\.yaml: calibration: expected a mapping"):
        load_profile(tmp_path / "bad2.yaml")


# -- the engine ---------------------------------------------------------------------------

SCENARIO = f"""block_size: {CHUNK}
tiers:
  gpu: {{capacity_bytes: 16MiB}}
  cpu: {{enabled: true, capacity_bytes: 16MiB}}
  disk: {{enabled: true, capacity_bytes: 32MiB}}
"""


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One CLI calibration of the tiny model on a small grid (a fresh process, as a user runs it)."""
    pytest.importorskip("torch", reason="the engine needs torch (make install)")
    pytest.importorskip("transformers", reason="the engine needs transformers (make install)")
    pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
    d = tmp_path_factory.mktemp("calibrate")
    (d / "s.yaml").write_text(SCENARIO)
    out = d / "tiny.yaml"
    with pytest.MonkeyPatch.context() as mp:
        # Wide enough that rich never wraps a header: at 80 columns whether "table LOO err"
        # wraps depends on the measured numbers' widths.
        mp.setenv("COLUMNS", "200")
        res = simkv_cli("calibrate", "--in-process", str(d / "s.yaml"), "--model", "tiny", "--device",
                        "cpu", "-o", str(out), "--new-tokens", "1,16,48", "--cached-tokens", "0,32",
                        "--chunks", "1,2", "--repeats", "2", "--warmup", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout


def test_calibration_writes_a_table_profile_load_profile_accepts(calibrated: tuple[Path, str]) -> None:
    out, stdout = calibrated
    prof = load_profile(out)
    assert isinstance(prof, TableProfile) and prof.block_size == CHUNK
    doc = yaml.safe_load(out.read_text())
    assert doc["prefill"]["new_tokens"] == [1, 16, 48] and doc["prefill"]["cached_tokens"] == [0, 32]
    assert set(doc["load"]) == {"gpu", "cpu", "disk", "archive"}
    assert set(doc["store"]) == {"cpu", "disk", "archive"}
    cal = doc["calibration"]
    assert {"gpu", "cpu", "disk_cold", "disk_warm"} <= set(cal["load"])
    assert cal["plan"]["repeats"] == 2 and cal["plan"]["warmup"] == 1
    assert "torch" in doc["measured_on"] and "tiny" in doc["model"]
    assert "archive: not measured" in doc["notes"]
    # Loads of the disk tier are the cold fit; every fitted time is finite and >= 0.
    assert doc["load"]["disk"]["per_block_s"] == cal["load"]["disk_cold"]["per_block_s"]
    for tier in ("gpu", "cpu", "disk"):
        assert doc["load"][tier]["per_block_s"] >= 0 and doc["load"][tier]["per_request_s"] >= 0
    assert "table LOO err" in stdout and "disk_cold" in stdout


def test_calibration_measures_what_a_request_costs_besides_loads_and_prefill(
        calibrated: tuple[Path, str]) -> None:
    """In-process: the worker's rest and the stores (no HTTP, so no latency outside it)."""
    out, _ = calibrated
    doc = yaml.safe_load(out.read_text())
    cal = doc["calibration"]
    req = doc["request"]
    assert set(req) == {"per_request_s", "per_block_s", "store_per_block_s", "admit_per_block_s",
                        "disk_evict_per_block_s"}
    assert req["store_per_block_s"] == cal["store"]["store"]["per_block_s"] >= 0
    assert req["admit_per_block_s"] == cal["store"]["admit"]["per_block_s"]
    assert req["per_request_s"] == pytest.approx(cal["request"]["rest"]["per_request_s"]
                                                 + cal["store"]["store"]["per_request_s"])
    # the rest was measured on prompts of every grid length and the longest (48 + 32 tokens)
    assert cal["request"]["rest"]["chunks"] == [0, 1, 3, 5]
    # Measured: every rest median is a time (> 0). The fitted intercept may be 0 on a noisy
    # machine (the fit keeps its constants >= 0), so only its sign is checked.
    assert all(v >= 0 for v in req.values())
    assert all(m > 0 for m in cal["request"]["rest"]["median_s"])
    assert "latency_* is not measured" in doc["notes"]
    assert load_profile(out).overhead.any


def test_table_is_exact_at_grid_points_and_fit_errors_match(calibrated: tuple[Path, str]) -> None:
    out, _ = calibrated
    prof = load_profile(out)
    doc = yaml.safe_load(out.read_text())
    p = doc["prefill"]
    secs = np.array(p["seconds"])
    assert np.all(secs > 0)
    for i, n in enumerate(p["new_tokens"]):
        for j, c in enumerate(p["cached_tokens"]):
            assert prof.prefill_s(n, c) == secs[i, j]
    fit = doc["calibration"]["analytic_fit"]
    nn, cc = np.meshgrid(p["new_tokens"], p["cached_tokens"], indexing="ij")
    pred = fit["const_s"] + fit["per_token_s"] * nn + fit["attn_s"] * nn * (nn + cc)
    assert np.allclose(fit["prefill_rel"], np.abs(pred - secs) / secs)
    assert doc["fit_error"]["analytic_max_rel"] == pytest.approx(np.max(np.abs(pred - secs) / secs))


def test_a_gpu_cache_too_small_for_the_grid_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
    cal = _fits()
    from simkv.core.scenario import scenario_from_dict

    sc = scenario_from_dict({"block_size": CHUNK, "tiers": {"gpu": {"capacity_bytes": 2 * CHUNK * 512}}})
    probe = cal.InProcessProbe(sc, "tiny", "cpu", tmp_path)     # the tiny model: 512 bytes a token
    try:
        with pytest.raises(cal.CalibrationError, match=r"tiers\.gpu\.capacity_bytes: the GPU cache holds "
                           r"2 chunks, the calibration needs 4"):
            cal.calibrate(probe, cal.Plan.make("quick", CHUNK, cached_tokens=[0, 4 * CHUNK], chunks=[1, 2]))
    finally:
        probe.close()


def test_calibrated_profile_drives_simkv_run(calibrated: tuple[Path, str], tmp_path: Path) -> None:
    from simkv.traces.schema import write_trace

    out, _ = calibrated
    trace = tmp_path / "t.parquet"
    write_trace(make_trace([[1, 2, 3], [1, 2, 4], [1, 2, 3, 5], [7]], block_size=CHUNK, tails=[3, 1, 0, 5]),
                trace)
    scenario = tmp_path / "run.yaml"
    scenario.write_text(f"trace: {trace}\nhardware: {{profile: {out}}}\n"
                        "tiers: {cpu: {enabled: true}, disk: {enabled: true}}\n")
    res = simkv_cli("run", str(scenario), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["engine"] == "simpy"
    assert summary["ttft_mean_s"] > 0


ARCHIVE_SCENARIO = SCENARIO + """  archive: {enabled: true, codec: zstd}
ttl: {heuristic: static, params: {ttl: 0}}
"""                                     # in-process the calibration's own fixed TTL replaces it
TINY_CHUNK_BYTES = CHUNK * 512          # the tiny model: 2 layers x (K, V) x 2 heads x 16 x float32


@pytest.fixture(scope="module")
def calibrated_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One CLI calibration of the tiny model whose scenario has an archive, in a local folder."""
    pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
    pytest.importorskip("zstandard", reason="the archive needs zstandard (make install)")
    d = tmp_path_factory.mktemp("calibrate-archive")
    (d / "s.yaml").write_text(ARCHIVE_SCENARIO)
    (d / "archive").mkdir()
    out = d / "tiny.yaml"
    res = simkv_cli("calibrate", "--in-process", str(d / "s.yaml"), "--model", "tiny", "--device", "cpu",
                    "-o", str(out), "--new-tokens", "1,16", "--cached-tokens", "0,16", "--chunks", "1,2",
                    "--repeats", "1", "--warmup", "0", "--archive", str(d / "archive"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tiers gpu, cpu, disk, archive" in " ".join(res.stderr.split())
    return out, d / "archive"


def _check_archive_entries(doc: dict) -> dict:
    """What every calibration with an archive writes, consistent with its own counts."""
    a = doc["calibration"]["archive"]
    assert a["codec"] == "zstd" and a["requests"] == 2
    assert a["uploads"] == 1 + 2 and a["raw_bytes"] == a["uploads"] * TINY_CHUNK_BYTES
    assert a["stored_bytes"] > 0 and a["fetches"] == 1 + 2 and a["fetch_bytes"] == a["stored_bytes"]
    assert doc["archive"]["compression_ratio"] == a["compression_ratio"] == a["raw_bytes"] / a["stored_bytes"]
    assert doc["store"]["archive"]["per_block_s"] == pytest.approx((a["compress_s"] + a["upload_s"]) / 3)
    assert a["compress_gbps"] == pytest.approx(a["raw_bytes"] / a["compress_s"] / 1e9)
    assert a["decompress_gbps"] == pytest.approx(3 * TINY_CHUNK_BYTES / a["decompress_s"] / 1e9)
    fit = doc["calibration"]["load"]["archive"]
    assert fit["chunks"] == [1, 2]
    assert doc["load"]["archive"] == {k: fit[k] for k in ("per_block_s", "per_request_s")}
    hydrate = doc["calibration"]["load"]["archive_hydrate"]["median_s"]
    assert all(0 < h <= m for h, m in zip(hydrate, fit["median_s"], strict=True))
    assert "random-weight model's KV" in doc["notes"] and "archive: not measured" not in doc["notes"]
    return a


def test_in_process_calibration_measures_the_archive(calibrated_archive: tuple[Path, Path]) -> None:
    out, archive = calibrated_archive
    doc = yaml.safe_load(out.read_text())
    _check_archive_entries(doc)
    assert f"the archive was the folder {archive}/simkv-calibrate-" in doc["notes"]
    assert "fixed TTL of 86400 s" in doc["notes"]
    prof = load_profile(out)
    assert isinstance(prof, TableProfile)
    t = prof.transfers(Scenario(), 1, 1)
    assert (t.latency_s[ARCHIVE], t.read_per_block_s[ARCHIVE], t.write_per_block_s[ARCHIVE]) == (
        doc["load"]["archive"]["per_request_s"], doc["load"]["archive"]["per_block_s"],
        doc["store"]["archive"]["per_block_s"])
    assert list(archive.iterdir()) == []          # the calibration's own folder was deleted


def test_measured_compression_ratio_drives_simkv_run(calibrated_archive: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """``simkv run`` with the calibrated profile and an archive takes the profile's measured ratio
    over the scenario's for the archived block's size."""
    from simkv.core.scenario import load_scenario
    from simkv.model.system import TieredCache
    from simkv.traces.schema import read_trace, write_trace

    out, _ = calibrated_archive
    ratio = yaml.safe_load(out.read_text())["archive"]["compression_ratio"]
    trace = tmp_path / "t.parquet"
    write_trace(make_trace([[1, 2, 3], [1, 2, 4], [1, 2, 3, 5], [7]], block_size=CHUNK, tails=[3, 1, 0, 5],
                           arrivals=[0, 1, 200, 201]), trace)
    scenario = tmp_path / "run.yaml"
    scenario.write_text(f"trace: {trace}\nhardware: {{profile: {out}}}\n"
                        "tiers: {cpu: {enabled: true}, disk: {enabled: true},\n"
                        "        archive: {enabled: true, interval_s: 10, compression_ratio: 9.0}}\n"
                        "ttl: {heuristic: static, params: {ttl: 1000}}\n")
    cache = TieredCache(load_scenario(scenario), read_trace(trace))
    assert cache.archive_bytes == int(cache.block_bytes / ratio) != int(cache.block_bytes / 9.0)
    res = simkv_cli("run", str(scenario), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["archive_puts"] > 0


# -- CLI errors (no engine run) -----------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["--engine", "http://127.0.0.1:9", "--in-process", "s.yaml"]])
def test_cli_wants_exactly_one_of_engine_and_in_process(tmp_path: Path, args: list[str]) -> None:
    res = simkv_cli("calibrate", *args, "-o", str(tmp_path / "p.yaml"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "exactly one of --engine URL or --in-process SCENARIO" in res.stderr


def test_cli_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    out.write_text("keep me\n")
    res = simkv_cli("calibrate", "--in-process", "s.yaml", "-o", str(out))
    assert res.returncode == 2
    assert f"{out}: exists (pass --overwrite to replace it)" in res.stderr
    assert out.read_text() == "keep me\n"


def test_cli_block_size_is_for_a_vllm_server(tmp_path: Path) -> None:
    res = simkv_cli("calibrate", "--in-process", "s.yaml", "-o", str(tmp_path / "p.yaml"),
                    "--block-size", "64")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--block-size is for --engine on a vLLM server" in res.stderr


def test_cli_names_a_bad_grid_list(tmp_path: Path) -> None:
    res = simkv_cli("calibrate", "--in-process", "s.yaml", "-o", str(tmp_path / "p.yaml"),
                    "--new-tokens", "1,x")
    assert res.returncode == 2
    assert "--new-tokens: expected comma-separated integers, got '1,x'" in res.stderr


def test_plan_refuses_cached_tokens_off_the_chunk_grid() -> None:
    cal = _fits()
    with pytest.raises(cal.CalibrationError, match=r"--cached-tokens: 40 is not a multiple of the block"):
        cal.Plan.make("quick", CHUNK, cached_tokens=[0, 40])
    plan = cal.Plan.make("quick", CHUNK)
    with pytest.raises(cal.CalibrationError, match=r"prompts of 512 tokens but the model's context is 100"):
        plan.check(CHUNK, 100)


def test_http_probe_calibrates_a_running_server_with_an_s3_archive(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The same calibration over the API of a real `simkv_engine.server` on loopback whose archive
    is a bucket of moto's S3 server (a real S3 API on 127.0.0.1): the archive passes are the
    server's ``POST /kv/archive``, the chunks travel through S3."""
    import os
    import subprocess
    import sys

    pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
    pytest.importorskip("simkv_engine.server", reason="the engine server")
    pytest.importorskip("zstandard", reason="the archive needs zstandard (make install)")
    boto3 = pytest.importorskip("boto3", reason="the archive needs boto3")
    moto_server = pytest.importorskip("moto.server", reason="the archive tests need moto[server]")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent",
                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(k, v)
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    endpoint = "http://{}:{}".format(*s3.get_host_and_port())
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="kv-calibrate")
    (tmp_path / "s.yaml").write_text(ARCHIVE_SCENARIO.replace("ttl: 0", "ttl: 3600"))
    code = ("from simkv.core.scenario import load_scenario\nfrom simkv_engine.server import serve\n"
            "from simkv_engine.archive import ArchiveOptions\n"
            f"serve(load_scenario({str(tmp_path / 's.yaml')!r}), model='tiny', device='cpu', port=0, "
            f"archive=ArchiveOptions('s3://kv-calibrate/calib', endpoint_url={endpoint!r}), "
            "on_ready=lambda u: print(u, flush=True))\n")
    srv = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        url = srv.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        out = tmp_path / "http.yaml"
        res = simkv_cli("calibrate", "--engine", url, "-o", str(out), "--new-tokens", "1,16",
                        "--cached-tokens", "0,16", "--chunks", "1,2", "--repeats", "1", "--warmup", "0")
        assert res.returncode == 0, res.stderr[-3000:]
        assert "tiers gpu, cpu, disk, archive" in " ".join(res.stderr.split())
        doc = yaml.safe_load(out.read_text())
        assert {"gpu", "cpu", "disk_cold", "disk_warm"} <= set(doc["calibration"]["load"])
        assert "first read after the write" in doc["notes"] and "the server's archive" in doc["notes"]
        assert isinstance(doc["calibration"]["plan"]["salt"], int)
        a = _check_archive_entries(doc)
        objects = client.list_objects_v2(Bucket="kv-calibrate", Prefix="calib/").get("Contents", [])
        assert len(objects) >= a["uploads"]
        # Over HTTP the latency outside the worker is measured too (client TTFT - server TTFT).
        from simkv.core.profiles import REQUEST_KEYS

        assert set(doc["request"]) == set(REQUEST_KEYS)
        assert doc["request"]["latency_const_s"] + doc["request"]["latency_per_token_s"] > 0
        assert doc["calibration"]["request"]["latency"]["chunks"] == [1, 16, 32]
        assert isinstance(load_profile(out), TableProfile)
    finally:
        srv.terminate()
        srv.wait(60)
        s3.stop()
