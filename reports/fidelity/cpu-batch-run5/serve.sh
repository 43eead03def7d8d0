#!/usr/bin/env bash
# vLLM + LMCache for reports/fidelity/cpu-batch.yaml (simkv engine vllm; docs/vllm.md)
exec env PYTHONHASHSEED=0 VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model /tmp/tmp.HB9M8sFslt/model/cpu-512 --load-format dummy --skip-tokenizer-init --enable-prompt-tokens-details --enable-prefix-caching --block-size 32 --num-gpu-blocks-override 2048 --max-model-len 4096 --enforce-eager --max-num-seqs 16 --max-num-batched-tokens 512 --enable-chunked-prefill --host 127.0.0.1 --port 56253
