#!/usr/bin/env bash
# Remote KV store vs S3 archive vs both, on the long-horizon workload: cost saved against TTL.
# Run from the repository root after `make install`:
#   bash reports/examples/remote-vs-archive/make.sh
# Every file in this folder except this script and compare.py is its output.
set -euo pipefail
SIMKV=${SIMKV:-.venv/bin/simkv}
PY=${PY:-.venv/bin/python}
EX=reports/examples/remote-vs-archive
SCENARIO=scenarios/long-horizon-archive.yaml
TTLS=60,300,900,3600,14400,86400
# One static TTL per cell, fixed (not sliding), so "TTL" means the same thing in every setup.
STATIC=(--set ttl.heuristic=static --set 'ttl.params={}' --set ttl.mode=fixed)
REMOTE=(--set tiers.remote.enabled=true)

sweep() {   # NAME ARGS...: one sweep, its report, no per-cell records
  local name=$1; shift
  "$SIMKV" sweep "$SCENARIO" "${STATIC[@]}" "$@" --objective cost_saved -o "$EX/$name" --overwrite
  "$SIMKV" report "$EX/$name"
  rm -rf "$EX/$name/cells" "$EX/$name/timing.json"
}
# the archive alone (the TTL of its objects), the remote store alone (the TTL of its keys), both
# with one TTL for keys and objects, and both with a day on the archive and the keys' TTL swept
sweep archive --grid ttl.params.ttl=$TTLS
sweep remote "${REMOTE[@]}" --set tiers.archive.enabled=false --set ttl.scope=remote --grid ttl.params.ttl=$TTLS
sweep both "${REMOTE[@]}" --set ttl.scope=remote --grid ttl.params.ttl=$TTLS
sweep both-archive-1d "${REMOTE[@]}" --set ttl.params.ttl=86400 --grid tiers.remote.ttl_s=$TTLS
"$PY" "$EX/compare.py" "$EX"
