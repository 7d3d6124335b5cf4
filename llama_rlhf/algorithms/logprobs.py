"""Per-token log-probabilities and entropies from logits, and the causal-LM forward that feeds PPO."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(label_t | context) for each position: log_softmax(logits / temperature) gathered at labels.

    logits (B, T, V) and labels (B, T) are already aligned (logits[:, t] predicts labels[:, t]); labels
    that are negative (the -100 ignore index) give 0. Computed in fp32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    logits = logits.float() / temperature
    safe = labels.clamp(min=0)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return logp.masked_fill(labels < 0, 0.0)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H(π(· | context)) = logsumexp(z) - Σ softmax(z)·z of each position, (B, T, V) -> (B, T)."""
    z = logits.float() / temperature
    p = F.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


def response_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: the first real token is position 0 (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_lm_response_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the last `response_len` tokens of prompt+response rows under an HF causal LM.

    Rows are [left-padded prompt | right-padded response] of shape (B, P + R); the logits at
    position t predict token t + 1, so the response tokens input_ids[:, P:] are scored by
    logits[:, P - 1 : -1]. Returns (logp (B, R), entropy (B, R) or None).
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=response_position_ids(attention_mask),
        use_cache=False,
    )
    logits = out.logits[:, -response_len - 1 : -1]  # (B, R, V)
    labels = input_ids[:, -response_len:]
    logp = token_logprobs(logits, labels, temperature)
    entropy = entropy_from_logits(logits, temperature) if with_entropy else None
    return logp, entropy
