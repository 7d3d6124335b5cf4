"""Grouped-query attention kernels (Triton, FlashAttention-2 style) and their transformers hook.

Model builders call `register()` once (idempotent) and pass the returned name as
`attn_implementation`:

    from llama_rlhf import kernels
    model = LlamaForCausalLM(config, attn_implementation=kernels.register())

Modules: gqa_triton (kernels + autograd Function, imported lazily), gqa_reference (pure torch),
select (backend choice: Triton on CUDA / TRITON_INTERPRET=1, else SDPA), hf_attention (the
transformers adapter), packing (cu_seqlens helpers).
"""

from __future__ import annotations

from .gqa_reference import gqa_attention_reference
from .hf_attention import ATTN_IMPLEMENTATION, gqa_attention_forward
from .packing import cu_seqlens_from_lengths, cu_seqlens_from_position_ids
from .select import attention, pick_backend

__all__ = [
    "ATTN_IMPLEMENTATION",
    "attention",
    "cu_seqlens_from_lengths",
    "cu_seqlens_from_position_ids",
    "gqa_attention",
    "gqa_attention_forward",
    "gqa_attention_reference",
    "pick_backend",
    "register",
]


def __getattr__(name: str):
    # gqa_triton binds its kernels (to the GPU or the interpreter) when imported: defer that.
    if name == "gqa_attention":
        from .gqa_triton import gqa_attention

        return gqa_attention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> str:
    """Register `llama_rlhf_gqa` with transformers' attention and mask interfaces; returns the name.

    The mask function is flash-attn's: it hands the attention function the 2D padding mask (or None)
    instead of a materialized 4D mask, which the kernels could not use.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, gqa_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, flash_attention_mask)
    return ATTN_IMPLEMENTATION
