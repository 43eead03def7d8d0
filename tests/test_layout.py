"""The repository's layout: the layering contracts of pyproject.toml hold (``lint-imports``), each
of them catches the import it forbids, and no source file grows past 400 lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

MAX_LINES = 400


def lint_imports(config: Path, cwd: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    """``lint-imports --config CONFIG`` (the one beside this interpreter, as ``make lint`` runs it)
    with ``pythonpath`` ahead of the inherited one."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = str(exe) if exe.exists() else shutil.which("lint-imports")
    assert cmd, "lint-imports is not installed (pip install -e '.[test]')"
    path = os.pathsep.join([*map(str, pythonpath), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([cmd, "--config", str(config), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": path}, timeout=120)


def contracts() -> list[dict[str, Any]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_layering_contracts_hold() -> None:
    out = lint_imports(ROOT / "pyproject.toml", ROOT, [ROOT, ROOT / "engine"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in out.stdout


def _fake(module: str) -> str:
    """A contract's module, renamed into the stand-in packages (so the real ones never shadow them)."""
    for real, fake in (("simkv_engine", "fake_engine"), ("simkv", "fake_simkv")):
        if module == real or module.startswith(real + "."):
            return fake + module[len(real):]
    raise AssertionError(f"{module}: not under a root package")


def _layer_modules(layer: str) -> list[str]:
    """The packages of one entry of a layers contract (``"a | b"``: independent siblings)."""
    return [m.strip() for m in layer.split("|")]


def _named(c: dict[str, Any]) -> list[str]:
    """Every module a contract names."""
    if c["type"] == "layers":
        return [m for layer in c["layers"] for m in _layer_modules(layer)]
    return [*c["source_modules"], *c["forbidden_modules"]]


def _violation(c: dict[str, Any]) -> tuple[str, str]:
    """An import the contract forbids: the first source importing the first forbidden module, or
    the lowest layer importing the highest."""
    if c["type"] == "layers":
        return _layer_modules(c["layers"][-1])[0], _layer_modules(c["layers"][0])[0]
    return c["source_modules"][0], c["forbidden_modules"][0]


def _stand_in(tmp: Path, importer: str | None = None, imported: str | None = None) -> Path:
    """Empty packages for every module the contracts name, under the stand-in names, and a copy of
    the contracts over them; ``importer`` imports ``imported`` when given. Returns the config."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    modules = {m for c in data["contracts"] for m in _named(c)}
    for module in sorted(modules | set(data["root_packages"])):
        parts = _fake(module).split(".")
        for i in range(1, len(parts) + 1):
            init = tmp.joinpath(*parts[:i], "__init__.py")
            init.parent.mkdir(parents=True, exist_ok=True)
            init.touch()
    if importer is not None:
        tmp.joinpath(*_fake(importer).split("."), "__init__.py").write_text(f"import {_fake(imported)}\n")
    roots = [_fake(m) for m in data["root_packages"]]
    lines = ["[tool.importlinter]", f"root_packages = {json.dumps(roots)}"]
    for c in data["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        for key, value in c.items():
            if key in ("source_modules", "forbidden_modules"):
                value = [_fake(m) for m in value]
            elif key == "layers":
                value = [" | ".join(map(_fake, _layer_modules(layer))) for layer in value]
            lines.append(f"{key} = {json.dumps(value)}")
    config = tmp / "contracts.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_the_contracts_hold_on_stand_in_packages_that_import_nothing(tmp_path: Path) -> None:
    out = lint_imports(_stand_in(tmp_path), tmp_path, [tmp_path])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in out.stdout


@pytest.mark.parametrize("contract", [c["name"] for c in contracts()])
def test_each_contract_catches_the_import_it_forbids(tmp_path: Path, contract: str) -> None:
    c = next(c for c in contracts() if c["name"] == contract)
    config = _stand_in(tmp_path, *_violation(c))
    out = lint_imports(config, tmp_path, [tmp_path])
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{contract} BROKEN" in out.stdout
    assert f"Contracts: {len(contracts()) - 1} kept, 1 broken." in out.stdout


def test_the_layers_contract_keeps_siblings_apart(tmp_path: Path) -> None:
    """Packages of one layer (``a | b``) may not import each other: no cycle between them."""
    c = next(c for c in contracts() if c["type"] == "layers")
    layer = next(_layer_modules(layer) for layer in c["layers"] if "|" in layer)
    out = lint_imports(_stand_in(tmp_path, layer[0], layer[1]), tmp_path, [tmp_path])
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{c['name']} BROKEN" in out.stdout


def test_no_tracked_python_file_exceeds_400_lines() -> None:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    long = {f: n for f in files if (n := len((ROOT / f).read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_every_name_a_module_exports_exists() -> None:
    """``__all__`` lists only names the module has (``from M import *`` works everywhere)."""
    import importlib
    import pkgutil

    import simkv_engine

    import simkv

    missing = {}
    for pkg in (simkv, simkv_engine):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            try:
                mod = importlib.import_module(info.name)
            except ModuleNotFoundError as e:  # the vLLM connector runs inside vLLM's interpreter
                if e.name == "vllm" or (e.name or "").startswith("vllm."):
                    continue
                raise
            absent = [n for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)]
            if absent:
                missing[info.name] = absent
    assert not missing, f"__all__ names a module lacks: {missing}"
