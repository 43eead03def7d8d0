"""Scenarios: the simulated system as typed dataclasses, loaded from YAML and validated.

A scenario file sets any subset of these fields; everything else keeps its documented
default. ``--set key.sub=value`` overrides apply to the YAML before validation, so an error
always names the dotted key and the bad value.

Default hardware numbers come from H100 measurements of a Llama-3-8B-shape model: the
prefill profile is a least-squares fit to the Llama-3-8B-shape timings
(``prefill(n, c) = const + per_token * n + attn * n * (n + c)`` for ``n`` new and ``c``
cached tokens; within 25% of every measured point), disk 2.1 GB/s read and 1.4 GB/s write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from simkv.core.config import apply_overrides, from_dict, read_yaml_file, to_dict
from simkv.core.errors import ScenarioError
from simkv.core.scenario.tiers import (
    ARCHIVE_CODECS,
    GB,
    MAX_BLOCK_SIZE,
    MAX_BYTES_PER_TOKEN,
    MAX_CAPACITY,
    RESTORE_CLASSES,
    SECONDS_PER_DAY,
    STORAGE_CLASSES,
    TIER_NAMES,
    TTL_SCOPES,
    ArchiveTier,
    CPUTier,
    DiskTier,
    GPUTier,
    RemoteTier,
    TierCapacity,
    Tiers,
    TTLScope,
    check_positive,
    parse_bytes,
    tiers_mapping,
)

#: The most GPUs one simulated engine may have (each is a server process of the simulation).
MAX_GPUS = 4096

if TYPE_CHECKING:
    from simkv.core.profiles import HardwareProfile

__all__ = ["ARCHIVE_CODECS", "GB", "MAX_BLOCK_SIZE", "MAX_BYTES_PER_TOKEN", "MAX_CAPACITY",
           "RESTORE_CLASSES", "SECONDS_PER_DAY", "STORAGE_CLASSES", "ArchiveTier", "CPUTier", "DiskTier",
           "GPUTier", "Hardware", "ModelShape", "RemoteTier", "Scenario", "TTLConfig", "TierCapacity",
           "Tiers",
           "load_scenario", "parse_bytes", "scenario_from_dict", "tiers_mapping"]


@dataclass(frozen=True)
class ModelShape:
    """The served model's KV footprint: ``2 * layers * kv_heads * head_dim * dtype_bytes``
    bytes per token (K and V), unless ``kv_bytes_per_token`` is given."""

    name: str = "llama-3-8b"
    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype_bytes: int = 2
    kv_bytes_per_token: int | None = None

    @property
    def bytes_per_token(self) -> int:
        if self.kv_bytes_per_token is not None:
            return self.kv_bytes_per_token
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def check(self, prefix: str) -> None:
        for k in ("layers", "kv_heads", "head_dim", "dtype_bytes"):
            check_positive(f"{prefix}.{k}", getattr(self, k))
        check_positive(f"{prefix}.kv_bytes_per_token", self.kv_bytes_per_token)
        if self.bytes_per_token > MAX_BYTES_PER_TOKEN:
            what = ("kv_bytes_per_token" if self.kv_bytes_per_token is not None
                    else "2*layers*kv_heads*head_dim*dtype_bytes")
            raise ScenarioError(f"{prefix}.{what}: {self.bytes_per_token:.3g} bytes of KV per token "
                                f"is beyond 2**32")


@dataclass(frozen=True)
class TTLConfig:
    """``heuristic``: a registered name (static, per_class, size_aware, adaptive,
    cost_aware, reuse_prob), ``none``, or ``module:function``. ``mode``: ``fixed`` deadline or
    ``sliding`` (refreshed on access). ``scope``: the TTL governs the ``archive`` only, the
    ``remote`` KV store's keys (and the archive, if any), or ``all`` tiers."""

    heuristic: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    mode: Literal["fixed", "sliding"] = "fixed"
    scope: TTLScope = "archive"

    def check(self, prefix: str) -> None:
        if self.heuristic != "none":
            from simkv.core.policies.ttl import make_heuristic

            make_heuristic(self.heuristic, self.params)
        elif self.params:
            raise ScenarioError(f"{prefix}.params: given but ttl.heuristic is 'none'")


@dataclass(frozen=True)
class Hardware:
    """Compute: ``gpus`` identical GPUs serve a FIFO queue; the time model is the hardware
    profile (:mod:`simkv.core.profiles`). Without ``profile`` it is the ``analytic`` one:
    ``prefill(n, c) = prefill_const_s + prefill_per_token_s * n + prefill_attn_s * n * (n + c)``
    seconds for ``n`` new tokens after ``c`` cached ones (at least one token is always
    computed), loads and stores from the tiers' bandwidths. ``profile``: a ``kind: table``
    profile file (measured prefill grid, load and store times) replacing all of those; a
    relative path is resolved against the scenario file's directory (else the working
    directory). ``zero_service_time`` makes every prefill and load instantaneous (the
    LMCache-parity configuration).

    ``scheduler``: ``fifo`` serves one request at a time per GPU, to its first token (the
    own engine's worker); ``vllm`` runs vLLM's continuous batching on one GPU
    (:mod:`simkv.model.batching`): each step mixes the running requests' decodes with
    (chunked) prefills under ``max_num_batched_tokens`` tokens and ``max_num_seqs``
    sequences, every request decodes its trace's ``output_tokens``, and a step's time is the
    profile's step time (:meth:`~simkv.core.profiles.HardwareProfile.step_time`)."""

    name: str = "h100-llama3-8b-fit"
    gpus: int = 1
    prefill_const_s: float = 0.0311
    prefill_per_token_s: float = 2.53e-5
    prefill_attn_s: float = 5.55e-10
    gpu_cost_per_hour: float = 4.0
    zero_service_time: bool = False
    profile: str | None = None
    scheduler: Literal["fifo", "vllm"] = "fifo"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048

    def check(self, prefix: str) -> None:
        check_positive(f"{prefix}.gpus", self.gpus)
        check_positive(f"{prefix}.max_num_seqs", self.max_num_seqs)
        check_positive(f"{prefix}.max_num_batched_tokens", self.max_num_batched_tokens)
        if self.scheduler == "vllm" and self.gpus != 1:
            raise ScenarioError(f"{prefix}.gpus: {self.gpus!r}, but hardware.scheduler: vllm models "
                                "one vLLM engine on one GPU (set it to 1)")
        if self.gpus > MAX_GPUS:
            raise ScenarioError(f"{prefix}.gpus: {self.gpus!r} is beyond {MAX_GPUS} (one engine's GPUs, "
                                f"each simulated as a server)")
        for k in ("prefill_const_s", "prefill_per_token_s", "prefill_attn_s", "gpu_cost_per_hour"):
            check_positive(f"{prefix}.{k}", getattr(self, k), allow_zero=True)
        if self.profile is not None:
            self.time_model()

    def time_model(self) -> HardwareProfile:
        """The hardware profile every time and block value comes from."""
        from simkv.core.profiles import AnalyticProfile, load_profile

        if self.profile is not None:
            return load_profile(self.profile, self.zero_service_time)
        return AnalyticProfile(self.prefill_const_s, self.prefill_per_token_s, self.prefill_attn_s,
                               self.zero_service_time)

    def prefill_s(self, new: int, cached: int) -> float:
        return self.time_model().prefill_s(new, cached)


@dataclass(frozen=True)
class Scenario:
    """Everything ``simkv run`` needs besides the trace. ``timeline_bin_s``: the timeline's
    bin width; ``None`` (default) picks a round width giving ~100-300 bins over the trace."""

    name: str = "unnamed"
    description: str = ""
    trace: str | None = None
    seed: int = 0
    block_size: int | None = None
    model: ModelShape = field(default_factory=ModelShape)
    tiers: Tiers = field(default_factory=Tiers)
    ttl: TTLConfig = field(default_factory=TTLConfig)
    hardware: Hardware = field(default_factory=Hardware)
    load_policy: Literal["always", "if_faster"] = "always"
    timeline_bin_s: float | None = None
    engine: Literal["auto", "simpy", "compiled", "fast"] = "auto"

    def check(self, prefix: str) -> None:
        check_positive("timeline_bin_s", self.timeline_bin_s)
        check_positive("block_size", self.block_size)
        if self.block_size is not None and self.block_size > MAX_BLOCK_SIZE:
            raise ScenarioError(f"block_size: {self.block_size!r} is beyond 2**24 tokens per block")
        scope = self.ttl.scope
        if scope != "all" and self.ttl.heuristic != "none" and not getattr(self.tiers, scope).enabled:
            others = " or ".join(s for s in TTL_SCOPES if s != scope)
            raise ScenarioError(f"ttl.scope: {scope!r} but tiers.{scope}.enabled is false "
                                f"(enable the {scope} tier or set ttl.scope: {others})")
        for name, spec, present in zip(TIER_NAMES, self.tiers.specs(), self.tiers.present(), strict=True):
            if present:
                spec.check_with(self.tiers, f"tiers.{name}")
        if self.tiers.archive.enabled and self.ttl.heuristic == "none":
            raise ScenarioError("ttl.heuristic: the archive tier needs a TTL heuristic "
                                "(objects expire at their TTL)")
        if self.tiers.gpu.eviction == "vllm":
            self._check_vllm()

    def _check_vllm(self) -> None:
        """What ``tiers.gpu.eviction: vllm`` models: one vLLM engine serving one request at a
        time, with LMCache's CPU and disk below it and nothing else."""
        if self.hardware.gpus != 1:
            raise ScenarioError(f"hardware.gpus: {self.hardware.gpus!r}, but tiers.gpu.eviction: vllm "
                                "models one engine serving one request at a time (set it to 1)")
        for name, spec, present in zip(TIER_NAMES, self.tiers.specs(), self.tiers.present(), strict=True):
            if present and not spec.with_vllm:
                raise ScenarioError(f"tiers.{name}.enabled: tiers.gpu.eviction: vllm models vLLM with "
                                    f"LMCache's CPU and disk tiers only; it runs without a {name} tier")
        if self.ttl.heuristic != "none":
            raise ScenarioError(f"ttl.heuristic: {self.ttl.heuristic!r}, but vLLM's prefix cache has no "
                                "TTL (tiers.gpu.eviction: vllm needs ttl.heuristic: none)")
        if self.load_policy != "always":
            raise ScenarioError(f"load_policy: {self.load_policy!r}; vLLM always uses its prefix-cache "
                                "hit (tiers.gpu.eviction: vllm needs load_policy: always)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def relative_to(self, directory: str | Path) -> Scenario:
        """This scenario as written into ``directory``: ``trace`` and ``hardware.profile``
        relative to it. A scenario file's relative paths resolve against its own directory
        first, so the written file runs from any working directory and still does when the
        tree moves to another machine."""
        def rel(path: str | None) -> str | None:
            if path is None:
                return None
            return os.path.relpath(Path(path).resolve(), Path(directory).resolve())

        return replace(self, trace=rel(self.trace),
                       hardware=replace(self.hardware, profile=rel(self.hardware.profile)))

    def with_overrides(self, overrides: list[str]) -> Scenario:
        return scenario_from_dict(apply_overrides(self.to_dict(), overrides))

    def without_cache(self) -> Scenario:
        """The same system with every cache tier off: the baseline for TTFT and cost."""
        off = {name: replace(getattr(self.tiers, name), enabled=False) for name in TIER_NAMES[1:]}
        tiers = replace(self.tiers, gpu=replace(self.tiers.gpu, capacity_blocks=0, capacity_bytes=None),
                        **off)
        return replace(self, tiers=tiers, ttl=TTLConfig())


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    """A validated scenario from its YAML's data (``tiers`` in either form: :func:`tiers_mapping`)."""
    if "tiers" in data:
        data = {**data, "tiers": tiers_mapping(data["tiers"])}
    return from_dict(Scenario, data)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read a scenario YAML, apply ``--set`` overrides, validate."""
    path = Path(path)
    data = read_yaml_file(path, "scenario file") or {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a mapping of keys, got {type(data).__name__}")
    try:
        if "tiers" in data:       # the list form becomes the mapping --set keys address
            data["tiers"] = tiers_mapping(data["tiers"])
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    data = apply_overrides(data, overrides or [])
    resolve_profile_path(data, path)
    resolve_trace_path(data, path)
    try:
        return scenario_from_dict(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def resolve_profile_path(data: dict[str, Any], scenario_path: Path) -> None:
    """Make a relative ``hardware.profile`` absolute in place: against the scenario file's
    directory if the file is there, else against the working directory (so a scenario and
    its profile move together, and the run's scenario.yaml re-runs from anywhere)."""
    hw = data.get("hardware")
    profile = hw.get("profile") if isinstance(hw, dict) else None
    if not isinstance(profile, str) or Path(profile).is_absolute():
        return
    hw["profile"] = str(_beside(profile, scenario_path).resolve())


def resolve_trace_path(data: dict[str, Any], scenario_path: Path) -> None:
    """Make a relative ``trace`` absolute in place when the file lies beside the scenario file
    (so a scenario runs from any working directory); else leave it relative to the working
    directory (``trace`` is not part of the scenario's hash: the trace's content is)."""
    trace = data.get("trace")
    if not isinstance(trace, str) or Path(trace).is_absolute():
        return
    beside = _beside(trace, scenario_path)
    if beside.exists():
        data["trace"] = str(beside.resolve())


def _beside(relative: str, scenario_path: Path) -> Path:
    """``relative`` against the scenario file's directory if a file is there, else as given
    (against the working directory)."""
    beside = scenario_path.parent / relative
    return beside if beside.exists() else Path(relative)
