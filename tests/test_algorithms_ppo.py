"""PPO math: GAE, advantage whitening, clipped policy/value losses, log-prob helpers (against TRL 1.16's
`selective_log_softmax` / `entropy_from_logits`), and the minibatch update loop.

TRL 1.16 ships no PPO trainer (no GAE, no `masked_whiten`): those are checked on hand-computed cases
and on the λ = γ = 1 identity (advantages = returns-to-go - values).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_rlhf.algorithms.logprobs import causal_lm_response_logprobs, entropy_from_logits, token_logprobs
from llama_rlhf.algorithms.masked import masked_mean
from llama_rlhf.algorithms.ppo import (
    critic_update,
    gae,
    leave_one_out,
    policy_loss,
    ppo_update,
    run_minibatches,
    torch_backward_and_step,
    value_loss,
    whiten_advantages,
)
from llama_rlhf.models import build_causal_lm, llama_config


def test_gae_hand_case():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 7.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1 is right padded: its reward 7 / value 9 are ignored
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: δ2 = 1 - .5 = .5; δ1 = .9*.5 - .5 = -.05, A1 = -.05 + .45*.5 = .175; A0 = -.05 + .45*.175
    # row 1: δ1 = 2 - 1 = 1, A1 = 1; δ0 = .9*1 - 1 = -.1, A0 = -.1 + .45*1 = .35
    torch.testing.assert_close(adv, torch.tensor([[0.02875, 0.175, 0.5], [0.35, 1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.52875, 0.675, 1.0], [1.35, 2.0, 0.0]]))
    adv1, ret1 = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv1, torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(ret1, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]]))


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    gamma=st.sampled_from([1.0, 0.9]),
)
def test_gae_lambda1_is_returns_to_go_minus_values(lengths, seed, gamma):
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), 6
    rewards, values = (
        torch.randn(b, t, generator=g, dtype=torch.float64),
        torch.randn(b, t, generator=g, dtype=torch.float64),
    )
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).long()
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    for i, n in enumerate(lengths):
        for s in range(n):
            to_go = sum(gamma ** (k - s) * rewards[i, k].item() for k in range(s, n))
            assert adv[i, s].item() == pytest.approx(to_go - values[i, s].item(), abs=1e-9)
            assert ret[i, s].item() == pytest.approx(to_go, abs=1e-9)
        assert (adv[i, n:] == 0).all() and (ret[i, n:] == 0).all()


@given(st.integers(2, 5), st.integers(1, 4), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_leave_one_out_is_each_score_less_the_others_mean(k, prompts, seed):
    """RLOO's baseline, by its definition (a loop over the others), and its closed form k/(k-1) (s - mean)."""
    s = torch.randn(prompts * k, generator=torch.Generator().manual_seed(seed))
    out = leave_one_out(s, k)
    for i in range(prompts * k):
        g = range(i // k * k, i // k * k + k)
        others = [float(s[j]) for j in g if j != i]
        assert out[i].item() == pytest.approx(float(s[i]) - sum(others) / (k - 1), abs=1e-5)
    group_mean = s.view(-1, k).mean(1, keepdim=True)
    torch.testing.assert_close(out.view(-1, k), k / (k - 1) * (s.view(-1, k) - group_mean))
    assert out.view(-1, k).sum(1).abs().max() < 1e-5  # a group's advantages sum to zero


def test_leave_one_out_refuses_groups_it_cannot_form():
    with pytest.raises(ValueError, match="groups of 1"):
        leave_one_out(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="5 scores"):
        leave_one_out(torch.zeros(5), 2)


def test_whiten_advantages():
    adv = torch.tensor([[1.0, 3.0, 50.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    w = whiten_advantages(adv, mask)
    torch.testing.assert_close(w, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))  # mean 3, std 2


def test_policy_loss_hand_case():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]]))
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last token is padding
    loss, m = policy_loss(logp, old, adv, mask, clip_range=0.2)
    # ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped); ratio .5, A=-1: max(.5, .8) = .8 (clipped);
    # ratio 1.1, A=2: -2.2 either way (not clipped)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert m["policy/clipfrac"].item() == pytest.approx(2 / 3)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert m["policy/approx_kl"].item() == pytest.approx(expected_kl, abs=1e-6)
    assert m["policy/ratio"].item() == pytest.approx((1.5 + 0.5 + 1.1) / 3, abs=1e-6)


def test_value_loss_hand_case():
    values = torch.tensor([[1.0, 1.0, 4.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, m = value_loss(values, old, returns, mask, clip_range=0.2)
    # token 0: unclipped 0, clipped V = .7 -> .09; token 1: unclipped 1, clipped .49 -> 1
    assert loss.item() == pytest.approx(0.5 * (0.09 + 1.0) / 2, abs=1e-6)
    assert m["value/clipfrac"].item() == pytest.approx(0.5)


def test_masked_mean_hand():
    assert masked_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 0, 1])).item() == pytest.approx(2.0)


def test_token_logprobs_and_entropy_match_trl():
    from trl.trainer.utils import entropy_from_logits as trl_entropy
    from trl.trainer.utils import selective_log_softmax as trl_logprobs

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    torch.testing.assert_close(token_logprobs(logits, labels), trl_logprobs(logits, labels))
    torch.testing.assert_close(
        token_logprobs(logits, labels, 0.7), trl_logprobs(logits, labels, temperature=0.7)
    )
    torch.testing.assert_close(entropy_from_logits(logits), trl_entropy(logits))
    # hand case: uniform over 4 classes -> log p = -log 4, H = log 4; ignored labels give 0
    flat = torch.zeros(1, 2, 4)
    torch.testing.assert_close(
        token_logprobs(flat, torch.tensor([[3, -100]])), torch.tensor([[-math.log(4), 0.0]])
    )
    torch.testing.assert_close(entropy_from_logits(flat), torch.full((1, 2), math.log(4)))


class TokenPolicy(torch.nn.Module):
    """A context-free policy: logits of each response token from a learned table (enough to test the loop)."""

    def __init__(self, vocab: int = 5, length: int = 3):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(length, vocab))

    def forward(self, tokens):
        return self.table.expand(tokens.size(0), -1, -1)


def logprob_fn(model, mb):
    logits = model(mb["tokens"])
    return token_logprobs(logits, mb["tokens"]), entropy_from_logits(logits)


def test_ppo_update_one_step_per_minibatch_and_improves_surrogate():
    torch.manual_seed(0)
    policy = TokenPolicy()
    tokens = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 1, 1], [2, 3, 4], [0, 0, 0]])
    with torch.no_grad():
        old = token_logprobs(policy(tokens), tokens)
    adv = torch.tensor(
        [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    )
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    batch = {"tokens": tokens, "old_logprobs": old, "advantages": adv, "mask": mask}
    steps = []
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    plain = torch_backward_and_step(policy.parameters(), opt, max_grad_norm=None)
    metrics = ppo_update(
        policy,
        batch,
        logprob_fn,
        lambda loss: (steps.append(loss.item()), plain(loss)),
        minibatch_size=2,
        epochs=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(steps) == 2 * math.ceil(5 / 2)  # one gradient step per minibatch, per epoch
    assert {"loss", "policy/clipfrac", "policy/approx_kl", "policy/ratio", "policy/entropy"} <= set(metrics)
    with torch.no_grad():
        new = token_logprobs(policy(tokens), tokens)
    assert masked_mean(adv * (new - old), mask) > 0  # π moved towards positive-advantage tokens

    # first step of a fresh policy: ratio 1, nothing clipped
    fresh = TokenPolicy()

    def loss_fn(mb):
        logp, _ = logprob_fn(fresh, mb)
        return policy_loss(logp, mb["old_logprobs"], mb["advantages"], mb["mask"])

    first = run_minibatches(batch, 5, loss_fn, lambda loss: None)
    assert first["policy/ratio"] == pytest.approx(1.0) and first["policy/clipfrac"] == 0.0


def test_critic_update_moves_values_towards_returns():
    critic = TokenPolicy(vocab=1)
    value_fn = lambda model, mb: model(mb["tokens"])[..., 0]
    tokens = torch.zeros(4, 3, dtype=torch.long)
    batch = {
        "tokens": tokens,
        "old_values": torch.zeros(4, 3),
        "returns": torch.ones(4, 3),
        "mask": torch.ones(4, 3),
    }
    opt = torch.optim.SGD(critic.parameters(), lr=0.5)
    metrics = critic_update(
        critic, batch, value_fn, torch_backward_and_step(critic.parameters(), opt), minibatch_size=4
    )
    assert metrics["loss"] == pytest.approx(0.5)  # 0.5 * (0 - 1)^2 before the step
    assert (critic.table > 0).all() and (critic.table <= 0.2 + 1e-6).all()


def test_causal_lm_response_logprobs_left_padded():
    cfg = llama_config("tiny", vocab_size=64)
    cfg.num_hidden_layers = 1
    model = build_causal_lm(cfg, seed=0).eval()
    prompt, response = [1, 5, 6], [7, 8]
    row = torch.tensor([[0, 0] + prompt + response, [1, 9, 9, 9, 9] + response])  # row 0 left padded by 2
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    with torch.no_grad():
        logp, ent = causal_lm_response_logprobs(model, row, am, response_len=2, with_entropy=True)
        alone = model(input_ids=torch.tensor([prompt + response])).logits
    expected = token_logprobs(alone[:, 2:4], torch.tensor([response]))
    torch.testing.assert_close(logp[:1], expected, rtol=1e-5, atol=1e-5)
    assert ent.shape == (2, 2) and (ent > 0).all()
