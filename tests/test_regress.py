"""``simkv regress``: golden-file comparison, tolerances, missing files and ``--update``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from simkv.regress import CASES, DEFAULT_GOLDEN_DIR, EXACT, FLOAT, compare, golden_path, tolerance_for
from tests.conftest import simkv_cli

FAST = "parity-lru-small"  # the compiled fast path: well under a second


@pytest.fixture
def golden_copy(tmp_path: Path) -> Path:
    """A private copy of the committed golden files, safe to perturb."""
    d = tmp_path / "golden"
    shutil.copytree(DEFAULT_GOLDEN_DIR, d)
    return d


def edit_summary(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_text())
    doc["summary"].update(changes)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def test_every_case_has_a_committed_golden_file() -> None:
    for case in CASES:
        assert golden_path(DEFAULT_GOLDEN_DIR, case).exists(), f"run 'simkv regress --update' ({case.name})"
    assert {"parity-lru-small", "default-small", "three-tier-adaptive-small"} <= {c.name for c in CASES}


@pytest.mark.slow
def test_committed_golden_files_match() -> None:
    """The regression itself, as CI runs it: every case, every metric."""
    res = simkv_cli("regress")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"all {len(CASES)} regression cases match" in res.stdout


def test_perturbed_golden_fails_naming_the_metric(golden_copy: Path) -> None:
    path = golden_copy / f"{FAST}.json"
    golden = json.loads(path.read_text())["summary"]
    edit_summary(path, token_hit_rate=golden["token_hit_rate"] + 1e-12,
                 evictions_gpu=golden["evictions_gpu"] + 1)
    res = simkv_cli("regress", "--case", FAST, "--golden-dir", str(golden_copy))
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(r"│ token_hit_rate +│", res.stdout), res.stdout
    assert re.search(r"│ evictions_gpu +│", res.stdout), res.stdout
    assert "2 mismatches" in res.stdout and "--update" in res.stdout


def test_float_metric_within_tolerance_passes(golden_copy: Path) -> None:
    path = golden_copy / f"{FAST}.json"
    golden = json.loads(path.read_text())["summary"]
    edit_summary(path, duration_s=golden["duration_s"] * (1 + 1e-12))
    res = simkv_cli("regress", "--case", FAST, "--golden-dir", str(golden_copy))
    assert res.returncode == 0, res.stdout + res.stderr


def test_missing_golden_file_is_a_clear_error(tmp_path: Path) -> None:
    res = simkv_cli("regress", "--case", FAST, "--golden-dir", str(tmp_path))
    assert res.returncode == 2
    assert str(tmp_path / f"{FAST}.json") in res.stderr
    assert "simkv regress --update" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_case_is_a_clear_error(tmp_path: Path) -> None:
    res = simkv_cli("regress", "--case", "nope", "--golden-dir", str(tmp_path))
    assert res.returncode == 2 and "unknown regression case" in res.stderr and FAST in res.stderr


def test_update_writes_files_that_then_match(tmp_path: Path) -> None:
    res = simkv_cli("regress", "--update", "--case", FAST, "--golden-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "created" in res.stdout
    doc = json.loads((tmp_path / f"{FAST}.json").read_text())
    assert doc["case"] == FAST and doc["inputs"]["trace_sha256"] and doc["summary"]["requests"] > 0
    assert simkv_cli("regress", "--case", FAST, "--golden-dir", str(tmp_path)).returncode == 0
    # a changed golden value is reported as changed by --update, then matches again
    edit_summary(tmp_path / f"{FAST}.json", hit_tokens=1)
    res = simkv_cli("regress", "--update", "--case", FAST, "--golden-dir", str(tmp_path))
    assert "changed" in res.stdout and "hit_tokens" in res.stdout
    res = simkv_cli("regress", "--update", "--case", FAST, "--golden-dir", str(tmp_path))
    assert "unchanged" in res.stdout


def test_compare_tolerances_and_missing_metrics() -> None:
    golden = {"requests": 10, "token_hit_rate": 0.5, "ttft_p90_s": 1.0, "gone": 1,
              "token_hit_rate_by_class": {"chat": 0.25}, "simkv_version": "0.0.1"}
    now = {"requests": 10, "token_hit_rate": 0.5 + 1e-15, "ttft_p90_s": 1.0 + 1e-12,
           "token_hit_rate_by_class": {"chat": 0.25, "rag": 0.1}, "new": 2, "simkv_version": "9"}
    by_metric = {m.metric: m for m in compare("c", golden, now)}
    assert set(by_metric) == {"token_hit_rate", "gone", "token_hit_rate_by_class.rag", "new"}
    assert by_metric["token_hit_rate"].tolerance is EXACT
    assert by_metric["gone"].now is None and by_metric["new"].golden is None


def test_tolerance_classes() -> None:
    assert tolerance_for("evictions_gpu", 3) is EXACT
    assert tolerance_for("token_hit_rate_disk", 0.1) is EXACT
    assert tolerance_for("token_hit_rate_by_class.chat", 0.1) is EXACT
    assert tolerance_for("cost_saved_dollars", 0.1) is FLOAT
    assert not FLOAT.accepts(1.0, 1.0 + 1e-6) and FLOAT.accepts(0.0, 1e-13)
    assert not EXACT.accepts(3, 3.0)  # an int turning into a float is a change


def test_a_scenario_key_added_at_its_default_is_not_a_change(golden_copy: Path) -> None:
    """Golden files written before a key existed lack it: the key at its default changes nothing,
    another value is named."""
    path = golden_copy / f"{FAST}.json"
    doc = json.loads(path.read_text())
    doc["inputs"]["scenario"]["tiers"]["gpu"].pop("block_tokens", None)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    res = simkv_cli("regress", "--case", FAST, "--golden-dir", str(golden_copy))
    assert res.returncode == 0 and "block_tokens" not in res.stdout, res.stdout
    doc["inputs"]["scenario"]["tiers"]["gpu"]["block_tokens"] = 32
    path.write_text(json.dumps(doc, indent=2) + "\n")
    res = simkv_cli("regress", "--case", FAST, "--golden-dir", str(golden_copy))
    assert res.returncode == 0 and "tiers.gpu.block_tokens: 32 -> 16" in res.stdout, res.stdout
