"""Cutting a batch into micro-batches: the one split every training step and scoring pass uses."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def num_micro(rows: int, micro_batch_size: int) -> int:
    """Micro-batches of at most `micro_batch_size` rows covering `rows` rows (at least one)."""
    return max(1, -(-rows // micro_batch_size))


def micro_batches(batch: Mapping, num: int) -> list[dict]:
    """Every (B, ...) tensor of `batch` cut into `num` consecutive chunks whose sizes differ by at most one
    row; other values are passed to every chunk."""
    n = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
    if num > n:
        raise ValueError(f"cannot split {n} rows into {num} micro-batches")
    bounds = [round(i * n / num) for i in range(num + 1)]
    return [{k: v[a:b] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for a, b in zip(bounds[:-1], bounds[1:])]
