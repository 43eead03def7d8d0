#!/usr/bin/env bash
# On a GPU machine without network: install the wheel set from scripts/gpu-wheels.sh (.whl/) into
# /tmp/site, then run the engine's `gpu` tests and the engine benchmark on the GPU. Results go to
# $OUT (or ./gpu-results). Usage: bash scripts/gpu-test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-gpu-results}
mkdir -p "$RESULTS"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:$PWD/engine:/tmp/site" PYTHONHASHSEED=0 LMCACHE_TRACK_USAGE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$RESULTS/gpu.txt"
python3 -c "import torch, transformers, lmcache; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$RESULTS/gpu.txt"
set -o pipefail
python3 -m pytest -q -m gpu -p no:cacheprovider "$@" tests 2>&1 | tee "$RESULTS/gpu-tests.log"
if [ -f bench/bench_engine.py ]; then
  python3 bench/bench_engine.py --device cuda --json "$RESULTS/bench-engine.json" 2>&1 | tee "$RESULTS/bench-engine.log"
fi
