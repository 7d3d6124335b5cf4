"""llama-rlhf: the Llama 2-Chat post-training recipe as a Ray-orchestrated distributed RLHF system."""

import os
import sys

__version__ = "0.1.0"

# DeepSpeed JIT-compiles its ops once; keep them inside the active venv, not in ~/.cache, so a
# venv (and CI's) pays for the build once. setdefault: a user's own setting wins.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
