"""Responses of controlled quality: SFT demonstrations (imperfect on purpose) and RM candidates.

`candidates(prompt, rng)` lists responses whose quality is known by construction (correct, wrong,
unformatted, bare refusal, topic-specific / generic / mismatched refusal, unsafe compliance, instruction-violating);
`preference_for(prompt, rng, ...)` draws two of them and lets a synthetic annotator compare them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import gatt, helpful, safety
from .annotate import annotate
from .records import Preference, Prompt, SFTRecord

QUALITIES = (
    "correct", "wrong", "unformatted", "rambling", "bare_refusal", "good_refusal", "generic_refusal",
    "mismatched_refusal", "unsafe_compliance", "instruction_violating",
)
# How the imperfect SFT demonstrations of helpful requests fail, and how often: a wrong answer, a false
# refusal of a benign request (the paper's over-cautious failure), or the right answer buried in filler.
HELPFUL_ERRORS = {"wrong": 0.35, "false_refusal": 0.4, "rambling": 0.25}


@dataclass(frozen=True)
class Candidate:
    text: str
    quality: str


def _helpful_candidates(meta: dict, rng: random.Random) -> list[Candidate]:
    out = [Candidate(helpful.canonical_answer(meta), "correct")]
    bare = helpful.canonical_answer(meta)[len(helpful.ANSWER_PREFIX) + 1:]
    out.append(Candidate(f"It is {bare}", "unformatted"))
    # Rambling comes with right and wrong answers alike, so the style says nothing about correctness.
    out.append(Candidate(helpful.rambling_answer(meta, rng), "rambling"))
    out.append(Candidate(helpful.rambling_answer(meta, rng, wrong=True), "wrong"))
    for _ in range(2):
        out.append(Candidate(helpful.wrong_answer(meta, rng)[0], "wrong"))
    out.append(Candidate(safety.bare_refusal(rng), "bare_refusal"))
    return out


def _unsafe_candidates(meta: dict, rng: random.Random) -> list[Candidate]:
    return [
        Candidate(safety.good_refusal(meta, rng), "good_refusal"),  # names this risk, relevant alternative
        Candidate(safety.generic_refusal(rng), "generic_refusal"),
        Candidate(safety.mismatched_refusal(meta, rng), "mismatched_refusal"),  # another risk's refusal
        Candidate(safety.bare_refusal(rng), "bare_refusal"),
        Candidate(safety.compliance(rng), "unsafe_compliance"),
        Candidate(safety.compliance(rng), "unsafe_compliance"),
    ]


def _gatt_candidates(meta: dict, rng: random.Random) -> list[Candidate]:
    iid, task = meta["instruction_id"], meta["task"]
    wrong = {**task, "gold": helpful.wrong_gold(task, rng)[0]}
    return [
        Candidate(gatt.apply(iid, task), "correct"),
        Candidate(gatt.violate(iid, task), "instruction_violating"),
        Candidate(gatt.apply(iid, wrong), "wrong"),
        Candidate(gatt.violate(iid, wrong), "wrong"),
        Candidate(safety.bare_refusal(rng), "bare_refusal"),
    ]


def candidates(prompt: Prompt, rng: random.Random) -> list[Candidate]:
    """Responses of known quality for `prompt` (texts may repeat; the annotator drops ties)."""
    if prompt.kind == "unsafe":
        return _unsafe_candidates(prompt.meta, rng)
    if prompt.kind == "gatt":
        return _gatt_candidates(prompt.meta, rng)
    return _helpful_candidates(prompt.meta, rng)


def response_of_quality(prompt: Prompt, quality: str, rng: random.Random) -> str:
    """One response of the given quality (see QUALITIES); raises if the prompt's kind has none."""
    for cand in candidates(prompt, rng):
        if cand.quality == quality:
            return cand.text
    raise ValueError(f"no {quality!r} response for a {prompt.kind!r} prompt")


def preference_for(
    prompt: Prompt, rng: random.Random, noise: float = 0.1, max_tries: int = 8
) -> Preference | None:
    """Annotate a random pair of distinct candidates; retry pairs the annotator drops."""
    cands = candidates(prompt, rng)
    for _ in range(max_tries):
        a, b = rng.sample(cands, 2)
        if a.text == b.text:
            continue
        pref = annotate(prompt, a.text, b.text, rng, noise=noise)
        if pref is not None:
            return pref
    return None


def sft_demo(prompt: Prompt, rng: random.Random, wrong: bool = False) -> SFTRecord:
    """A demonstration for `prompt`: correct, or (wrong=True) a wrong / unsafe / forgetful one."""
    meta = prompt.meta
    error = ""
    if prompt.kind == "unsafe":
        text = safety.compliance(rng) if wrong else safety.good_refusal(meta, rng)
        error = "unsafe" if wrong else ""
    elif prompt.kind == "gatt":
        iid, task = meta["instruction_id"], meta["task"]
        if not wrong:
            text = gatt.apply(iid, task)
        elif rng.random() < 0.5:
            text, error = gatt.violate(iid, task), "instruction"
        else:
            bad, error = helpful.wrong_gold(task, rng)
            text = gatt.apply(iid, {**task, "gold": bad})
    elif wrong:
        error = rng.choices(list(HELPFUL_ERRORS), weights=list(HELPFUL_ERRORS.values()))[0]
        if error == "wrong":
            text, error = helpful.wrong_answer(meta, rng)
        elif error == "false_refusal":
            text = safety.bare_refusal(rng)
        else:
            text = helpful.rambling_answer(meta, rng)
    else:
        text = helpful.canonical_answer(meta)
    return SFTRecord(
        messages=[dict(m) for m in prompt.messages] + [{"role": "assistant", "content": text}],
        meta={"prompt_id": prompt.id, "kind": prompt.kind, "is_safety": prompt.is_safety, "correct": not wrong,
              "error": error},
    )
