"""Pure-torch grouped-query attention: the oracle the Triton kernels are tested against.

Same layout and options as `gqa_triton.gqa_attention`: q (B, Tq, Hq, D), k/v (B, Tk, Hkv, D) with
Hq a multiple of Hkv (query head h reads KV head h // (Hq // Hkv)); packed batches as
(1, total, H, D) with int32 `cu_seqlens`. Causal masks are aligned bottom-right (flash-attn >= 2.1):
query i of a sample with Lq queries and Lk keys sees key j iff j <= i + Lk - Lq, which is plain
causal when Lq == Lk and lets a decode step's queries see the whole cache. Math runs in fp32 (fp64
stays fp64) on the full (Tq, Tk) score matrix, so it is for tests and small inputs only.
"""

from __future__ import annotations

import torch

from .packing import segment_ids_from_cu_seqlens


def dense_mask(seqlen_q: int, seqlen_k: int, causal: bool, device=None) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i may attend key j (bottom-right causal)."""
    if not causal:
        return torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    i = torch.arange(seqlen_q, device=device)[:, None]
    j = torch.arange(seqlen_k, device=device)[None, :]
    return j <= i + (seqlen_k - seqlen_q)


def packed_mask(
    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, total_q: int, total_k: int, causal: bool
) -> torch.Tensor:
    """(total_q, total_k) bool block-diagonal mask from segment ids: samples never see each other."""
    seg_q = segment_ids_from_cu_seqlens(cu_seqlens_q, total_q)  # (total_q,)
    seg_k = segment_ids_from_cu_seqlens(cu_seqlens_k, total_k)  # (total_k,)
    allowed = (seg_q[:, None] == seg_k[None, :]) & (seg_q[:, None] >= 0)
    if causal:
        cu_q, cu_k = cu_seqlens_q.to(torch.int64), cu_seqlens_k.to(torch.int64)
        sq, sk = seg_q.clamp(min=0), seg_k.clamp(min=0)
        local_i = torch.arange(total_q, device=seg_q.device) - cu_q[sq]
        local_j = torch.arange(total_k, device=seg_k.device) - cu_k[sk]
        diag = (cu_k[1:] - cu_k[:-1]) - (cu_q[1:] - cu_q[:-1])  # Lk - Lq per sample
        allowed &= local_j[None, :] <= local_i[:, None] + diag[sq][:, None]
    return allowed


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v with K/V heads repeated for their query group.

    q (B, Tq, Hq, D); k, v (B, Tk, Hkv, D); allowed bool broadcastable to (B, Hq, Tq, Tk).
    Rows with no allowed key return zeros (as the kernel does) instead of NaN.
    """
    hq, hkv, d = q.shape[2], k.shape[2], q.shape[3]
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    compute = torch.promote_types(q.dtype, torch.float32)
    kf = k.to(compute).repeat_interleave(hq // hkv, dim=2)  # (B, Tk, Hq, D)
    vf = v.to(compute).repeat_interleave(hq // hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(compute), kf) * scale  # (B, Hq, Tq, Tk)
    allowed = allowed.expand_as(scores)
    any_key = allowed.any(dim=-1, keepdim=True)
    # Unmask empty rows before the softmax so neither it nor its gradient produces NaN.
    scores = scores.masked_fill(~(allowed | ~any_key), float("-inf"))
    probs = torch.softmax(scores, dim=-1) * any_key
    return torch.einsum("bhqk,bkhd->bqhd", probs, vf).to(q.dtype)


def gqa_attention_reference(
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
) -> torch.Tensor:
    """Reference for `gqa_attention`; returns (B, Tq, Hq, D) in q's dtype.

    `max_seqlen` / `max_seqlen_k` are accepted for signature parity and unused.
    """
    del max_seqlen, max_seqlen_k
    if cu_seqlens is None:
        allowed = dense_mask(q.shape[1], k.shape[1], causal, device=q.device)
    else:
        cu_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
        allowed = packed_mask(cu_seqlens, cu_k, q.shape[1], k.shape[1], causal)
    return masked_attention(q, k, v, allowed, softmax_scale)
