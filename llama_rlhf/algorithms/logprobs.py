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


LOGIT_CHUNK_TOKENS = 2048
"""Positions x rows per logits chunk: at a 32K vocabulary one chunk's fp32 logits are 256 MiB."""


def chunked_token_logprobs(
    hidden: torch.Tensor,
    head,
    labels: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = LOGIT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_logprobs(head(hidden), labels)` (and the entropies) without the full (B, T, V) logits.

    hidden (B, T, H) are the states whose logits predict labels (B, T) (aligned as in `token_logprobs`,
    negative labels give 0); `head` maps (..., H) -> (..., V) (the LM head). Positions go through the head
    `chunk_tokens // B` at a time; under autograd each chunk is checkpointed, so its logits are rebuilt in
    backward and only one chunk's (B, c, V) is alive at any time. Entropies carry no gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    b, t = labels.shape
    step = max(1, chunk_tokens // max(b, 1))

    def one(h: torch.Tensor, y: torch.Tensor):
        z = head(h).float() / temperature  # (B, c, V)
        lse = torch.logsumexp(z, dim=-1)
        logp = (z.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) - lse).masked_fill(y < 0, 0.0)
        if not with_entropy:
            return logp, None
        with torch.no_grad():
            ent = lse - (F.softmax(z, dim=-1) * z).sum(-1)
        return logp, ent

    logps, ents = [], []
    for a in range(0, t, step):
        h, y = hidden[:, a : a + step], labels[:, a : a + step]
        if torch.is_grad_enabled() and h.requires_grad:
            logp, ent = torch.utils.checkpoint.checkpoint(one, h, y, use_reentrant=False)
        else:
            logp, ent = one(h, y)
        logps.append(logp)
        ents.append(ent)
    logp = torch.cat(logps, 1) if logps else hidden.new_zeros((b, 0), dtype=torch.float32)
    entropy = torch.cat(ents, 1) if with_entropy and ents else None
    return logp, entropy
