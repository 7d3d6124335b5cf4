"""Reward-model objectives (paper section 3.2.2, appendix A.3.3-A.3.4): the margin ranking loss, the safety
RM's auxiliary loss, and accuracy by preference rating.

Scores r are the raw scalar-head outputs (before any sigmoid). Ratings are int indices into RATINGS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llama_rlhf.data.records import RATINGS  # noqa: F401 - the annotators' 4 levels, strongest first

MARGINS: dict[str, tuple[float, float, float, float]] = {
    "none": (0.0, 0.0, 0.0, 0.0),
    "small": (1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0),  # paper Table 27, "Margin Small"
    "large": (3.0, 2.0, 1.0, 0.0),  # paper Table 27, "Margin Large"
}


def margin_for(
    rating: torch.Tensor, table: str = "small", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """m(r): the margin of each pair's rating (B,) int -> (B,) float, from the paper's Table 27."""
    if table not in MARGINS:
        raise ValueError(f"margin: must be one of {sorted(MARGINS)}, got {table!r}")
    rating = rating.long()
    if rating.numel() and (rating.min() < 0 or rating.max() >= len(RATINGS)):
        raise ValueError(
            f"rating: indices into RATINGS must be in [0, {len(RATINGS)}), got {rating.tolist()}"
        )
    values = torch.tensor(MARGINS[table], dtype=dtype, device=rating.device)
    return values[rating]


def ranking_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    rating: torch.Tensor | None = None,
    margin: str = "small",
) -> torch.Tensor:
    """L_ranking = -log σ(r(x, y_c) - r(x, y_r) - m(r)) (paper eq. 2), mean over the pairs.

    `rating=None` or `margin="none"` gives the binary ranking loss of eq. 1 (InstructGPT's).
    """
    diff = r_chosen.float() - r_rejected.float()
    if rating is not None and margin != "none":
        diff = diff - margin_for(rating, margin).to(diff.device)
    return -F.logsigmoid(diff).mean()


def safety_aux_loss(rewards: torch.Tensor, is_safe: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss of the safety RM: BCE(σ(r), safe), mean over the responses.

    The paper (appendix A.3.4, Table 29; seed summary: "margin loss and auxiliary safety loss improved
    accuracy") adds to the safety RM a term that separates safe from unsafe responses at a score of
    0.5 after the sigmoid (0 before it), which raises the recall of unsafe responses. The paper gives no
    formula; ours is the binary cross-entropy of σ(r) against each response's safe (1) / unsafe (0)
    label: -[s log σ(r) + (1 - s) log(1 - σ(r))], which is minimised by r > 0 for safe, r < 0 for unsafe.
    Labels that are NaN (unlabelled responses) are left out of the mean.
    """
    labels = is_safe.to(torch.float32).to(rewards.device)
    known = ~torch.isnan(labels)  # a response without a safety label is masked out, not called safe
    if not known.any():
        return rewards.float().sum() * 0.0
    return F.binary_cross_entropy_with_logits(rewards.float()[known], labels[known])


def reward_model_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    rating: torch.Tensor | None = None,
    margin: str = "small",
    chosen_safe: torch.Tensor | None = None,
    rejected_safe: torch.Tensor | None = None,
    aux_safety_weight: float = 0.0,
) -> torch.Tensor:
    """ranking_loss + aux_safety_weight · safety_aux_loss over both responses of every pair.

    The auxiliary term needs the safe labels of both responses; with weight 0 it is skipped.
    """
    loss = ranking_loss(r_chosen, r_rejected, rating, margin)
    if aux_safety_weight:
        if chosen_safe is None or rejected_safe is None:
            raise ValueError("aux_safety_weight > 0 needs chosen_safe and rejected_safe labels")
        rewards = torch.cat([r_chosen, r_rejected])
        labels = torch.cat([chosen_safe, rejected_safe])
        loss = loss + aux_safety_weight * safety_aux_loss(rewards, labels)
    return loss


def rm_accuracy(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, rating: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Fraction of pairs with r_c > r_r (ties count as wrong, as TRL), overall and per rating level.

    Keys: "accuracy", then "accuracy/<rating>" and "count/<rating>" for each level of RATINGS (the
    paper's Table 8 breakdown); a level without pairs has accuracy NaN.
    """
    correct = (r_chosen > r_rejected).float()
    out = {"accuracy": correct.mean() if correct.numel() else torch.tensor(float("nan"))}
    if rating is not None:
        rating = rating.long().to(correct.device)
        for i, name in enumerate(RATINGS):
            sel = rating == i
            n = sel.sum()
            out[f"count/{name}"] = n
            out[f"accuracy/{name}"] = correct[sel].mean() if n > 0 else torch.tensor(float("nan"))
    return out
