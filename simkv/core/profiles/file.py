"""The profile file (``hardware.profile: profiles/NAME.yaml``, a ``kind: table`` document):
its validation (every error names the file and the key), reading it (cached while the file
is unchanged) and writing one from a fitted profile (:func:`table_from_profile`, what
``simkv calibrate`` saves)."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from simkv.core.config import read_yaml_file
from simkv.core.errors import ScenarioError
from simkv.core.profiles.base import (
    OPTIONAL_TIERS,
    PROFILE_VERSION,
    PROFILES,
    REQUEST_KEYS,
    REQUIRED_TIERS,
    STEP_KEYS,
    HardwareProfile,
    Transfers,
)
from simkv.core.scenario.tiers import TIER_NAMES

_TOP_KEYS = {"version", "kind", "model", "block_size", "measured_on", "fit_error", "notes",
             "calibration", "prefill", "load", "store", "archive", "request", "step"}
#: Optional keys of the ``step`` section: what ``simkv calibrate --steps`` measured.
_STEP_EXTRA = ("latency_s", "latency_per_stream_s", "fit_error", "points", "notes", "measured_with")


def _num(source: str, key: str, value: Any, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{source}: {key}: expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ScenarioError(f"{source}: {key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _mapping(source: str, key: str, value: Any, required: tuple[str, ...],
             optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{source}: {key}: expected a mapping, got {value!r}")
    for k in value:
        if k not in required and k not in optional:
            raise ScenarioError(f"{source}: {key}.{k}: unknown key (known: "
                                f"{', '.join(required + optional)})")
    for k in required:
        if k not in value:
            raise ScenarioError(f"{source}: {key}.{k}: missing")
    return value


def _grid(source: str, key: str, value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) < 2:
        raise ScenarioError(f"{source}: {key}: expected a list of at least 2 token counts, got {value!r}")
    out = [_num(source, f"{key}[{i}]", v) for i, v in enumerate(value)]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise ScenarioError(f"{source}: {key}: must be strictly increasing, but [{i - 1}]="
                                f"{value[i - 1]!r} and [{i}]={value[i]!r}")
    return out


def validate_table(data: Any, source: str) -> dict[str, Any]:
    """Check a ``kind: table`` profile (version, keys, shapes, monotone grids, times >= 0);
    every error names ``source`` and the key."""
    data = _mapping(source, "profile", data, ("version", "kind", "block_size", "prefill", "load", "store"),
                    tuple(sorted(_TOP_KEYS - {"version", "kind", "block_size", "prefill", "load", "store"})))
    if data["version"] != PROFILE_VERSION:
        raise ScenarioError(f"{source}: version: {data['version']!r} is not supported "
                            f"(this simkv reads version {PROFILE_VERSION})")
    bs = data["block_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs <= 0:
        raise ScenarioError(f"{source}: block_size: expected a positive integer, got {bs!r}")
    p = _mapping(source, "prefill", data["prefill"], ("new_tokens", "cached_tokens", "seconds"))
    new = _grid(source, "prefill.new_tokens", p["new_tokens"])
    cached = _grid(source, "prefill.cached_tokens", p["cached_tokens"])
    rows = p["seconds"]
    if not isinstance(rows, list) or len(rows) != len(new):
        raise ScenarioError(f"{source}: prefill.seconds: expected {len(new)} rows (one per "
                            f"new_tokens), got {len(rows) if isinstance(rows, list) else repr(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(cached):
            raise ScenarioError(f"{source}: prefill.seconds[{i}]: expected {len(cached)} values "
                                f"(one per cached_tokens), got {row!r}")
        for j, v in enumerate(row):
            _num(source, f"prefill.seconds[{i}][{j}]", v)
    if "calibration" in data and not isinstance(data["calibration"], dict):
        raise ScenarioError(f"{source}: calibration: expected a mapping (what simkv calibrate "
                            f"measured), got {data['calibration']!r}")
    load = _mapping(source, "load", data["load"], REQUIRED_TIERS, ("gpu", *OPTIONAL_TIERS))
    store = _mapping(source, "store", data["store"], REQUIRED_TIERS, OPTIONAL_TIERS)
    for tier in OPTIONAL_TIERS:
        if (tier in load) != (tier in store):
            given, other = ("load", "store") if tier in load else ("store", "load")
            raise ScenarioError(f"{source}: {other}.{tier}: missing, but {given}.{tier} is given (a "
                                f"{tier} tier needs both)")
    for tier in [t for t in TIER_NAMES if t in load]:
        m = _mapping(source, f"load.{tier}", load[tier], ("per_block_s", "per_request_s"))
        for k in ("per_block_s", "per_request_s"):
            _num(source, f"load.{tier}.{k}", m[k])
    for tier in [t for t in TIER_NAMES[1:] if t in store]:
        m = _mapping(source, f"store.{tier}", store[tier], ("per_block_s",))
        _num(source, f"store.{tier}.per_block_s", m["per_block_s"])
    if "archive" in data:
        m = _mapping(source, "archive", data["archive"], (), ("compression_ratio",))
        if "compression_ratio" in m:
            _num(source, "archive.compression_ratio", m["compression_ratio"], allow_zero=False)
    if "request" in data:
        m = _mapping(source, "request", data["request"], (), REQUEST_KEYS)
        for k, v in m.items():
            _num(source, f"request.{k}", v)
    if "step" in data:
        m = _mapping(source, "step", data["step"], STEP_KEYS[:-1], (STEP_KEYS[-1], *_STEP_EXTRA))
        for k in (*STEP_KEYS, "latency_s", "latency_per_stream_s"):
            if k in m:
                _num(source, f"step.{k}", m[k])
    return data


@lru_cache(maxsize=32)
def _read_profile(path: str, mtime_ns: int) -> dict[str, Any]:
    data = read_yaml_file(path, "hardware profile")
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a hardware profile is a mapping of keys, got {type(data).__name__}")
    kind = data.get("kind")
    if kind is None:
        raise ScenarioError(f"{path}: kind: missing (one of: {', '.join(PROFILES.names())})")
    if kind != "table":
        PROFILES.get(str(kind), key=f"{path}: kind")
        raise ScenarioError(f"{path}: kind: {kind!r} profiles come from the scenario's hardware "
                            "keys, not a file (a profile file is kind: table)")
    return validate_table(data, path)


def load_profile(path: str | Path, zero_service_time: bool = False) -> HardwareProfile:
    """Read and validate the profile file at ``path`` (cached while the file is unchanged)."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ScenarioError(f"hardware.profile: {path}: no such profile file") from None
    except OSError as exc:
        raise ScenarioError(f"hardware.profile: {path}: cannot read: {exc}") from None
    data = _read_profile(str(path), mtime)
    return PROFILES.get(data["kind"])(data, str(path), zero_service_time)  # type: ignore[call-arg]


def table_from_profile(profile: HardwareProfile, transfers: Transfers, new_tokens: list[int],
                       cached_tokens: list[int], block_size: int, model: str,
                       **provenance: Any) -> dict[str, Any]:
    """A ``kind: table`` profile document with ``profile``'s prefill evaluated on the grid and
    the given transfer times (``store.archive`` = compress + upload): how an analytic fit is
    turned into a table, and the file format :func:`load_profile` reads."""
    seconds = profile.prefill_array(np.repeat(new_tokens, len(cached_tokens)),
                                    np.tile(cached_tokens, len(new_tokens)))
    load, store = transfers.to_profile(TIER_NAMES[1:])   # the GPU's: no load.gpu entry
    return {
        "version": PROFILE_VERSION, "kind": "table", "model": model, "block_size": block_size,
        **provenance,
        "prefill": {"new_tokens": list(new_tokens), "cached_tokens": list(cached_tokens),
                    "seconds": seconds.reshape(len(new_tokens), len(cached_tokens)).tolist()},
        "load": load, "store": store,
    }
