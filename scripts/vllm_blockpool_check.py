"""Replay requests through vLLM's own scheduler-side KV cache manager (no model), one at a time,
and print each request's prefix-cache hit tokens: the reference ``tiers.gpu.eviction: vllm``
is held to (tests/test_vllm_prefix_cache.py).

Two steps, because vLLM and simkv live in different virtual environments:

    python scripts/vllm_blockpool_check.py export TRACE REQUESTS.jsonl [--limit N]
        (simkv's Python) writes each request's deterministic prompt (simkv.traces.prompts, as
        the replay sends it) and output tokens, one JSON object a line;
    .venv-vllm/bin/python scripts/vllm_blockpool_check.py replay REQUESTS.jsonl \\
            --block-tokens 16 --num-gpu-blocks N
        (vLLM's Python) runs them through ``KVCacheManager`` (vLLM's BlockPool, hash map and
        free queue, sha256 block hashes) and prints ``{"row", "request_id", "cached_tokens"}``
        per request, ``cached_tokens`` being the ``num_computed_tokens`` vLLM reports.

Each request goes as vLLM's scheduler takes it at concurrency 1: ``get_computed_blocks``,
``allocate_slots`` for the prompt, then one ``allocate_slots`` per decode step (the previous
sampled token), ``output_tokens`` tokens in all (at least 1), then ``free``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VOCAB = 32000  # the ids the replay draws from (any vocabulary gives the same hits)


def export(trace_path: str, out: str, limit: int | None) -> None:
    from simkv.traces.prompts import PromptBuilder
    from simkv.traces.schema import read_trace
    from simkv.traces.slicing import TraceSlice, slice_trace

    trace = read_trace(trace_path)
    if limit is not None:
        trace = slice_trace(trace, TraceSlice(limit=limit))
    prompts = PromptBuilder(trace, VOCAB)
    ids = trace.table.column("request_id").to_pylist()
    with Path(out).open("w") as f:
        for r in range(len(trace)):
            f.write(json.dumps({"request_id": ids[r], "prompt": prompts.tokens(r).tolist(),
                                "output_tokens": int(trace.output_tokens[r])}) + "\n")


def replay(requests: str, block_tokens: int, num_gpu_blocks: int) -> None:
    import torch
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.request import Request, RequestStatus

    init_none_hash(sha256)
    spec = FullAttentionSpec(block_size=block_tokens, num_kv_heads=1, head_size=8, dtype=torch.float16)
    config = KVCacheConfig(num_blocks=num_gpu_blocks, kv_cache_tensors=[],
                           kv_cache_groups=[KVCacheGroupSpec(["layer.0"], spec)])
    max_len = 1 << 30
    manager = KVCacheManager(config, max_model_len=max_len, scheduler_block_size=block_tokens,
                             hash_block_size=block_tokens, enable_caching=True)
    hasher = get_request_block_hasher(block_tokens, sha256)
    with Path(requests).open() as f:
        for row, line in enumerate(f):
            item = json.loads(line)
            outputs = max(1, item["output_tokens"])
            req = Request(f"{row}", item["prompt"], SamplingParams(max_tokens=outputs), None,
                          block_hasher=hasher)
            blocks, hit, _ = manager.get_computed_blocks(req)
            n = req.num_tokens
            if manager.allocate_slots(req, n - hit, hit, blocks) is None:
                sys.exit(f"error: row {row}: vLLM's pool of {num_gpu_blocks} blocks cannot hold the prompt")
            req.status = RequestStatus.RUNNING
            req.num_computed_tokens = n
            for step in range(1, outputs):  # the sampled token of the previous step is computed
                req.append_output_token_ids(-1 - row * 65536 - step)  # unique to the request
                if manager.allocate_slots(req, 1) is None:
                    sys.exit(f"error: row {row}: vLLM's pool of {num_gpu_blocks} blocks cannot hold "
                             f"decode step {step}")
                req.num_computed_tokens += 1
            req.status = RequestStatus.FINISHED_LENGTH_CAPPED
            manager.free(req)
            print(json.dumps({"row": row, "request_id": item["request_id"], "cached_tokens": hit}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("trace")
    e.add_argument("out")
    e.add_argument("--limit", type=int)
    r = sub.add_parser("replay")
    r.add_argument("requests")
    r.add_argument("--block-tokens", type=int, default=16)
    r.add_argument("--num-gpu-blocks", type=int, required=True)
    a = p.parse_args()
    if a.cmd == "export":
        export(a.trace, a.out, a.limit)
    else:
        replay(a.requests, a.block_tokens, a.num_gpu_blocks)


if __name__ == "__main__":
    main()
