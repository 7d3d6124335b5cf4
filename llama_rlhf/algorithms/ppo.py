"""PPO (Schulman et al. 2017) as the paper runs it (section 3.2.3): clip 0.2, minibatches of 64 out of
a batch of 512, one gradient step per minibatch, rewards from `shaping.shaped_rewards`.

All (B, T) tensors are over response tokens, right padded, with `mask` 1 on real tokens. The update
loop takes the model through two callbacks so that a plain torch model/optimizer and a DeepSpeed
engine plug in the same way:

    logprob_fn(model, minibatch) -> (B, T) log-probs of the response tokens (with grad), or a pair
                                    (log-probs, entropies (B, T) or None) to also log the entropy
    backward_and_step(loss)      -> backward + clip + optimizer step (+ zero grad)

e.g. `torch_backward_and_step(model.parameters(), optimizer)` or
`lambda loss: (engine.backward(loss), engine.step())`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from .batching import micro_batches, num_micro
from .masked import masked_mean, masked_whiten

Batch = Mapping[str, torch.Tensor]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), per token over right-padded responses.

    δ_t = r_t + γ V_{t+1} - V_t,  A_t = δ_t + γ λ A_{t+1},  with V and r zero after the last response
    token (the episode ends there). Returns (advantages, returns = advantages + values), 0 off the mask.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    t_len = rewards.size(1)
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])
    for t in reversed(range(t_len)):
        next_value = values[:, t + 1] if t + 1 < t_len else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def leave_one_out(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's baseline-subtracted scores (Kool et al. 2019; Ahmadian et al. 2024): each score minus the
    mean of the other `group_size - 1` scores of its group. (B,) -> (B,), groups consecutive (response j
    of prompt i at i * group_size + j)."""
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"leave_one_out: {scores.numel()} scores do not split into groups of {group_size} >= 2")
    g = scores.view(-1, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(scores.shape)


def whiten_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages normalised to mean 0 / std 1 over the masked tokens of the batch, 0 off the mask."""
    return masked_whiten(advantages, mask, shift_mean=True) * mask


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate L = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε)), ρ_t = π_θ / π_old.

    Token mean over the mask. Metrics: clip fraction (tokens where the clipped term is the larger
    loss), approx KL = mean 0.5 (log ρ)^2 (TRL's), mean ratio.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "policy/approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "policy/ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss 0.5 · mean_t max((V - R)^2, (V_old + clip(V - V_old, ±ε) - R)^2) (OpenAI / TRL)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        metrics = {"value/clipfrac": masked_mean((clipped_err > unclipped_err).float(), mask)}
    return loss, metrics


def torch_backward_and_step(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float | None = 1.0,
) -> Callable[[torch.Tensor], None]:
    """The `backward_and_step` of a plain torch model: backward, clip (paper: 1.0), step, zero grad."""
    params = [p for p in parameters if p.requires_grad]

    def backward_and_step(loss: torch.Tensor) -> None:
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return backward_and_step


def minibatch_indices(
    batch_size: int, minibatch_size: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """A random permutation of the batch cut into minibatches (the last may be smaller)."""
    perm = torch.randperm(batch_size, generator=generator)
    return list(perm.split(minibatch_size))


def run_minibatches(
    batch: Batch,
    minibatch_size: int,
    loss_fn: Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    backward_and_step: Callable[[torch.Tensor], None],
    epochs: int = 1,
    generator: torch.Generator | None = None,
    micro_batch_size: int | None = None,
    begin_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """For each epoch, shuffle the batch, and take exactly one gradient step per minibatch.

    `batch` maps names to tensors whose first dim is the batch. Returns the metrics (and "loss")
    averaged over all minibatch steps.

    With `micro_batch_size`, each minibatch step is accumulated over micro-batches of at most that many
    rows: `begin_step(k)` announces the k micro-batches, then `backward_and_step` gets each micro-batch's
    share of the minibatch loss, and steps at the last one (a DeepSpeed engine's accumulation). The
    shares add up to the minibatch loss exactly when `loss_fn` is a token mean over `batch["mask"]`
    (both PPO losses are): micro-batch i weighs its mean by its share of the minibatch's mask tokens.
    """
    size = next(iter(batch.values())).size(0)
    sums: dict[str, float] = {}
    steps = 0
    for _ in range(epochs):
        for idx in minibatch_indices(size, minibatch_size, generator):
            mb = {k: v[idx.to(v.device)] for k, v in batch.items()}
            rows = idx.numel()
            parts = [mb] if micro_batch_size is None else micro_batches(mb, num_micro(rows, micro_batch_size))
            if begin_step is not None:
                begin_step(len(parts))
            tokens = mb["mask"].sum().clamp(min=1.0) if len(parts) > 1 else None
            step: dict[str, float] = {}
            for part in parts:
                loss, metrics = loss_fn(part)
                share = part["mask"].sum() / tokens if tokens is not None else 1.0
                backward_and_step(loss * share)
                for k, v in {"loss": loss, **metrics}.items():
                    step[k] = step.get(k, 0.0) + float(v.detach()) * float(share)
            steps += 1
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
    return {k: v / max(steps, 1) for k, v in sums.items()}


def ppo_update(
    policy,
    batch: Batch,
    logprob_fn: Callable[[object, Batch], torch.Tensor],
    backward_and_step: Callable[[torch.Tensor], None],
    minibatch_size: int = 64,
    clip_range: float = 0.2,
    epochs: int = 1,
    generator: torch.Generator | None = None,
    micro_batch_size: int | None = None,
    begin_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """PPO policy update over one rollout batch: one clipped-surrogate gradient step per minibatch.

    The paper's setting: batch 512, `minibatch_size` 64, `clip_range` 0.2, `epochs` 1.
    `batch` holds the model inputs `logprob_fn` reads plus "old_logprobs", "advantages" (already
    whitened if wanted) and "mask", all (B, T) over response tokens.
    """

    def loss_fn(mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = logprob_fn(policy, mb)
        logp, entropy = out if isinstance(out, tuple) else (out, None)
        loss, metrics = policy_loss(logp, mb["old_logprobs"], mb["advantages"], mb["mask"], clip_range)
        if entropy is not None:
            metrics["policy/entropy"] = masked_mean(entropy.detach(), mb["mask"])
        return loss, metrics

    return run_minibatches(batch, minibatch_size, loss_fn, backward_and_step, epochs, generator,
                           micro_batch_size, begin_step)


def critic_update(
    critic,
    batch: Batch,
    value_fn: Callable[[object, Batch], torch.Tensor],
    backward_and_step: Callable[[torch.Tensor], None],
    minibatch_size: int = 64,
    clip_range: float = 0.2,
    epochs: int = 1,
    generator: torch.Generator | None = None,
    micro_batch_size: int | None = None,
    begin_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Critic update: one clipped value-loss step per minibatch; `batch` has "old_values", "returns",
    "mask" (B, T) and what `value_fn(critic, mb) -> (B, T) values` reads."""

    def loss_fn(mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = value_fn(critic, mb)
        return value_loss(values, mb["old_values"], mb["returns"], mb["mask"], clip_range)

    return run_minibatches(batch, minibatch_size, loss_fn, backward_and_step, epochs, generator,
                           micro_batch_size, begin_step)
