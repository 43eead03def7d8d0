#!/usr/bin/env bash
# Regenerate the README's worked TTL study (run from the repository root after `make install`):
#   bash reports/examples/ttl-study/make.sh
# Every file in this folder except this script is its output.
set -euo pipefail
SIMKV=${SIMKV:-.venv/bin/simkv}
EX=reports/examples/ttl-study
TRACE=traces/long-horizon.parquet
SCENARIO=scenarios/long-horizon-archive.yaml
GRID=(--grid ttl.params.alpha=0,1,4 --grid ttl.params.base_ttl=60,600,3600,14400,86400)

"$SIMKV" trace stats "$TRACE" --json > "$EX/stats.json"
"$SIMKV" curve ttl --trace "$TRACE" --scenario "$SCENARIO" -o "$EX/curve"
for class in standard standard_ia; do
  dir=$EX/${class//_/-}
  "$SIMKV" sweep "$SCENARIO" "${GRID[@]}" --set "tiers.archive.storage_class=$class" \
    --objective cost_saved -o "$dir" --overwrite
  "$SIMKV" report "$dir"
  rm -rf "$dir/cells" "$dir/timing.json"  # per-cell records and wall times: not worth committing
done
rm -rf "$EX/winner"
"$SIMKV" run "$EX/standard/winner.yaml" -o "$EX/winner"
"$SIMKV" report "$EX/winner"
rm -f "$EX/winner/requests.parquet" "$EX/winner/timeline.parquet"  # 1 MB of rows; rerun to get them
