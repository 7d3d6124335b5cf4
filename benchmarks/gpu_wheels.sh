#!/usr/bin/env bash
# Wheels the lent GPU's image lacks (Python 3.12 there), for benchmarks/gpu.sh's ZeRO-3 check: DeepSpeed
# (source-only on the index: built into a pure-Python wheel here), pydantic and its dependencies, hjson.
# Usage: benchmarks/gpu_wheels.sh   -> .gpu_wheels/ (gitignored; pass it in the device run's `carry`)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
rm -rf .gpu_wheels && mkdir -p .gpu_wheels
DS_BUILD_OPS=0 "$PIP" wheel -q --no-deps --no-build-isolation -w .gpu_wheels deepspeed==0.19.8
"$PIP" download -q --python-version 3.12 --only-binary=:all: --no-deps -d .gpu_wheels \
  pydantic pydantic-core annotated-types typing-inspection hjson
du -sh .gpu_wheels && ls .gpu_wheels
