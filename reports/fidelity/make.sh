#!/usr/bin/env bash
# The CPU fidelity study (run from the repository root after `make install`; ~6-8 minutes on 2 cores):
#   bash reports/fidelity/make.sh
# Serves the engine (tiny random-weight model, CPU) for reports/fidelity/cpu-tiny.yaml (GPU + CPU +
# disk tiers, LRU, sized in bytes so every tier evicts), calibrates a table profile against that
# server, simulates the trace with it, replays the same trace through the server at the trace's own
# speed, and compares the two. Every file in $OUT except README.md is this script's output.
# Environment: SIMKV (the CLI), OUT (output folder), PROFILE (reuse this profile: skip calibrate).
set -euo pipefail
SIMKV=${SIMKV:-.venv/bin/simkv}
HERE=reports/fidelity
SCENARIO=$HERE/cpu-tiny.yaml
OUT=${OUT:-$HERE/cpu-tiny}
TRACE=$OUT/trace.parquet
export PYTHONHASHSEED=0          # LMCache keys chunks with Python's hash() without vLLM
mkdir -p "$OUT"
: > "$OUT/commands.txt"
run() { echo "$*" >> "$OUT/commands.txt"; "$@"; }

# The trace: the `agents` workload scaled to the tiny model (block 16; every token count / 16, so
# prompts stay under 2,048 tokens, inside the calibration grid) and run 3x faster (sessions 3x as
# often, think and tool times / 3): 1,000 requests in ~5 min at ~3.3 requests/s.
run "$SIMKV" trace gen -o "$TRACE" --seed 0 --requests 1000 --set block_size=16 --set model=tiny \
  --set system_prompt_tokens=192 --set tool_schema_tokens=96 --set session_context_tokens=256 \
  --set user_tokens=10 --set answer_tokens=22 --set rag_tokens=384 --set batch_doc_tokens=384 \
  --set tool_call_tokens=4 --set tool_result_tokens=96 --set max_context_tokens=2048 \
  --set session_rate_per_s=0.9 --set think_time_s=20 --set tool_latency_s=0.5 \
  --set decode_tokens_per_s=150 > /dev/null
"$SIMKV" trace stats "$TRACE" --json > "$OUT/trace-stats.json"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "memory: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
  python=$(dirname "$(command -v "$SIMKV" || echo "$SIMKV")")/python
  "$python" -c 'import sys, torch, transformers, lmcache, numpy, simkv
print("python", sys.version.split()[0], "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| lmcache", getattr(lmcache, "__version__", "0.5.6"), "| numpy", numpy.__version__, "| simkv", simkv.__version__)' \
    2> /dev/null
  echo "engine server: OMP_NUM_THREADS=1 (one torch thread)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/machine.txt"

# The engine: a server on a free port, stopped (SIGTERM, graceful) when this script exits. torch
# gets one thread (OMP_NUM_THREADS=1): on 2 shared cores the engine's worker, its event loop and
# the replay client then do not fight over them, and timings vary less.
LOG=$(mktemp)
OMP_NUM_THREADS=1 "$SIMKV" engine serve "$SCENARIO" --device cpu --port 0 > "$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -f "$LOG"' EXIT
echo "OMP_NUM_THREADS=1 $SIMKV engine serve $SCENARIO --device cpu --port 0 &" >> "$OUT/commands.txt"
for _ in $(seq 300); do
  URL=$(grep -o 'serving at http://[0-9.:]*' "$LOG" | cut -d' ' -f3 || true)
  [ -n "$URL" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.2
done
[ -n "$URL" ] || { echo "the engine did not start"; cat "$LOG"; exit 1; }

# Calibrate over HTTP on a grid covering the trace's token counts (prompts under 2,048 tokens).
if [ -z "${PROFILE:-}" ]; then
  run "$SIMKV" calibrate --engine "$URL" -o "$OUT/profile.yaml" --overwrite \
    --new-tokens 1,16,64,256,1024,2048 --cached-tokens 0,256,1024,2048 --chunks 1,4,16,64 \
    --repeats 5 --warmup 2
  PROFILE=$OUT/profile.yaml
fi
# The replay starts from empty tiers, as the simulation does.
run curl -sf -X POST "$URL/kv/clear" -H 'content-type: application/json' \
  -d '{"tiers": ["gpu", "cpu", "disk"]}' > /dev/null

SET=(--set "hardware.profile=$(realpath "$PROFILE")")
rm -rf "$OUT/sim" "$OUT/replay"
run "$SIMKV" run "$SCENARIO" -t "$TRACE" "${SET[@]}" -o "$OUT/sim"
# The trace's own speed (1), sized so the server is busy about half the time (README.md): the queue
# does not run away, and the simulator sees the same arrival times (it models the queue).
# The machine's 1-minute load average every 10 s of the replay (other users' work included).
(while sleep 10; do echo "$(date -u +%T) $(cut -d' ' -f1 /proc/loadavg)"; done > "$OUT/loadavg.txt") &
SAMPLER=$!
run "$SIMKV" replay "$SCENARIO" --engine "$URL" -t "$TRACE" "${SET[@]}" -o "$OUT/replay" --speed 1
kill $SAMPLER
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
run "$SIMKV" validate "$OUT/sim" "$OUT/replay" -o "$OUT" -t "$TRACE"
# What each term of the time model changes (same replay, the profile cut down step by step).
python=$(dirname "$(command -v "$SIMKV" || echo "$SIMKV")")/python
run "$python" "$HERE/ablation.py" "$SCENARIO" "$TRACE" "$PROFILE" "$OUT/replay" "$OUT"
rm -rf "$OUT/replay/parts" "$OUT/sim/timeline.parquet"
