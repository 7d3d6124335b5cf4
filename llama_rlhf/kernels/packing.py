"""Sequence-packing helpers shared by the attention kernels, the reference and the HF adapter.

A packed (variable-length) batch lays its samples end to end as one row, (1, total, H, D), and
describes them with `cu_seqlens`: int32 offsets of shape (num_samples + 1,), starting at 0 and
ending at `total`. Sample `b` owns rows `cu_seqlens[b]:cu_seqlens[b + 1]`.
"""

from __future__ import annotations

import torch


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Cumulative offsets (N + 1,) int32 from per-sample lengths (N,)."""
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = torch.cumsum(lengths.reshape(-1), dim=0).to(torch.int32)
    return cu


def max_seqlen_from_cu_seqlens(cu_seqlens: torch.Tensor) -> int:
    """Longest sample in a packed batch (one host sync)."""
    if cu_seqlens.numel() < 2:
        return 0
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sample boundaries of packed rows whose position ids restart at every sample.

    position_ids: (T,) or (B, T), e.g. [[0, 1, 2, 0, 1, 0, 1, 2, 3]]. A sample starts at the first
    column of every row and wherever a position is not its predecessor + 1, so several rows of a
    (B, T) batch flatten into one packed row of B * T tokens. Returns (cu_seqlens, max_seqlen).
    """
    pos = position_ids.reshape(-1, position_ids.shape[-1])  # (B, T)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    start_idx = torch.nonzero(starts.reshape(-1), as_tuple=False).reshape(-1)
    total = torch.tensor([pos.numel()], device=pos.device, dtype=start_idx.dtype)
    cu = torch.cat([start_idx, total]).to(torch.int32)
    return cu, max_seqlen_from_cu_seqlens(cu)


def is_packed(position_ids: torch.Tensor | None) -> bool:
    """True when some row of position_ids (B, T) restarts, i.e. holds more than one sample."""
    if position_ids is None or position_ids.shape[-1] < 2:
        return False
    pos = position_ids.reshape(-1, position_ids.shape[-1])
    return bool((pos[:, 1:] != pos[:, :-1] + 1).any().item())


def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Sample index of every packed row, (total,) int64; rows past cu_seqlens[-1] get -1."""
    rows = torch.arange(total, device=cu_seqlens.device)
    seg = torch.searchsorted(cu_seqlens[1:].to(torch.int64), rows, right=True)
    return torch.where(rows < cu_seqlens[-1], seg, torch.full_like(seg, -1))


def unpad(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the kept tokens of a padded batch into one packed row.

    x: (B, T, H, D); keep: (B, T) bool, True for real tokens (any padding side).
    Returns x_packed (1, total, H, D) and the flat indices (total,) for `pad`.
    """
    b, t = keep.shape
    indices = torch.nonzero(keep.reshape(-1), as_tuple=False).reshape(-1)
    flat = x.reshape(b * t, *x.shape[2:])
    return flat.index_select(0, indices).unsqueeze(0), indices


def pad(x_packed: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of `unpad`: (1, total, H, D) -> (B, T, H, D) with zeros at padded positions."""
    flat = x_packed.new_zeros(batch * seqlen, *x_packed.shape[2:])
    return flat.index_copy(0, indices, x_packed[0]).reshape(batch, seqlen, *x_packed.shape[2:])
