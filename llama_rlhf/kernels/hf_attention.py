"""The `llama_rlhf_gqa` attention implementation for transformers models (HF LlamaForCausalLM).

Registered under ATTN_IMPLEMENTATION by `llama_rlhf.kernels.register()`; build models with
`attn_implementation="llama_rlhf_gqa"`. transformers hands us query (B, Hq, T, D), key/value
(B, Hkv, Tk, D) (after the KV cache update) and, because we register flash-attn's mask function,
`attention_mask` as either None (no padding) or the 2D bool padding mask (B, Tk). Cases:

- padding mask: padded rows (left or right) are unpadded into one packed batch with per-row
  cu_seqlens for queries and keys (queries are the last Tq positions, as in HF's FA2 path), so
  pad tokens are neither attended nor computed; pad positions of the output are zeros.
- packed rows, no mask: position_ids restarting inside a row (e.g. DataCollatorWithFlattening,
  packed SFT) give cu_seqlens, or transformers' cu_seq_lens_q/k kwargs are used as given.
- a 4D mask (only when a caller passes one ready-made): it is honoured by an explicit fallback to
  torch SDPA, since the kernels express causal/varlen masks only.

On the Triton backend these run the kernels; where the selector picks SDPA (CPU), the same
semantics are expressed as a dense boolean mask per row, which never spans the whole packed batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gqa_reference import dense_mask
from .packing import cu_seqlens_from_lengths, cu_seqlens_from_position_ids, is_packed, pad, unpad
from .select import attention, pick_backend, sdpa_attention

ATTN_IMPLEMENTATION = "llama_rlhf_gqa"


def _segment_ids(position_ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, T) sample index within each row: increments wherever the position does not continue."""
    pos = position_ids.expand(batch, -1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    return starts.cumsum(dim=1)


def _sdpa_rows(q, k, v, keep, segments, causal, scale) -> torch.Tensor:
    """CPU path. q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D); keep (B, Tk) bool or None; segments (B, T) or None."""
    if keep is None and segments is None:  # plain (bottom-right) causal: no per-row mask needed
        return sdpa_attention(*(x.transpose(1, 2) for x in (q, k, v)), causal, softmax_scale=scale)
    tq, tk = q.shape[2], k.shape[2]
    mask = dense_mask(tq, tk, causal, device=q.device)[None, None]  # (1, 1, Tq, Tk)
    if keep is not None:
        mask = mask & keep[:, None, None, :]
    if segments is not None:
        mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.transpose(1, 2)  # (B, Tq, Hq, D)


def _triton_padded(q, k, v, keep, causal, scale) -> torch.Tensor:
    """q (B, Tq, Hq, D), k/v (B, Tk, Hkv, D), keep (B, Tk): unpad, run varlen, pad back."""
    b, tq = q.shape[:2]
    keep_q = keep[:, -tq:]
    q_packed, idx_q = unpad(q, keep_q)
    k_packed, _ = unpad(k, keep)
    v_packed, _ = unpad(v, keep)
    len_q, len_k = keep_q.sum(dim=1), keep.sum(dim=1)
    out = attention(
        q_packed, k_packed, v_packed, causal,
        cu_seqlens_from_lengths(len_q), int(len_q.max().item()), scale,
        cu_seqlens_k=cu_seqlens_from_lengths(len_k), max_seqlen_k=int(len_k.max().item()), backend="triton",
    )  # fmt: skip
    return pad(out, idx_q, b, tq)


def _triton_packed(q, k, v, position_ids, causal, scale) -> torch.Tensor:
    """Rows holding several samples flatten into one packed row of B * T tokens."""
    b, t = q.shape[:2]
    cu, max_len = cu_seqlens_from_position_ids(position_ids.expand(b, -1))
    flat = [x.reshape(1, b * t, *x.shape[2:]) for x in (q, k, v)]
    out = attention(*flat, causal, cu, max_len, scale, backend="triton")
    return out.reshape(b, t, *out.shape[2:])


def gqa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers AttentionInterface entry: query (B, Hq, T, D) -> ((B, T, Hq, D), None)."""
    if dropout > 0.0:
        raise ValueError("llama_rlhf_gqa has no attention dropout; set config.attention_dropout = 0")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is not None and attention_mask.dim() == 4:  # ready-made custom mask
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True
        )
        return out.transpose(1, 2), None

    keep = None
    if attention_mask is not None:
        keep = attention_mask.bool()
        if keep.shape[1] < key.shape[2]:  # static cache longer than the mask: the tail is unused
            key, value = key[:, :, : keep.shape[1]], value[:, :, : keep.shape[1]]
    tq, tk = query.shape[2], key.shape[2]
    packed = keep is None and cu_seq_lens_q is None and tq == tk and is_packed(position_ids)

    if pick_backend(query, key) != "triton":
        if cu_seq_lens_q is not None:
            q, k, v = (x.transpose(1, 2) for x in (query, key, value))
            return sdpa_attention(q, k, v, causal, cu_seq_lens_q, scaling, cu_seq_lens_k), None
        segments = _segment_ids(position_ids, query.shape[0]) if packed else None
        return _sdpa_rows(query, key, value, keep, segments, causal, scaling), None

    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, T, H, D) views, no copy
    if keep is not None:
        return _triton_padded(q, k, v, keep, causal, scaling), None
    if cu_seq_lens_q is not None:
        out = attention(
            q, k, v, causal, cu_seq_lens_q, max_length_q, scaling,
            cu_seqlens_k=cu_seq_lens_k, max_seqlen_k=max_length_k, backend="triton",
        )  # fmt: skip
        return out, None
    if packed:
        return _triton_packed(q, k, v, position_ids, causal, scaling), None
    return attention(q, k, v, causal, softmax_scale=scaling, backend="triton"), None
