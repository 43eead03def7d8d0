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

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from simkv.config import apply_overrides, from_dict, load_yaml, to_dict
from simkv.errors import ScenarioError

if TYPE_CHECKING:
    from simkv.model.hardware import HardwareProfile

MAX_CAPACITY = 2**62  # blocks or bytes: the compiled engines count in int64
GB = 1e9  # bandwidths are in GB/s (decimal), as hardware vendors quote them
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | float | str | None, key: str) -> int | None:
    """``'8GiB'`` → 8589934592; plain numbers are bytes; ``'unlimited'`` → ``None``."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "unlimited":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value < math.inf:
            raise ScenarioError(f"{key}: must be a finite size >= 0 (or 'unlimited'), got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ScenarioError(f"{key}: {value!r} is not a size (e.g. 4096, '8GiB', '500MB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not (value >= 0 if allow_zero else value > 0):
        raise ScenarioError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


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
            _positive(f"{prefix}.{k}", getattr(self, k))
        _positive(f"{prefix}.kv_bytes_per_token", self.kv_bytes_per_token)


@dataclass(frozen=True)
class TierCapacity:
    """Capacity in blocks or in bytes (``'80GiB'``, or ``'unlimited'``); at most one of the
    two. Neither means the tier's ``default_bytes`` (``None``: unlimited)."""

    default_bytes = None
    capacity_blocks: int | None = None
    capacity_bytes: int | str | None = None

    def check_eviction(self, prefix: str) -> None:
        from simkv.policies.eviction import EVICTION_POLICIES
        from simkv.policies.registry import check_signature

        name = getattr(self, "eviction", "lru")
        cls = EVICTION_POLICIES.get(name, key=f"{prefix}.eviction")
        if EVICTION_POLICIES.is_plugin(name):
            check_signature(cls, name, f"{prefix}.eviction", "Class(next_use)", 1)

    def check_capacity(self, prefix: str) -> None:
        self.check_eviction(prefix)
        if self.capacity_blocks is not None and self.capacity_bytes is not None:
            raise ScenarioError(
                f"{prefix}: capacity_blocks={self.capacity_blocks!r} and capacity_bytes="
                f"{self.capacity_bytes!r} both given; keep one (e.g. --set "
                f"{prefix}.capacity_bytes=null)")
        _positive(f"{prefix}.capacity_blocks", self.capacity_blocks, allow_zero=True)
        for k, v in (("capacity_blocks", self.capacity_blocks),
                     ("capacity_bytes", parse_bytes(self.capacity_bytes, f"{prefix}.capacity_bytes"))):
            if v is not None and v > MAX_CAPACITY:
                raise ScenarioError(f"{prefix}.{k}: {v:.3g} is beyond what the engines can represent "
                                    f"(at most 2**62); for no limit set {prefix}.capacity_bytes: unlimited")

    def blocks(self, block_bytes: int) -> int | None:
        """Capacity in whole blocks (``None`` = unlimited)."""
        if self.capacity_blocks is not None:
            return self.capacity_blocks
        if self.capacity_bytes is not None:
            raw = parse_bytes(self.capacity_bytes, "capacity_bytes")
        else:
            raw = parse_bytes(self.default_bytes, "capacity_bytes")
        return None if raw is None else raw // block_bytes


@dataclass(frozen=True)
class GPUTier(TierCapacity):
    """The engine's prefix cache in HBM (default 16 GiB). Hits cost no transfer time."""

    default_bytes = "16GiB"
    eviction: str = "lru"

    def check(self, prefix: str) -> None:
        self.check_capacity(prefix)


@dataclass(frozen=True)
class CPUTier(TierCapacity):
    """LMCache's host-memory backend (``LocalCPUBackend``; default 64 GiB), between the GPU
    and the disk; off by default. Stores follow ``tiers.disk.write_policy``: with
    ``write_through`` every block a request stores in the GPU that the CPU tier lacks is also
    copied to it (LMCache stores every computed chunk, and writes a disk or archive hit back
    to CPU); with ``offload_on_evict`` it receives the GPU's victims and its own victims go to
    disk. Copies queue behind each other at ``write_gbps`` (a block is readable once copied);
    load time of ``n`` bytes = ``latency_s + n / (read_gbps * 1e9)`` (pinned host↔GPU copies
    on an H100 box reach ~50 GB/s)."""

    default_bytes = "64GiB"
    enabled: bool = False
    read_gbps: float = 50.0
    write_gbps: float = 50.0
    latency_s: float = 0.00001
    eviction: str = "lru"

    def check(self, prefix: str) -> None:
        self.check_capacity(prefix)
        _positive(f"{prefix}.read_gbps", self.read_gbps)
        _positive(f"{prefix}.write_gbps", self.write_gbps)
        _positive(f"{prefix}.latency_s", self.latency_s, allow_zero=True)


@dataclass(frozen=True)
class DiskTier(TierCapacity):
    """LMCache's local NVMe backend (default 500 GiB). ``write_through``: every computed block is written
    asynchronously (LMCache's behaviour); ``offload_on_evict``: written when the GPU evicts it.
    Load time of ``n`` bytes = ``latency_s + n / (read_gbps * 1e9)``; writes queue behind
    each other at ``write_gbps`` and a block is readable once its write finished."""

    default_bytes = "500GiB"
    enabled: bool = True
    read_gbps: float = 2.1
    write_gbps: float = 1.4
    latency_s: float = 0.0002
    write_policy: Literal["write_through", "offload_on_evict"] = "write_through"
    eviction: str = "lru"

    def check(self, prefix: str) -> None:
        self.check_capacity(prefix)
        _positive(f"{prefix}.read_gbps", self.read_gbps)
        _positive(f"{prefix}.write_gbps", self.write_gbps)
        _positive(f"{prefix}.latency_s", self.latency_s, allow_zero=True)


# Documented defaults per S3 storage class (USD, S3 us-east-1 list prices, 2025): per GB-month
# stored, per PUT (or COPY), per GET, per GB retrieved; and the billing minimums: ``min_days``
# (an object deleted or overwritten earlier is charged the rest: S3's early-deletion fee) and
# ``min_object_bytes`` (a smaller object is billed as this size). Glacier Flexible Retrieval
# and Deep Archive are priced for a Standard restore (its per-request fee is added to ``get``),
# which takes hours: they need ``request_latency_s`` set to the restore time. Their 40 KB of
# per-object metadata is not billed.
STORAGE_CLASSES: dict[str, dict[str, float]] = {
    "standard": {"gb_month": 0.023, "put": 0.005 / 1000, "get": 0.0004 / 1000, "retrieval_gb": 0.0,
                 "min_days": 0.0, "min_object_bytes": 0},
    "standard_ia": {"gb_month": 0.0125, "put": 0.01 / 1000, "get": 0.001 / 1000, "retrieval_gb": 0.01,
                    "min_days": 30.0, "min_object_bytes": 128 * 1024},
    "glacier_ir": {"gb_month": 0.004, "put": 0.02 / 1000, "get": 0.01 / 1000, "retrieval_gb": 0.03,
                   "min_days": 90.0, "min_object_bytes": 128 * 1024},
    "glacier_flexible": {"gb_month": 0.0036, "put": 0.03 / 1000, "get": (0.05 + 0.0004) / 1000,
                         "retrieval_gb": 0.01, "min_days": 90.0, "min_object_bytes": 0},
    "deep_archive": {"gb_month": 0.00099, "put": 0.05 / 1000, "get": (0.10 + 0.0004) / 1000,
                     "retrieval_gb": 0.02, "min_days": 180.0, "min_object_bytes": 0},
}
#: Classes whose objects must be restored before a GET (minutes to hours).
RESTORE_CLASSES = ("glacier_flexible", "deep_archive")
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class ArchiveTier(TierCapacity):
    """S3 archive, outside LMCache. Every ``interval_s`` a worker compresses the blocks
    stored or used since its last pass (``compress_gbps``, ``compression_ratio``) and uploads
    them (``upload_gbps``) with a TTL from the heuristic; objects expire at their TTL.
    A deep miss costs ``request_latency_s + stored / (download_gbps*1e9) + raw /
    (decompress_gbps*1e9)`` once per request and a GET per block. Prices and billing
    minimums (``min_days``, ``min_object_bytes``) default to the storage class's
    (:data:`STORAGE_CLASSES`); any of them can be overridden. Every PUT (upload, or sliding-TTL
    refresh COPY) makes a new object, billed ``max(stored, min_object_bytes) × max(lifetime,
    min_days)``: one removed earlier (expiry, eviction, overwrite) pays the rest at removal,
    one alive at the end of the run is billed until its TTL deadline but at least ``min_days``
    (see docs/metrics.md)."""

    enabled: bool = False
    interval_s: float = 60.0
    codec: str = "zstd"
    compression_ratio: float = 2.0
    compress_gbps: float = 1.0
    decompress_gbps: float = 2.0
    upload_gbps: float = 1.25
    download_gbps: float = 1.25
    request_latency_s: float = 0.03
    storage_class: Literal["standard", "standard_ia", "glacier_ir", "glacier_flexible",
                           "deep_archive"] = "standard"
    price_gb_month: float | None = None
    price_put: float | None = None
    price_get: float | None = None
    price_retrieval_gb: float | None = None
    price_transfer_gb: float = 0.0
    min_days: float | None = None
    min_object_bytes: int | str | None = None
    eviction: str = "lru"

    def check(self, prefix: str) -> None:
        self.check_capacity(prefix)
        for k in ("interval_s", "compression_ratio", "compress_gbps", "decompress_gbps",
                  "upload_gbps", "download_gbps"):
            _positive(f"{prefix}.{k}", getattr(self, k))
        for k in ("request_latency_s", "price_gb_month", "price_put", "price_get",
                  "price_retrieval_gb", "price_transfer_gb", "min_days"):
            _positive(f"{prefix}.{k}", getattr(self, k), allow_zero=True)
        parse_bytes(self.min_object_bytes, f"{prefix}.min_object_bytes")
        if (self.enabled and self.storage_class in RESTORE_CLASSES
                and self.request_latency_s < 60.0):
            raise ScenarioError(
                f"{prefix}.request_latency_s: {self.request_latency_s!r} s, but "
                f"{self.storage_class} objects must be restored before a GET (minutes to hours); "
                f"set it to the restore time of the retrieval option you price (>= 60 s)")

    def price(self, what: str) -> float:
        """``what`` in gb_month | put | get | retrieval_gb: the override or the class default."""
        override = getattr(self, f"price_{what}")
        return STORAGE_CLASSES[self.storage_class][what] if override is None else override

    def min_storage_s(self) -> float:
        """The minimum billed lifetime of an object in seconds (``min_days`` or the class's)."""
        days = STORAGE_CLASSES[self.storage_class]["min_days"] if self.min_days is None else self.min_days
        return days * SECONDS_PER_DAY

    def billed_bytes(self, stored_bytes: int) -> int:
        """The size an object of ``stored_bytes`` is billed as: at least ``min_object_bytes``."""
        minimum = (STORAGE_CLASSES[self.storage_class]["min_object_bytes"] if self.min_object_bytes is None
                   else parse_bytes(self.min_object_bytes, "min_object_bytes"))
        return max(stored_bytes, int(minimum or 0))


@dataclass(frozen=True)
class Tiers:
    gpu: GPUTier = field(default_factory=GPUTier)
    cpu: CPUTier = field(default_factory=CPUTier)
    disk: DiskTier = field(default_factory=DiskTier)
    archive: ArchiveTier = field(default_factory=ArchiveTier)


@dataclass(frozen=True)
class TTLConfig:
    """``heuristic``: a registered name (static, per_class, size_aware, adaptive,
    cost_aware, reuse_prob), ``none``, or ``module:function``. ``mode``: ``fixed`` deadline or
    ``sliding`` (refreshed on access). ``scope``: the TTL governs the ``archive`` only or
    ``all`` tiers."""

    heuristic: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    mode: Literal["fixed", "sliding"] = "fixed"
    scope: Literal["archive", "all"] = "archive"

    def check(self, prefix: str) -> None:
        if self.heuristic != "none":
            from simkv.policies.ttl import make_heuristic

            make_heuristic(self.heuristic, self.params)
        elif self.params:
            raise ScenarioError(f"{prefix}.params: given but ttl.heuristic is 'none'")


@dataclass(frozen=True)
class Hardware:
    """Compute: ``gpus`` identical GPUs serve a FIFO queue; the time model is the hardware
    profile (:mod:`simkv.model.hardware`). Without ``profile`` it is the ``analytic`` one:
    ``prefill(n, c) = prefill_const_s + prefill_per_token_s * n + prefill_attn_s * n * (n + c)``
    seconds for ``n`` new tokens after ``c`` cached ones (at least one token is always
    computed), loads and stores from the tiers' bandwidths. ``profile``: a ``kind: table``
    profile file (measured prefill grid, load and store times) replacing all of those; a
    relative path is resolved against the scenario file's directory (else the working
    directory). ``zero_service_time`` makes every prefill and load instantaneous (the
    LMCache-parity configuration)."""

    name: str = "h100-llama3-8b-fit"
    gpus: int = 1
    prefill_const_s: float = 0.0311
    prefill_per_token_s: float = 2.53e-5
    prefill_attn_s: float = 5.55e-10
    gpu_cost_per_hour: float = 4.0
    zero_service_time: bool = False
    profile: str | None = None

    def check(self, prefix: str) -> None:
        _positive(f"{prefix}.gpus", self.gpus)
        for k in ("prefill_const_s", "prefill_per_token_s", "prefill_attn_s", "gpu_cost_per_hour"):
            _positive(f"{prefix}.{k}", getattr(self, k), allow_zero=True)
        if self.profile is not None:
            self.time_model()

    def time_model(self) -> HardwareProfile:
        """The hardware profile every time and block value comes from."""
        from simkv.model.hardware import AnalyticProfile, load_profile

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
        _positive("timeline_bin_s", self.timeline_bin_s)
        _positive("block_size", self.block_size)
        if self.ttl.scope == "archive" and self.ttl.heuristic != "none" and not self.tiers.archive.enabled:
            raise ScenarioError("ttl.scope: 'archive' but tiers.archive.enabled is false "
                                "(enable the archive or set ttl.scope: all)")
        if self.tiers.archive.enabled and self.ttl.heuristic == "none":
            raise ScenarioError("ttl.heuristic: the archive tier needs a TTL heuristic "
                                "(objects expire at their TTL)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def relative_to(self, directory: str | Path) -> Scenario:
        """This scenario as written into ``directory``: ``trace`` and ``hardware.profile``
        relative to it. A scenario file's relative paths resolve against its own directory
        (after the working directory, for the trace), so the written file runs from any
        working directory and still does when the tree moves to another machine."""
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
        tiers = replace(self.tiers, gpu=replace(self.tiers.gpu, capacity_blocks=0,
                                                capacity_bytes=None),
                        cpu=replace(self.tiers.cpu, enabled=False),
                        disk=replace(self.tiers.disk, enabled=False),
                        archive=replace(self.tiers.archive, enabled=False))
        return replace(self, tiers=tiers, ttl=TTLConfig())


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    return from_dict(Scenario, data)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read a scenario YAML, apply ``--set`` overrides, validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    data = load_yaml(text, path) or {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a mapping of keys, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    resolve_profile_path(data, path)
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
    beside = scenario_path.parent / profile
    hw["profile"] = str((beside if beside.exists() else Path(profile)).resolve())
