"""The ``table`` profile: a measured profile file's prefill grid (bilinear between points,
extrapolated beyond them), its per-block and per-request load and store times, and its
optional request overhead, step time and compression ratio."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from simkv.core.errors import ScenarioError
from simkv.core.profiles.base import (
    OPTIONAL_TIERS,
    PROFILES,
    STEP_KEYS,
    HardwareProfile,
    RequestOverhead,
    StepTime,
    Transfers,
)
from simkv.core.scenario.tiers import TIER_NAMES

if TYPE_CHECKING:
    from simkv.core.scenario import Scenario

def bilinear(new: np.ndarray, cached: np.ndarray, seconds: np.ndarray, n: np.ndarray,
             c: np.ndarray) -> np.ndarray:
    """The table's prefill at ``(n, c)``: bilinear in the grid cell holding it, the outermost
    cell's planes continued beyond the grid, floored at 0 (``seconds[i, j]`` is the time at
    ``new[i]``, ``cached[j]``)."""
    i, u = _axis_cell(new, n)
    j, v = _axis_cell(cached, c)
    s = seconds
    out = ((1 - u) * (1 - v) * s[i, j] + u * (1 - v) * s[i + 1, j]
           + (1 - u) * v * s[i, j + 1] + u * v * s[i + 1, j + 1])
    return np.maximum(out, 0.0)


def _axis_cell(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell index ``i`` (``grid[i] <= x < grid[i+1]``, the outermost cell beyond the grid) and
    the fraction ``t = (x − grid[i]) / (grid[i+1] − grid[i])`` (outside [0, 1] beyond the grid)."""
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
    lo, hi = grid[i], grid[i + 1]
    return i, (x - lo) / (hi - lo)


@PROFILES.register("table")
class TableProfile(HardwareProfile):
    """A measured profile (``kind: table``): prefill seconds on a grid of new × cached tokens,
    bilinear between grid points and linearly extrapolated from the outermost cell beyond the
    grid (floored at 0); load and store times per block and per request as measured for the
    profile's ``block_size`` (the ``cpu`` entries are optional: needed only with a CPU tier;
    ``load.gpu``, written by ``simkv calibrate``, is the engine's GPU-cache copy time, charged to
    GPU hits like any tier's load; without it GPU hits cost nothing); the optional ``request``
    section is the :class:`RequestOverhead`; optionally the archive's measured
    ``archive.compression_ratio``, which replaces the scenario's."""

    kind = "table"

    def __init__(self, data: dict[str, Any], source: str, zero_service_time: bool = False) -> None:
        super().__init__(zero_service_time)
        self.source = source
        self.data = data
        p = data["prefill"]
        self.new = np.asarray(p["new_tokens"], np.float64)
        self.cached = np.asarray(p["cached_tokens"], np.float64)
        self.seconds = np.asarray(p["seconds"], np.float64)
        self.block_size = int(data["block_size"])
        load, store = data["load"], data["store"]
        self.has = {tier: tier in load for tier in OPTIONAL_TIERS}
        none = {"per_block_s": 0.0, "per_request_s": 0.0}   # a tier the profile does not measure
        self._t = Transfers(
            latency_s=tuple(load.get(t, none)["per_request_s"] for t in TIER_NAMES),
            read_per_block_s=tuple(load.get(t, none)["per_block_s"] for t in TIER_NAMES),
            write_per_block_s=tuple(store.get(t, none)["per_block_s"] for t in TIER_NAMES))
        if "request" in data and not zero_service_time:
            self.overhead = RequestOverhead(**{k: float(v) for k, v in data["request"].items()})
        self.ratio: float | None = (data.get("archive") or {}).get("compression_ratio")
        step = data.get("step")
        self.step = None if step is None else StepTime(*(float(step.get(k, 0.0)) for k in STEP_KEYS))

    def _step_extra(self, key: str) -> float:
        """An optional number of the ``step`` section (0 when absent or with zero service time)."""
        return 0.0 if self.zero else float((self.data.get("step") or {}).get(key, 0.0))

    @property
    def step_latency_s(self) -> float:
        return self._step_extra("latency_s")

    @property
    def step_latency_per_stream_s(self) -> float:
        return self._step_extra("latency_per_stream_s")

    def _step_time(self) -> StepTime:
        if self.step is None:
            raise ScenarioError(f"{self.source}: step: missing, but hardware.scheduler: vllm needs "
                                "the profile's step time (measure it with simkv calibrate --steps)")
        return self.step

    def compression_ratio(self, scenario: Scenario) -> float:
        return scenario.tiers.archive.compression_ratio if self.ratio is None else float(self.ratio)

    def _prefill(self, n: np.ndarray, cached: np.ndarray) -> np.ndarray:
        return bilinear(self.new, self.cached, self.seconds, n, cached)

    def transfers(self, scenario: Scenario, block_bytes: int, archive_bytes: int) -> Transfers:
        for tier, has in self.has.items():
            if getattr(scenario.tiers, tier).enabled and not has:
                raise ScenarioError(f"{self.source}: load.{tier}: missing, but tiers.{tier}.enabled is "
                                    f"true (add load.{tier} and store.{tier}, or disable that tier)")
        return self._t
