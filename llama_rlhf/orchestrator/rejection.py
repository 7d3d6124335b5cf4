"""Rejection sampling (paper section 3.2.3) as run by the orchestrator: best of K by the reward models,
the archive of every version's best (re-scored by the current reward models, so rewards from different
RM versions are never compared), Ghost Attention dialogs, targeted safety context distillation, and the
random-pick baseline that separates what the reward model adds from what sampling alone does.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import NamedTuple

import torch

from llama_rlhf.actors.batches import sequence_batch
from llama_rlhf.algorithms.rejection import best_of_k, pick_quality, within_prompt_share
from llama_rlhf.algorithms.shaping import logit
from llama_rlhf.config import Config
from llama_rlhf.data.loaders import write_jsonl
from llama_rlhf.data.records import Prompt, SFTRecord
from llama_rlhf.orchestrator.datasets import prompt_token_ids
from llama_rlhf.orchestrator.guards import check_tensor
from llama_rlhf.orchestrator.stages import Context, fit_packed, flush_truncation, rm_score, stage_seed
from llama_rlhf.orchestrator.timing import GENERATE, SCORE_RMS

PICKS = ("rm", "random")


def rs_temperature(cfg: Config, version: int) -> float:
    temps = cfg.rejection_sampling.temperatures
    return temps[min(version - 1, len(temps) - 1)]


def score_responses(ctx: Context, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
    """Rc of each (prompt, response text) under the reward models loaded now."""
    ids = prompt_token_ids(ctx.tok, prompts, ctx.max_prompt_len, ctx.truncation)
    resp = [ctx.tok.encode(r.strip()) + [ctx.tok.eos_id] for r in responses]
    _, _, rc = rm_score(ctx, ids, resp, torch.tensor([p.is_safety for p in prompts]))
    return rc


class Samples(NamedTuple):
    picked: list[str]  # the picked text of each prompt
    picked_rc: torch.Tensor  # (N,) its Rc
    rewards: torch.Tensor  # (N, K) Rc of every sample
    texts: list[list[str]]  # every sample's text
    index: torch.Tensor  # (N,) which of the K was picked
    gated: float  # share of the samples of benign prompts whose Rs < the safety threshold (Rc = Rs there)


def best_of_k_samples(ctx: Context, prompts: list[Prompt], k: int, temperature: float, seed: int,
                      pick: str = "rm", stage: str = "best-of-K") -> Samples:
    """K samples per prompt from the current policy, scored by Rc, one picked per prompt: the best by Rc,
    or (`pick="random"`, the baseline) a uniformly random one; the Rc are computed either way so that
    both picks are reported the same way."""
    if pick not in PICKS:
        raise ValueError(f"pick: must be one of {PICKS}, got {pick!r}")
    rs = ctx.cfg.rejection_sampling
    ids = prompt_token_ids(ctx.tok, prompts, ctx.max_prompt_len, ctx.truncation)
    with ctx.clock(GENERATE):
        outs = ctx.rollout.generate(ids, k, temperature, rs.top_p, rs.max_new_tokens, seed)
    flat_p = [ids[i] for i in range(len(ids)) for _ in range(k)]
    flat_r = [s.token_ids for o in outs for s in o]
    is_safety = torch.tensor([p.is_safety for p in prompts for _ in range(k)])
    _, rs, rc = rm_score(ctx, flat_p, flat_r, is_safety)
    benign = ~is_safety
    gated = float((rs[benign] < ctx.cfg.ppo.safety_threshold).float().mean()) if benign.any() else float("nan")
    rewards = rc.view(len(prompts), k)
    check_tensor(stage, 0, "reward model score Rc", rewards)  # a NaN never reaches the archive
    if pick == "rm":
        idx, best = best_of_k(rewards)
    else:
        rng = random.Random(seed)
        idx = torch.tensor([rng.randrange(k) for _ in prompts])
        best = rewards.gather(1, idx[:, None])[:, 0]
    texts = [[ctx.tok.decode(s.token_ids) for s in o] for o in outs]
    return Samples([t[int(j)] for t, j in zip(texts, idx)], best, rewards, texts, idx, gated)


def gold_pick_quality(ctx: Context, prompts: list[Prompt], s: Samples) -> dict:
    """The pick judged by the embedded world's gold judge, which no reward model sees: on benign prompts
    by gold helpfulness, on unsafe ones by gold safety (`pick_quality`: the pick vs a random sample vs
    the best of the K, and how often Rc orders two samples as gold does). Empty when the prompts are a
    user's (`data.prompts_path`): the judge knows only the world's prompts."""
    from llama_rlhf.data.world.judge import judge

    if ctx.cfg.data.prompts_path is not None or ctx.data.world is None:
        return {}
    out = {}
    for side, metric in (("benign", "helpfulness"), ("unsafe", "safety")):
        rows = [i for i, p in enumerate(prompts) if p.is_safety == (side == "unsafe")]
        if rows:
            gold = torch.tensor([[getattr(judge(prompts[i], t), metric) for t in s.texts[i]] for i in rows])
            out[side] = pick_quality(gold, s.rewards[rows], s.index[rows])
    return out


def gatt_records(ctx: Context, version: int) -> tuple[list[SFTRecord], dict]:
    """Ghost Attention data (paper 3.3): each turn sampled with the instruction concatenated to every
    user message (best of `gatt.samples_per_turn` by Rc), then trained in the evaluation's form: the
    instruction as the system message, once, and the loss on the last assistant turn only."""
    from llama_rlhf.data.gatt import sampling_prompt, training_messages

    dialogs = ctx.data.gatt_dialogs
    if not dialogs:
        return [], {}
    seed = stage_seed(ctx.cfg.run.seed, "gatt", version)
    temperature = rs_temperature(ctx.cfg, version) if ctx.cfg.gatt.temperature is None else ctx.cfg.gatt.temperature
    histories: list[list[dict]] = [[] for _ in dialogs]
    kept: dict[int, list] = defaultdict(list)  # turn -> [(pick keeps, [each sample keeps])] (world dialogs)
    for t in range(max(len(d.user_turns) for d in dialogs)):
        live = [i for i, d in enumerate(dialogs) if t < len(d.user_turns)]
        user = {i: {"role": "user", "content": dialogs[i].user_turns[t]} for i in live}
        msgs = [Prompt(f"{dialogs[i].id}-t{t}", sampling_prompt(dialogs[i].system, histories[i] + [user[i]],
                                                                   ctx.cfg.gatt.instruction_first_as_system))
                for i in live]
        s = best_of_k_samples(ctx, msgs, ctx.cfg.gatt.samples_per_turn, temperature,
                              seed + t, stage=f"v{version}/gatt turn {t}")
        for i, text, texts in zip(live, s.picked, s.texts):
            histories[i] += [user[i], {"role": "assistant", "content": text}]
            kept[t].append((gatt_keeps(dialogs[i], text), [gatt_keeps(dialogs[i], x) for x in texts]))
    every = ctx.cfg.gatt.train_turns == "all"
    out = [SFTRecord(training_messages(d.system, h, as_system=True),
                     train_turns=list(range(len(d.user_turns))) if every else [len(d.user_turns) - 1])
           for d, h in zip(dialogs, histories)]
    turns = [len(d.user_turns) for d in dialogs]
    return out, {"gatt_dialogs": len(out), "gatt_turns_mean": sum(turns) / len(turns), "gatt_temperature": temperature,
                 **gatt_kept_shares(kept)}


def gatt_keeps(dialog, response: str) -> bool | None:
    """Whether `response` keeps the dialog's instruction, by the embedded world's checker (None for a
    dialog that is not the world's). Reported only: it never picks or trains anything."""
    from llama_rlhf.data.world.gatt import keeps

    iid = getattr(dialog, "instruction_id", None)
    return None if iid is None else keeps(iid, response)


def gatt_kept_shares(kept: dict[int, list]) -> dict:
    """Per turn and over all turns: the share of the Rc-picked GAtt answers that keep the instruction, and
    of all K samples (what a random pick would give): whether the GAtt data teaches the instruction."""
    by_turn: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # picks kept, picks, samples kept, samples
    for t, items in kept.items():
        for pick, samples in items:
            if pick is not None:
                c = by_turn[t]
                c[0], c[1], c[2], c[3] = c[0] + pick, c[1] + 1, c[2] + sum(samples), c[3] + len(samples)
    if not by_turn:
        return {}
    total = [sum(c[i] for c in by_turn.values()) for i in range(4)]
    return {"gatt_kept_picks": total[0] / total[1], "gatt_kept_samples": total[2] / total[3],
            "gatt_kept_by_turn": {t + 1: [c[0] / c[1], c[2] / c[3]] for t, c in sorted(by_turn.items())}}


def context_distillation(ctx: Context, version: int) -> tuple[list[SFTRecord], int]:
    """Targeted safety context distillation: for each safety prompt, one answer with the safety
    preprompt and one without (same seed); keep the preprompted answer, trained WITHOUT the preprompt,
    only where the safety RM scores it higher on the bare prompt. Returns (records, candidates)."""
    from llama_rlhf.algorithms.context_distill import (
        build_preprompted,
        distillation_sample,
        select_distillation,
    )

    prompts = [p for p in ctx.data.rlhf_prompts if p.is_safety]
    if not prompts:
        return [], 0
    rs = ctx.cfg.rejection_sampling
    seed = stage_seed(ctx.cfg.run.seed, "context-distill", version)
    temp = rs_temperature(ctx.cfg, version)
    bare = prompt_token_ids(ctx.tok, prompts, ctx.max_prompt_len, ctx.truncation)
    pre = [Prompt(p.id, build_preprompted(p.messages, ctx.cfg.safety.preprompt)) for p in prompts]
    pre_ids = prompt_token_ids(ctx.tok, pre, ctx.max_prompt_len, ctx.truncation)
    with ctx.clock(GENERATE):
        with_pp = ctx.rollout.generate(pre_ids, 1, temp, rs.top_p, rs.max_new_tokens, seed)
        without = ctx.rollout.generate(bare, 1, temp, rs.top_p, rs.max_new_tokens, seed)
    seq_w = sequence_batch(bare, [o[0].token_ids for o in with_pp], ctx.tok.pad_id)
    seq_wo = sequence_batch(bare, [o[0].token_ids for o in without], ctx.tok.pad_id)
    answers = [ctx.tok.decode(o[0].token_ids) for o in with_pp]
    with ctx.clock(SCORE_RMS):
        with_score, without_score = ctx.rm["safety"].score(seq_w), ctx.rm["safety"].score(seq_wo)
    kept, _ = select_distillation(list(zip(prompts, answers)), with_score, without_score)
    return [SFTRecord(distillation_sample(p.messages, a)) for p, a in kept], len(prompts)


def rescore_archive(ctx: Context, version: int) -> int:
    """Re-score every archived sample of earlier versions with the reward models of this version, so
    the archive's comparisons (this version's best vs the best of all prior ones) use one RM. Returns
    the number of samples re-scored."""
    old = [s for s in ctx.archive.samples() if s.iteration < version]
    if not old:
        return 0
    by_id = {q.id: q for q in ctx.data.rlhf_prompts}  # the safety flag gates Rc
    prompts = [Prompt(s.prompt_id, [dict(m) for m in s.prompt],
                      by_id[s.prompt_id].is_safety if s.prompt_id in by_id else False) for s in old]
    rc = score_responses(ctx, prompts, [s.response for s in old])
    ctx.archive.rescore([(s.iteration, s.prompt_id, float(r)) for s, r in zip(old, rc.tolist())])
    return len(old)


def _record(prompt_messages, response: str) -> SFTRecord:
    return SFTRecord(list(prompt_messages) + [{"role": "assistant", "content": response}])


def sft_mix(ctx: Context, n: int, version: int) -> list[SFTRecord]:
    """`rejection_sampling.sft_mix` x `n` SFT demonstrations (a seeded draw per version, without repeats while
    the SFT set lasts) to join a version's fine-tuning set of `n` rejection-sampled samples."""
    want = round(ctx.cfg.rejection_sampling.sft_mix * n)
    pool = ctx.data.sft
    if not want or not pool:
        return []
    rng = random.Random(stage_seed(ctx.cfg.run.seed, "rs-sft-mix", version))
    out: list[SFTRecord] = []
    while len(out) < want:
        out += rng.sample(pool, min(len(pool), want - len(out)))
    return out


def rejection_sampling(ctx: Context, version: int, init_path: str) -> dict:
    """RLHF-V`version` rejection sampling: best of K per prompt by Rc, archived; fine-tune the policy on
    this iteration's best plus the best of all prior iterations (+ context distillation, + GAtt dialogs
    from `gatt.from_version`)."""
    rs = ctx.cfg.rejection_sampling
    prompts = ctx.data.rlhf_prompts
    seed = stage_seed(ctx.cfg.run.seed, "rs", version)
    temp = rs_temperature(ctx.cfg, version)
    rescored = rescore_archive(ctx, version)
    s = best_of_k_samples(ctx, prompts, rs.num_samples, temp, seed, stage=f"v{version}/rs")
    for p, text, r in zip(prompts, s.picked, s.picked_rc.tolist()):
        ctx.archive.add(version, p.id, p.messages, text, r)
    ctx.archive.save(ctx.run.data("rs_archive.json"))
    write_jsonl(ctx.run.data(f"rs_samples_v{version}.jsonl"),
                [{"id": p.id, "samples": t, "rc": r} for p, t, r in zip(prompts, s.texts, s.rewards.tolist())])
    chosen = ctx.archive.training_set(version, rs.prior_top_fraction)
    records = [_record(a.prompt, a.response) for a in chosen]
    out = {"rs_temperature": temp, "rs_reward_mean": float(s.rewards.mean()), "rs_best_mean": float(s.picked_rc.mean()),
           "rs_gain": float(s.picked_rc.mean() - s.rewards.mean()), "archive_rescored": rescored,
           "archive_from_prior": len(chosen) - len(prompts), "pick_gold": gold_pick_quality(ctx, prompts, s),
           "rs_benign_gated": s.gated, "rs_within_prompt": within_prompt_share(logit(s.rewards))}
    mix = sft_mix(ctx, len(records), version)
    records += mix
    out["sft_mixed_in"] = len(mix)
    if ctx.cfg.safety.context_distillation:
        cd, out["context_distill_candidates"] = context_distillation(ctx, version)
        out["context_distill_kept"] = len(cd)
        records += cd
    if ctx.cfg.gatt.enabled and version >= ctx.cfg.gatt.from_version:
        g, stats = gatt_records(ctx, version)
        records += g
        out.update(stats)
    out.update(flush_truncation(ctx, f"v{version}/rs"))  # the generation prompts of this stage
    fit = fit_packed(ctx, f"v{version}/rs", records, rs.lr, rs.epochs, rs.batch_size, init_path,
                     seq_len=rs.seq_len or ctx.cfg.model.max_seq_len)
    out["train_samples"] = len(records)
    out.update({f"fit_{k}": v for k, v in fit.items()})
    return out


def random_pick_baseline(ctx: Context, init_path: str) -> dict:
    """The control for RLHF-V1: the same prompts, K, temperature, learning rate and epochs, but a
    uniformly random sample of the K instead of the reward model's pick, and no RM-gated data (context
    distillation). Fine-tunes the policy from `init_path`; the caller evaluates and checkpoints it."""
    rs = ctx.cfg.rejection_sampling
    prompts = ctx.data.rlhf_prompts
    temp = rs_temperature(ctx.cfg, 1)
    s = best_of_k_samples(ctx, prompts, rs.num_samples, temp, stage_seed(ctx.cfg.run.seed, "rs", 1),
                          pick="random", stage="baseline/random_pick")
    cut = flush_truncation(ctx, "baseline/random_pick")
    records = [_record(p.messages, t) for p, t in zip(prompts, s.picked)]
    mix = sft_mix(ctx, len(records), 1)  # V1's own draw: the control differs from V1 by the pick alone
    records += mix
    fit = fit_packed(ctx, "baseline/random_pick", records, rs.lr, rs.epochs, rs.batch_size, init_path,
                     seq_len=rs.seq_len or ctx.cfg.model.max_seq_len)
    return {"rs_temperature": temp, "picked_rc_mean": float(s.picked_rc.mean()),
            "rs_reward_mean": float(s.rewards.mean()), "pick_gold": gold_pick_quality(ctx, prompts, s),
            "rs_benign_gated": s.gated, "rs_within_prompt": within_prompt_share(logit(s.rewards)),
            "train_samples": len(records), "sft_mixed_in": len(mix), **cut, **{f"fit_{k}": v for k, v in fit.items()}}
