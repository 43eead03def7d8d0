#!/usr/bin/env bash
# The batching fidelity study against vLLM (run from the repository root after `make install` and
# `make install-vllm`; ~55 minutes on 2 cores):
#   bash reports/fidelity/make-batch.sh
# Serves vLLM (CPU build, the cpu-512 random-weight model) for reports/fidelity/cpu-batch.yaml:
# continuous batching (16 sequences, 512 tokens a step, chunked prefill), vLLM's prefix cache of
# 2,048 blocks of 32 tokens modelled exactly (`eviction: vllm`). Calibrates a profile against it
# (the prefill grid and the step times, `--steps`), measures its capacity (the trace replayed
# saturated: requests / makespan), then replays the trace at ~30%, 60% and 85% of that capacity
# (the arrival times scaled: loadNN/trace.parquet), REPEATS times each, every request generating
# its trace's output tokens, the prefix cache emptied before each replay. With the simulator's
# batching model (simkv.model.batching) installed, it also simulates each load with the calibrated
# profile and compares each repeat with the simulation (simkv validate); otherwise that step is
# skipped and said so in $OUT/sim-skipped.txt. Every file in $OUT except README.md is this
# script's output.
# Environment: SIMKV (the CLI), OUT (output folder), PROFILE (reuse this profile: skip calibrate),
# SIMKV_VLLM_PYTHON (the Python that has vLLM; default .venv-vllm), REPEATS (default 3),
# LOADS (fractions of capacity; default 0.3,0.6,0.85), SIM_ONLY=1 (only the simulation and
# validation of an earlier run's replays in $OUT, with $OUT/profile.yaml).
set -euo pipefail
SIMKV=${SIMKV:-.venv/bin/simkv}
HERE=reports/fidelity
SCENARIO=$HERE/cpu-batch.yaml
OUT=${OUT:-$HERE/cpu-batch}
TRACE=$OUT/trace.parquet
REPEATS=${REPEATS:-3}
LOADS=${LOADS:-0.3,0.6,0.85}
mkdir -p "$OUT"
[ "${SIM_ONLY:-}" = 1 ] || : > "$OUT/commands.txt"
run() { echo "$*" >> "$OUT/commands.txt"; "$@"; }
python=$(dirname "$(command -v "$SIMKV" || echo "$SIMKV")")/python
. "$HERE/vllm-lib.sh"
tools() { run "$python" "$HERE/batch_tools.py" "$@"; }

# The simulation of each load with the calibrated profile, compared with each repeat. The replays
# ran the scenario without the profile (it only times the simulation): --ignore-scenario.
simulate() {
  NAMES=$("$python" -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["loads"]))' \
    "$OUT/loads.json")
  PROFILE=${PROFILE:-$OUT/profile.yaml}
  if "$python" -c 'import simkv.model.batching' 2> /dev/null; then
    rm -f "$OUT/sim-skipped.txt"
    for name in $NAMES; do
      rm -rf "$OUT/$name/sim"
      run "$SIMKV" run "$SCENARIO" -t "$OUT/$name/trace.parquet" --set "hardware.profile=$(realpath "$PROFILE")" \
        -o "$OUT/$name/sim"
      rm -f "$OUT/$name/sim/timeline.parquet"
      for rep in $(seq "$REPEATS"); do
        run "$SIMKV" validate "$OUT/$name/sim" "$OUT/$name/rep$rep" -o "$OUT/$name/fidelity-rep$rep" \
          -t "$OUT/$name/trace.parquet" --ignore-scenario
      done
    done
  else
    echo "simulation skipped: this simkv has no batching scheduler (simkv.model.batching) for" \
      "hardware.scheduler: vllm; rerun with SIM_ONLY=1 once it has" | tee "$OUT/sim-skipped.txt"
  fi
  # where each replay's TTFT went by vLLM's own timings (kept in replay.json), beside the simulation's
  "$python" "$HERE/batch_split.py" "$OUT" > "$OUT/split.txt"
}
if [ "${SIM_ONLY:-}" = 1 ]; then
  simulate
  exit
fi

# The trace: make-vllm.sh's `agents` workload (blocks of 64 tokens, prompts under 1,792 tokens),
# with longer outputs (tool calls ~16 tokens, answers ~32): 1,000 requests, each decoding its
# output_tokens in the batch beside the others' prefills.
run "$SIMKV" trace gen -o "$TRACE" --seed 0 --requests 1000 --set block_size=64 --set model=tiny \
  --set system_prompt_tokens=192 --set tool_schema_tokens=96 --set session_context_tokens=256 \
  --set user_tokens=10 --set answer_tokens=32 --set rag_tokens=384 --set batch_doc_tokens=384 \
  --set tool_call_tokens=16 --set tool_result_tokens=96 --set max_context_tokens=1792 \
  --set session_rate_per_s=1.5 --set think_time_s=7 --set tool_latency_s=0.2 \
  --set decode_tokens_per_s=150 > /dev/null
"$SIMKV" trace stats "$TRACE" --json > "$OUT/trace-stats.json"

VLLM_PY=${SIMKV_VLLM_PYTHON:-.venv-vllm/bin/python}
machine_info "$OUT/machine.txt"

# vLLM on a free port (vllm-lib.sh), stopped when this script exits; the load sampler too.
SAMPLER=
trap '[ -n "$SAMPLER" ] && kill $SAMPLER 2>/dev/null; stop_vllm' EXIT
start_vllm --model cpu-512
cp "$VDIR/serve.sh" "$OUT/serve.sh"
# The engine's speed now (engine_drift.py: two reference steps by vLLM's clock, three samples back
# to back), into drift.tsv: before and after the calibration (both tagged `calibrated`), before
# every replay and after the last, so each replay's simulation can be read against the engine's
# speed around it (batch_drift.py).
drift() { run "$python" "$HERE/engine_drift.py" "$URL" --tag "$1" --count 3 >> "$OUT/drift.tsv"; }
printf 'utc\ttag\tprefill512_ms\tdecode1_ms\n' > "$OUT/drift.tsv"
drift calibrated

# Calibrate over HTTP: the prefill grid (the table profile) and the step times (--steps: one
# prefill of up to 512 tokens alone per step, after 0, 256 or 704 cached tokens; 1-16 sequences
# decoding prompts of 64-1,536 tokens; the same prefills again beside 4, 8 and 15 decoding
# streams, the mixed steps, which also fit the latency outside the engine per stream).
if [ -z "${PROFILE:-}" ]; then
  COLUMNS=200 run "$SIMKV" calibrate --engine "$URL" -o "$OUT/profile.yaml" --overwrite --block-size 64 \
    --new-tokens 1,64,256,1024 --cached-tokens 0,256,1024 --repeats 3 --warmup 1 \
    --steps --step-prefill 1,16,64,128,256,512 --step-cached 0,256,704 \
    --step-decode 1,2,4,8,16 --step-lengths 64,512,1536 --step-mixed 4,8,15 \
    > "$OUT/calibrate.txt"
  PROFILE=$OUT/profile.yaml
fi

# The machine's 1-minute load average every 10 s of the replays.
(while sleep 10; do echo "$(date -u +%T) $(cut -d' ' -f1 /proc/loadavg)"; done > "$OUT/loadavg.txt") &
SAMPLER=$!
reset() { run curl -sf -X POST "$URL/reset_prefix_cache?reset_external=true" > /dev/null; }
drift calibrated
# One replay into $1 of trace $2 at speed $3 (concurrency far above vLLM's 16 sequences: no
# client-side queue), its wall time in runs.tsv, its client timings in client.parquet.
replay() {
  local dir=$1 trace=$2 speed=$3 concurrency=$4 t0
  drift "${dir#"$OUT"/}"
  reset
  rm -rf "$dir"
  t0=$(date +%s.%N)
  run "$SIMKV" replay "$SCENARIO" --engine "$URL" -t "$trace" -o "$dir" --speed "$speed" \
    --concurrency "$concurrency" --max-tokens trace --json > /dev/null \
    || echo "$dir: simkv replay exited $? (failed requests: $dir/requests.parquet, error)" >> "$OUT/errors.txt"
  printf '%s\t%s\t%.1f\t%s\n' "$dir" "$speed" "$(echo "$(date +%s.%N) - $t0" | bc)" "$(date -u +%T)" \
    >> "$OUT/runs.tsv"
  tools client "$dir"
  rm -rf "$dir/parts"
}
printf 'run\tspeed\twall_s\tended_utc\n' > "$OUT/runs.tsv"

# Capacity: the trace sent as fast as 64 requests in flight allow (vLLM runs 16, queues the rest).
replay "$OUT/capacity" "$TRACE" max 64
tools loads "$TRACE" "$OUT/capacity" "$OUT/loads.json" "$LOADS"
# Each load's trace: the arrivals scaled so the offered rate is that fraction of capacity.
NAMES=$("$python" -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["loads"]))' "$OUT/loads.json")
for name in $NAMES; do
  speed=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["loads"][sys.argv[2]]["speed"])' \
    "$OUT/loads.json" "$name")
  mkdir -p "$OUT/$name"
  tools scale "$TRACE" "$speed" "$OUT/$name/trace.parquet"
done
# The repeats outermost: a run cut short still has every load.
for rep in $(seq "$REPEATS"); do
  for name in $NAMES; do
    replay "$OUT/$name/rep$rep" "$OUT/$name/trace.parquet" 1 256
  done
done
drift end
kill $SAMPLER
SAMPLER=
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
simulate
