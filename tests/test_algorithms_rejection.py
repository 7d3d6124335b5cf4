"""Rejection sampling: best-of-K with deterministic ties, and the archive that never loses a prompt's best."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_rlhf.algorithms.rejection import RejectionArchive, best_of_k, pick_quality, within_prompt_share


def test_best_of_k_ties_and_nan():
    rewards = torch.tensor([[1.0, 3.0, 3.0], [math.nan, -1.0, -1.0], [2.0, 2.0, 2.0], [math.nan] * 3])
    idx, best = best_of_k(rewards)
    assert idx.tolist() == [1, 1, 0, 0]
    assert best[:3].tolist() == [3.0, -1.0, 2.0] and best[3].item() == -math.inf


def test_within_prompt_share_hand_and_statistics():
    """Hand cases (all spread inside prompts: 1; none: 0), and the law of total variance against numpy-free
    sums: within + between = total."""
    assert within_prompt_share(torch.tensor([[0.0, 2.0], [0.0, 2.0]])) == pytest.approx(1.0)
    assert within_prompt_share(torch.tensor([[1.0, 1.0], [3.0, 3.0]])) == pytest.approx(0.0)
    assert within_prompt_share(torch.ones(3, 4)) == 0.0
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) + torch.randn(50, 1) * 3
    flat = [float(v) for v in x.flatten()]
    mean = sum(flat) / len(flat)
    total = sum((v - mean) ** 2 for v in flat) / len(flat)
    between = sum((float(r.mean()) - mean) ** 2 for r in x) / len(x)
    assert within_prompt_share(x) == pytest.approx(1 - between / total, rel=1e-6)


def _hand_archive() -> RejectionArchive:
    a = RejectionArchive()
    a.add(1, "p1", "q1", "a", 0.5)
    a.add(1, "p2", "q2", "b", 0.9)
    a.add(1, "p3", "q3", "e", 0.2)
    a.add(1, "p5", "q5", "f", 0.6)
    a.add(2, "p1", "q1", "c", 0.7)  # better than iteration 1: used
    a.add(2, "p2", "q2", "d", 0.4)  # worse than iteration 1's 0.9: the archived "b" is used
    a.add(2, "p4", "q4", "g", 0.1)
    assert not a.add(2, "p4", "q4", "g-tie", 0.1)  # a tie keeps the first sample
    return a


def test_training_set_rule_hand_case():
    a = _hand_archive()
    full = a.training_set(2, prior_top_fraction=1.0)
    # this iteration's prompts (first-seen order), then prior-only prompts by reward
    assert [(s.prompt_id, s.response, s.iteration) for s in full] == [
        ("p1", "c", 2),
        ("p2", "b", 1),
        ("p4", "g", 2),
        ("p5", "f", 1),
        ("p3", "e", 1),
    ]
    half = a.training_set(2, prior_top_fraction=0.5)  # ceil(0.5 * 2) = 1 prior-only prompt: the best one
    assert [s.response for s in half] == ["c", "b", "g", "f"]
    assert [s.response for s in a.training_set(2, prior_top_fraction=0.0)] == ["c", "b", "g"]
    # iteration 1's set ignores later iterations
    assert [s.response for s in a.training_set(1)] == ["a", "b", "e", "f"]
    assert a.best("p2").response == "b" and a.best("p1", up_to=1).response == "a"
    assert len(a) == 5 and a.iterations() == [1, 2]
    with pytest.raises(ValueError):
        a.add(3, "p1", "q1", "x", math.nan)
    with pytest.raises(ValueError):
        a.training_set(2, 1.5)


def test_add_best_of_k_and_json_roundtrip(tmp_path):
    a = _hand_archive()
    idx = a.add_best_of_k(
        3,
        ["p1", 7],
        ["q1", [{"role": "user", "content": "q7"}]],
        [["x", "y"], ["z", "w"]],
        torch.tensor([[0.1, 0.2], [5.0, 5.0]]),
    )
    assert idx.tolist() == [1, 0]
    path = a.save(tmp_path / "rs" / "archive.json")
    b = RejectionArchive.load(path)
    for it in (1, 2, 3):
        assert b.training_set(it) == a.training_set(it)
    assert b.best(7).response == "z" and isinstance(b.best(7).prompt_id, int)
    assert b.best(7).prompt == [{"role": "user", "content": "q7"}]
    assert [s.response for s in b.training_set(3)][:2] == ["c", "z"]  # p1's 0.2 at iteration 3 < archived 0.7


adds = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 4), st.floats(-5, 5, allow_nan=False)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=50, deadline=None)
@given(adds=adds)
def test_archive_never_loses_a_prompts_best(adds, tmp_path_factory):
    a = RejectionArchive()
    for n, (it, pid, r) in enumerate(adds):
        a.add(it, pid, f"prompt{pid}", f"resp{n}", r)
    path = a.save(tmp_path_factory.mktemp("rs") / "a.json")
    for archive in (a, RejectionArchive.load(path)):
        last = max(it for it, _, _ in adds)
        tset = archive.training_set(last, prior_top_fraction=1.0)
        assert sorted(s.prompt_id for s in tset) == sorted({pid for _, pid, _ in adds})
        for s in tset:
            mine = [(it, n, r) for n, (it, pid, r) in enumerate(adds) if pid == s.prompt_id]
            best = max(r for _, _, r in mine)
            assert s.reward == best
            # ties: this iteration's sample if it reaches the best, else the earliest; then the first added
            tied = sorted((it, n) for it, n, r in mine if r == best)
            current = [(it, n) for it, n in tied if it == last]
            it, n = current[0] if current else tied[0]
            assert (s.iteration, s.response) == (it, f"resp{n}")
            assert archive.best(s.prompt_id).reward == best
            assert (archive.best(s.prompt_id).iteration, archive.best(s.prompt_id).response) == (
                tied[0][0],
                f"resp{tied[0][1]}",
            )


def test_rescore_replaces_rewards_so_the_selection_uses_one_rm():
    a = RejectionArchive()
    a.add(1, "p", "q", "old answer", 5.0)  # scored by RM v1 (another scale)
    a.add(2, "p", "q", "new answer", 0.4)  # scored by RM v2
    assert a.training_set(2)[0].response == "old answer"  # the stale 5.0 wins: not comparable
    a.rescore([(1, "p", 0.1)])  # the same v1 sample re-scored by RM v2
    assert [s.response for s in a.training_set(2)] == ["new answer"]
    assert [(s.iteration, s.reward) for s in a.samples()] == [(1, 0.1), (2, 0.4)]
    with pytest.raises(KeyError):
        a.rescore([(3, "p", 0.0)])
    with pytest.raises(ValueError):
        a.rescore([(1, "p", float("nan"))])


def test_pick_quality_hand_case():
    """Prompt 1: Rc ranks the one good sample first (3 differing pairs, all ordered as gold). Prompt 2: two
    samples tie on gold (their pair is not counted) and on Rc; Rc orders 2 of the 5 differing pairs right."""
    gold = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.4, 0.4, 1.0, 0.0]])
    rc = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.5, 0.5, 0.1, 0.2]])
    q = pick_quality(gold, rc, best_of_k(rc)[0])
    assert q["pairs"] == 8 and q["agreement"] == pytest.approx(5 / 8)
    assert q["picked"] == pytest.approx(0.7) and q["random"] == pytest.approx(0.35) and q["best"] == pytest.approx(1.0)
    assert q["gain"] == pytest.approx(0.35) and q["gain_ci"][0] <= 0.35 <= q["gain_ci"][1]
    # a reward tie on a pair whose gold differs is a coin flip: one half
    half = pick_quality(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.3, 0.3]]), torch.tensor([0]))
    assert half["agreement"] == 0.5 and half["pairs"] == 1
    with pytest.raises(ValueError, match="must be"):
        pick_quality(gold, rc[:, :3], torch.tensor([0, 0]))


@given(st.integers(1, 6), st.integers(2, 5), st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_pick_quality_matches_a_loop_over_pairs(n, k, seed):
    """Against a plain loop over every pair of every prompt (gold and Rc on a coarse grid: ties happen)."""
    g = torch.Generator().manual_seed(seed)
    gold = torch.randint(0, 3, (n, k), generator=g).float() / 2
    rc = torch.randint(0, 4, (n, k), generator=g).float()
    picked = torch.randint(0, k, (n,), generator=g)
    agree, pairs = 0.0, 0
    for i in range(n):
        for a in range(k):
            for b in range(a + 1, k):
                if gold[i, a] == gold[i, b]:
                    continue
                pairs += 1
                if rc[i, a] == rc[i, b]:
                    agree += 0.5
                elif (gold[i, a] > gold[i, b]) == (rc[i, a] > rc[i, b]):
                    agree += 1
    q = pick_quality(gold, rc, picked)
    assert q["pairs"] == pairs
    assert (q["agreement"] == pytest.approx(agree / pairs)) if pairs else q["agreement"] != q["agreement"]
    assert q["picked"] == pytest.approx(sum(float(gold[i, picked[i]]) for i in range(n)) / n)
    assert q["random"] == pytest.approx(float(gold.mean())) and q["best"] >= q["picked"]


def test_sft_mix_draws_a_seeded_share_of_the_sft_demonstrations():
    """`rejection_sampling.sft_mix` x the RS samples, drawn from the SFT set per version (the same for a version
    and for V1's random-pick control), distinct while the set lasts, repeated beyond it; 0 adds nothing."""
    from types import SimpleNamespace

    from llama_rlhf.config import build_config
    from llama_rlhf.data.records import SFTRecord
    from llama_rlhf.orchestrator.rejection import sft_mix

    pool = [SFTRecord([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}])
            for i in range(10)]
    ctx = lambda mix: SimpleNamespace(cfg=build_config({"rejection_sampling": {"sft_mix": mix}}),  # noqa: E731
                                      data=SimpleNamespace(sft=pool))
    assert sft_mix(ctx(0.0), 8, 1) == []
    half = sft_mix(ctx(0.5), 8, 2)
    assert len(half) == 4 and len({id(r) for r in half}) == 4 and all(r in pool for r in half)
    assert half == sft_mix(ctx(0.5), 8, 2) and half != sft_mix(ctx(0.5), 8, 3)
    many = sft_mix(ctx(1.5), 10, 1)
    assert len(many) == 15 and len({id(r) for r in many[:10]}) == 10
