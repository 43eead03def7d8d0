"""The tiers of a scenario (GPU, CPU, disk, remote KV store, archive) as typed dataclasses, one
ordered list with a kind each (what they are built on, and the checks they share:
:mod:`simkv.core.scenario.tier_base`; the S3 storage classes the archive prices:
:mod:`simkv.core.scenario.prices`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from simkv.core.errors import ScenarioError
from simkv.core.scenario.prices import RESTORE_CLASSES, SECONDS_PER_DAY, STORAGE_CLASSES
from simkv.core.scenario.tier_base import (
    GB,
    MAX_BLOCK_SIZE,
    MAX_BYTES_PER_TOKEN,
    MAX_CAPACITY,
    LinkTier,
    TierCapacity,
    check_link,
    check_positive,
    parse_bytes,
)

__all__ = ["ARCHIVE", "ARCHIVE_CODECS", "CPU", "DISK", "GB", "GPU", "GPU_MODELS", "HELD_BILLED", "HELD_BILLS",
           "MAX_BLOCK_SIZE", "MAX_BYTES_PER_TOKEN", "MAX_CAPACITY", "REMOTE", "TIER_KINDS", "TIER_NAMES",
           "TTL_SCOPES", "VLLM_BLOCK_TOKENS", "ArchiveTier", "CPUTier", "DiskTier", "GPUTier", "LinkTier",
           "RemoteTier", "TTLScope", "TierCapacity", "Tiers", "check_link", "check_positive", "parse_bytes",
           "tiers_mapping"]

#: The tiers, fastest first; a tier's index in this list is its number everywhere (the
#: simulator's caches and kernels, per-tier arrays, the per-request columns, the summary, the
#: reports, the engine's counters).
TIER_NAMES = ("gpu", "cpu", "disk", "remote", "archive")
GPU, CPU, DISK, REMOTE, ARCHIVE = range(len(TIER_NAMES))
#: ``ttl.scope``'s values, fastest tier first: the tiers whose spec has ``ttl_scope``, or ``all``.
TTLScope = Literal["remote", "archive", "all"]
#: The archive's compression codecs: the names ``tiers.archive.codec`` takes, and the ones
#: the real engine's archive worker implements (``simkv_engine.archive.CODECS``).
ARCHIVE_CODECS = ("zstd", "zlib", "none")

#: GPU-tier models that are not block eviction policies: ``vllm`` is vLLM's whole prefix cache
#: (:mod:`simkv.model.vllm_pool`), engine blocks of ``tiers.gpu.block_tokens`` tokens.
GPU_MODELS = ("vllm",)
#: vLLM's default ``--block-size``: ``tiers.gpu.block_tokens`` when not set.
VLLM_BLOCK_TOKENS = 16


@dataclass(frozen=True)
class GPUTier(TierCapacity):
    """The engine's prefix cache in HBM (default 16 GiB). Hits cost no transfer time.
    ``eviction: vllm`` models vLLM's prefix cache exactly (docs/system.md): a pool of
    ``capacity_blocks`` engine blocks of ``block_tokens`` tokens (vLLM's ``num_gpu_blocks``,
    the null block included), or ``capacity_bytes // (block_tokens × bytes per token)``."""

    kind: ClassVar[str] = "device"
    label: ClassVar[str] = "GPU (HBM)"

    default_bytes = "16GiB"
    eviction: str = "lru"
    block_tokens: int = VLLM_BLOCK_TOKENS

    def check(self, prefix: str) -> None:
        check_positive(f"{prefix}.block_tokens", self.block_tokens)
        if self.block_tokens > MAX_BLOCK_SIZE:
            raise ScenarioError(f"{prefix}.block_tokens: {self.block_tokens!r} is beyond 2**24 tokens")
        if self.eviction in GPU_MODELS:
            self.check_sizes(prefix)
        else:
            self.check_capacity(prefix)

    def pool_blocks(self, bytes_per_token: int, trace_block: int) -> int | None:
        """vLLM's ``num_gpu_blocks`` for this tier (``None``: unlimited): ``capacity_blocks``
        with ``eviction: vllm`` (engine blocks), else the capacity in bytes (``capacity_blocks``
        counts trace blocks of ``trace_block`` tokens then) ``// (block_tokens ×
        bytes_per_token)``. The simulator's pool and ``--num-gpu-blocks-override`` both come
        from here."""
        if self.capacity_blocks is not None:
            if self.eviction == "vllm":
                return self.capacity_blocks
            raw: int | None = self.capacity_blocks * trace_block * bytes_per_token
        else:
            raw = parse_bytes(self.capacity_bytes if self.capacity_bytes is not None
                              else self.default_bytes, "tiers.gpu.capacity_bytes")
        return None if raw is None else raw // (self.block_tokens * bytes_per_token)


@dataclass(frozen=True)
class CPUTier(LinkTier):
    """LMCache's host-memory backend (``LocalCPUBackend``; default 64 GiB), between the GPU
    and the disk; off by default. Stores follow ``tiers.disk.write_policy``: with
    ``write_through`` every block a request stores in the GPU that the CPU tier lacks is also
    copied to it (LMCache stores every computed chunk, and writes a disk or archive hit back
    to CPU); with ``offload_on_evict`` it receives the GPU's victims and its own victims go to
    disk. Copies queue behind each other at ``write_gbps`` (a block is readable once copied);
    load time of ``n`` bytes = ``latency_s + n / (read_gbps * 1e9)`` (pinned host↔GPU copies
    on an H100 box reach ~50 GB/s)."""

    kind: ClassVar[str] = "host"
    label: ClassVar[str] = "CPU (host RAM)"

    default_bytes = "64GiB"
    enabled: bool = False
    read_gbps: float = 50.0
    write_gbps: float = 50.0
    latency_s: float = 0.00001
    eviction: str = "lru"


@dataclass(frozen=True)
class DiskTier(LinkTier):
    """LMCache's local NVMe backend (default 500 GiB). ``write_through``: every computed block is written
    asynchronously (LMCache's behaviour); ``offload_on_evict``: written when the GPU evicts it.
    Load time of ``n`` bytes = ``latency_s + n / (read_gbps * 1e9)``; writes queue behind
    each other at ``write_gbps`` and a block is readable once its write finished."""

    kind: ClassVar[str] = "disk"
    label: ClassVar[str] = "disk (NVMe)"

    default_bytes = "500GiB"
    enabled: bool = True
    read_gbps: float = 2.1
    write_gbps: float = 1.4
    latency_s: float = 0.0002
    write_policy: Literal["write_through", "offload_on_evict"] = "write_through"
    eviction: str = "lru"


@dataclass(frozen=True)
class RemoteTier(LinkTier):
    """A remote KV store in DRAM (Redis / Valkey) behind LMCache's remote backend, below the
    disk; off by default, unlimited unless sized. Every block a request stores is written to it
    (write-through, as LMCache puts every chunk to each backend), readable once written (writes
    queue at ``write_gbps``); a load of ``n`` bytes takes ``latency_s + n / (read_gbps·10⁹)``.
    Each key lives ``ttl_s`` from its write (Valkey's ``ttl_seconds``; ``None``: until evicted),
    or the TTL heuristic's TTL where it governs this tier (``ttl.scope``: ``remote`` or ``all``).
    Its bill is the bytes it holds: ``price_gb_hour`` $ per GB-hour of DRAM (default: an
    in-memory cache's on-demand price, 13.07 GiB for $0.219/h, ≈ 0.0156 $/GB-hour)."""

    kind: ClassVar[str] = "remote"
    label: ClassVar[str] = "remote KV (DRAM)"
    ttl_scope: ClassVar[bool] = True
    bill: ClassVar[str | None] = "DRAM"
    rewrites: ClassVar[bool] = True     # LMCache puts every stored chunk (SET ... EX)
    with_vllm: ClassVar[bool] = False
    enabled: bool = False
    read_gbps: float = 10.0
    write_gbps: float = 10.0
    latency_s: float = 0.0005
    ttl_s: float | None = None
    price_gb_hour: float = 0.0156
    eviction: str = "lru"

    def check(self, prefix: str) -> None:
        super().check(prefix)
        check_positive(f"{prefix}.ttl_s", self.ttl_s)
        check_positive(f"{prefix}.price_gb_hour", self.price_gb_hour, allow_zero=True)

    def key_ttl_s(self) -> float | None:
        return self.ttl_s

    def held_price_gb_hour(self) -> float:
        return self.price_gb_hour

    def check_with(self, tiers: Tiers, prefix: str) -> None:
        if tiers.disk.write_policy != "write_through":
            raise ScenarioError("tiers.disk.write_policy: offload_on_evict is not modelled with a remote "
                                "tier (LMCache writes every chunk to its remote backend: use write_through)")


@dataclass(frozen=True)
class ArchiveTier(TierCapacity):
    """S3 archive, outside LMCache. Every ``interval_s`` a worker compresses the blocks
    stored or used since its last pass (``codec``: one of :data:`ARCHIVE_CODECS`;
    ``compress_gbps``, ``compression_ratio``) and uploads
    them (``upload_gbps``) with a TTL from the heuristic; objects expire at their TTL.
    A deep miss costs ``request_latency_s + stored / (download_gbps*1e9) + raw /
    (decompress_gbps*1e9)`` once per request and a GET per block. Prices and billing
    minimums (``min_days``, ``min_object_bytes``) default to the storage class's
    (:data:`STORAGE_CLASSES`); any of them can be overridden. Every PUT (upload, or sliding-TTL
    refresh COPY) makes a new object, billed ``max(stored, min_object_bytes) × max(lifetime,
    min_days)``: one removed earlier (expiry, eviction, overwrite) pays the rest at removal,
    one alive at the end of the run is billed until its TTL deadline but at least ``min_days``
    (see docs/metrics.md)."""

    kind: ClassVar[str] = "archive"
    label: ClassVar[str] = "archive (S3)"
    ttl_scope: ClassVar[bool] = True
    with_vllm: ClassVar[bool] = False

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
        if self.codec not in ARCHIVE_CODECS:
            raise ScenarioError(f"{prefix}.codec: {self.codec!r} is not one of "
                                f"{list(ARCHIVE_CODECS)}")
        for k in ("interval_s", "compression_ratio", "compress_gbps", "decompress_gbps",
                  "upload_gbps", "download_gbps"):
            check_positive(f"{prefix}.{k}", getattr(self, k))
        for k in ("request_latency_s", "price_gb_month", "price_put", "price_get",
                  "price_retrieval_gb", "price_transfer_gb", "min_days"):
            check_positive(f"{prefix}.{k}", getattr(self, k), allow_zero=True)
        parse_bytes(self.min_object_bytes, f"{prefix}.min_object_bytes")
        if (self.enabled and self.storage_class in RESTORE_CLASSES
                and self.request_latency_s < 60.0):
            raise ScenarioError(
                f"{prefix}.request_latency_s: {self.request_latency_s!r} s, but "
                f"{self.storage_class} objects must be restored before a GET (minutes to hours); "
                f"set it to the restore time of the retrieval option you price (>= 60 s)")

    def transfer_s(self, raw: int, packed: int) -> tuple[float, float, float]:
        """A deep miss: ``request_latency_s`` once, then per block the compressed bytes
        downloaded and the raw bytes decompressed; a pass compresses then uploads each block."""
        read = packed / (self.download_gbps * GB) + raw / (self.decompress_gbps * GB)
        write = raw / (self.compress_gbps * GB) + packed / (self.upload_gbps * GB)
        return self.request_latency_s, read, write

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
    """The tier specs, one field per tier of :data:`TIER_NAMES`, fastest first."""

    gpu: GPUTier = field(default_factory=GPUTier)
    cpu: CPUTier = field(default_factory=CPUTier)
    disk: DiskTier = field(default_factory=DiskTier)
    remote: RemoteTier = field(default_factory=RemoteTier)
    archive: ArchiveTier = field(default_factory=ArchiveTier)

    def specs(self) -> tuple[TierCapacity, ...]:
        """Every tier's spec, indexed like :data:`TIER_NAMES` (disabled ones included)."""
        return tuple(getattr(self, name) for name in TIER_NAMES)

    def present(self) -> tuple[bool, ...]:
        """Per tier, indexed like :data:`TIER_NAMES`: in use (the GPU tier always is)."""
        return tuple(getattr(spec, "enabled", True) for spec in self.specs())


_SPECS = dict(zip(TIER_NAMES, Tiers().specs(), strict=True))
#: Each tier's kind (its spec's ``kind``), indexed like :data:`TIER_NAMES`: what the list form
#: of ``tiers`` names it by.
TIER_KINDS = tuple(spec.kind for spec in _SPECS.values())
#: What ``ttl.scope`` takes: a tier the heuristic may govern (its spec's ``ttl_scope``), or
#: ``all`` of them (the values of :data:`TTLScope`, the type that says so; a test holds them equal).
TTL_SCOPES = (*(n for n, spec in _SPECS.items() if spec.ttl_scope), "all")
#: The tiers billed for the bytes they hold, each with its bill as reports name it (their spec's
#: ``bill``, ``"DRAM"``) and a ``<tier>_storage_dollars`` column and summary key.
HELD_BILLS = {n: spec.bill for n, spec in _SPECS.items() if spec.bill}
HELD_BILLED = tuple(HELD_BILLS)


def tiers_mapping(value: Any, key: str = "tiers") -> Any:
    """The list form of ``tiers`` as the mapping the dataclasses read (other values as given).

    The list names the tiers in use, fastest first, each a mapping with its ``kind``
    (:data:`TIER_KINDS`) and that tier's keys: ``[{kind: device, capacity_bytes: 16GiB},
    {kind: disk}, {kind: archive, interval_s: 30}]``. A listed tier is enabled unless it says
    ``enabled: false``; one not listed is disabled (the device tier, always present, keeps its
    defaults)."""
    if not isinstance(value, list):
        return value
    out: dict[str, dict[str, Any]] = {}
    last = -1
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise ScenarioError(f"{where}: a tier is a mapping with a kind (one of {list(TIER_KINDS)}), "
                                f"got {entry!r}")
        kind = entry.get("kind")
        if kind not in TIER_KINDS:
            got = "missing" if kind is None else f"{kind!r} is not a tier kind"
            raise ScenarioError(f"{where}.kind: {got} (expected one of {list(TIER_KINDS)})")
        n = TIER_KINDS.index(kind)
        if n <= last:
            prev = TIER_KINDS[last]
            raise ScenarioError(f"{where}.kind: {kind!r} after {prev!r}" + (
                " again" if n == last else f": list the tiers fastest first ({', '.join(TIER_KINDS)})"))
        last = n
        spec = {k: v for k, v in entry.items() if k != "kind"}
        if n != GPU:
            spec.setdefault("enabled", True)
        out[TIER_NAMES[n]] = spec
    for name in TIER_NAMES[1:]:
        out.setdefault(name, {"enabled": False})
    return out
