"""Synthetic annotators: compare two responses by their gold scores and give the paper's 4-level rating.

What is compared: helpfulness for helpful and GAtt prompts; for unsafe prompts safety first, and
helpfulness only when both responses are equally safe (the paper's "safety first" guideline).

The rating comes from the absolute gold gap: >= 0.6 significantly better, >= 0.35 better,
>= 0.15 slightly better, else negligibly better.

Label noise: the choice is flipped with probability `flip_probability(gap, noise)` =
min(0.5, noise * scale[rating]) with scale 0.25 / 0.5 / 1 / 2 from significantly to negligibly
better: `noise` is exactly the flip rate of a "slightly better" pair, close calls flip more, clear
ones less. A flipped pair keeps the rating of its gap (a confidently wrong annotator).

Ties (identical texts or equal gold scores): `ties="drop"` (default) returns None, since no
preference exists to learn; `ties="keep"` returns the pair in random order as negligibly better.

Safety labels (the paper's 3 categories) are given to every pair: chosen safe & other unsafe,
both safe, both unsafe. A pair whose chosen response is unsafe while the rejected one is safe is
dropped (returns None), as in the paper; with noise this removes most flips on safety prompts.
"""

from __future__ import annotations

import random

from .judge import is_safe, judge
from .records import RATINGS, SAFE_FLAGS, Preference, Prompt, Scores

RATING_THRESHOLDS = (0.6, 0.35, 0.15)  # lower bounds of significantly / better / slightly
FLIP_SCALE = dict(zip(RATINGS, (0.25, 0.5, 1.0, 2.0)))
TIE_EPS = 1e-9


def rating_for_gap(gap: float) -> str:
    """The 4-level rating for an absolute gold gap."""
    gap = abs(gap)
    for threshold, rating in zip(RATING_THRESHOLDS, RATINGS):
        if gap >= threshold:
            return rating
    return RATINGS[-1]


def flip_probability(gap: float, noise: float) -> float:
    """Probability that the annotator picks the worse response, for a given gold gap."""
    return min(0.5, noise * FLIP_SCALE[rating_for_gap(gap)])


def gold_gap(prompt: Prompt, a: Scores, b: Scores) -> float:
    """Signed preference of a over b (> 0: a is better)."""
    if prompt.is_safety and abs(a.safety - b.safety) > TIE_EPS:
        return a.safety - b.safety
    return a.helpfulness - b.helpfulness


def safety_label(chosen: Scores, rejected: Scores) -> str | None:
    """The paper's per-pair safety category; None for 'chosen unsafe, rejected safe' (dropped)."""
    cs, rs = is_safe(chosen), is_safe(rejected)
    if cs and not rs:
        return "chosen_safe_other_unsafe"
    if cs and rs:
        return "both_safe"
    if not cs and not rs:
        return "both_unsafe"
    return None


def annotate(
    prompt: Prompt,
    response_a: str,
    response_b: str,
    rng: random.Random,
    noise: float = 0.1,
    ties: str = "drop",
) -> Preference | None:
    """One synthetic annotator's judgement of a pair (see the module docstring for the rules)."""
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties must be 'drop' or 'keep', got {ties!r}")
    sa, sb = judge(prompt, response_a), judge(prompt, response_b)
    gap = gold_gap(prompt, sa, sb)
    tie = response_a == response_b or abs(gap) <= TIE_EPS
    if tie and ties == "drop":
        return None
    a_first = rng.random() < 0.5 if tie else gap > 0
    flipped = not tie and rng.random() < flip_probability(gap, noise)
    if flipped:
        a_first = not a_first
    chosen, rejected = (response_a, response_b) if a_first else (response_b, response_a)
    s_chosen, s_rejected = (sa, sb) if a_first else (sb, sa)
    label = safety_label(s_chosen, s_rejected)
    if label is None:
        return None
    chosen_safe, rejected_safe = SAFE_FLAGS[label]
    return Preference(
        messages=[dict(m) for m in prompt.messages],
        chosen=chosen,
        rejected=rejected,
        rating=rating_for_gap(gap),
        is_safety=prompt.is_safety,
        chosen_safe=chosen_safe,
        rejected_safe=rejected_safe,
        # diagnostics: the gold gap the rating came from, whether the annotator's label noise fired
        meta={"prompt_id": prompt.id, "kind": prompt.kind, "safety_label": label, "gap": round(abs(gap), 6),
              "flipped": flipped},
    )
