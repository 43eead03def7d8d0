"""The generator's presets: the default one makes the canned trace, the same bytes whatever SIMD
kernels numpy picks, presets by name or import path with overrides on top, and what the
long-horizon and multi-tenant workloads are designed to show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simkv.core.errors import ScenarioError
from simkv.core.scenario import Hardware
from simkv.traces.generator import GeneratorConfig, generate, generate_with_segments, generator_config
from simkv.traces.presets import DEFAULT_PRESET, PRESETS
from simkv.traces.schema import write_trace
from tests.conftest import ROOT
from tests.test_stats import brute_force_gaps

CANNED_SMALL = ROOT / "traces" / "small.parquet"


def test_default_preset_is_the_canned_trace(tmp_path: Path) -> None:
    # New generator features draw nothing when off: the defaults still make small.parquet.
    cfg = generator_config(seed=0, n_requests=3000)
    assert cfg == generator_config(seed=0, n_requests=3000, preset=DEFAULT_PRESET)
    out = write_trace(generate(cfg), tmp_path / "small.parquet")
    assert out.read_bytes() == CANNED_SMALL.read_bytes()


def _dispatched_cpu_features() -> list[str]:
    """The SIMD targets numpy would dispatch to on this CPU (above its baseline)."""
    from numpy._core import _multiarray_umath as umath

    return [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]


def test_same_bytes_with_and_without_simd_kernels(tmp_path: Path) -> None:
    """numpy picks ufunc kernels by CPU (AVX-512 exp/power differ in the last bit): the trace
    must not depend on which, so the same seed gives the same bytes on every machine."""
    features = _dispatched_cpu_features()
    if not features:
        pytest.skip("numpy dispatches no SIMD kernels above its baseline on this CPU")
    # Both presets: agents (lognormal times) and long-horizon (Zipf powers, Pareto, cos).
    script = ("import sys\n"
              "from simkv.traces.generator import generate, generator_config\n"
              "from simkv.traces.schema import write_trace\n"
              "write_trace(generate(generator_config(seed=5, n_requests=500)), sys.argv[1])\n"
              "write_trace(generate(generator_config(seed=0, n_requests=1000, "
              "preset='long-horizon')), sys.argv[2])\n")
    outputs = []
    for name, disabled in (("simd", None), ("baseline", " ".join(features))):
        env = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}
        if disabled:
            env["NPY_DISABLE_CPU_FEATURES"] = disabled
        files = [tmp_path / f"{name}-agents.parquet", tmp_path / f"{name}-lh.parquet"]
        subprocess.run([sys.executable, "-c", script, *map(str, files)], env=env, check=True)
        outputs.append([f.read_bytes() for f in files])
    assert outputs[0] == outputs[1]


def test_preset_same_seed_same_bytes(tmp_path: Path) -> None:
    cfg = generator_config(seed=4, n_requests=400, preset="long-horizon")
    a = write_trace(generate(cfg), tmp_path / "a.parquet")
    b = write_trace(generate(cfg), tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()
    other = write_trace(generate(generator_config(seed=4, n_requests=400)), tmp_path / "c.parquet")
    assert other.read_bytes() != a.read_bytes()


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_is_a_valid_config(name: str) -> None:
    cfg = generator_config(preset=name)
    for key, value in PRESETS.get(name).params.items():
        assert getattr(cfg, key) == value


def test_set_and_flags_apply_on_top_of_preset() -> None:
    base = generator_config(preset="long-horizon")
    cfg = generator_config(seed=3, n_requests=50, preset="long-horizon",
                           overrides=["n_tenants=3", "pause_prob=0"])
    assert (cfg.seed, cfg.n_requests, cfg.n_tenants, cfg.pause_prob) == (3, 50, 3, 0.0)
    assert cfg.system_prompt_tokens == base.system_prompt_tokens != GeneratorConfig().system_prompt_tokens
    assert generator_config(n_requests=5, preset="long-horizon",
                            overrides=["n_requests=9"]).n_requests == 9


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match=r"--preset: unknown preset 'nope'.*agents, long-horizon"):
        generator_config(preset="nope")


def test_preset_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_presets.py").write_text(
        "from simkv.traces.presets import Preset\n"
        "TINY = Preset('tiny tenants', {'n_tenants': 2, 'n_requests': 40})\n"
        "NOT_A_PRESET = {'n_tenants': 2}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = generator_config(preset="my_presets:TINY")
    assert (cfg.n_tenants, cfg.n_requests) == (2, 40)
    with pytest.raises(ScenarioError, match=r"not a simkv\.traces\.presets\.Preset"):
        generator_config(preset="my_presets:NOT_A_PRESET")
    with pytest.raises(ScenarioError, match="cannot import"):
        generator_config(preset="my_presets:MISSING")


def test_bad_preset_param_names_key() -> None:
    with pytest.raises(ScenarioError, match="pause_max_s"):
        generator_config(preset="long-horizon", overrides=["pause_max_s=10"])
    with pytest.raises(ScenarioError, match="diurnal_amplitude"):
        generator_config(overrides=["diurnal_amplitude=2"])


def test_long_horizon_reuse_gaps_span_seconds_to_hours() -> None:
    gaps = np.asarray(brute_force_gaps(generate(generator_config(seed=1, n_requests=3000,
                                                            preset="long-horizon"))))
    p50, p99 = np.percentile(gaps, [50, 99])
    assert p50 < 60
    assert p99 > 3600


def test_long_horizon_load_fits_one_gpu() -> None:
    """The preset's design target: days of trace at a load one H100 (default profile) serves.

    Load without any cache = Σ_r prefill(input_tokens[r], 0) / duration.
    """
    trace = generate(generator_config(seed=0, preset="long-horizon"))
    hw = Hardware()
    busy = sum(hw.prefill_s(int(n), 0) for n in trace.input_tokens)
    duration = float(trace.arrival_s[-1] - trace.arrival_s[0])
    assert duration > 36 * 3600
    assert 0.5 <= busy / duration <= 0.85
    assert int(trace.input_tokens.max()) <= 131072


def test_tenants_share_a_prefix_after_the_tool_schema() -> None:
    cfg = generator_config(seed=6, n_requests=300, overrides=["n_tenants=3", "batch_prob=0"])
    segments = generate_with_segments(cfg)[1]
    tenants = {seg[2][0] for seg in segments}
    assert tenants <= {"tenant/0", "tenant/1", "tenant/2"} and len(tenants) >= 2
    # One length per tenant, drawn once.
    assert len({(name, n) for seg in segments for name, n in seg[2:3]}) == len(tenants)
    none = generate_with_segments(generator_config(seed=6, n_requests=300,
                                                   overrides=["batch_prob=0"]))[1]
    assert not any(name.startswith("tenant/") for seg in none for name, _ in seg)
