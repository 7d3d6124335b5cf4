"""SFT loss: answer-only, shifted, per-token mean over the batch."""

from __future__ import annotations

import math

import pytest
import torch

from llama_rlhf.algorithms.sft import sft_loss, sft_token_losses


def test_sft_loss_hand_case():
    # V = 2; logits at positions 0..2 predict tokens 1..3
    logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [0.0, math.log(3.0)], [5.0, 5.0]]])
    labels = torch.tensor([[-100, 0, -100, 0]])  # position 1 is a prompt token: no loss for predicting it
    # token 1 (= 0) from logits[0]: p = 3/4 -> 0.287682; token 3 (= 0) from logits[2]: p = 1/4 -> 1.386294
    losses = sft_token_losses(logits, labels)
    torch.testing.assert_close(losses, torch.tensor([[0.287682, 0.0, 1.386294]]), rtol=0, atol=1e-6)
    assert sft_loss(logits, labels).item() == pytest.approx((0.287682 + 1.386294) / 2, abs=1e-6)
    # a fixed denominator for gradient accumulation: the step's token count
    assert sft_loss(logits, labels, num_items=4).item() == pytest.approx((0.287682 + 1.386294) / 4, abs=1e-6)


def test_sft_loss_is_a_token_mean_over_the_batch_not_a_mean_of_rows():
    logits = torch.zeros(2, 4, 2)  # every prediction: log 2
    logits[1, :, 0] = math.log(3.0)  # row 1 predicts token 0 with p = 3/4
    labels = torch.tensor([[-100, 1, -100, -100], [-100, 0, 0, 0]])
    expected = (math.log(2) + 3 * -math.log(0.75)) / 4  # 1 token in row 0, 3 in row 1
    assert sft_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert sft_loss(logits, torch.full_like(labels, -100)).item() == 0.0
