"""Masked reductions and whitening over (B, T) tensors with a 0/1 mask of the tokens that count.

The statistics are the classic TRL PPO ones (`masked_mean`, `masked_var`, `masked_whiten` of
trl <= 0.11 `trl/core.py`, which trl 1.16 no longer ships): one scalar mean and one unbiased variance
over all masked entries of the batch, never per row.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is 1 (over everything, or along `dim`)."""
    masked = values * mask
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the entries where `mask` is 1: sum(v * m) / sum(m).

    An all-zero mask gives 0 (not NaN) so that an empty minibatch contributes a zero loss.
    """
    mask = mask.to(values.dtype)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked entries; `unbiased` applies Bessel's correction n / (n - 1)."""
    mask = mask.to(values.dtype)
    n = mask.sum()
    if n == 0:
        raise ValueError("masked_var: the mask selects no entry")
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        if n == 1:
            raise ValueError("masked_var: one masked entry has no unbiased variance")
        var = var * n / (n - 1)
    return var


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """WHITEN of the paper's PPO reward (section 3.2.3): (x - mean) / sqrt(var + eps) over masked entries.

    mean and (unbiased) var come from the masked entries only; `shift_mean=False` adds the mean back
    (scale only), as TRL does for rewards. Entries off the mask are transformed the same way and are
    the caller's to ignore, exactly as TRL's `masked_whiten`.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean
