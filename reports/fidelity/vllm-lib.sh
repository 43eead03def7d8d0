# Shared by make-vllm.sh and make-batch.sh (sourced, not run): the machine record and one vLLM
# server for the study. Needs SIMKV, OUT, SCENARIO, VLLM_PY, python and run() set by the caller.

# machine_info FILE: the date, host, memory, the two Pythons' versions and the load average.
machine_info() {
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
    "$python" -c 'import sys, numpy, simkv
print("python", sys.version.split()[0], "| numpy", numpy.__version__, "| simkv", simkv.__version__)' 2> /dev/null
    "$VLLM_PY" -c 'import sys, torch, vllm
print("vLLM python", sys.version.split()[0], "| vllm", vllm.__version__, "| torch", torch.__version__)' \
      2> /dev/null
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  } > "$1"
}

# start_vllm [ENGINE ARGS...]: `simkv engine vllm $SCENARIO ARGS` on a free port, in dev mode
# (POST /reset_prefix_cache empties its prefix cache); sets URL once it serves, SERVER, and VDIR
# (vLLM's model config, serve.sh and vllm.log). The caller's EXIT trap calls stop_vllm.
start_vllm() {
  LOG=$(mktemp)
  VDIR=$(mktemp -d)
  local port
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  VLLM_SERVER_DEV_MODE=1 "$SIMKV" engine vllm "$SCENARIO" "$@" --serve --port "$port" -o "$VDIR" \
    --python "$VLLM_PY" > "$LOG" 2>&1 &
  SERVER=$!
  echo "VLLM_SERVER_DEV_MODE=1 $SIMKV engine vllm $SCENARIO ${*:+$* }--serve --port $port -o TMPDIR --python $VLLM_PY &" \
    >> "$OUT/commands.txt"
  URL=
  for _ in $(seq 1500); do
    URL=$(grep -o 'serving at http://[0-9.:]*' "$LOG" | cut -d' ' -f3 || true)
    [ -n "$URL" ] && return 0
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG"; exit 1; }
    sleep 0.2
  done
  echo "vLLM did not start"; cat "$LOG"; exit 1
}

# stop_vllm: SIGTERM (simkv stops vLLM's process group), then remove the temporary files.
stop_vllm() {
  [ -n "${SERVER:-}" ] && { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; }
  rm -rf "${LOG:-}" "${VDIR:-}"
}
