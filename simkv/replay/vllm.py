"""The vLLM + LMCache counterpart of a scenario: LMCache's configuration file and the exact
``vllm serve`` command, so ``simkv replay`` can drive vLLM with the tiers the simulator models.

What maps (docs/vllm.md): ``block_size`` → LMCache ``chunk_size``; ``tiers.cpu`` →
``local_cpu`` / ``max_local_cpu_size`` (GB, LMCache's unit is GiB: ``bytes / 2**30``);
``tiers.disk`` → ``local_disk`` / ``max_local_disk_size``; the CPU/disk ``eviction`` →
``cache_policy``; ``tiers.gpu`` (``eviction: vllm``) → vLLM's own prefix cache of
``--num-gpu-blocks-override N`` blocks of ``--block-size tiers.gpu.block_tokens`` tokens (see
:func:`gpu_blocks`: the pool the simulator's model of vLLM uses). What cannot map is refused,
every key at once: the archive (vLLM has none), a GPU eviction other than ``vllm``,
``load_policy: if_faster``, more than one GPU, a step budget (``hardware.max_num_batched_tokens``)
below the batch (``max_num_seqs``) with ``hardware.scheduler: vllm``, a trace block that is not a
whole number of vLLM blocks, CPU and disk evictions that differ (LMCache applies one policy)."""

from __future__ import annotations

import json
import shlex

from simkv.core.errors import ScenarioError
from simkv.core.lmcache import lmcache_config
from simkv.core.scenario import Scenario

#: vLLM's KV connector for LMCache: vLLM's LMCacheConnectorV1 with a CPU copy path
#: (``simkv_engine.vllm_connector``; LMCache has none for vLLM's CPU build), LMCache's own on CUDA.
LMCACHE_CONNECTOR = {"kv_connector": "SimkvLMCacheConnectorV1",
                     "kv_connector_module_path": "simkv_engine.vllm_connector", "kv_role": "kv_both"}


def gpu_blocks(scenario: Scenario) -> int | None:
    """vLLM's ``--num-gpu-blocks-override`` (``None``: unlimited, vLLM sizes its own pool): the
    number the simulator's vLLM model uses (:meth:`~simkv.core.scenario.tiers.GPUTier.pool_blocks`)."""
    blocks = scenario.tiers.gpu.pool_blocks(scenario.model.bytes_per_token, scenario.block_size or 1)
    return None if blocks is None else max(1, blocks)


def unsupported(scenario: Scenario) -> list[str]:
    """Every setting of ``scenario`` that vLLM + LMCache cannot reproduce, one line each (empty:
    all map)."""
    problems = []
    sc = scenario
    if sc.tiers.archive.enabled:
        problems.append("tiers.archive.enabled: vLLM has no archive tier (--set tiers.archive.enabled=false)")
    if sc.tiers.gpu.eviction != "vllm":
        problems.append(f"tiers.gpu.eviction: {sc.tiers.gpu.eviction!r}; vLLM's prefix cache is the "
                        "'vllm' policy (--set tiers.gpu.eviction=vllm)")
    if sc.load_policy != "always":
        problems.append(f"load_policy: {sc.load_policy!r}; LMCache's connector always loads what it "
                        "holds (--set load_policy=always)")
    hw = sc.hardware
    if hw.scheduler == "vllm" and hw.max_num_batched_tokens < hw.max_num_seqs:
        problems.append(f"hardware.max_num_batched_tokens: {hw.max_num_batched_tokens} is below "
                        f"hardware.max_num_seqs ({hw.max_num_seqs}); vLLM refuses a step budget smaller than "
                        "its batch (raise max_num_batched_tokens or lower max_num_seqs)")
    if sc.hardware.gpus != 1:
        problems.append(f"hardware.gpus: {sc.hardware.gpus}; one vLLM engine serves one GPU's queue "
                        "(--set hardware.gpus=1)")
    b = sc.tiers.gpu.block_tokens
    if sc.block_size is not None and sc.block_size % b:
        problems.append(f"block_size: {sc.block_size} is not a multiple of vLLM's block "
                        f"(tiers.gpu.block_tokens: {b})")
    if sc.tiers.cpu.enabled or sc.tiers.disk.enabled:
        try:
            lmcache_config(sc, "/")
        except ScenarioError as exc:
            problems.append(str(exc))
    return problems


def check_scenario(scenario: Scenario) -> None:
    """A :class:`ScenarioError` naming every setting vLLM cannot run (:func:`unsupported`)."""
    problems = unsupported(scenario)
    if problems:
        raise ScenarioError("vLLM cannot run this scenario: " + "; ".join(problems))


def vllm_command(scenario: Scenario, model: str, *, python: str = "python", host: str = "127.0.0.1",
                 port: int = 8000, dummy_weights: bool = True, eager: bool = False,
                 max_model_len: int | None = None,
                 connector: dict[str, str] | None = None) -> list[str]:
    """The argv that starts vLLM's OpenAI server for the scenario: the GPU tier as vLLM's prefix
    cache (``--block-size``, ``--num-gpu-blocks-override``), per-request cached-token details,
    the scheduler (:func:`scheduler_args`), and LMCache's connector (``connector``,
    default :data:`LMCACHE_CONNECTOR`) when a CPU or disk tier is enabled. Every setting that cannot map is
    named in one :class:`ScenarioError`."""
    check_scenario(scenario)
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    if dummy_weights:
        argv += ["--load-format", "dummy"]
    argv += ["--skip-tokenizer-init", "--enable-prompt-tokens-details", "--enable-prefix-caching",
             "--block-size", str(scenario.tiers.gpu.block_tokens)]
    if scenario.tiers.cpu.enabled or scenario.tiers.disk.enabled:
        argv += ["--kv-transfer-config", json.dumps(connector or LMCACHE_CONNECTOR, separators=(",", ":"))]
    blocks = gpu_blocks(scenario)
    if blocks is not None:
        argv += ["--num-gpu-blocks-override", str(blocks)]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if eager:
        argv += ["--enforce-eager"]
    argv += [*scheduler_args(scenario), "--host", host, "--port", str(port)]
    return argv


def scheduler_args(scenario: Scenario) -> list[str]:
    """vLLM's scheduler as ``hardware.scheduler``: ``fifo`` one request at a time, whole prompts
    (``--max-num-seqs 1 --no-enable-chunked-prefill``, the simulator's FIFO queue); ``vllm``
    continuous batching of up to ``max_num_seqs`` sequences and ``max_num_batched_tokens``
    tokens a step, long prompts prefilled in chunks (``--enable-chunked-prefill``)."""
    hw = scenario.hardware
    if hw.scheduler == "fifo":
        return ["--max-num-seqs", "1", "--no-enable-chunked-prefill"]
    return ["--max-num-seqs", str(hw.max_num_seqs), "--max-num-batched-tokens",
            str(hw.max_num_batched_tokens), "--enable-chunked-prefill"]


def shell_line(argv: list[str], env: dict[str, str]) -> str:
    """The command as one shell line, with its environment."""
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + " ".join(
        shlex.quote(a) for a in argv)
