"""The PPO reward of the paper (section 3.2.3):

    R(g | p) = R̃c(g | p) - β D_KL(π_θ(g | p) ‖ π_0(g | p))
    Rc(g | p) = Rs(g | p) if IS_SAFETY(p) or Rs(g | p) < 0.15 else Rh(g | p)
    R̃c(g | p) = WHITEN(LOGIT(Rc(g | p)))

Rs and Rh are reward-model scores as probabilities (σ of the scalar head), so LOGIT undoes the
sigmoid. The KL is taken per token (the usual PPO-RLHF shaping): every response token is charged
-β KL_t and the last one also receives the sequence score R̃c.
"""

from __future__ import annotations

from typing import Literal

import torch

from .masked import masked_whiten

KLEstimator = Literal["k1", "k3"]


def combine_rewards(
    r_helpful: torch.Tensor,
    r_safety: torch.Tensor,
    is_safety: torch.Tensor,
    threshold: float = 0.15,
) -> torch.Tensor:
    """Rc = Rs if IS_SAFETY(p) or Rs < threshold else Rh (paper eq. 4), elementwise over (B,)."""
    use_safety = is_safety.bool() | (r_safety < threshold)
    return torch.where(use_safety, r_safety, r_helpful)


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LOGIT(p) = log(p / (1 - p)), the inverse sigmoid, with p clamped to [eps, 1 - eps] so that
    scores of exactly 0 or 1 stay finite (|logit| <= log((1 - eps) / eps)). Computed in fp64 (1 - eps
    is not exact in fp32), returned in fp32."""
    p = p.double().clamp(eps, 1.0 - eps)
    return (torch.log(p) - torch.log1p(-p)).float()


def ppo_scores(
    r_helpful: torch.Tensor,
    r_safety: torch.Tensor,
    is_safety: torch.Tensor,
    threshold: float = 0.15,
    whiten: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """R̃c = WHITEN(LOGIT(Rc)) over the batch of B sequences (paper eq. 4); (B,) -> (B,).

    WHITEN is `masked_whiten` over the whole batch (mean 0, unbiased std 1); `whiten=False` keeps
    LOGIT(Rc) (a batch of one cannot be whitened).
    """
    scores = logit(combine_rewards(r_helpful, r_safety, is_safety, threshold), eps)
    if whiten:
        scores = masked_whiten(scores, torch.ones_like(scores), shift_mean=True)
    return scores


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_0) from the sampled token's log-probs under both policies.

    With tokens sampled from π_θ and r = π_0 / π_θ:  k1 = log π_θ - log π_0 = -log r (unbiased, can be
    negative per token), k3 = (r - 1) - log r (unbiased, always >= 0, lower variance; Schulman's
    "Approximating KL divergence").
    """
    log_ratio = logp_ref.float() - logp.float()  # log r
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_estimator: must be 'k1' or 'k3', got {estimator!r}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 of each row of a (B, T) 0/1 mask (-1 for an all-zero row)."""
    t = mask.size(1)
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values


def shaped_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards R_t = -β KL_t on every response token, + R̃c on the last (paper eq. 3).

    scores (B,) = R̃c from `ppo_scores`; logp, logp_ref, response_mask (B, T) over response tokens
    (right padded). Returns (rewards (B, T), kl (B, T)), both 0 off the mask. A row whose mask is empty
    receives nothing.
    """
    mask = response_mask.float()
    kl = kl_penalty(logp, logp_ref, estimator) * mask
    rewards = -kl_coef * kl
    last = last_token_index(response_mask)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards[rows, last[rows]] += scores[rows].float()
    return rewards, kl
