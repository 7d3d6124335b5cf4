"""Optimizer pieces shared by every trainer: AdamW parameter groups and the paper's schedules.

The paper: AdamW (beta1 0.9, beta2 0.95, eps 1e-5), weight decay 0.1, gradient clipping 1.0; SFT and RM
use a cosine schedule decaying to 10% of the peak with warmup (RM: 3% of steps, at least 5); PPO uses
a constant learning rate.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float, schedule: str) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warmup, then cosine to `min_ratio` or flat."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule: must be 'cosine' or 'constant', got {schedule!r}")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def rm_warmup_steps(total_steps: int, ratio: float = 0.03, minimum: int = 5) -> int:
    """Reward-model warmup: 3% of the steps, at least 5 (but never more than the run)."""
    return min(total_steps, max(minimum, math.ceil(ratio * total_steps)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms and biases (1-D) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # ZeRO-3 partitions parameters to shape (0,); ds_shape keeps the real one
        shape = getattr(p, "ds_shape", p.shape)
        (decay if len(shape) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
