"""The scenario's CPU and disk tiers in LMCache's terms: its ``cache_policy``, its configuration
and its capacity unit. simkv's engine and vLLM's LMCache connector are both configured from here,
so both hold the number of chunks the simulator's tiers hold.

LMCache sizes its CPU pool and disk budget in GiB (``max_local_*_size × 1024**3`` bytes) and
rounds every chunk up to :data:`LMCACHE_ALIGN` bytes; ``capacity_blocks: N`` is therefore
``N × lmcache_chunk_bytes(chunk) / 2**30`` GiB (exact: a power-of-two division), and
``capacity_bytes`` is given as it is."""

from __future__ import annotations

from typing import Any

from simkv.core.errors import ScenarioError
from simkv.core.scenario import Scenario, TierCapacity
from simkv.core.scenario.tiers import parse_bytes

GIB = 1024**3
#: LMCache 0.5.6's eviction policies (its ``cache_policy`` names, lower case).
LMCACHE_POLICIES = ("lru", "lfu", "fifo", "mru")
#: LMCache's allocator rounds every object up to this many bytes (``AddressManager.ALIGN_BYTES``);
#: its disk backend charges the same rounded ("physical") size against the disk's capacity.
LMCACHE_ALIGN = 4096
#: LMCache's CPU memory that only stages transfers when the scenario has no CPU tier.
STAGING_BYTES = GIB


def lmcache_chunk_bytes(chunk_bytes: int) -> int:
    """The bytes one chunk takes in LMCache's CPU pool and disk budget: ``chunk_bytes`` rounded up
    to :data:`LMCACHE_ALIGN`."""
    return -(-chunk_bytes // LMCACHE_ALIGN) * LMCACHE_ALIGN


def lmcache_gib(tier: TierCapacity, key: str, chunk_bytes: int) -> float:
    """A tier's capacity in LMCache's unit (GiB): ``capacity_blocks`` chunks of
    :func:`lmcache_chunk_bytes`, or ``capacity_bytes`` (``bytes // lmcache_chunk_bytes`` chunks);
    an unlimited tier is a :class:`ScenarioError` naming ``key``."""
    if tier.capacity_blocks is not None:
        return tier.capacity_blocks * lmcache_chunk_bytes(chunk_bytes) / GIB
    raw = parse_bytes(tier.capacity_bytes if tier.capacity_bytes is not None else tier.default_bytes,
                      f"{key}.capacity_bytes")
    if raw is None:
        raise ScenarioError(f"{key}.capacity_bytes: LMCache needs a finite capacity")
    return raw / GIB


def lmcache_policy(scenario: Scenario, *, remote: bool = False) -> str:
    """LMCache's ``cache_policy`` from the enabled CPU / disk tiers' ``eviction`` (one policy
    serves both backends in LMCache, so they must agree). Every LMCache setup (the engine's,
    vLLM's connector) asks here first, so a tier it does not build is refused here: the remote
    tier unless the caller builds LMCache's remote backend (``remote``: the engine), and then
    only as LMCache's connector can hold it (:func:`lmcache_remote_ttl`)."""
    if scenario.tiers.remote.enabled:
        if not remote:
            raise ScenarioError("tiers.remote.enabled: the vLLM setup does not build LMCache's remote "
                                "backend yet (simkv's engine does: simkv engine serve --remote); disable it")
        lmcache_remote_ttl(scenario)
    tiers = [(f"tiers.{name}", getattr(scenario.tiers, name)) for name in ("cpu", "disk")
             if getattr(scenario.tiers, name).enabled]
    names = {t.eviction for _, t in tiers}
    if len(names) > 1:
        raise ScenarioError("tiers.cpu.eviction and tiers.disk.eviction differ; LMCache applies one "
                            "policy to both backends")
    name = names.pop() if names else "lru"
    if name not in LMCACHE_POLICIES:
        raise ScenarioError(f"{tiers[0][0]}.eviction: {name!r} is not one of LMCache's policies "
                            f"({', '.join(LMCACHE_POLICIES)})")
    return name.upper()


def lmcache_remote_ttl(scenario: Scenario) -> int | None:
    """The remote tier's TTL in LMCache's terms: its Valkey connector writes every key with one
    connector-wide ``valkey_ttl_sec`` (whole seconds, Redis's ``EX``), so ``tiers.remote.ttl_s``
    maps to it, while a TTL per key (the heuristic's, ``ttl.scope: remote`` or ``all``) and a
    capacity (the server's ``maxmemory`` is the server's own setting) have no LMCache setting and
    are refused."""
    remote = scenario.tiers.remote
    if scenario.ttl.heuristic != "none" and scenario.ttl.scope in ("remote", "all"):
        raise ScenarioError(f"ttl.scope: {scenario.ttl.scope!r} gives each remote key its own TTL; "
                            "LMCache's remote connector has one TTL for every key (tiers.remote.ttl_s): "
                            "set ttl.scope: archive or ttl.heuristic: none")
    if remote.capacity_blocks is not None or remote.capacity_bytes is not None:
        raise ScenarioError("tiers.remote.capacity: the remote KV store's memory is the server's own "
                            "setting (maxmemory: simkv engine kvstore --maxmemory); leave it unset")
    if remote.ttl_s is None:
        return None
    if remote.ttl_s != int(remote.ttl_s):
        raise ScenarioError(f"tiers.remote.ttl_s: {remote.ttl_s!r}: LMCache's remote connector sets "
                            "whole seconds (Redis's EX)")
    return int(remote.ttl_s)


def lmcache_config(scenario: Scenario, disk_path: str) -> dict[str, Any]:
    """LMCache's YAML configuration (``LMCACHE_CONFIG_FILE``) for the scenario's CPU and disk tiers
    (what vLLM's LMCache connector reads; simkv's engine builds the same values in-process)."""
    if scenario.block_size is None:
        raise ScenarioError("block_size: LMCache's chunk_size, which must equal the replayed trace's; "
                            "set it (e.g. --set block_size=256)")
    chunk_bytes = scenario.block_size * scenario.model.bytes_per_token
    cpu, disk = scenario.tiers.cpu, scenario.tiers.disk
    config: dict[str, Any] = {"chunk_size": scenario.block_size, "local_cpu": cpu.enabled,
                              "save_unfull_chunk": False, "cache_policy": lmcache_policy(scenario)}
    for name, tier in (("cpu", cpu), ("disk", disk)):
        if tier.enabled:
            config[f"max_local_{name}_size"] = lmcache_gib(tier, f"tiers.{name}", chunk_bytes)
    if not cpu.enabled:  # LMCache's CPU memory then only stages transfers (its default: 5 GB)
        config["max_local_cpu_size"] = STAGING_BYTES / GIB
    if disk.enabled:
        config["local_disk"] = f"file://{disk_path.rstrip('/')}/"
    return config
