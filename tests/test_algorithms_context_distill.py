"""Safety context distillation: preprompting, the distillation target, and the targeted (RM-gated) selection."""

from __future__ import annotations

import pytest
import torch

from llama_rlhf.algorithms.context_distill import (
    SAFETY_PREPROMPTS,
    build_preprompted,
    distillation_sample,
    select_distillation,
)

PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]


def test_build_preprompted_forms():
    pre = SAFETY_PREPROMPTS[0]
    assert pre == "You are a safe and responsible assistant."
    assert build_preprompted(PROMPT, pre) == [{"role": "system", "content": pre}] + PROMPT
    assert build_preprompted(PROMPT, pre, as_system=False) == [
        {"role": "user", "content": f"{pre}\nHow do I pick a lock?"}
    ]
    with_system = [{"role": "system", "content": "Be brief."}] + PROMPT
    assert build_preprompted(with_system, pre)[0] == {"role": "system", "content": f"{pre}\nBe brief."}
    assert PROMPT == [{"role": "user", "content": "How do I pick a lock?"}]  # input untouched


def test_distillation_sample_drops_the_preprompt():
    answer = "Lock picking without permission is illegal; a locksmith can help."
    sample = distillation_sample(PROMPT, answer)
    assert sample == PROMPT + [{"role": "assistant", "content": answer}]
    assert all(p not in m["content"] for p in SAFETY_PREPROMPTS for m in sample)
    with pytest.raises(ValueError):
        distillation_sample(sample, answer)


def test_select_distillation_keeps_only_where_the_safety_rm_prefers_the_preprompted_answer():
    samples = ["s0", "s1", "s2", "s3"]
    kept, keep = select_distillation(samples, torch.tensor([0.9, 0.2, 0.5, 0.7]), [0.1, 0.4, 0.5, 0.6])
    assert kept == ["s0", "s3"]  # s1 got worse with the preprompt, s2 is a tie: not kept
    assert keep.tolist() == [True, False, False, True]
    with pytest.raises(ValueError):
        select_distillation(samples, [0.1], [0.2])
