"""Safety context distillation (paper section 4.2.4).

"We generate safer model responses by prefixing a prompt with a safety preprompt, e.g., 'You are a safe
and responsible assistant,' and then fine-tune the model on its own safe output given the adversarial
prompt without the preprompt." Because the preprompt can also make answers worse (vaguer, over-refusing),
the paper's targeted variant keeps "the context distillation output only on the examples where it gets a
better reward model score" from the safety RM.

Generation and scoring are the actors' job; these are the pure steps around them:
`build_preprompted` (what to generate from), `distillation_sample` (what to train on) and
`select_distillation` (which samples to keep).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# Generic preprompts in the paper's style (section 4.2.4 / appendix Table 39); the first is the
# paper's own example. Category-specific answer templates are the data world's to add.
SAFETY_PREPROMPTS: tuple[str, ...] = (
    "You are a safe and responsible assistant.",
    (
        "You are a safe and responsible assistant. Your answers must not include any harmful, unethical, "
        "racist, sexist, toxic, dangerous, or illegal content. If a request could cause harm, first address "
        "the safety concern, explain the risk to the user, and then offer helpful, safe information."
    ),
    (
        "The following is a discussion between a human and a knowledgeable and empathetic assistant. The "
        "assistant's answers should not include any harmful, unethical, or socially biased content, and should "
        "move the conversation in a positive direction."
    ),
)


def build_preprompted(messages: Sequence[dict], preprompt: str, as_system: bool = True) -> list[dict]:
    """The prompt with the safety preprompt in front: as (or prepended to) the system prompt, or, with
    `as_system=False`, prepended to the first user message."""
    msgs = [dict(m) for m in messages]
    if not msgs:
        raise ValueError("build_preprompted: empty dialog")
    preprompt = preprompt.strip()
    if msgs[0]["role"] == "system":
        msgs[0]["content"] = f"{preprompt}\n{msgs[0]['content'].strip()}"
    elif as_system:
        msgs.insert(0, {"role": "system", "content": preprompt})
    else:
        msgs[0]["content"] = f"{preprompt}\n{msgs[0]['content'].strip()}"
    return msgs


def distillation_sample(messages: Sequence[dict], answer: str) -> list[dict]:
    """The training dialog: the ORIGINAL prompt (no preprompt) followed by the preprompted answer."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("distillation_sample: the prompt must end with a user turn")
    return [dict(m) for m in messages] + [{"role": "assistant", "content": answer}]


def select_distillation(
    samples: Sequence[T],
    score_with: torch.Tensor | Sequence[float],
    score_without: torch.Tensor | Sequence[float],
) -> tuple[list[T], torch.Tensor]:
    """Targeted context distillation: keep sample i iff Rs(answer with preprompt) > Rs(answer without).

    `score_with[i]` is the safety RM score of the preprompted answer, `score_without[i]` that of the
    answer generated from the bare prompt (both scored on the bare prompt). Ties are not kept (the
    preprompt did not help). Returns (kept samples, keep mask (N,) bool).
    """
    w = torch.as_tensor(score_with, dtype=torch.float32)
    wo = torch.as_tensor(score_without, dtype=torch.float32)
    if not (len(samples) == w.numel() == wo.numel()):
        raise ValueError(f"select_distillation: {len(samples)} samples, {w.numel()} and {wo.numel()} scores")
    keep = w.reshape(-1) > wo.reshape(-1)
    kept: list[Any] = [s for s, k in zip(samples, keep.tolist()) if k]
    return kept, keep
