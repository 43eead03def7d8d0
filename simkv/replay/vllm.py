"""The vLLM + LMCache counterpart of a scenario: LMCache's configuration file and the exact
``vllm serve`` command, so ``simkv replay`` can drive vLLM with the tiers the simulator models.

What maps (docs/vllm.md): ``block_size`` → LMCache ``chunk_size``; ``tiers.cpu`` →
``local_cpu`` / ``max_local_cpu_size`` (GB, LMCache's unit is GiB: ``bytes / 2**30``);
``tiers.disk`` → ``local_disk`` / ``max_local_disk_size``; the CPU/disk ``eviction`` →
``cache_policy``; ``tiers.gpu`` → vLLM's own prefix cache of ``--num-gpu-blocks-override N``
blocks of ``--block-size`` (``tiers.gpu.block_tokens``) tokens, ``N = capacity_bytes //
(block_tokens × bytes per token)``, or ``capacity_blocks`` itself with ``eviction: vllm``
(:meth:`~simkv.scenario.GPUTier.pool_blocks`; the scenario's ``model`` gives the bytes per token).
What cannot map is refused naming the key:
the archive (vLLM has none), a GPU eviction other than ``vllm`` or ``lru``,
``load_policy: if_faster``, CPU and disk evictions that differ (LMCache applies one policy)."""

from __future__ import annotations

import shlex
from dataclasses import replace
from typing import Any

from simkv.errors import ScenarioError
from simkv.scenario import Scenario, TierCapacity
from simkv.scenario.tiers import parse_bytes

GIB = 1024**3
#: LMCache 0.5.6's eviction policies (its ``cache_policy`` names, lower case).
LMCACHE_POLICIES = ("lru", "lfu", "fifo", "mru")


def _bytes(tier: TierCapacity, key: str, bytes_per_block: int) -> int | None:
    if tier.capacity_blocks is not None:
        return tier.capacity_blocks * bytes_per_block
    raw = tier.capacity_bytes if tier.capacity_bytes is not None else tier.default_bytes
    return parse_bytes(raw, f"{key}.capacity_bytes")


def lmcache_policy(scenario: Scenario) -> str:
    """LMCache's ``cache_policy`` from the enabled CPU / disk tiers' ``eviction`` (one policy
    serves both backends in LMCache, so they must agree); what simkv's engine and vLLM's LMCache
    connector are configured with."""
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


def lmcache_config(scenario: Scenario, disk_path: str) -> dict[str, Any]:
    """LMCache's YAML configuration (``LMCACHE_CONFIG_FILE``) for the scenario's CPU and disk tiers."""
    if scenario.block_size is None:
        raise ScenarioError("block_size: LMCache's chunk_size, which must equal the replayed trace's; "
                            "set it (e.g. --set block_size=256)")
    block_bytes = scenario.block_size * scenario.model.bytes_per_token
    cpu, disk = scenario.tiers.cpu, scenario.tiers.disk
    config: dict[str, Any] = {"chunk_size": scenario.block_size, "local_cpu": cpu.enabled,
                              "save_unfull_chunk": False, "cache_policy": lmcache_policy(scenario)}
    for name, tier in (("cpu", cpu), ("disk", disk)):
        if not tier.enabled:
            continue
        size = _bytes(tier, f"tiers.{name}", block_bytes)
        if size is None:
            raise ScenarioError(f"tiers.{name}.capacity_bytes: LMCache needs a finite capacity")
        config[f"max_local_{name}_size"] = round(size / GIB, 3)
    if disk.enabled:
        config["local_disk"] = f"file://{disk_path.rstrip('/')}/"
    return config


def vllm_command(scenario: Scenario, model: str, *, host: str = "127.0.0.1", port: int = 8000,
                 vllm_block: int | None = None, dummy_weights: bool = True) -> list[str]:
    """The ``vllm serve`` argv for the scenario (LMCache's connector, per-request cached-token
    details, the GPU tier as vLLM's prefix cache, one request at a time as the simulator's queue).
    ``vllm_block``: vLLM's ``--block-size`` (default ``tiers.gpu.block_tokens``); the pool is
    :meth:`~simkv.scenario.GPUTier.pool_blocks`, the number the simulator's vLLM model uses."""
    if scenario.tiers.archive.enabled:
        raise ScenarioError("tiers.archive.enabled: vLLM has no archive tier; replay a scenario "
                            "without one against vLLM (--set tiers.archive.enabled=false)")
    gpu = scenario.tiers.gpu
    if gpu.eviction not in ("vllm", "lru"):
        raise ScenarioError(f"tiers.gpu.eviction: {gpu.eviction!r}; vLLM's prefix cache is what "
                            "tiers.gpu.eviction: vllm models (lru approximates it)")
    if scenario.load_policy != "always":
        raise ScenarioError(f"load_policy: {scenario.load_policy!r}; LMCache's connector always loads "
                            "what it holds")
    argv = ["vllm", "serve", model]
    if dummy_weights:
        argv += ["--load-format", "dummy"]
    argv += ["--skip-tokenizer-init",
             "--kv-transfer-config", '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}',
             "--enable-prompt-tokens-details", "--enable-prefix-caching", "--block-size"]
    if vllm_block is not None:
        gpu = replace(gpu, block_tokens=vllm_block)
    argv.append(str(gpu.block_tokens))
    blocks = gpu.pool_blocks(scenario.model.bytes_per_token, scenario.block_size or 1)
    if blocks is not None:
        argv += ["--num-gpu-blocks-override", str(max(1, blocks))]
    argv += ["--max-num-seqs", "1", "--no-enable-chunked-prefill", "--host", host, "--port", str(port)]
    return argv


def shell_line(argv: list[str], config_file: str) -> str:
    """The command as one shell line, with LMCache's environment."""
    return (f"PYTHONHASHSEED=0 LMCACHE_CONFIG_FILE={shlex.quote(config_file)} "
            + " ".join(shlex.quote(a) for a in argv))
