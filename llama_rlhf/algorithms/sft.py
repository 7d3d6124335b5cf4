"""The SFT objective (paper section 3.1): autoregressive cross-entropy on answer tokens only.

"We utilize an autoregressive objective and zero-out the loss on tokens from the user prompt, so as a
result, we backpropagate only on answer tokens." Labels follow the HF convention: aligned with
input_ids, -100 where the loss is zeroed; the shift (logits[t] predicts labels[t + 1]) happens here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sft_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token -log p(x_{t+1} | x_{<=t}) at each predicted position, 0 where the label is ignored.

    logits (B, T, V), labels (B, T) -> (B, T - 1): entry t is the loss of predicting labels[:, t + 1].
    Computed in fp32.
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    losses = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return losses.view_as(shift_labels)


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None = None
) -> torch.Tensor:
    """L = (1 / N) Σ_{answer tokens t} -log p(x_t | x_<t), the paper's answer-only autoregressive loss.

    Reduction: one per-token mean over every answer token of the batch (packed rows included), N =
    the number of labels != -100 after the shift. Pass `num_items` (the answer-token count of the
    whole optimizer step) when accumulating gradients over micro-batches, so that the micro-batch
    losses add up to the token mean of the step instead of a mean of means.
    """
    losses = sft_token_losses(logits, labels)
    if num_items is None:
        num_items = (labels[:, 1:] != IGNORE_INDEX).sum()
    if torch.is_tensor(num_items):
        num_items = num_items.to(losses.device, losses.dtype).clamp(min=1)
    else:
        num_items = max(int(num_items), 1)
    return losses.sum() / num_items
