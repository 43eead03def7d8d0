"""The synthetic agent-trace generator: determinism, validity, shared prefixes, overrides, CLI."""

from __future__ import annotations

import itertools
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from simkv.errors import ScenarioError
from simkv.scenario import Hardware
from simkv.traces import schema
from simkv.traces.generator import (
    PROMPT_CLASSES,
    GeneratorConfig,
    generate,
    generate_with_segments,
    generator_config,
    workload,
)
from simkv.traces.hashing import chain_block_hashes
from simkv.traces.presets import DEFAULT_PRESET, PRESETS
from simkv.traces.schema import Trace, read_trace, write_trace
from tests.test_stats import brute_force_gaps

SIMKV = str(Path(sys.executable).with_name("simkv"))


@pytest.fixture(scope="module")
def trace() -> Trace:
    return generate(generator_config(seed=7, n_requests=1500))


def _rows(trace: Trace) -> list[dict]:
    return trace.table.to_pylist()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    cfg = generator_config(seed=11, n_requests=600)
    a = write_trace(generate(cfg), tmp_path / "a.parquet")
    b = write_trace(generate(cfg), tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()


def test_different_seed_different_trace(tmp_path: Path) -> None:
    a = write_trace(generate(generator_config(seed=1, n_requests=300)), tmp_path / "a.parquet")
    b = write_trace(generate(generator_config(seed=2, n_requests=300)), tmp_path / "b.parquet")
    assert a.read_bytes() != b.read_bytes()
    assert not read_trace(a).table.equals(read_trace(b).table)


def test_written_trace_validates(tmp_path: Path, trace: Trace) -> None:
    back = read_trace(write_trace(trace, tmp_path / "t.parquet"))
    assert len(back) == 1500
    assert back.block_size == 256
    assert back.source == "simkv-gen:seed=7"
    assert back.table.equals(trace.table)
    assert set(back.table.column_names) >= {"model", "tool_name", "parent_request_id",
                                            "prompt_key"}


def test_requests_sorted_unique_and_named(trace: Trace) -> None:
    rows = _rows(trace)
    arrivals = [r["arrival_s"] for r in rows]
    assert arrivals == sorted(arrivals)
    ids = [r["request_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"s\d+-t\d+-c\d+", i) for i in ids)
    assert all(r["request_id"].startswith(r["session_id"] + "-") for r in rows)


def test_classes_and_optional_columns(trace: Trace) -> None:
    rows = _rows(trace)
    assert {r["prompt_class"] for r in rows} == set(PROMPT_CLASSES)
    for r in rows:
        assert (r["tool_name"] is not None) == (r["prompt_class"] == "tool")
        assert r["model"] == GeneratorConfig().model
        assert re.fullmatch(r"[a-z0-9]+@(v\d+|system)", r["prompt_key"])
        if r["prompt_class"] == "system":  # one-off: no parent, no session history
            assert r["parent_request_id"] is None
            assert r["prompt_key"].endswith("@system")
        if r["prompt_class"] == "tool":
            assert r["parent_request_id"] is not None


def test_context_capped(trace: Trace) -> None:
    assert int(trace.input_tokens.max()) <= GeneratorConfig().max_context_tokens
    small = generate(generator_config(seed=1, n_requests=300,
                                      overrides=["max_context_tokens=12000"]))
    assert int(small.input_tokens.max()) <= 12000


def test_same_agent_type_shares_system_prompt_blocks(trace: Trace) -> None:
    first_block: dict[str, set[int]] = {}
    for r in _rows(trace):
        if r["block_hashes"]:
            agent = r["prompt_key"].split("@")[0]
            first_block.setdefault(agent, set()).add(r["block_hashes"][0])
    assert len(first_block) >= 3
    for agent, firsts in first_block.items():
        assert len(firsts) == 1, agent
    assert len(set().union(*first_block.values())) == len(first_block)  # types differ


def test_later_call_extends_parent_prefix(trace: Trace) -> None:
    rows = _rows(trace)
    by_id = {r["request_id"]: r for r in rows}
    checked = 0
    for r in rows:
        parent = r["parent_request_id"]
        if parent is None:
            continue
        p = by_id[parent]  # the parent precedes the child, so it is in the trace
        assert p["arrival_s"] < r["arrival_s"]
        assert p["session_id"] == r["session_id"]
        assert r["block_hashes"][: len(p["block_hashes"])] == p["block_hashes"]
        assert len(r["block_hashes"]) >= len(p["block_hashes"])
        checked += 1
    assert checked > len(rows) // 2


def test_block_hashes_are_chain_of_segments() -> None:
    cfg = generator_config(seed=5, n_requests=400)
    trace, segments = generate_with_segments(cfg)
    rows = _rows(trace)
    assert len(segments) == len(rows)
    for i in range(0, len(rows), 7):
        assert sum(n for _, n in segments[i]) == rows[i]["input_tokens"]
        assert chain_block_hashes(segments[i], cfg.block_size) == rows[i]["block_hashes"]
    # The sliced-per-session fast path gives exactly what generate() gives.
    assert trace.table.equals(generate(cfg).table)


def test_parts_and_row_groups_do_not_change_the_trace(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator makes the trace part by part (sessions spanning parts are hashed again)
    and joins the parts into one chunk per row group: neither changes a byte."""
    cfg = generator_config(seed=0, n_requests=1200, preset="long-horizon")
    whole = generate(cfg)
    monkeypatch.setattr(workload, "PART_ROWS", 70)
    monkeypatch.setattr(workload, "ROW_GROUP_ROWS", 256)
    monkeypatch.setattr(schema, "ROW_GROUP_ROWS", 256)
    trace, segments = generate_with_segments(cfg)
    assert trace.table.equals(whole.table)
    assert [c.num_chunks for c in trace.table.columns] == [5] * trace.table.num_columns
    rows = _rows(trace)
    for i in range(0, len(rows), 13):
        assert chain_block_hashes(segments[i], cfg.block_size) == rows[i]["block_hashes"]
    one_chunk = Trace(trace.table.combine_chunks(), trace.block_size, trace.source)
    a = write_trace(trace, tmp_path / "parts.parquet")
    b = write_trace(one_chunk, tmp_path / "one.parquet")
    assert pq.ParquetFile(a).num_row_groups == 5
    assert a.read_bytes() == b.read_bytes()


def test_overrides_apply() -> None:
    cfg = generator_config(seed=2, n_requests=200,
                           overrides=["rag_prob=0", "block_size=128", "model=m-x"])
    assert (cfg.seed, cfg.n_requests, cfg.rag_prob, cfg.block_size) == (2, 200, 0.0, 128)
    t = generate(cfg)
    assert len(t) == 200
    assert t.block_size == 128
    classes = set(t.table.column("prompt_class").to_pylist())
    assert "rag" not in classes
    assert set(t.table.column("model").to_pylist()) == {"m-x"}
    # --set wins over the flags, applied last.
    assert generator_config(n_requests=5, overrides=["n_requests=9"]).n_requests == 9


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("nosuch=1", "nosuch"),
        ("rag_prob=1.5", "rag_prob"),
        ("rag_prob=abc", "rag_prob"),
        ("n_requests=0", "n_requests"),
        ("n_requests=2.5", "n_requests"),
        ("block_size=-4", "block_size"),
        ("turns_mean=0.5", "turns_mean"),
        ("session_rate_per_s=0", "session_rate_per_s"),
        ("seed=-1", "seed"),
    ],
)
def test_bad_override_names_key(override: str, key: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(key)):
        generator_config(overrides=[override])


def test_impossible_context_cap_is_an_error() -> None:
    with pytest.raises(ScenarioError, match="max_context_tokens"):
        generate(generator_config(n_requests=10, overrides=["max_context_tokens=100"]))


def test_cli_gen(tmp_path: Path) -> None:
    out = tmp_path / "cli.parquet"
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(out), "--seed", "3",
                           "--requests", "200"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(read_trace(out)) == 200
    # Another process, same seed: the same bytes (no dependence on PYTHONHASHSEED & co.).
    again = write_trace(generate(generator_config(seed=3, n_requests=200)),
                        tmp_path / "again.parquet")
    assert out.read_bytes() == again.read_bytes()


_TERMINAL_ENV = {**os.environ, "TERM": "xterm", "COLUMNS": "100"}


def _gen_with_terminal_stderr(out: Path, *extra: str) -> tuple[str, str]:
    """Run ``simkv trace gen`` with stderr on a pseudo-terminal; return (stdout, stderr)."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([SIMKV, "trace", "gen", "-o", str(out), "--seed", "3", "--requests",
                             "200", *extra], stdout=subprocess.PIPE, stderr=secondary,
                            env=_TERMINAL_ENV)
    os.close(secondary)
    stderr = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        stderr += chunk
    stdout = proc.stdout.read() if proc.stdout else b""
    assert proc.wait() == 0, stderr
    os.close(primary)
    return stdout.decode(), stderr.decode(errors="replace")


def test_cli_gen_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    """The progress bar goes to stderr on a terminal, never to stdout, and --quiet hides it."""
    plain = subprocess.run([SIMKV, "trace", "gen", "-o", str(tmp_path / "a.parquet"), "--seed",
                            "3", "--requests", "200"], capture_output=True, text=True, check=True,
                           env=_TERMINAL_ENV)
    assert "generating" not in plain.stdout + plain.stderr
    stdout, stderr = _gen_with_terminal_stderr(tmp_path / "b.parquet")
    assert "generating" in stderr
    assert stdout == plain.stdout.replace("a.parquet", "b.parquet")
    stdout, stderr = _gen_with_terminal_stderr(tmp_path / "c.parquet", "--quiet")
    assert "generating" not in stderr
    assert stdout == plain.stdout.replace("a.parquet", "c.parquet")
    assert (tmp_path / "b.parquet").read_bytes() == (tmp_path / "a.parquet").read_bytes()


def test_cli_gen_bad_override(tmp_path: Path) -> None:
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(tmp_path / "x.parquet"),
                           "--set", "nosuch=1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "nosuch" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "x.parquet").exists()


# -- presets -------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CANNED_SMALL = ROOT / "traces" / "small.parquet"


def _session_calls(trace: Trace) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = {}
    for r in _rows(trace):
        calls.setdefault(r["session_id"], []).append(r)
    return calls


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


def test_readme_tutorial_trace_gen_leaves_the_checkout_clean(tmp_path: Path) -> None:
    """The tutorial's ``trace gen`` writes outside traces/ (an ignored runs/), and what it
    writes is the canned trace the next steps read."""
    readme = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"^\.venv/bin/simkv trace gen .*$", readme, flags=re.MULTILINE)
    args = command.split()[1:]
    out = Path(args[args.index("-o") + 1])
    assert out.parts[0] == "runs", command  # runs/ is in .gitignore
    proc = subprocess.run([SIMKV, *args], cwd=tmp_path, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    canned = re.search(rf"^cmp {re.escape(str(out))} (\S+)", readme, flags=re.MULTILINE)
    assert canned, "the tutorial compares its trace with the canned one"
    assert (tmp_path / out).read_bytes() == (ROOT / canned.group(1)).read_bytes()


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


def test_cli_gen_preset(tmp_path: Path) -> None:
    out = tmp_path / "lh.parquet"
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(out), "--seed", "2", "--requests", "150",
                           "--preset", "long-horizon", "--set", "n_tenants=5"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    again = generate(generator_config(seed=2, n_requests=150, preset="long-horizon",
                                      overrides=["n_tenants=5"]))
    assert out.read_bytes() == write_trace(again, tmp_path / "again.parquet").read_bytes()


def test_cli_gen_unknown_preset(tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    proc = subprocess.run([SIMKV, "trace", "gen", "-o", str(out), "--preset", "nope"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "'nope'" in proc.stderr and "agents, long-horizon" in proc.stderr
    assert not out.exists()


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


def test_long_pauses() -> None:
    cfg = generator_config(seed=3, n_requests=300, overrides=[
        "pause_prob=1", "tool_turn_prob=0", "batch_prob=0", "pause_min_s=100", "pause_max_s=5000"])
    decode = (cfg.answer_tokens * 50) / cfg.decode_tokens_per_s  # a generous bound on decode time
    checked = 0
    for calls in _session_calls(generate(cfg)).values():
        for a, b in itertools.pairwise(calls):
            assert 100 <= b["arrival_s"] - a["arrival_s"] <= 5000 + decode
            checked += 1
    assert checked > 100


def test_scheduled_agents_resume_after_a_period() -> None:
    cfg = generator_config(seed=3, n_requests=300, overrides=[
        "scheduled_prob=1", "tool_turn_prob=0", "batch_prob=0", "schedule_period_s=3600",
        "schedule_jitter_s=60", "session_rate_per_s=0.005"])
    decode = (cfg.answer_tokens * 50) / cfg.decode_tokens_per_s
    checked = 0
    for calls in _session_calls(generate(cfg)).values():
        for a, b in itertools.pairwise(calls):
            assert 3600 - 60 * 6 <= b["arrival_s"] - a["arrival_s"] <= 3600 + 60 * 6 + decode
            checked += 1
    assert checked > 50


def test_diurnal_cycle_concentrates_arrivals_near_the_peak() -> None:
    cfg = generator_config(seed=5, n_requests=3000, overrides=[
        "session_rate_per_s=0.002", "diurnal_amplitude=1", "diurnal_peak_s=43200"])
    starts = np.asarray([calls[0]["arrival_s"] for calls in _session_calls(generate(cfg)).values()])
    assert starts.max() - starts.min() > 3 * 86400
    hour = (starts % 86400) / 3600
    near = int(np.sum(np.abs(hour - 12) < 6))
    # Rate 1 + cos: the half-day around the peak expects (π + 2) / (π − 2) ≈ 4.5x the other.
    assert near > 3 * (len(starts) - near)


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
