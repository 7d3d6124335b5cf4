"""Model builders: HF `LlamaForCausalLM` (policy, reference) and a scalar-head Llama (reward, critic).

Presets carry the paper's shapes (Touvron et al. 2023, Table 1 and the released configs): GQA with
8 KV heads at 34B and 70B, 4096 context, 32K vocabulary. `tiny` is the embedded CPU default: a few
million parameters with GQA 4:1 (8 query heads over 2 KV heads).

Checkpoints are plain HF folders (config.json + model.safetensors): what we write loads in stock
transformers with `LlamaForCausalLM.from_pretrained` / `LlamaForSequenceClassification.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int = 32000
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0


PRESETS: dict[str, Preset] = {
    # vocab_size of `tiny` is replaced by the trained tokenizer's size
    "tiny": Preset(256, 4, 8, 2, 688, vocab_size=1024, max_position_embeddings=512),
    "7b": Preset(4096, 32, 32, 32, 11008),
    "13b": Preset(5120, 40, 40, 40, 13824),
    "34b": Preset(8192, 48, 64, 8, 22016),
    "70b": Preset(8192, 80, 64, 8, 28672),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llama_config(
    preset: str,
    vocab_size: int | None = None,
    max_seq_len: int | None = None,
    attn_implementation: str = "sdpa",
    pad_token_id: int | None = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> LlamaConfig:
    """The HF config of a preset; vocab and context may be overridden (tokenizer, seq len)."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset: must be one of {sorted(PRESETS)}, got {preset!r}")
    p = asdict(PRESETS[preset])
    if vocab_size is not None:
        p["vocab_size"] = vocab_size
    if max_seq_len is not None:
        p["max_position_embeddings"] = max_seq_len
    cfg = LlamaConfig(
        **p,
        hidden_act="silu",
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        attention_bias=False,
        mlp_bias=False,
    )
    cfg._attn_implementation = resolve_attn_implementation(attn_implementation)
    return cfg


def resolve_attn_implementation(name: str) -> str:
    """`auto` = our Triton GQA kernel where it can run (CUDA), else SDPA; registers the kernel if named."""
    if name == "auto":
        name = "llama_rlhf_gqa" if torch.cuda.is_available() else "sdpa"
    if name == "llama_rlhf_gqa":
        from llama_rlhf.kernels import register

        register()
    return name


def count_parameters(cfg: LlamaConfig, lm_head: bool = True) -> int:
    """Parameter count from the config alone (nothing allocated)."""
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q = h * cfg.num_attention_heads * head_dim
    kv = 2 * h * cfg.num_key_value_heads * head_dim
    o = cfg.num_attention_heads * head_dim * h
    mlp = 3 * h * inter
    norms = 2 * h
    per_layer = q + kv + o + mlp + norms
    emb = cfg.vocab_size * h
    head = cfg.vocab_size * h if lm_head else h  # scalar head: hidden -> 1
    return emb + layers * per_layer + h + head


def build_causal_lm(cfg: LlamaConfig, seed: int | None = None, dtype: torch.dtype = torch.float32):
    """A randomly initialised LlamaForCausalLM (the policy or reference)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model.to(dtype)


def build_scalar_model(cfg: LlamaConfig, seed: int | None = None, dtype: torch.dtype = torch.float32):
    """A Llama with the LM head replaced by a scalar regression head (reward model or critic).

    HF `LlamaForSequenceClassification(num_labels=1)`: the score of the last non-pad token; the paper's
    RM 'classification head for next-token prediction replaced with a regression head'.
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = LlamaForSequenceClassification(scalar_config(cfg))
    return model.to(dtype)


def scalar_config(cfg: LlamaConfig) -> LlamaConfig:
    """The config of the scalar-head model with the same body; the attention implementation is kept
    (a plain `to_dict` round trip would drop it and fall back to SDPA)."""
    out = LlamaConfig.from_dict(cfg.to_dict())
    out.num_labels = 1
    out.problem_type = "regression"
    out._attn_implementation = cfg._attn_implementation
    return out


def init_score_(weight: torch.Tensor, seed: int | None) -> None:
    """A fresh regression head N(0, 1/(H+1)): scores start near 0 whatever the hidden size. Seeded by its
    own generator, so every rank of a group draws the same values."""
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    std = 1.0 / (weight.shape[-1] + 1) ** 0.5
    with torch.no_grad():
        weight.copy_(torch.randn(tuple(weight.shape), generator=g) * std)


def scalar_from_causal_lm(lm: LlamaForCausalLM, seed: int | None = None):
    """Initialise a scalar model from an SFT/chat model in memory: same body, fresh scalar head."""
    sm = build_scalar_model(lm.config, seed=seed, dtype=next(lm.parameters()).dtype)
    sm.model.load_state_dict(lm.model.state_dict(), strict=True)
    init_score_(sm.score.weight, seed)
    return sm


def is_causal_checkpoint(folder: str | Path) -> bool:
    """Whether an HF folder holds a causal LM (vs a scalar-head model), from its config.json."""
    import json

    arch = json.loads((Path(folder) / "config.json").read_text()).get("architectures") or [""]
    return arch[0] == "LlamaForCausalLM"


def save_hf(model, folder: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write an HF-format folder (config.json + model.safetensors [+ tokenizer files])."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer_dir is not None:
        import shutil

        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, folder / f.name)
    return folder


def load_causal_lm(folder: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    return LlamaForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation=resolve_attn_implementation(attn_implementation)
    )


def load_scalar_model(folder: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
                      seed: int | None = None):
    """A scalar model from an HF folder. A causal-LM folder (the SFT checkpoint a reward model starts
    from) gives its body and a fresh head: transformers reads only the body's tensors, so no full causal
    LM is built first."""
    model = LlamaForSequenceClassification.from_pretrained(
        folder, dtype=dtype, num_labels=1, attn_implementation=resolve_attn_implementation(attn_implementation)
    )
    model.config.problem_type = "regression"
    if is_causal_checkpoint(folder):
        init_score_(model.score.weight, seed)
    return model
