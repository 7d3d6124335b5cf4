"""PPO reward shaping: Rc, LOGIT, WHITEN, per-token KL and the per-token reward tensor.

TRL 1.16 ships no PPO trainer and no `masked_whiten` (removed with `trl/core.py`), so WHITEN is checked
against hand-computed numbers and the classic formula; the KL estimators against exact KL(p‖q).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_rlhf.algorithms.masked import masked_mean, masked_var, masked_whiten
from llama_rlhf.algorithms.shaping import (
    combine_rewards,
    kl_penalty,
    last_token_index,
    logit,
    ppo_scores,
    shaped_rewards,
)


def test_combine_rewards_piecewise():
    rh = torch.tensor([0.9, 0.9, 0.9, 0.9])
    rs = torch.tensor([0.5, 0.1, 0.5, 0.15])
    is_safety = torch.tensor([False, False, True, False])
    # helpful prompt & safe -> Rh; Rs < 0.15 -> Rs; safety prompt -> Rs; Rs == 0.15 is not < 0.15 -> Rh
    torch.testing.assert_close(combine_rewards(rh, rs, is_safety), torch.tensor([0.9, 0.1, 0.5, 0.9]))
    torch.testing.assert_close(
        combine_rewards(rh, rs, is_safety, threshold=0.2), torch.tensor([0.9, 0.1, 0.5, 0.15])
    )


def test_logit_hand_and_clamped():
    out = logit(torch.tensor([0.5, 0.75, 0.0, 1.0]))
    torch.testing.assert_close(
        out, torch.tensor([0.0, 1.0986123, -13.815510, 13.815510]), rtol=1e-5, atol=1e-4
    )
    assert torch.isfinite(out).all()
    p = torch.tensor([0.1, 0.3, 0.9])
    torch.testing.assert_close(torch.sigmoid(logit(p)), p)


def test_masked_mean_var_whiten_hand():
    v = torch.tensor([[2.0, 4.0], [6.0, 100.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    assert masked_mean(v, m).item() == pytest.approx(4.0)
    assert masked_var(v, m).item() == pytest.approx(4.0)  # unbiased: (4 + 0 + 4) / 2
    assert masked_var(v, m, unbiased=False).item() == pytest.approx(8 / 3)
    w = masked_whiten(v, m)
    torch.testing.assert_close(w[m.bool()], torch.tensor([-1.0, 0.0, 1.0]))
    assert w[1, 1].item() == pytest.approx(48.0)  # off-mask entries transformed alike (TRL semantics)
    torch.testing.assert_close(masked_whiten(v, m, shift_mean=False)[m.bool()], torch.tensor([3.0, 4.0, 5.0]))
    torch.testing.assert_close(masked_mean(v, m, dim=1), torch.tensor([3.0, 6.0]))
    assert masked_mean(v, torch.zeros_like(m)).item() == 0.0
    with pytest.raises(ValueError):
        masked_var(v, torch.tensor([[1, 0], [0, 0]]))


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=6, max_size=6),
    mask=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_whiten_mean0_std1_over_mask(values, mask):
    v = torch.tensor(values, dtype=torch.float64).view(2, 3)
    m = torch.tensor(mask).view(2, 3)
    sel = v[m]
    if sel.numel() < 2 or sel.std() < 1e-3:
        return
    w = masked_whiten(v, m)[m]
    assert w.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w.std().item() == pytest.approx(1.0, abs=1e-5)  # torch.std is unbiased, as masked_var


def test_ppo_scores_whitens_logit_of_rc():
    rh = torch.tensor([0.5, 0.75, 0.9])
    rs = torch.tensor([0.9, 0.9, 0.1])
    scores = ppo_scores(rh, rs, torch.tensor([False, False, False]))
    raw = torch.log(torch.tensor([1.0, 3.0, 1 / 9]))  # logit of Rc = (0.5, 0.75, 0.1)
    torch.testing.assert_close(scores, (raw - raw.mean()) / raw.std(), rtol=1e-5, atol=1e-5)
    unwhitened = ppo_scores(rh, rs, torch.tensor([False, False, False]), whiten=False)
    torch.testing.assert_close(unwhitened, raw, rtol=1e-5, atol=1e-5)


def test_kl_estimators_hand():
    logp, logp_ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert kl_penalty(logp, logp_ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)  # log 2
    assert kl_penalty(logp, logp_ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)  # (0.5 - 1) + log 2
    with pytest.raises(ValueError):
        kl_penalty(logp, logp_ref, "k2")


def test_kl_estimators_unbiased_under_the_policy():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(7, generator=g), 0)
    q = torch.softmax(torch.randn(7, generator=g), 0)
    exact = torch.sum(p * (p.log() - q.log()))
    for est in ("k1", "k3"):
        expectation = torch.sum(p * kl_penalty(p.log(), q.log(), est))  # E_{x~p}[k(x)]
        torch.testing.assert_close(expectation, exact)
    assert (kl_penalty(p.log(), q.log(), "k3") >= 0).all()
    ref = torch.nn.functional.kl_div(q.log(), p, reduction="sum")  # torch's KL(p‖q)
    torch.testing.assert_close(exact, ref)


def test_shaped_rewards_hand():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    logp_ref = torch.zeros(3, 3)
    logp = torch.tensor([[0.1, 0.2, 9.0], [0.0, -0.1, 0.3], [1.0, 1.0, 1.0]])  # k1 = logp - logp_ref
    scores = torch.tensor([1.0, -2.0, 5.0])
    rewards, kl = shaped_rewards(scores, logp, logp_ref, mask, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.1 + 1.0, 0.0], [0.0, 0.05, -0.15 - 2.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(kl, logp * mask)
    assert last_token_index(mask).tolist() == [1, 2, -1]
