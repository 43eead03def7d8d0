"""The hardware profile: analytic == the formulas it replaced, table interpolation, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from simkv.api import run
from simkv.core.errors import ScenarioError
from simkv.core.profiles import AnalyticProfile, TableProfile, load_profile, table_from_profile
from simkv.core.scenario import GB, CPUTier, Hardware, Scenario, Tiers, load_scenario
from simkv.core.tiers import ARCHIVE, CPU, DISK, GPU
from simkv.metrics.requests import prefill_array
from simkv.model.system import TieredCache
from tests.conftest import ROOT, make_trace, simkv_cli

EXAMPLE = ROOT / "profiles" / "example-table.yaml"


def _old_prefill(hw: Hardware, new: int, cached: int) -> float:
    """The formula ``Hardware.prefill_s`` had before the profile (copied verbatim)."""
    n = max(new, 1)
    return hw.prefill_const_s + hw.prefill_per_token_s * n + hw.prefill_attn_s * n * (n + cached)


def _hw(rng: np.random.Generator) -> Hardware:
    return Hardware(prefill_const_s=float(rng.uniform(0, 0.1)),
                    prefill_per_token_s=float(rng.uniform(0, 1e-4)),
                    prefill_attn_s=float(rng.uniform(0, 1e-8)))


def test_analytic_prefill_is_the_old_formula_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        hw = _hw(rng)
        new = rng.integers(-300, 70000, 500)
        cached = rng.integers(0, 200000, 500)
        prof = hw.time_model()
        assert isinstance(prof, AnalyticProfile)
        old = np.array([_old_prefill(hw, int(n), int(c)) for n, c in zip(new, cached, strict=True)])
        assert np.array_equal(prof.prefill_array(new, cached), old)
        assert np.array_equal(prefill_array(hw, new, cached), old)
        assert [prof.prefill_s(int(n), int(c)) for n, c in zip(new, cached, strict=True)] == old.tolist()


def test_analytic_transfers_are_the_old_bandwidth_formulas(small_trace: Any) -> None:
    sc = load_scenario(ROOT / "scenarios" / "three-tier-adaptive.yaml")
    cache = TieredCache(sc, small_trace)
    d, a = sc.tiers.disk, sc.tiers.archive
    bb, ab = cache.block_bytes, cache.archive_bytes
    tr = cache.transfers
    assert tr.read_per_block_s[DISK] == bb / (d.read_gbps * GB)
    assert tr.write_per_block_s[DISK] == bb / (d.write_gbps * GB)
    assert tr.read_per_block_s[ARCHIVE] == ab / (a.download_gbps * GB) + bb / (a.decompress_gbps * GB)
    assert tr.write_per_block_s[ARCHIVE] == bb / (a.compress_gbps * GB) + ab / (a.upload_gbps * GB)
    assert (tr.latency_s[DISK], tr.latency_s[ARCHIVE]) == (d.latency_s, a.request_latency_s)
    assert (tr.latency_s[GPU], tr.read_per_block_s[GPU], tr.write_per_block_s[GPU]) == (0.0, 0.0, 0.0)
    assert tr.load_s(DISK, 3) == d.latency_s + 3 * (bb / (d.read_gbps * GB)) and tr.load_s(DISK, 0) == 0.0


def test_zero_service_time_zeroes_every_profile() -> None:
    for prof in (Hardware(zero_service_time=True).time_model(), load_profile(EXAMPLE, True)):
        assert prof.prefill_s(100, 5) == 0.0
        assert not prof.prefill_array(np.array([1, 500]), np.array([0, 9])).any()
        assert prof.block_value_s(3, 4096, 256) == 0.0


@pytest.mark.parametrize("profile", ["analytic", "table"])
def test_block_values_telescope_to_the_prefill_saved(profile: str) -> None:
    """A block's value is defined from prefill: over a request's h hit blocks the values sum to
    prefill(N, 0) − prefill(N − h·B, h·B), what the metrics count as GPU time saved."""
    prof = Hardware().time_model() if profile == "analytic" else load_profile(EXAMPLE)
    B = 256
    for n_tokens in (300, 4096, 20000, 40000):
        for h in range(0, n_tokens // B + 1, 7):
            values = prof.block_value_s(np.arange(h), np.full(h, n_tokens), B)
            saved = prof.prefill_s(n_tokens, 0) - prof.prefill_s(n_tokens - h * B, h * B)
            assert float(np.sum(values)) == pytest.approx(saved, rel=1e-12, abs=1e-15)
    assert prof.block_value_s(2, 4096, B) == prof.block_value_s(np.array([2]), np.array([4096]), B)[0]


class _Capture:
    """A TTL heuristic stand-in that records the contexts it is given."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, ctx: Any) -> tuple[float, float]:
        self.seen.append(ctx.value_s)
        return 1.0, 0.0

    def batch(self, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        self.seen.append(ctx.value_s)
        return np.ones(len(ctx.block)), np.zeros(len(ctx.block))


def test_heuristics_see_the_profiles_block_value(small_trace: Any) -> None:
    """The value a TTL heuristic is given is the profile's block value (one formula with the
    prefill the engine charges), for one block and for an archive pass."""
    sc = load_scenario(ROOT / "scenarios" / "three-tier-adaptive.yaml")
    cache = TieredCache(sc, small_trace)
    cache.state.heuristic = capture = _Capture()  # type: ignore[assignment]
    prof, B = sc.hardware.time_model(), small_trace.block_size
    rs = np.array([0, 3, 3, 10])
    pos = np.array([0, 1, 5, 2])
    cache.state.ttl_batch(np.array([1, 2, 3, 4]), rs, pos, 0.0)
    cache.state.ttl_one(7, 3, 5, 0.0, cache.block_bytes, 0.0)
    n = small_trace.input_tokens
    assert np.array_equal(capture.seen[0], prof.block_value_s(pos, n[rs], B))
    assert capture.seen[1] == prof.block_value_s(5, int(n[3]), B)


def _table(tmp_path: Path, doc: dict[str, Any], name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _doc(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc.update(changes)
    return doc


def test_table_is_exact_at_grid_points_and_linear_between(tmp_path: Path) -> None:
    prof = load_profile(EXAMPLE)
    assert isinstance(prof, TableProfile)
    doc = yaml.safe_load(EXAMPLE.read_text())["prefill"]
    new, cached, s = doc["new_tokens"], doc["cached_tokens"], np.array(doc["seconds"])
    for i, n in enumerate(new):
        for j, c in enumerate(cached):
            assert prof.prefill_s(n, c) == s[i, j]
    # Between grid points: linear along each axis, bilinear in the cell.
    n0, n1, c0, c1 = new[3], new[4], cached[1], cached[2]
    assert prof.prefill_s((n0 + n1) // 2, c0) == pytest.approx((s[3, 1] + s[4, 1]) / 2, rel=1e-12)
    assert prof.prefill_s(n0, (c0 + c1) // 2) == pytest.approx((s[3, 1] + s[3, 2]) / 2, rel=1e-12)
    mid = prof.prefill_s((n0 + n1) // 2, (c0 + c1) // 2)
    assert mid == pytest.approx(s[3:5, 1:3].mean(), rel=1e-12)
    # Beyond the grid: the outermost cell's line, continued.
    far = 2 * new[-1] - new[-2]
    assert prof.prefill_s(far, 0) == pytest.approx(2 * s[-1, 0] - s[-2, 0], rel=1e-12)


def test_a_fine_table_of_the_analytic_formula_runs_like_the_analytic_profile(
        tmp_path: Path, small_trace: Any) -> None:
    sc = load_scenario(ROOT / "scenarios" / "three-tier-adaptive.yaml")
    bb = small_trace.block_size * sc.model.bytes_per_token
    ab = int(bb / sc.tiers.archive.compression_ratio)
    analytic = sc.hardware.time_model()
    doc = table_from_profile(analytic, analytic.transfers(sc, bb, ab), [1, *range(128, 33_000, 128)],
                             [0, 40_000], small_trace.block_size, sc.model.name)
    path = _table(tmp_path, doc)
    ref = run(sc, small_trace)
    got = run(sc.with_overrides([f"hardware.profile={path}"]), small_trace)
    assert got.summary["engine"] == "simpy"
    for key in ("ttft_mean_s", "ttft_nocache_mean_s", "gpu_seconds_saved", "gpu_busy_s", "token_hit_rate"):
        assert got.summary[key] == pytest.approx(ref.summary[key], rel=1e-3), key
    assert np.allclose(got.requests["ttft_s"], ref.requests["ttft_s"], rtol=1e-3, atol=1e-4)


def test_compiled_engine_refuses_a_table_profile_with_the_reason(small_trace: Any) -> None:
    sc = Scenario(engine="compiled", hardware=Hardware(profile=str(EXAMPLE)))
    with pytest.raises(ScenarioError, match=r"hardware\.profile.*analytic profile"):
        run(sc, small_trace)


def test_profile_path_is_relative_to_the_scenario_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    _table(tmp_path / "sub", _doc(), "mine.yaml")
    (tmp_path / "sub" / "s.yaml").write_text("hardware: {profile: mine.yaml}\n")
    monkeypatch.chdir(tmp_path)
    sc = load_scenario("sub/s.yaml")
    assert sc.hardware.profile == str((tmp_path / "sub" / "mine.yaml").resolve())
    assert isinstance(sc.hardware.time_model(), TableProfile)


def test_block_size_mismatch_is_refused() -> None:
    trace = make_trace([[1, 2], [1, 3]], block_size=4)
    with pytest.raises(ScenarioError, match=r"example-table.yaml: block_size: .* 256 .* block_size 4"):
        run(Scenario(hardware=Hardware(profile=str(EXAMPLE))), trace)


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *head, last = dotted.split(".")
    node = doc
    for k in head:
        node = node[k]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()
MALFORMED = [
    ("prefill.seconds", _DELETE, r"prefill\.seconds: missing"),
    ("load.disk", _DELETE, r"load\.disk: missing"),
    ("store.archive.per_block_s", _DELETE, r"store\.archive\.per_block_s: missing"),
    ("version", 2, r"version: 2 is not supported"),
    ("kind", "tabel", r"kind: unknown hardware profile 'tabel'"),
    ("prefill.new_tokens", [1, 512, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
     r"prefill\.new_tokens: must be strictly increasing"),
    ("prefill.cached_tokens", [0], r"prefill\.cached_tokens: expected a list of at least 2"),
    ("load.archive.per_block_s", -0.1, r"load\.archive\.per_block_s: must be >= 0"),
    ("prefill.seconds", [[0.1, 0.2, 0.3, 0.4]] * 3, r"prefill\.seconds: expected 10 rows"),
    ("prefill.seconds", [[0.1, 0.2, 0.3]] * 10, r"prefill\.seconds\[0\]: expected 4 values"),
    ("prefill.seconds", [[0.1, 0.2, 0.3, -0.4]] * 10, r"prefill\.seconds\[0\]\[3\]: must be >= 0"),
    ("block_size", 0, r"block_size: expected a positive integer"),
    ("load.nvme", {"per_block_s": 0.1, "per_request_s": 0.0}, r"load\.nvme: unknown key"),
    ("load.cpu", {"per_block_s": 0.1, "per_request_s": 0.0}, r"store\.cpu: missing"),
    ("store.cpu", {"per_block_s": 0.1}, r"load\.cpu: missing"),
    ("archive", {"compression_ratio": 0}, r"archive\.compression_ratio: must be > 0"),
    ("archive", {"compression_ratio": "2x"}, r"archive\.compression_ratio: expected a finite number"),
    ("archive", {"ratio": 2.0}, r"archive\.ratio: unknown key"),
    ("archive", 1.3, r"archive: expected a mapping"),
]


def test_table_cpu_entries_are_needed_only_with_a_cpu_tier(tmp_path: Path) -> None:
    sc = Scenario(tiers=Tiers(cpu=CPUTier(enabled=True)))
    without = load_profile(_table(tmp_path, _doc(), "plain.yaml"))
    assert without.transfers(Scenario(), 4096, 2048).read_per_block_s[CPU] == 0.0
    with pytest.raises(ScenarioError, match=r"plain\.yaml: load\.cpu: missing, but tiers\.cpu\.enabled"):
        without.transfers(sc, 4096, 2048)
    doc = _set(_set(_doc(), "load.cpu", {"per_block_s": 3e-5, "per_request_s": 1e-5}),
               "store.cpu", {"per_block_s": 4e-5})
    t = load_profile(_table(tmp_path, doc, "cpu.yaml")).transfers(sc, 4096, 2048)
    assert (t.latency_s[CPU], t.read_per_block_s[CPU], t.write_per_block_s[CPU]) == (1e-5, 3e-5, 4e-5)


def test_a_profiles_measured_compression_ratio_replaces_the_scenarios(tmp_path: Path,
                                                                      small_trace: Any) -> None:
    """``archive.compression_ratio`` of a table profile sets the archived block's size everywhere
    the simulator uses it (the caches, the TTL policy's storage cost, the summary's dollars);
    without it the scenario's ratio is used, as before."""
    sc = load_scenario(ROOT / "scenarios" / "three-tier-adaptive.yaml")
    plain = sc.with_overrides([f"hardware.profile={_table(tmp_path, _doc(), 'plain.yaml')}"])
    with_ratio = _table(tmp_path, _doc(archive={"compression_ratio": 1.25}), "ratio.yaml")
    measured = sc.with_overrides([f"hardware.profile={with_ratio}"])
    bb = small_trace.block_size * sc.model.bytes_per_token
    assert plain.hardware.time_model().compression_ratio(plain) == sc.tiers.archive.compression_ratio == 2.0
    assert measured.hardware.time_model().compression_ratio(measured) == 1.25
    for scenario, ratio in ((plain, 2.0), (measured, 1.25)):
        cache = TieredCache(scenario, small_trace)
        assert cache.archive_bytes == cache.state.archive_bytes == int(bb / ratio)
    ref, got = run(plain, small_trace), run(measured, small_trace)
    assert got.summary["archive_puts"] == ref.summary["archive_puts"] > 0
    assert got.summary["archive_storage_dollars"] > ref.summary["archive_storage_dollars"]


def test_analytic_cpu_transfers_come_from_the_cpu_tier() -> None:
    sc = Scenario(tiers=Tiers(cpu=CPUTier(enabled=True, read_gbps=40.0, write_gbps=20.0, latency_s=2e-5)))
    t = sc.hardware.time_model().transfers(sc, 2**21, 2**20)
    assert (t.latency_s[CPU], t.read_per_block_s[CPU], t.write_per_block_s[CPU]) == (
        2e-5, 2**21 / 40e9, 2**21 / 20e9)


@pytest.mark.parametrize(("key", "value", "message"), MALFORMED)
def test_malformed_profiles_are_rejected_naming_file_and_key(
        tmp_path: Path, key: str, value: Any, message: str) -> None:
    path = _table(tmp_path, _set(_doc(), key, value))
    with pytest.raises(ScenarioError, match=rf"{path}: {message}"):
        load_profile(path)


def test_cli_rejects_a_malformed_profile_in_one_line(tmp_path: Path) -> None:
    _table(tmp_path, _set(_doc(), "prefill.seconds", [[0.1, 0.2, 0.3, -0.4]] * 10), "bad.yaml")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"trace: {ROOT / 'traces' / 'small.parquet'}\nhardware: {{profile: bad.yaml}}\n")
    res = simkv_cli("run", str(scenario), "-o", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "bad.yaml: prefill.seconds[0][3]: must be >= 0" in res.stderr + res.stdout
