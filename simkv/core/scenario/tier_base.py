"""What every tier spec is built on: the capacity and eviction every tier has
(:class:`TierCapacity`, with the hooks a tier's behaviour is read from), the link a tier below
the GPU is reached through (:class:`LinkTier`), and the size and bound checks they share."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from simkv.core.errors import ScenarioError

if TYPE_CHECKING:
    from simkv.core.scenario.tiers import Tiers


MAX_CAPACITY = 2**62  # blocks or bytes: the compiled engines count in int64
#: Tokens per block (a trace's ``block_size``) and KV bytes per token, at most: a block's
#: bytes, their product, stay far inside int64.
MAX_BLOCK_SIZE = 2**24
MAX_BYTES_PER_TOKEN = 2**32
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
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ScenarioError(f"{key}: {value!r} is not a size (e.g. 4096, '8GiB', '500MB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def check_positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not (value >= 0 if allow_zero else value > 0):
        raise ScenarioError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_link(prefix: str, read_gbps: float, write_gbps: float, latency_s: float) -> None:
    """A tier's transfer parameters: bandwidths > 0, latency >= 0."""
    check_positive(f"{prefix}.read_gbps", read_gbps)
    check_positive(f"{prefix}.write_gbps", write_gbps)
    check_positive(f"{prefix}.latency_s", latency_s, allow_zero=True)


@dataclass(frozen=True)
class TierCapacity:
    """Capacity in blocks or in bytes (``'80GiB'``, or ``'unlimited'``); at most one of the
    two. Neither means the tier's ``default_bytes`` (``None``: unlimited)."""

    default_bytes = None
    #: What the tier is (the list form of ``tiers`` names it so) and how reports call it.
    kind: ClassVar[str]
    label: ClassVar[str]
    #: ``ttl.scope`` may name the tier: the TTL heuristic then sets its blocks' TTLs.
    ttl_scope: ClassVar[bool] = False
    #: What the tier bills by the GB-hour it holds (:meth:`held_price_gb_hour`), as reports name
    #: the bill (``"DRAM"``); ``None``: nothing. Such a tier gets a ``<tier>_storage_dollars``
    #: column, each block billed to the request that wrote it for as long as it lives.
    bill: ClassVar[str | None] = None
    #: A write of a block the tier holds rewrites it (a counted write that restarts its TTL and
    #: passes its bill to the writer), where other tiers count an access.
    rewrites: ClassVar[bool] = False
    #: vLLM's prefix-cache model (``tiers.gpu.eviction: vllm``) runs with this tier enabled.
    with_vllm: ClassVar[bool] = True
    capacity_blocks: int | None = None
    capacity_bytes: int | str | None = None

    def key_ttl_s(self) -> float | None:
        """Each block's TTL from its write where no heuristic governs the tier (``None``: none)."""
        return None

    def held_price_gb_hour(self) -> float:
        """$ per GB-hour of the bytes the tier holds (0 where :attr:`bill` is ``None``)."""
        return 0.0

    def check_with(self, tiers: Tiers, prefix: str) -> None:
        """What the tier needs of the others while enabled (nothing here)."""

    def transfer_s(self, raw: int, packed: int) -> tuple[float, float, float]:
        """Seconds ``(latency, read, write)`` for a block of ``raw`` bytes (``packed`` once
        compressed): the latency once per request that loads from the tier, then per block
        read and written; 0 here (the GPU's own blocks), a tier's transfers where it has them."""
        return 0.0, 0.0, 0.0

    def check_eviction(self, prefix: str) -> None:
        from simkv.core.policies.eviction import EVICTION_POLICIES
        from simkv.core.registry import check_signature

        name = getattr(self, "eviction", "lru")
        cls = EVICTION_POLICIES.get(name, key=f"{prefix}.eviction")
        if EVICTION_POLICIES.is_plugin(name):
            check_signature(cls, name, f"{prefix}.eviction", "Class(next_use)", 1)

    def check_capacity(self, prefix: str) -> None:
        self.check_eviction(prefix)
        self.check_sizes(prefix)

    def check_sizes(self, prefix: str) -> None:
        """At most one of the two capacities, each a size >= 0 the engines can represent."""
        if self.capacity_blocks is not None and self.capacity_bytes is not None:
            raise ScenarioError(
                f"{prefix}: capacity_blocks={self.capacity_blocks!r} and capacity_bytes="
                f"{self.capacity_bytes!r} both given; keep one (e.g. --set "
                f"{prefix}.capacity_bytes=null)")
        check_positive(f"{prefix}.capacity_blocks", self.capacity_blocks, allow_zero=True)
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
class LinkTier(TierCapacity):
    """A tier behind a link to the GPU: its subclass's ``latency_s``, ``read_gbps`` and
    ``write_gbps`` give a block's transfers, ``latency_s``, ``raw / (read_gbps·10⁹)``,
    ``raw / (write_gbps·10⁹)``, and are checked with its capacity."""

    if TYPE_CHECKING:
        latency_s: float
        read_gbps: float
        write_gbps: float

    def transfer_s(self, raw: int, packed: int) -> tuple[float, float, float]:
        return self.latency_s, raw / (self.read_gbps * GB), raw / (self.write_gbps * GB)

    def check(self, prefix: str) -> None:
        self.check_capacity(prefix)
        check_link(prefix, self.read_gbps, self.write_gbps, self.latency_s)
