"""PPO on top of the rejection-sampling checkpoint (paper section 3.2.3), one RLHF version.

Each iteration reads top to bottom: rollout -> score -> shape -> advantages -> update -> sync.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from llama_rlhf.actors.batches import PPOBatch, sequence_batch
from llama_rlhf.actors.remote import gather
from llama_rlhf.algorithms.bootstrap import paired_diff_ci
from llama_rlhf.algorithms.masked import masked_mean
from llama_rlhf.algorithms.ppo import gae, leave_one_out, whiten_advantages
from llama_rlhf.algorithms.shaping import ppo_scores, shaped_rewards
from llama_rlhf.orchestrator import ppo_state
from llama_rlhf.orchestrator.datasets import prompt_token_ids
from llama_rlhf.orchestrator.stages import (
    Context,
    flush_truncation,
    model_spec,
    optim_spec,
    publish_policy,
    rm_score,
    stage_seed,
    sync_rollout,
)
from llama_rlhf.orchestrator.timing import GENERATE, LOAD

RewardFn = Callable[[Context, list, list, list], tuple[torch.Tensor, dict]]
"""(ctx, prompts, prompt ids, response ids) -> (the sequence-level score PPO maximises (N,), metrics)."""


def rm_reward(ctx: Context, prompts, prompt_ids, responses) -> tuple[torch.Tensor, dict]:
    """The paper's reward: the safety-gated combination Rc of the two RMs, WHITEN(LOGIT(Rc))."""
    p = ctx.cfg.ppo
    is_safety = torch.tensor([q.is_safety for q in prompts])
    rh, rs, rc = rm_score(ctx, prompt_ids, responses, is_safety)
    scores = ppo_scores(rh, rs, is_safety, p.safety_threshold, whiten=p.whiten_rewards and len(prompts) > 1)
    return scores, {"reward/rc": float(rc.mean()), "reward/rh": float(rh.mean()), "reward/rs": float(rs.mean())}


def ppo_iteration(ctx: Context, version: int, it: int, reward_fn: RewardFn = rm_reward) -> dict:
    cfg, tok = ctx.cfg, ctx.tok
    p = cfg.ppo
    k, critic = p.samples_per_prompt, p.uses_critic
    seed = stage_seed(cfg.run.seed, "ppo", version, it)
    drawn = random.Random(seed).sample(ctx.data.rlhf_prompts, min(p.batch_size // k, len(ctx.data.rlhf_prompts)))
    drawn_ids = prompt_token_ids(tok, drawn, ctx.max_prompt_len, ctx.truncation)

    # 1. rollout with the current policy (vLLM): k responses per prompt, a prompt's responses adjacent
    with ctx.clock(GENERATE):
        outs = ctx.rollout.generate(drawn_ids, k, p.temperature, p.top_p, p.max_new_tokens, seed)
    samples = [s for o in outs for s in o]
    prompts, prompt_ids = [q for q in drawn for _ in range(k)], [ids for ids in drawn_ids for _ in range(k)]
    responses = [s.token_ids for s in samples]
    seq = sequence_batch(prompt_ids, responses, tok.pad_id)
    mask = seq.response_mask.float()

    # 2. score: both reward models, the reference and the current policy, the critic (all at once)
    with ctx.clock("score: PPO (reward models, policy, reference, critic)"):
        (scores, reward_metrics), logp, ref_logp, *values = gather(
            lambda: reward_fn(ctx, prompts, prompt_ids, responses), lambda: ctx.policy.logprobs(seq),
            lambda: ctx.reference.logprobs(seq), *([lambda: ctx.critic.values(seq)] if critic else []))
    values = values[0] if critic else torch.zeros_like(mask)

    # 3. shape: R = WHITEN(LOGIT(Rc)) on the last token - beta * KL(pi || pi_0) on every token
    #    (rloo: the score less the mean of the other responses' scores to the same prompt)
    rewards, kl = shaped_rewards(scores if critic else leave_one_out(scores, k), logp, ref_logp, mask, p.kl_coef,
                                 p.kl_estimator)

    # 4. advantages (GAE on the critic's values; rloo: returns-to-go, values 0), whitened over the batch's tokens
    advantages, returns = gae(rewards, values, mask, p.gamma, p.lam if critic else 1.0)
    advantages = whiten_advantages(advantages, mask)

    # 5. update policy and critic: one gradient step per minibatch (the critic alone while it warms up)
    batch = PPOBatch(seq.input_ids, seq.attention_mask, seq.response_mask, logp, advantages, values, returns)
    policy = it >= p.critic_warmup_iterations
    with ctx.clock("train: PPO (policy and critic)"):
        steps = gather(
            *([lambda: ctx.policy.ppo_step(batch, p.minibatch_size, p.clip_range, seed, p.micro_batch_size)]
              if policy else []),
            *([lambda: ctx.critic.value_step(batch, p.minibatch_size, p.value_clip_range, seed,
                                             p.micro_batch_size)] if critic else []))
    pm, cm = (steps[0] if policy else {}), (steps[-1] if critic else {})

    # 6. the rollout engines get the new weights
    sync = sync_rollout(ctx) if policy else {}

    vllm_logp = [torch.tensor(s.logprobs) for s in samples]
    gap = max((float((a - logp[i, : len(a)]).abs().max()) for i, a in enumerate(vllm_logp) if len(a)), default=0.0)
    return {
        **reward_metrics, "kl": float(masked_mean(kl, mask)), "response_len": float(mask.sum(1).mean()),
        "rollout/logprob_gap": gap, **pm, **{f"critic/{n}": v for n, v in cm.items()},
        "sync/mb_per_s": sync.get("mb_per_s", 0.0),
    }


def heldout_rc(ctx: Context) -> list[float]:
    """Rc of the greedy answer to each held-out prompt (fixed prompts: PPO's batches draw different prompts
    every iteration, and their mean Rc moves more with the draw than with the policy)."""
    prompts = ctx.data.eval_prompts
    ids = prompt_token_ids(ctx.tok, prompts, ctx.max_prompt_len)
    with ctx.clock(GENERATE):
        outs = ctx.rollout.generate(ids, 1, 0.0, 1.0, ctx.cfg.ppo.max_new_tokens)
    _, _, rc = rm_score(ctx, ids, [o[0].token_ids for o in outs], torch.tensor([q.is_safety for q in prompts]))
    return [float(x) for x in rc]


def heldout_reward(ctx: Context) -> float:
    """Mean held-out Rc (`heldout_rc`): the early-stopping signal (RMs, not the judge)."""
    rc = heldout_rc(ctx)
    return sum(rc) / len(rc)


def critic_start(cfg, rm_helpful_path: str, init_path: str) -> str:
    """The folder the critic starts from (`ppo.critic_init`): the helpfulness RM (its head included), or the
    policy checkpoint PPO starts from (a causal LM: its body, a fresh value head)."""
    return rm_helpful_path if cfg.ppo.critic_init == "reward_model" else init_path


def ppo(ctx: Context, version: int, init_path: str, reference_path: str, critic_init_path: str,
        reward_fn: RewardFn = rm_reward) -> dict:
    """PPO from the RS checkpoint of this version; pi_0 (the KL anchor) is loaded from `reference_path`
    (`ppo.reference`), the critic from `critic_init_path` (`ppo.critic_init`: the helpfulness RM, or the
    body of `init_path` with a fresh head; unused with `ppo.advantage: rloo`). Early stopping on the held-out
    reward when configured."""
    cfg = ctx.cfg
    p = cfg.ppo
    stage = f"v{version}/ppo"
    with ctx.clock(LOAD):
        ctx.policy.load(model_spec(ctx, "causal", init_path, stage),
                        optim_spec(cfg, p.lr, p.iterations, 0, "constant"))
        ctx.reference.load(model_spec(ctx, "causal", reference_path, stage + "/ref"))
        if p.uses_critic:
            ctx.critic.load(model_spec(ctx, "scalar", critic_init_path, stage + "/critic"),
                            optim_spec(cfg, p.critic_lr, p.iterations, 0, "constant"))
    # the engines already serve the RS checkpoint PPO starts from: the pipeline published it
    task = ctx.progress.add(stage, p.iterations) if ctx.progress else None
    best, since_best, history, start = float("-inf"), 0, [], 0
    saved = ppo_state.restore(ctx, version)
    if saved is not None:  # a crash mid-PPO: continue from the last saved iteration
        start, best, since_best, history = saved["next"], saved["best"], saved["since_best"], saved["history"]
        rc_before = saved.get("heldout_rc_before")  # None: a state saved before it was kept
        for it, m in enumerate(history):  # resume dropped the unfinished stage's rows: put these back
            ctx.log(stage, it, m)
        sync_rollout(ctx)  # the engines must serve the restored policy
        if ctx.progress:
            ctx.progress.note(f"{stage}: resumed from the state saved after iteration {start}")
    else:  # Rc of the policy PPO starts from (the engines serve it); a rule reward (tests) has no Rc
        rc_before = heldout_rc(ctx) if reward_fn is rm_reward else None
    for it in range(start, p.iterations):
        m = ppo_iteration(ctx, version, it, reward_fn)
        if p.early_stop_patience and (it + 1) % p.eval_every == 0:
            m["heldout_reward"] = heldout_reward(ctx)
            if m["heldout_reward"] > best:
                best, since_best = m["heldout_reward"], 0
            else:
                since_best += 1
        ctx.guard(stage, it, m)  # before the PPO state or the policy is saved
        history.append(m)
        ctx.log(stage, it, m)
        if task is not None:
            ctx.progress.advance(task, f"Rc {m['reward/rc']:.3f} kl {m['kl']:.3f}")
        if p.early_stop_patience and since_best >= p.early_stop_patience:
            break
        if p.checkpoint_every and (it + 1) % p.checkpoint_every == 0 and it + 1 < p.iterations:
            ppo_state.save(ctx, version, {"next": it + 1, "best": best, "since_best": since_best,
                                          "history": history, "heldout_rc_before": rc_before})
    rc_after = heldout_rc(ctx) if rc_before else None  # the last sync left the engines serving the final policy
    cut = flush_truncation(ctx, stage, len(history))
    publish_policy(ctx, f"v{version}")
    ppo_state.discard(ctx, version)
    first, last = history[0], history[-1]
    q = max(1, len(history) // 4)
    rc = [h["reward/rc"] for h in history]
    return {"iterations": len(history), "rc_first": first["reward/rc"], "rc_last": last["reward/rc"],
            "rc_first_quarter": sum(rc[:q]) / q, "rc_last_quarter": sum(rc[-q:]) / q,
            "kl_last": last["kl"], "logprob_gap_max": max(h["rollout/logprob_gap"] for h in history),
            "ppo_resumed_from": start, **(heldout_change(rc_before, rc_after) if rc_before else {}), **cut}


def heldout_change(before: list[float], after: list[float]) -> dict:
    """Held-out Rc before and after PPO (greedy, the same prompts), and the paired change with its 95%
    bootstrap interval over prompts."""
    delta, lo, hi = paired_diff_ci(after, before)
    return {"heldout_rc_before": sum(before) / len(before), "heldout_rc_after": sum(after) / len(after),
            "heldout_rc_delta": delta, "heldout_rc_delta_ci": [lo, hi], "heldout_prompts": len(before)}
