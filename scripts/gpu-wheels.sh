#!/usr/bin/env bash
# Prepare the wheel set a GPU machine without network needs to run the engine's `gpu` tests and
# the engine benchmark (Python 3.12, x86-64 manylinux). Run it where the package registries are
# reachable; it writes .whl/ (git-ignored) and prints its size.
#
# The GPU machine is assumed to have Python 3.12 with torch (CUDA), transformers, numpy, pandas,
# pyarrow, matplotlib, typer, rich, numba, httpx, pyyaml, prometheus-client, psutil, py-cpuinfo,
# sortedcontainers, requests, aiofiles and pytest (what the one we use has). Everything else the
# engine imports comes from here, installed with --no-deps by scripts/gpu-test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
PACKAGES=(
  lmcache==0.5.6 aiofile==3.12.3 caio==0.12.10 blake3==1.0.11 cachetools==8.0.1 cufile-python
  importlib_metadata==8.7.1 zipp==4.1.2 msgspec==0.22.0 nvtx==0.2.17
  opentelemetry-api==1.40.0 opentelemetry-sdk==1.40.0 opentelemetry-semantic-conventions==0.61b0
  pyzmq==27.3.0 redis==8.1.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
  fastapi==0.141.1 starlette==1.10.0 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0
  annotated-doc==0.0.7 typing-inspection==0.4.5 typing_extensions==4.16.0 uvicorn==0.54.0
  simpy==4.1.2 zstandard
)
for pkg in "${PACKAGES[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$OUT" "$pkg"
done
du -sh "$OUT"
