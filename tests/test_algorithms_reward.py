"""Reward-model losses: hand-computed cases, invariants, and TRL 1.16's RewardTrainer.compute_loss as the reference."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_rlhf.algorithms.reward import (
    MARGINS,
    RATINGS,
    margin_for,
    ranking_loss,
    reward_model_loss,
    rm_accuracy,
    safety_aux_loss,
)

SIG, BETTER, SLIGHT, NEGL = range(4)


def test_margin_tables_are_table_27():
    assert RATINGS == ("significantly_better", "better", "slightly_better", "negligibly_better")
    r = torch.tensor([SIG, BETTER, SLIGHT, NEGL])
    torch.testing.assert_close(margin_for(r, "small"), torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
    torch.testing.assert_close(margin_for(r, "large"), torch.tensor([3.0, 2.0, 1.0, 0.0]))
    torch.testing.assert_close(margin_for(r, "none"), torch.zeros(4))
    with pytest.raises(ValueError):
        margin_for(torch.tensor([4]), "small")
    with pytest.raises(ValueError):
        margin_for(r, "huge")


def test_ranking_loss_hand_cases():
    one, zero = torch.tensor([1.0]), torch.tensor([0.0])
    # -log σ(1 - 0 - 1/3) = log(1 + e^{-2/3})
    assert ranking_loss(one, zero, torch.tensor([SLIGHT]), "small").item() == pytest.approx(
        0.414370087, abs=1e-6
    )
    # -log σ(1 - 0 - 2/3)
    assert ranking_loss(one, zero, torch.tensor([BETTER]), "small").item() == pytest.approx(
        0.540305575, abs=1e-6
    )
    # -log σ(1 - 0 - 3) = log(1 + e^2)
    assert ranking_loss(one, zero, torch.tensor([SIG]), "large").item() == pytest.approx(
        2.126928011, abs=1e-6
    )
    # no margin: -log σ(1)
    assert ranking_loss(one, zero, torch.tensor([SIG]), "none").item() == pytest.approx(0.313261688, abs=1e-6)
    assert ranking_loss(one, zero).item() == pytest.approx(0.313261688, abs=1e-6)
    # mean over pairs
    both = ranking_loss(
        torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([SLIGHT, SIG]), "large"
    )
    assert both.item() == pytest.approx((math.log1p(math.exp(0.0)) + math.log1p(math.exp(2.0))) / 2, abs=1e-6)


def test_safety_aux_loss_hand_cases():
    r = torch.tensor([2.0, 2.0, 0.0])
    safe = torch.tensor([1, 0, 1])
    # safe scored 2: log(1 + e^-2); unsafe scored 2: log(1 + e^2); score 0: log 2
    expected = (0.126928011 + 2.126928011 + 0.693147181) / 3
    assert safety_aux_loss(r, safe).item() == pytest.approx(expected, abs=1e-6)
    total = reward_model_loss(
        torch.tensor([1.0]),
        torch.tensor([0.0]),
        torch.tensor([SLIGHT]),
        "small",
        chosen_safe=torch.tensor([1]),
        rejected_safe=torch.tensor([0]),
        aux_safety_weight=0.5,
    )
    aux = (math.log1p(math.exp(-1.0)) + math.log(2)) / 2  # chosen safe at 1, rejected unsafe at 0
    assert total.item() == pytest.approx(0.414370087 + 0.5 * aux, abs=1e-6)
    with pytest.raises(ValueError):
        reward_model_loss(torch.tensor([1.0]), torch.tensor([0.0]), aux_safety_weight=1.0)


def test_accuracy_overall_and_per_rating():
    rc = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5])
    rr = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])  # pair 3 is a tie: counted wrong
    rating = torch.tensor([SIG, SIG, BETTER, BETTER, SLIGHT])
    acc = rm_accuracy(rc, rr, rating)
    assert acc["accuracy"].item() == pytest.approx(3 / 5)
    assert acc["accuracy/significantly_better"].item() == pytest.approx(0.5)
    assert acc["accuracy/better"].item() == pytest.approx(0.5)
    assert acc["accuracy/slightly_better"].item() == pytest.approx(1.0)
    assert math.isnan(acc["accuracy/negligibly_better"].item()) and acc["count/negligibly_better"].item() == 0
    assert set(rm_accuracy(rc, rr)) == {"accuracy"}


floats = st.floats(-20, 20, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(
    pairs=st.lists(st.tuples(floats, floats, st.integers(0, 3)), min_size=1, max_size=16),
    table=st.sampled_from(sorted(MARGINS)),
)
def test_ranking_loss_nonnegative_and_monotone(pairs, table):
    rc = torch.tensor([p[0] for p in pairs])
    rr = torch.tensor([p[1] for p in pairs])
    rating = torch.tensor([p[2] for p in pairs])
    loss = ranking_loss(rc, rr, rating, table)
    assert loss.item() >= 0.0
    # a stronger preference never has a smaller margin; so its loss is never smaller
    m = margin_for(torch.arange(4), table)
    assert all(m[i] >= m[i + 1] for i in range(3))
    stronger = ranking_loss(rc, rr, (rating - 1).clamp(min=0), table)
    assert stronger.item() >= loss.item() - 1e-6
    assert safety_aux_loss(rc, rating % 2).item() >= 0.0


def _trl_compute_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None):
    """Call TRL's own RewardTrainer.compute_loss on a stub holding only what the method reads."""
    from trl import RewardTrainer

    logits = torch.cat([r_chosen, r_rejected]).unsqueeze(-1)  # (2B, 1): chosen rows then rejected rows
    stub = SimpleNamespace(
        model=SimpleNamespace(training=False),
        args=SimpleNamespace(center_rewards_coefficient=None),
        accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(len(logits), 3, dtype=torch.long),
        "attention_mask": torch.ones(len(logits), 3),
    }
    if margin is not None:
        inputs["margin"] = margin
    return RewardTrainer.compute_loss(
        stub, lambda **kw: SimpleNamespace(logits=logits), inputs
    ), stub._metrics["eval"]


@settings(max_examples=50, deadline=None)
@given(
    pairs=st.lists(st.tuples(floats, floats, st.integers(0, 3)), min_size=1, max_size=16),
    table=st.sampled_from(["small", "large"]),
)
def test_matches_trl_reward_trainer(pairs, table):
    rc = torch.tensor([p[0] for p in pairs])
    rr = torch.tensor([p[1] for p in pairs])
    rating = torch.tensor([p[2] for p in pairs])
    ref, metrics = _trl_compute_loss(rc, rr, margin_for(rating, table))
    torch.testing.assert_close(ranking_loss(rc, rr, rating, table), ref, rtol=1e-5, atol=1e-6)
    ref_plain, metrics = _trl_compute_loss(rc, rr, None)
    torch.testing.assert_close(ranking_loss(rc, rr), ref_plain, rtol=1e-5, atol=1e-6)
    assert rm_accuracy(rc, rr)["accuracy"].item() == pytest.approx(metrics["accuracy"][-1])
