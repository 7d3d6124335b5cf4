"""PPO raises the reward it optimises: the real loop (Ray actors, DeepSpeed policy/reference/critic, vLLM
rollout, weight sync) on the CI config with a rule-based reward in place of the reward models.

The reward of a response is the share of its tokens in the upper half of the vocabulary, whitened over
the batch as the reward models' scores are. From a random init that share starts near 0.5; PPO must
raise the batch mean by MARGIN within ITERS iterations. The same
criterion is checked to fail when the reward's sign is flipped (the update then pushes the other way),
and a large KL coefficient beta must keep the policy closer to pi_0 than a small one. The critic-free
advantage (`ppo.advantage: rloo`, 4 responses per prompt) must pass and fail the same criteria, with no
critic in the job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

ITERS = 8
MARGIN = 0.05
RLOO = {"advantage": "rloo", "samples_per_prompt": 4}  # 16 prompts x 4 responses: the same 64 per batch
OVERRIDES = ["ppo.lr=3.0e-3", "ppo.critic_lr=1.0e-3", "ppo.batch_size=64", "ppo.minibatch_size=16",
             "ppo.lam=1.0", "ppo.early_stop_patience=0", "ppo.checkpoint_every=0", "ppo.kl_coef=0.01",
             "ppo.max_new_tokens=24", "data.world.n_rlhf=128"]


def _target_share(sign: float):
    def reward(ctx, prompts, prompt_ids, responses):
        half = ctx.tok.vocab_size // 2
        share = torch.tensor([sum(t >= half for t in r) / max(1, len(r)) for r in responses], dtype=torch.float32)
        score = (share - share.mean()) / (share.std() + 1e-6)  # whitened, as the RMs' scores are
        return sign * score, {"reward/rc": float(share.mean())}
    return reward


def _thirds(history: list[dict]) -> tuple[float, float]:
    q = max(1, len(history) // 3)
    rc = [h["reward/rc"] for h in history]
    return sum(rc[:q]) / q, sum(rc[-q:]) / q


@pytest.fixture(scope="module")
def ppo_runs(tmp_path_factory):
    import ray

    from llama_rlhf.config import load_config
    from llama_rlhf.orchestrator import pipeline
    from llama_rlhf.orchestrator import stages as S
    from llama_rlhf.orchestrator.ppo_stage import ppo
    from llama_rlhf.orchestrator.progress import Progress
    from llama_rlhf.orchestrator.run_dir import RunDir

    out = tmp_path_factory.mktemp("ppo")
    cfg = load_config(ROOT / "configs" / "ci.yaml", [f"run.output_dir={out}", *OVERRIDES])
    run = RunDir(out / "ci")
    ctx = pipeline._context(cfg, run, Progress(enabled=False))
    results = {}
    try:
        ctx.policy.load(S.model_spec(ctx, "causal", None, "init"))
        init = S.save_checkpoint(ctx, ctx.policy, "init")
        pipeline._start_rollout(ctx, init)
        critic = ctx.critic
        for version, (name, sign, beta, iters, rloo) in enumerate(
                [("learn", 1.0, 0.01, ITERS, {}), ("flipped", -1.0, 0.01, 4, {}), ("large_beta", 1.0, 1.0, 4, {}),
                 ("rloo", 1.0, 0.01, ITERS, RLOO), ("rloo_flipped", -1.0, 0.01, 4, RLOO),
                 ("warmup", 1.0, 0.01, 3, {"critic_warmup_iterations": 2})], start=1):
            ctx.cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(
                update={"kl_coef": beta, "iterations": iters, **rloo})})
            ctx.critic = None if rloo.get("advantage") else critic  # critic-free: a call to the critic would fail
            pipeline._serve(ctx, S, init)
            ppo(ctx, version, init, init, init, reward_fn=_target_share(sign))
            results[name] = [r for r in run.metrics() if r["stage"] == f"v{version}/ppo"]
        ctx.critic = critic
    finally:
        pipeline._shutdown(ctx)
        if ray.is_initialized():
            ray.shutdown()
    return results


def test_ppo_raises_the_rule_reward(ppo_runs):
    first, last = _thirds(ppo_runs["learn"])
    print(f"target share: first third {first:.3f}, last third {last:.3f}")
    assert last - first >= MARGIN


def test_flipped_reward_fails_the_same_criterion(ppo_runs):
    first, last = _thirds(ppo_runs["flipped"])
    print(f"flipped: target share first third {first:.3f}, last third {last:.3f}")
    assert last - first < MARGIN and last < first


def test_kl_to_pi0_is_bounded_by_beta(ppo_runs):
    small = [r["kl"] for r in ppo_runs["learn"]]
    large = [r["kl"] for r in ppo_runs["large_beta"]]
    print(f"KL per token after 4 iterations: beta 0.01 -> {small[3]:.3f}, beta 1.0 -> {large[3]:.3f}")
    assert large[3] < small[3]


def test_critic_free_rloo_raises_the_rule_reward(ppo_runs):
    first, last = _thirds(ppo_runs["rloo"])
    print(f"rloo: target share first third {first:.3f}, last third {last:.3f}")
    assert last - first >= MARGIN
    assert not any(k.startswith("critic/") for r in ppo_runs["rloo"] for k in r)


def test_critic_free_rloo_flipped_fails(ppo_runs):
    first, last = _thirds(ppo_runs["rloo_flipped"])
    print(f"rloo flipped: target share first third {first:.3f}, last third {last:.3f}")
    assert last - first < MARGIN and last < first


def test_critic_warmup_trains_the_critic_alone_first(ppo_runs):
    """`ppo.critic_warmup_iterations=2` of 3: the first two iterations step the critic only, so the policy
    (and the engine that samples the third batch) is still pi_0: KL 0 through the third iteration's scoring;
    the third steps both."""
    rows = sorted(ppo_runs["warmup"], key=lambda r: r["step"])
    rows = [r for r in rows if "kl" in r]
    assert [any(k.startswith("critic/") for k in r) for r in rows] == [True, True, True]
    assert [any(k.startswith("policy/") for k in r) for r in rows] == [False, False, True]
    print("KL per iteration with 2 warm-up iterations:", [f"{r['kl']:.2e}" for r in rows])
    assert all(abs(r["kl"]) < 1e-6 for r in rows)
