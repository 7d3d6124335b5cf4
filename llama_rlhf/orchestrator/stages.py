"""The stages of the Llama 2-Chat recipe, each a function of the run context: SFT, reward models,
new preference collection, rejection sampling (with Ghost Attention data), and the weight sync that
follows every policy update. PPO lives in `ppo_stage.py`.

Every stage seeds its randomness from (run.seed, stage name) only, so re-running a stage after a crash
reproduces it: that is what makes `resume` end where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field

import ray
import torch

from llama_rlhf.actors.batches import sequence_batch
from llama_rlhf.actors.engine import ModelSpec, OptimSpec
from llama_rlhf.algorithms.rejection import RejectionArchive, best_of_k
from llama_rlhf.algorithms.shaping import combine_rewards
from llama_rlhf.config import Config
from llama_rlhf.data.loaders import write_jsonl
from llama_rlhf.data.records import Preference, SFTRecord
from llama_rlhf.models import llama_config
from llama_rlhf.optim import rm_warmup_steps
from llama_rlhf.orchestrator.datasets import (
    Datasets,
    from_world_preference,
    packed_batches,
    pair_batch,
    prompt_token_ids,
    reward_model_mix,
)
from llama_rlhf.orchestrator.evaluation import rm_eval
from llama_rlhf.orchestrator.guards import check_metrics, check_tensor
from llama_rlhf.orchestrator.run_dir import RunDir

RM_NAMES = ("helpful", "safety")


def stage_seed(seed: int, *tags) -> int:
    return zlib.crc32(":".join(map(str, (seed, *tags))).encode()) & 0x7FFFFFFF


@dataclass
class Context:
    cfg: Config
    run: RunDir
    tok: object
    data: Datasets
    placement: object
    policy: object = None
    reference: object = None
    critic: object = None
    rm: dict = field(default_factory=dict)
    rollout: object = None
    archive: RejectionArchive = field(default_factory=RejectionArchive)
    rm_eval_pairs: dict = field(default_factory=dict)
    sync_ready: bool = False
    progress: object = None
    truncation: Counter = field(default_factory=Counter)
    """Sequences cut to fit since the last `flush_truncation` (logged per stage)."""

    @property
    def max_prompt_len(self) -> int:
        c = self.cfg
        return c.model.max_seq_len - max(c.ppo.max_new_tokens, c.rejection_sampling.max_new_tokens,
                                         c.eval.max_new_tokens)

    def log(self, stage: str, step: int, metrics: dict) -> None:
        self.run.log(stage, step, metrics, self.cfg.logging.tensorboard)

    def guard(self, stage: str, step: int, metrics: dict) -> None:
        """Stop the stage on a NaN/inf metric, before anything of it is saved. fp16 overflow steps report
        an inf grad norm and are skipped by the loss scaler, so that one is not a failure there."""
        skip = ("grad_norm", "critic/grad_norm") if self.cfg.model.dtype == "float16" else ()
        check_metrics(stage, step, {k: v for k, v in metrics.items() if k not in skip})


def flush_truncation(ctx: Context, stage: str, step: int = 0) -> dict:
    """Log (under `stage`) and return the counts of sequences cut since the last flush, then reset."""
    out = {f"truncated/{k}": v for k, v in sorted(ctx.truncation.items()) if v}
    ctx.truncation.clear()
    if out:
        ctx.log(stage, step, out)
        if ctx.progress:
            ctx.progress.note(f"{stage}: " + ", ".join(f"{k.split('/')[1]} {v}" for k, v in out.items()))
    return out


def model_spec(ctx: Context, kind: str, path=None, seed_tag: str = "init") -> ModelSpec:
    m = ctx.cfg.model
    config = None
    if path is None:
        config = llama_config(m.preset, vocab_size=ctx.tok.vocab_size, max_seq_len=m.max_seq_len,
                              pad_token_id=ctx.tok.pad_id, bos_token_id=ctx.tok.bos_id,
                              eos_token_id=ctx.tok.eos_id).to_dict()
    return ModelSpec(kind, path=str(path) if path else None, config=config,
                     seed=stage_seed(ctx.cfg.run.seed, seed_tag), dtype=m.dtype,
                     attn_implementation=m.attn_implementation, gradient_checkpointing=m.gradient_checkpointing)


def optim_spec(cfg: Config, lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine"):
    o = cfg.optimizer
    return OptimSpec(lr=lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, grad_clip=o.grad_clip,
                     schedule=schedule, total_steps=max(1, total_steps), warmup_steps=warmup_steps,
                     min_lr_ratio=o.min_lr_ratio)


def save_checkpoint(ctx: Context, group, stage: str) -> str:
    """HF folder (plus the tokenizer, so it loads as a complete model) written atomically. Checkpoint
    names are flat (`rm_helpful_v2`, not `v2/rm_helpful`): committing `v2` replaces that whole folder."""
    if "/" in stage:
        raise ValueError(f"checkpoint name {stage!r}: must not contain '/'")
    tmp = ctx.run.staging(stage)
    group.save_hf(str(tmp))
    ctx.tok.save(tmp)
    return str(ctx.run.commit(stage))


# --------------------------------------------------------------------------- supervised training


def _num_micro(rows: int, n_ranks: int, micro: int) -> int:
    """Micro-batches per rank; the same on every rank (the smallest shard decides)."""
    return max(1, math.ceil((rows // n_ranks) / micro))


def fit_packed(ctx: Context, stage: str, records: list[SFTRecord], lr: float, epochs: int, rows_per_step: int,
               init_path, warmup_steps: int = 0) -> dict:
    """Answer-only fine-tuning of the policy on packed dialogs: SFT, and rejection-sampling fine-tuning."""
    s, n = ctx.cfg.sft, ctx.policy.n
    seed = stage_seed(ctx.cfg.run.seed, stage)
    plan = [packed_batches(ctx.tok, records, s.seq_len, rows_per_step, seed + e) for e in range(epochs)]
    stats = plan[0][1]
    ctx.truncation.update(sft_samples_cut_to_latest_turns=stats.num_turns_cut,
                          sft_samples_cut_at_end=stats.num_truncated, sft_samples_dropped=stats.num_dropped)
    cut = flush_truncation(ctx, stage)
    steps = [b for batches, _ in plan for b in batches if b.rows() >= n]
    ctx.policy.load(model_spec(ctx, "causal", init_path, stage), optim_spec(ctx.cfg, lr, len(steps), warmup_steps))
    task = ctx.progress.add(stage, len(steps)) if ctx.progress else None
    first = last = None
    for i, batch in enumerate(steps):
        m = ctx.policy.sft_step(batch, _num_micro(batch.rows(), n, s.micro_batch_size))
        ctx.guard(stage, i, {k: v for k, v in m.items() if k != "rank"})
        first = first if first is not None else m["loss"]
        last = m["loss"]
        if i % ctx.cfg.logging.log_every == 0 or i == len(steps) - 1:
            ctx.log(stage, i, {k: v for k, v in m.items() if k != "rank"})
        if task is not None:
            ctx.progress.advance(task, f"loss {last:.3f}")
    return {"steps": len(steps), "first_loss": first, "last_loss": last, "samples": stats.num_samples,
            "rows": stats.num_rows, "pad_fraction": stats.pad_fraction, **cut}


def train_sft(ctx: Context) -> dict:
    s = ctx.cfg.sft
    out = fit_packed(ctx, "sft", ctx.data.sft, s.lr, s.epochs, s.batch_size, ctx.cfg.model.init_checkpoint,
                     s.warmup_steps)
    out["checkpoint"] = save_checkpoint(ctx, ctx.policy, "sft")
    return out


# --------------------------------------------------------------------------- reward models


def train_reward_model(ctx: Context, which: str, prefs: list[Preference], init_path, stage: str,
                       ckpt: str | None = None) -> dict:
    """One epoch of the margin ranking loss on the paper's data mix for this RM, then accuracy per rating
    level on held-out pairs; the model is saved as checkpoint `ckpt` (default: the stage name)."""
    rc = getattr(ctx.cfg.reward, which)
    mix = reward_model_mix(prefs, which, stage_seed(ctx.cfg.run.seed, stage), ctx.cfg.reward.helpful_mix_other,
                           ctx.cfg.reward.safety_mix_helpful_ratio)
    group = ctx.rm[which]
    chunks = [mix[i:i + rc.batch_pairs] for i in range(0, len(mix), rc.batch_pairs)] * rc.epochs
    chunks = [c for c in chunks if len(c) >= group.n]
    total = len(chunks)
    group.load(model_spec(ctx, "scalar", init_path, stage),
               optim_spec(ctx.cfg, rc.lr, total, rm_warmup_steps(total, rc.warmup_ratio, rc.min_warmup_steps)))
    aux = rc.aux_safety_weight if which == "safety" else 0.0
    task = ctx.progress.add(stage, total) if ctx.progress else None
    for i, chunk in enumerate(chunks):
        m = group.train_step(pair_batch(ctx.tok, chunk, rc.max_len, ctx.truncation), rc.margin, aux,
                             rc.micro_batch_pairs)
        ctx.guard(stage, i, m)
        if i % ctx.cfg.logging.log_every == 0 or i == total - 1:
            ctx.log(stage, i, m)
        if task is not None:
            ctx.progress.advance(task, f"loss {m['loss']:.3f} acc {m['accuracy']:.2f}")
    if not aux:  # the count matters only where the auxiliary loss reads the labels
        ctx.truncation.pop("pairs_without_safety_labels", None)
    result = {"pairs": len(mix), "steps": total, **flush_truncation(ctx, stage, total),
              **rm_eval(group, ctx.rm_eval_pairs[which])}
    result["checkpoint"] = save_checkpoint(ctx, group, ckpt or stage)
    ctx.log(stage, total, {k: v for k, v in result.items() if isinstance(v, int | float)})
    return result


def rm_score(ctx: Context, prompts: list[list[int]], responses: list[list[int]], is_safety: torch.Tensor):
    """(Rh, Rs, Rc) of each prompt/response: the paper's safety-gated combination (eq. 4)."""
    from llama_rlhf.actors.remote import gather

    seq = sequence_batch(prompts, responses, ctx.tok.pad_id)
    rh, rs = gather(lambda: ctx.rm["helpful"].score(seq), lambda: ctx.rm["safety"].score(seq))
    return rh, rs, combine_rewards(rh, rs, is_safety, ctx.cfg.ppo.safety_threshold)


# --------------------------------------------------------------------------- weight sync


def sync_rollout(ctx: Context) -> dict:
    """Push the policy's current weights into every vLLM engine (ZeRO-3 gather + bucketed broadcast)."""
    from llama_rlhf.actors.weight_sync import DEFAULT_BUCKET_BYTES, SyncMeta

    backend = ctx.placement.backend
    if not ctx.sync_ready or ctx.rollout.needs_sync_init:
        host, port = ctx.policy.weight_sync_endpoint()
        refs = ctx.rollout.init_weight_sync(host, port, backend)
        refs += ctx.policy.init_weight_sync(host, port, ctx.rollout.sync_world_size, backend)
        ray.get(refs)
        ctx.sync_ready = True
    wire = ctx.policy.sync_meta(ctx.cfg.cluster.rollout.dtype, DEFAULT_BUCKET_BYTES)
    recv = ctx.rollout.receive_weights(SyncMeta.from_wire(wire))
    sent = ctx.policy.sync_weights(wire)
    stats = ray.get(sent)[0]
    ray.get(recv)
    return stats


def publish_policy(ctx: Context, stage: str) -> str:
    """Checkpoint the policy, point replacement rollout workers at it, and sync the live engines."""
    path = save_checkpoint(ctx, ctx.policy, stage)
    ctx.rollout.set_model_dir(path)
    stats = sync_rollout(ctx)
    ctx.log(stage, 0, {f"sync/{k}": v for k, v in stats.items()})
    return path


# --------------------------------------------------------------------------- preference collection


def collect_preferences(ctx: Context, version: int) -> list[Preference]:
    """The paper's weekly loop: sample two answers per new prompt from the current policy at two
    temperatures and let the (synthetic) annotators compare them with the 4-level rating."""
    from llama_rlhf.data.world import annotate

    world, n = ctx.data.world, ctx.cfg.iterations.new_preferences_per_version
    if world is None or n == 0:
        return []
    prompts = world.prompts("train", n, f"collect-v{version}")
    ids = prompt_token_ids(ctx.tok, prompts, ctx.max_prompt_len, ctx.truncation)
    seed = stage_seed(ctx.cfg.run.seed, "collect", version)
    t_lo, t_hi = ctx.cfg.iterations.preference_temperatures
    rs = ctx.cfg.rejection_sampling
    a = ctx.rollout.generate(ids, 1, t_lo, rs.top_p, rs.max_new_tokens, seed)
    b = ctx.rollout.generate(ids, 1, t_hi, rs.top_p, rs.max_new_tokens, seed + 1)
    rng = random.Random(seed)
    out = []
    for p, x, y in zip(prompts, a, b):
        pref = annotate(p, ctx.tok.decode(x[0].token_ids), ctx.tok.decode(y[0].token_ids), rng,
                        noise=ctx.cfg.data.world.label_noise)
        if pref is not None:
            out.append(from_world_preference(pref))
    flush_truncation(ctx, f"v{version}/collect")
    write_jsonl(_collected_path(ctx.run, version), out)
    return out


def _collected_path(run: RunDir, version: int):
    return run.data(f"preferences_v{version}.jsonl")


def collected_preferences(run: RunDir, version: int) -> list[Preference]:
    """The pairs version `version` collected, as saved in the run folder (a resumed run replays them).
    Read as saved, every field kept (the file loaders take only the public preference fields)."""
    path = _collected_path(run, version)
    if not path.exists():
        return []
    return [Preference.from_dict(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


# --------------------------------------------------------------------------- rejection sampling


def best_of_k_samples(ctx: Context, prompts, k: int, temperature: float, seed: int, stage: str = "best-of-K"):
    """K samples per prompt from the current policy, scored by Rc; the best (text, reward) of each."""
    rs = ctx.cfg.rejection_sampling
    ids = prompt_token_ids(ctx.tok, prompts, ctx.max_prompt_len, ctx.truncation)
    outs = ctx.rollout.generate(ids, k, temperature, rs.top_p, rs.max_new_tokens, seed)
    flat_p = [ids[i] for i in range(len(ids)) for _ in range(k)]
    flat_r = [s.token_ids for o in outs for s in o]
    is_safety = torch.tensor([p.is_safety for p in prompts for _ in range(k)])
    _, _, rc = rm_score(ctx, flat_p, flat_r, is_safety)
    rewards = rc.view(len(prompts), k)
    check_tensor(stage, 0, "reward model score Rc", rewards)  # a NaN never reaches the archive
    idx, best = best_of_k(rewards)
    texts = [ctx.tok.decode(outs[i][int(j)].token_ids) for i, j in enumerate(idx)]
    return texts, best, rewards


def _user(dialog, turn: int) -> dict:
    return {"role": "user", "content": dialog.user_turns[turn]}


def gatt_records(ctx: Context, version: int) -> list[SFTRecord]:
    """Ghost Attention data: answers sampled turn by turn with the instruction on every user turn (best
    of K by Rc), trained with the instruction in the first turn only and loss on the last turn only."""
    from llama_rlhf.data.gatt import sampling_prompt, training_messages
    from llama_rlhf.data.records import Prompt

    dialogs = ctx.data.gatt_dialogs
    if not dialogs:
        return []
    seed = stage_seed(ctx.cfg.run.seed, "gatt", version)
    histories: list[list[dict]] = [[] for _ in dialogs]
    max_turns = max(len(d.user_turns) for d in dialogs)
    for t in range(max_turns):
        live = [i for i, d in enumerate(dialogs) if t < len(d.user_turns)]
        msgs = [Prompt(f"{dialogs[i].id}-t{t}",
                       sampling_prompt(dialogs[i].system, histories[i] + [_user(dialogs[i], t)])) for i in live]
        texts, _, _ = best_of_k_samples(ctx, msgs, ctx.cfg.gatt.samples_per_turn,
                                        _rs_temperature(ctx.cfg, version), seed + t, f"v{version}/gatt turn {t}")
        for i, text in zip(live, texts):
            histories[i] += [_user(dialogs[i], t), {"role": "assistant", "content": text}]
    out = []
    for d, h in zip(dialogs, histories):
        msgs = training_messages(d.system, h)
        out.append(SFTRecord(msgs, train_turns=[len(d.user_turns) - 1]))
    return out


def context_distillation(ctx: Context, version: int) -> tuple[list[SFTRecord], int]:
    """Targeted safety context distillation: for each safety prompt, one answer with the safety
    preprompt and one without (same seed); keep the preprompted answer, trained WITHOUT the preprompt,
    only where the safety RM scores it higher on the bare prompt. Returns (records, candidates)."""
    from llama_rlhf.algorithms.context_distill import (
        build_preprompted,
        distillation_sample,
        select_distillation,
    )
    from llama_rlhf.data.records import Prompt

    prompts = [p for p in ctx.data.rlhf_prompts if p.is_safety]
    if not prompts:
        return [], 0
    rs = ctx.cfg.rejection_sampling
    seed = stage_seed(ctx.cfg.run.seed, "context-distill", version)
    temp = _rs_temperature(ctx.cfg, version)
    bare = prompt_token_ids(ctx.tok, prompts, ctx.max_prompt_len, ctx.truncation)
    pre = [Prompt(p.id, build_preprompted(p.messages, ctx.cfg.safety.preprompt)) for p in prompts]
    pre_ids = prompt_token_ids(ctx.tok, pre, ctx.max_prompt_len, ctx.truncation)
    with_pp = ctx.rollout.generate(pre_ids, 1, temp, rs.top_p, rs.max_new_tokens, seed)
    without = ctx.rollout.generate(bare, 1, temp, rs.top_p, rs.max_new_tokens, seed)
    seq_w = sequence_batch(bare, [o[0].token_ids for o in with_pp], ctx.tok.pad_id)
    seq_wo = sequence_batch(bare, [o[0].token_ids for o in without], ctx.tok.pad_id)
    answers = [ctx.tok.decode(o[0].token_ids) for o in with_pp]
    kept, _ = select_distillation(list(zip(prompts, answers)), ctx.rm["safety"].score(seq_w),
                                  ctx.rm["safety"].score(seq_wo))
    return [SFTRecord(distillation_sample(p.messages, a)) for p, a in kept], len(prompts)


def _rs_temperature(cfg: Config, version: int) -> float:
    temps = cfg.rejection_sampling.temperatures
    return temps[min(version - 1, len(temps) - 1)]


def rejection_sampling(ctx: Context, version: int, init_path: str) -> dict:
    """RLHF-V`version` rejection sampling: best of K per prompt by Rc, archived; fine-tune the policy on
    this iteration's best plus the best of all prior iterations (+ GAtt dialogs from `gatt.from_version`)."""
    rs = ctx.cfg.rejection_sampling
    prompts = ctx.data.rlhf_prompts
    seed = stage_seed(ctx.cfg.run.seed, "rs", version)
    texts, best, rewards = best_of_k_samples(ctx, prompts, rs.num_samples, _rs_temperature(ctx.cfg, version), seed,
                                             f"v{version}/rs")
    for p, text, r in zip(prompts, texts, best.tolist()):
        ctx.archive.add(version, p.id, p.messages, text, r)
    ctx.archive.save(ctx.run.data("rs_archive.json"))
    chosen = ctx.archive.training_set(version, rs.prior_top_fraction)
    records = [SFTRecord(list(s.prompt) + [{"role": "assistant", "content": s.response}]) for s in chosen]
    n_gatt = n_cd = n_cd_kept = 0
    if ctx.cfg.safety.context_distillation:
        cd, n_cd = context_distillation(ctx, version)
        n_cd_kept = len(cd)
        records += cd
    if ctx.cfg.gatt.enabled and version >= ctx.cfg.gatt.from_version:
        g = gatt_records(ctx, version)
        n_gatt = len(g)
        records += g
    cut = flush_truncation(ctx, f"v{version}/rs")  # the generation prompts of this stage
    fit = fit_packed(ctx, f"v{version}/rs", records, rs.lr, rs.epochs, rs.batch_size, init_path)
    return {"rs_reward_mean": float(rewards.mean()), "rs_best_mean": float(best.mean()),
            "rs_gain": float(best.mean() - rewards.mean()), "train_samples": len(records), "gatt_samples": n_gatt,
            "context_distill_kept": n_cd_kept, "context_distill_candidates": n_cd, **cut,
            **{f"fit_{k}": v for k, v in fit.items()}}
