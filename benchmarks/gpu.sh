#!/usr/bin/env bash
# GPU checks for the Triton kernels, in one go (CI has no GPU; run this on a CUDA machine):
#   1. tests/test_kernels_cuda.py: compiled kernels vs an fp32 reference and torch's flash attention,
#      outputs and gradients, dense / packed / decode; HF Llama on llama_rlhf_gqa vs sdpa.
#   2. benchmarks/attention.py: TFLOP/s vs torch SDPA flash, and HF-model tokens/s on padded batches.
# Usage: benchmarks/gpu.sh [LOG_DIR]   (uses the current python3; PYTHONPATH points at this checkout)
set -o pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${1:-.}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TRITON_INTERPRET=0
nvidia-smi -L
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 300 python3 -m pytest -q -p no:cacheprovider $workers tests/test_kernels_cuda.py 2>&1 | tee "$LOG_DIR/cuda_tests.log"
tests=$?
timeout 240 python3 benchmarks/attention.py 2>&1 | tee "$LOG_DIR/attention_bench.log"
bench=$?
echo "tests exit $tests, benchmark exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
