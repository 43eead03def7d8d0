#!/usr/bin/env bash
# The CPU fidelity study against vLLM (run from the repository root after `make install` and
# `make install-vllm`; ~6 minutes on 2 cores):
#   bash reports/fidelity/make-vllm.sh
# Serves vLLM (CPU build, tiny random-weight model) for reports/fidelity/cpu-vllm.yaml (vLLM's prefix
# cache only, 256 blocks of 32 tokens, modelled exactly: `eviction: vllm`), calibrates a table
# profile against that server (the prefill grid, as client TTFTs), simulates the trace with it,
# replays the same trace through vLLM at the trace's own speed, one request at a time, each
# generating its trace's output tokens, and compares the two. Every file in $OUT except README.md is
# this script's output.
# Environment: SIMKV (the CLI), OUT (output folder), PROFILE (reuse this profile: skip calibrate),
# SIMKV_VLLM_PYTHON (the Python that has vLLM; default .venv-vllm).
set -euo pipefail
SIMKV=${SIMKV:-.venv/bin/simkv}
HERE=reports/fidelity
SCENARIO=$HERE/cpu-vllm.yaml
OUT=${OUT:-$HERE/cpu-vllm}
TRACE=$OUT/trace.parquet
mkdir -p "$OUT"
: > "$OUT/commands.txt"
run() { echo "$*" >> "$OUT/commands.txt"; "$@"; }
python=$(dirname "$(command -v "$SIMKV" || echo "$SIMKV")")/python
. "$HERE/vllm-lib.sh"

# The trace: make.sh's `agents` workload with blocks of 64 tokens (vLLM's CPU attention wants
# multiples of 32) and prompts under 1,792 tokens (inside the calibration grid), sessions ~5x as
# often as make.sh's: 1,000 requests in ~3.5 min at ~5 requests/s, 16 output tokens each on
# average, so vLLM at --max-num-seqs 1 is busy ~40% of the time (README.md).
run "$SIMKV" trace gen -o "$TRACE" --seed 0 --requests 1000 --set block_size=64 --set model=tiny \
  --set system_prompt_tokens=192 --set tool_schema_tokens=96 --set session_context_tokens=256 \
  --set user_tokens=10 --set answer_tokens=22 --set rag_tokens=384 --set batch_doc_tokens=384 \
  --set tool_call_tokens=4 --set tool_result_tokens=96 --set max_context_tokens=1792 \
  --set session_rate_per_s=1.5 --set think_time_s=7 --set tool_latency_s=0.2 \
  --set decode_tokens_per_s=150 > /dev/null
"$SIMKV" trace stats "$TRACE" --json > "$OUT/trace-stats.json"

VLLM_PY=${SIMKV_VLLM_PYTHON:-.venv-vllm/bin/python}
machine_info "$OUT/machine.txt"

# vLLM on a free port (vllm-lib.sh), stopped when this script exits.
trap stop_vllm EXIT
start_vllm

# Calibrate over HTTP on a grid covering the trace's token counts (prompts under 1,792 tokens).
if [ -z "${PROFILE:-}" ]; then
  run "$SIMKV" calibrate --engine "$URL" -o "$OUT/profile.yaml" --overwrite --block-size 64 \
    --new-tokens 1,64,256,1024,2048 --cached-tokens 0,256,1024,1984 --repeats 5 --warmup 2
  PROFILE=$OUT/profile.yaml
fi
# The replay starts from an empty prefix cache, as the simulation does.
run curl -sf -X POST "$URL/reset_prefix_cache?reset_external=true" > /dev/null

SET=(--set "hardware.profile=$(realpath "$PROFILE")")
rm -rf "$OUT/sim" "$OUT/replay"
run "$SIMKV" run "$SCENARIO" -t "$TRACE" "${SET[@]}" -o "$OUT/sim"
# The trace's own speed, one request at a time (vLLM runs --max-num-seqs 1), each generating its
# trace's output tokens. The machine's 1-minute load average every 10 s of the replay.
(while sleep 10; do echo "$(date -u +%T) $(cut -d' ' -f1 /proc/loadavg)"; done > "$OUT/loadavg.txt") &
SAMPLER=$!
run "$SIMKV" replay "$SCENARIO" --engine "$URL" -t "$TRACE" "${SET[@]}" -o "$OUT/replay" --speed 1 \
  --concurrency 1 --max-tokens trace
kill $SAMPLER
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
run "$SIMKV" validate "$OUT/sim" "$OUT/replay" -o "$OUT" -t "$TRACE"
# The queue the replay held at the client (one request in flight), beside validate's figures.
run "$python" "$HERE/send_lag.py" "$OUT/sim" "$OUT/replay" "$OUT/send_lag.json"
rm -rf "$OUT/replay/parts" "$OUT/sim/timeline.parquet"
