"""Backend selection for grouped-query attention: the Triton kernels where they can run, else SDPA.

`attention(...)` has `gqa_attention`'s signature and layout (see gqa_triton.py). It uses the Triton
kernels when q is on CUDA, or on CPU with TRITON_INTERPRET=1 (tests), and the shape/dtype is one
they support; otherwise torch SDPA (enable_gqa=True) with the reference's mask, which is what CPU
training and scoring get. gqa_triton is imported lazily: importing this package launches nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch
import torch.nn.functional as F

from .gqa_reference import dense_mask, gqa_attention_reference, packed_mask

Backend = Literal["triton", "sdpa", "reference"]
_log = logging.getLogger(__name__)
_TRITON_HEAD_DIMS = (16, 32, 64, 128)  # mirrors gqa_triton.SUPPORTED_HEAD_DIMS without importing it
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_usable(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the Triton kernels can take these inputs on this device."""
    if q.shape[-1] not in _TRITON_HEAD_DIMS or q.dtype not in _TRITON_DTYPES:
        return False
    if q.is_cuda:
        return True
    if q.device.type != "cpu" or not _interpret_requested():
        return False
    from . import gqa_triton

    if not gqa_triton.is_interpreted():
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton (or gqa_triton) was imported; set it before "
            "the first import of triton (transformers imports it), e.g. in tests/conftest.py"
        )
    return True


def pick_backend(q: torch.Tensor, k: torch.Tensor) -> Backend:
    if triton_usable(q, k):
        return "triton"
    if q.is_cuda:
        _log.warning(
            "gqa attention: head dim %d / %s not supported by Triton, using SDPA", q.shape[-1], q.dtype
        )
    return "sdpa"


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """`gqa_attention` semantics on torch SDPA; packed and Tq != Tk cases get an explicit bool mask."""
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    tq, tk = q.shape[1], k.shape[1]
    if cu_seqlens is None and (not causal or tq == tk):
        out = F.scaled_dot_product_attention(
            qt, kt, vt, is_causal=causal, scale=softmax_scale, enable_gqa=True
        )
    else:
        if cu_seqlens is None:
            mask = dense_mask(tq, tk, causal, device=q.device)
        else:
            cu_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
            mask = packed_mask(cu_seqlens, cu_k, tq, tk, causal)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=softmax_scale, enable_gqa=True)
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    softmax_scale: float | None = None,
    *,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_k: int | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Grouped-query attention on the best available backend (or the one named by `backend`).

    q (B, Tq, Hq, D), k/v (B, Tk, Hkv, D); packed: (1, total, H, D) with int32 cu_seqlens.
    Returns (B, Tq, Hq, D).
    """
    backend = backend or pick_backend(q, k)
    if backend == "triton":
        from .gqa_triton import gqa_attention

        return gqa_attention(
            q,
            k,
            v,
            causal,
            cu_seqlens,
            max_seqlen,
            softmax_scale,
            cu_seqlens_k=cu_seqlens_k,
            max_seqlen_k=max_seqlen_k,
        )
    if backend == "sdpa":
        return sdpa_attention(q, k, v, causal, cu_seqlens, softmax_scale, cu_seqlens_k)
    if backend == "reference":
        return gqa_attention_reference(
            q, k, v, causal, cu_seqlens, softmax_scale=softmax_scale, cu_seqlens_k=cu_seqlens_k
        )
    raise ValueError(f"unknown attention backend {backend!r}")
