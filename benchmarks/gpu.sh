#!/usr/bin/env bash
# GPU checks, in one go (CI has no GPU; run this on a CUDA machine, e.g. the lent one):
#   1. tests/test_kernels_cuda.py: compiled kernels vs an fp32 reference and torch's flash attention,
#      outputs and gradients, dense / packed / decode; HF Llama on llama_rlhf_gqa vs sdpa.
#   2. benchmarks/attention.py: TFLOP/s vs torch SDPA flash, and HF-model tokens/s on padded batches.
#   3. benchmarks/gpu_scale.py: the cluster path on one GPU: NCCL collectives of the training step at
#      world size 1, the weight-sync pack/broadcast/unpack on CUDA (byte-exact, memory bounded by the
#      buckets), the Triton kernel counted in every training and scoring pass, peak memory per layer at
#      the real 7B/13B/70B widths (-> LOG_DIR/calibration.json for `llama-rlhf plan --calibration`),
#      and ZeRO-3 through DeepSpeedModel when DeepSpeed + pydantic are importable.
# Usage: benchmarks/gpu.sh [LOG_DIR]   (uses the current python3; PYTHONPATH points at this checkout)
# The lent GPU's image has no DeepSpeed or pydantic: `benchmarks/gpu_wheels.sh` puts cp312 wheels of
# them into .gpu_wheels/ here (carry that folder); this script installs them into a temp dir if present.
set -o pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${1:-.}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TRITON_INTERPRET=0
if [ -d .gpu_wheels ] && ! python3 -c "import deepspeed, pydantic" 2>/dev/null; then
  extra=$(mktemp -d)
  python3 -m pip install -q --no-deps --no-index --target "$extra" .gpu_wheels/*.whl && export PYTHONPATH=$PYTHONPATH:$extra
fi
nvidia-smi -L
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 300 python3 -m pytest -q -p no:cacheprovider $workers tests/test_kernels_cuda.py 2>&1 | tee "$LOG_DIR/cuda_tests.log"
tests=$?
timeout 240 python3 benchmarks/attention.py 2>&1 | tee "$LOG_DIR/attention_bench.log"
bench=$?
timeout 300 python3 benchmarks/gpu_scale.py --out "$LOG_DIR" 2>&1 | tee "$LOG_DIR/gpu_scale.log"
scale=$?
echo "tests exit $tests, benchmark exit $bench, scale checks exit $scale"
[ "$tests" = 0 ] && [ "$bench" = 0 ] && [ "$scale" = 0 ]
