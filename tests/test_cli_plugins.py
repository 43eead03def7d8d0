"""Plug-ins named in a scenario (``module:name`` TTL heuristics and eviction policies) as the
``simkv`` command finds them in the working directory, and the one-line error (exit 2, no
traceback) for each way a plug-in can be wrong."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DEFAULT, SCENARIOS, SIMKV, SMALL_TRACE, assert_user_error

# -- item 7: plug-ins -----------------------------------------------------------------------------

PLUGINS = '''
from simkv.core.policies.eviction import LRU


def good_ttl(ctx, params):
    return 600.0


def raising_ttl(ctx, params):
    raise ValueError("no TTL for you")


def wrong_type_ttl(ctx, params):
    return "ten minutes"


def wrong_args_ttl(ctx):
    return 600.0


class GoodLRU(LRU):
    pass


class RaisingVictim(LRU):
    def victim(self):
        raise RuntimeError("no victim today")


class WrongVictim(LRU):
    def victim(self):
        return -1


class WrongInit(LRU):
    def __init__(self):
        super().__init__()
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plugins")
    (d / "my_plugins.py").write_text(PLUGINS)
    (d / "broken_plugin.py").write_text("raise RuntimeError('broken at import')\n")
    return d


def run_plugin(plugin_dir: Path, *sets: str, scenario: Path = DEFAULT) -> subprocess.CompletedProcess[str]:
    """``simkv run`` from the plug-ins' directory as the console script runs (python -P: the
    working directory is not put on the import path by Python itself)."""
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.run([SIMKV[0], "-P", *SIMKV[1:], "run", str(scenario), "--trace", str(SMALL_TRACE),
                           "--json", *args], cwd=plugin_dir, capture_output=True, text=True, timeout=600)


THREE_TIER_TTL = ("ttl.params={}",)


def test_plugins_in_the_working_directory_are_found(plugin_dir: Path) -> None:
    ok = run_plugin(plugin_dir, "ttl.heuristic=my_plugins:good_ttl", *THREE_TIER_TTL,
                    scenario=SCENARIOS / "three-tier-adaptive.yaml")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["archive_puts"] > 0
    ok = run_plugin(plugin_dir, "tiers.gpu.eviction=my_plugins:GoodLRU", "tiers.gpu.capacity_bytes=1GiB")
    assert ok.returncode == 0, ok.stderr
    ref = run_plugin(plugin_dir, "tiers.gpu.eviction=lru", "tiers.gpu.capacity_bytes=1GiB",
                     "engine=simpy")
    assert json.loads(ok.stdout)["token_hit_rate"] == json.loads(ref.stdout)["token_hit_rate"]


@pytest.mark.parametrize(("name", "needles"), [
    ("my_plugins:raising_ttl", ["raised ValueError: no TTL for you", "my_plugins.py:"]),
    ("my_plugins:wrong_type_ttl", ["returned 'ten minutes'"]),
    ("my_plugins:wrong_args_ttl", ["(ctx, params)"]),
    ("my_plugins:nosuch", ["has no attribute 'nosuch'"]),
    ("broken_plugin:f", ["RuntimeError: broken at import"]),
    ("no_such_module:f", ["No module named 'no_such_module'"]),
])
def test_bad_ttl_plugin(plugin_dir: Path, name: str, needles: list[str]) -> None:
    proc = run_plugin(plugin_dir, f"ttl.heuristic={name}", *THREE_TIER_TTL,
                      scenario=SCENARIOS / "three-tier-adaptive.yaml")
    assert_user_error(proc, "ttl.heuristic", name, *needles)


@pytest.mark.parametrize(("name", "needles"), [
    ("my_plugins:RaisingVictim", ["victim() raised RuntimeError: no victim today"]),
    ("my_plugins:WrongVictim", ["victim() returned -1", "not a resident block"]),
    ("my_plugins:WrongInit", ["Class(next_use)"]),
    ("broken_plugin:P", ["RuntimeError: broken at import"]),
])
def test_bad_eviction_plugin(plugin_dir: Path, name: str, needles: list[str]) -> None:
    proc = run_plugin(plugin_dir, f"tiers.gpu.eviction={name}", "tiers.gpu.capacity_bytes=1GiB")
    assert_user_error(proc, "tiers.gpu.eviction", name, *needles)
