"""Import the whole pinned stack once after install; fail loudly with what is broken.

    python -m llama_rlhf.env_check
"""

import importlib
import sys


def main() -> int:
    versions = {}
    for mod in ("torch", "transformers", "ray", "deepspeed", "triton", "vllm", "sentencepiece", "pydantic"):
        try:
            versions[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - report every broken import, not just the first
            print(f"env_check: import {mod} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    from transformers import LlamaConfig  # breaks when torchvision does not match torch

    LlamaConfig()
    import torch

    gpus = torch.cuda.device_count()
    print("env_check ok:", " ".join(f"{k}={v}" for k, v in versions.items()),
          f"cuda_build={torch.version.cuda} gpus={gpus}")
    if torch.version.cuda is None:  # the CPU build of torch: DeepSpeed's ranks will run on gloo here
        _build_cpu_comm_op()
    if torch.version.cuda and not gpus:
        # the CUDA stack imports without a GPU (an image build, a CPU node); a job would find no device
        print(f"env_check: torch {torch.__version__} is a CUDA build, but no GPU is visible here")
    return 0


def _build_cpu_comm_op() -> None:
    """DeepSpeed's shared-memory all-reduce for CPU ranks is compiled on first use (about 30 s here, into
    TORCH_EXTENSIONS_DIR: the venv's, set by the Makefile): build it at install, so a first `make demo`
    from a fresh clone does not spend that inside its first model load."""
    import time

    from deepspeed.comm.torch import build_shm_op

    t0 = time.perf_counter()
    op = build_shm_op()
    print(f"env_check: DeepSpeed CPU shm comm op {'ready' if op is not None else 'not supported here'} "
          f"({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    sys.exit(main())
