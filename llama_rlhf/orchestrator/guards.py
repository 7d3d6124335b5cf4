"""Non-finite guards: a NaN or inf loss, gradient norm or reward stops the stage that produced it,
before anything is checkpointed, so the newest checkpoint in the run folder is the last good one and
`resume` redoes the stage. Pure checks on the metric dicts and tensors the orchestrator already holds.
"""

from __future__ import annotations

import math

import torch


class NonFiniteError(RuntimeError):
    """`<stage>: step <i>: <quantity> is nan` -- the stage stopped, nothing of it was saved."""


def check_metrics(stage: str, step: int, metrics: dict, keys: tuple[str, ...] | None = None) -> None:
    """Raise if any float metric (or only `keys`) is NaN or inf."""
    for k, v in metrics.items():
        if keys is not None and k not in keys:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise NonFiniteError(f"{stage}: step {step}: {k} is {v}; stopped before saving, the last good "
                                 f"checkpoint is kept (resume redoes this stage)")


def check_tensor(stage: str, step: int, name: str, t: torch.Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bad.any():
        raise NonFiniteError(f"{stage}: step {step}: {name} has {int(bad.sum())} of {t.numel()} values not finite "
                             f"(first {t[bad].flatten()[0].item()}); stopped before saving")
