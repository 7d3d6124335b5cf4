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

import torch

from llama_rlhf.actors.batches import sequence_batch
from llama_rlhf.actors.engine import ModelSpec, OptimSpec
from llama_rlhf.algorithms.rejection import RejectionArchive
from llama_rlhf.algorithms.shaping import combine_rewards
from llama_rlhf.config import Config
from llama_rlhf.data.loaders import write_jsonl
from llama_rlhf.data.mix import label_of, mix_metrics, reward_model_mix
from llama_rlhf.data.records import Preference, SFTRecord
from llama_rlhf.models import llama_config
from llama_rlhf.optim import rm_warmup_steps
from llama_rlhf.orchestrator.datasets import (
    Datasets,
    packed_batches,
    pair_batch,
    prompt_token_ids,
)
from llama_rlhf.orchestrator.evaluation import rm_eval
from llama_rlhf.orchestrator.guards import check_metrics
from llama_rlhf.orchestrator.run_dir import RunDir
from llama_rlhf.orchestrator.timing import GENERATE, LOAD, SCORE_RMS, Clock

RM_NAMES = ("helpful", "safety")


def max_prompt_len(c: Config) -> int:
    """The prompt budget: the context less the longest answer any stage generates."""
    return c.model.max_seq_len - max(c.ppo.max_new_tokens, c.rejection_sampling.max_new_tokens,
                                     c.eval.max_new_tokens)


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
    clock: Clock = field(default_factory=Clock)
    """Exclusive wall seconds per activity (the report's time breakdown)."""
    truncation: Counter = field(default_factory=Counter)
    """Sequences cut to fit since the last `flush_truncation` (logged per stage)."""

    @property
    def max_prompt_len(self) -> int:
        return max_prompt_len(self.cfg)

    def log(self, stage: str, step: int, metrics: dict) -> None:
        self.run.log(stage, step, metrics, self.cfg.logging.tensorboard)

    def guard(self, stage: str, step: int, metrics: dict) -> None:
        """Stop the stage on a NaN/inf metric, before anything of it is saved. fp16 overflow steps report
        an inf grad norm and are skipped by the loss scaler, so that one is not a failure there."""
        skip = ("grad_norm", "critic/grad_norm") if self.cfg.model.dtype == "float16" else ()
        check_metrics(stage, step, {k: v for k, v in metrics.items() if k not in skip})


def flush_truncation(ctx: Context, stage: str, step: int = 0, counts: Counter | None = None) -> dict:
    """Log (under `stage`) and return the counts of sequences cut since the last flush (`ctx.truncation`
    unless `counts` is given), then reset."""
    counts = ctx.truncation if counts is None else counts
    out = {f"truncated/{k}": v for k, v in sorted(counts.items()) if v}
    counts.clear()
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
    with ctx.clock("save checkpoints"):
        tmp = ctx.run.staging(stage)
        group.save_hf(str(tmp))
        ctx.tok.save(tmp)
        return str(ctx.run.commit(stage))


# --------------------------------------------------------------------------- supervised training


def _num_micro(rows: int, n_ranks: int, micro: int) -> int:
    """Micro-batches per rank; the same on every rank (the smallest shard decides)."""
    return max(1, math.ceil((rows // n_ranks) / micro))


def fit_packed(ctx: Context, stage: str, records: list[SFTRecord], lr: float, epochs: int, rows_per_step: int,
               init_path, warmup_steps: int = 0, seq_len: int | None = None) -> dict:
    """Answer-only fine-tuning of the policy on packed dialogs: SFT, and rejection-sampling fine-tuning
    (rows of `seq_len` tokens, default `sft.seq_len`)."""
    s, n = ctx.cfg.sft, ctx.policy.n
    seed = stage_seed(ctx.cfg.run.seed, stage)
    plan = [packed_batches(ctx.tok, records, seq_len or s.seq_len, rows_per_step, seed + e) for e in range(epochs)]
    stats = plan[0][1]
    ctx.truncation.update(sft_samples_cut_to_latest_turns=stats.num_turns_cut,
                          sft_samples_cut_at_end=stats.num_truncated, sft_samples_dropped=stats.num_dropped)
    cut = flush_truncation(ctx, stage)
    steps = [b for batches, _ in plan for b in batches if b.rows() >= n]
    with ctx.clock(LOAD):
        ctx.policy.load(model_spec(ctx, "causal", init_path, stage),
                        optim_spec(ctx.cfg, lr, len(steps), warmup_steps))
    task = ctx.progress.add(stage, len(steps)) if ctx.progress else None
    first = last = None
    for i, batch in enumerate(steps):
        with ctx.clock("train: policy (SFT, rejection-sampling fine-tune)"):
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


@dataclass
class RMJob:
    """One reward model to train: which, on what preferences, from which checkpoint, saved as what."""

    which: str
    prefs: list[Preference]
    init_path: str
    stage: str
    ckpt: str | None = None


def train_reward_models(ctx: Context, jobs: list[RMJob]) -> dict[str, dict]:
    """One epoch of the margin ranking loss on the paper's data mix for each RM, then accuracy per rating
    level on held-out pairs; each model is saved as checkpoint `ckpt` (default: its stage name). Results
    by stage.

    The RMs are different actor groups: they train side by side, step i of each in flight together (on a
    CPU node they split its cores), except where they share GPUs with every other role (colocated
    placement on GPUs): there one trains after the other, the peak `llama-rlhf plan` fits."""
    c = ctx.cfg.cluster
    if c.gpu and c.placement == "colocated":
        return {k: v for job in jobs for k, v in _train_rms(ctx, [job]).items()}
    return _train_rms(ctx, jobs)


def _train_rms(ctx: Context, jobs: list[RMJob]) -> dict[str, dict]:
    from llama_rlhf.actors.remote import gather

    groups = [ctx.rm[j.which] for j in jobs]
    rcs = [getattr(ctx.cfg.reward, j.which) for j in jobs]
    counts = [Counter() for _ in jobs]  # cut pairs, per RM
    mixes, plans = [], []
    for j, rc, g in zip(jobs, rcs, groups):
        mix = reward_model_mix(j.prefs, j.which, stage_seed(ctx.cfg.run.seed, j.stage),
                               ctx.cfg.reward.helpful_mix_other, ctx.cfg.reward.safety_mix_helpful_ratio)
        chunks = [mix[i:i + rc.batch_pairs] for i in range(0, len(mix), rc.batch_pairs)] * rc.epochs
        mixes.append(mix)
        plans.append([c for c in chunks if len(c) >= g.n])

    def load(k: int) -> None:
        rc, steps = rcs[k], len(plans[k])
        groups[k].load(model_spec(ctx, "scalar", jobs[k].init_path, jobs[k].stage),
                       optim_spec(ctx.cfg, rc.lr, steps, rm_warmup_steps(steps, rc.warmup_ratio, rc.min_warmup_steps)))

    with ctx.clock(LOAD):
        gather(*(lambda k=k: load(k) for k in range(len(jobs))))
    aux = [rc.aux_safety_weight if j.which == "safety" else 0.0 for j, rc in zip(jobs, rcs)]
    tasks = [ctx.progress.add(j.stage, len(p)) if ctx.progress else None for j, p in zip(jobs, plans)]
    for i in range(max(len(p) for p in plans)):
        live = [k for k, p in enumerate(plans) if i < len(p)]
        batches = [(k, pair_batch(ctx.tok, plans[k][i], rcs[k].max_len, counts[k])) for k in live]
        with ctx.clock("train: reward models"):
            metrics = gather(*(lambda k=k, b=b: groups[k].train_step(b, rcs[k].margin, aux[k], rcs[k].micro_batch_pairs)
                               for k, b in batches))
        for k, m in zip(live, metrics):
            stage, total = jobs[k].stage, len(plans[k])
            ctx.guard(stage, i, m)
            if i % ctx.cfg.logging.log_every == 0 or i == total - 1:
                ctx.log(stage, i, m)
            if tasks[k] is not None:
                ctx.progress.advance(tasks[k], f"loss {m['loss']:.3f} acc {m['accuracy']:.2f}")
    with ctx.clock("evaluation: reward models (held-out pairs)"):
        accuracy = gather(*(lambda g=g, j=j: rm_eval(g, ctx.rm_eval_pairs[j.which]) for g, j in zip(groups, jobs)))
    out = {}
    for j, g, mix, p, c, a, acc in zip(jobs, groups, mixes, plans, counts, aux, accuracy):
        if not a:  # the count matters only where the auxiliary loss reads the labels
            c.pop("pairs_without_safety_labels", None)
        result = {"pairs": len(mix), "steps": len(p), **flush_truncation(ctx, j.stage, len(p), c), **acc}
        result.update(mix_metrics(Counter(map(label_of, mix))))
        result["checkpoint"] = save_checkpoint(ctx, g, j.ckpt or j.stage)
        ctx.log(j.stage, len(p), {k: v for k, v in result.items() if isinstance(v, int | float)})
        out[j.stage] = result
    return out


def rm_score(ctx: Context, prompts: list[list[int]], responses: list[list[int]], is_safety: torch.Tensor):
    """(Rh, Rs, Rc) of each prompt/response: the paper's safety-gated combination (eq. 4)."""
    from llama_rlhf.actors.remote import gather

    seq = sequence_batch(prompts, responses, ctx.tok.pad_id)
    with ctx.clock(SCORE_RMS):
        rh, rs = gather(lambda: ctx.rm["helpful"].score(seq), lambda: ctx.rm["safety"].score(seq))
    return rh, rs, combine_rewards(rh, rs, is_safety, ctx.cfg.ppo.safety_threshold)


# --------------------------------------------------------------------------- weight sync


def sync_rollout(ctx: Context) -> dict:
    """Push the policy's current weights into every vLLM engine (ZeRO-3 gather + bucketed broadcast)."""
    from llama_rlhf.actors.remote import push_weights

    init = not ctx.sync_ready or ctx.rollout.needs_sync_init
    with ctx.clock("weight sync"):
        stats = push_weights(ctx.policy, ctx.rollout, ctx.placement.backend, ctx.cfg.cluster.rollout.dtype, init)
    ctx.sync_ready = True
    return stats


def publish_policy(ctx: Context, stage: str) -> str:
    """Checkpoint the policy, point replacement rollout workers at it, and sync the live engines."""
    path = save_checkpoint(ctx, ctx.policy, stage)
    ctx.rollout.set_model_dir(path)
    stats = sync_rollout(ctx)
    ctx.log(stage, 0, {f"sync/{k}": v for k, v in stats.items()})
    return path


# --------------------------------------------------------------------------- preference collection


GATT_PAIRS = " GAtt dialogs"
"""The source suffix of pairs collected on GAtt dialog turns (`gatt.preferences_per_version`)."""


def collect_preferences(ctx: Context, version: int, n: int | None = None) -> list[Preference]:
    """The paper's weekly loop: sample two answers per new prompt (`n`, default
    `iterations.new_preferences_per_version`) from the current policy at two temperatures and let the
    (synthetic) annotators compare them with the 4-level rating; from `gatt.from_version` on,
    `gatt.preferences_per_version` GAtt dialog turns join the prompts. Version 0 is the SFT policy, before the
    first reward models (`iterations.sft_preferences`)."""
    from llama_rlhf.data.world import annotate

    world = ctx.data.world
    n = ctx.cfg.iterations.new_preferences_per_version if n is None else n
    gatt = gatt_turn_prompts(ctx, version, ctx.cfg.gatt.preferences_per_version) if version else []
    if world is None or n + len(gatt) == 0:
        return []
    prompts = (world.prompts("train", n, f"collect-v{version}") if n else []) + gatt
    ids = prompt_token_ids(ctx.tok, prompts, ctx.max_prompt_len, ctx.truncation)
    seed = stage_seed(ctx.cfg.run.seed, "collect", version)
    t_lo, t_hi = ctx.cfg.iterations.preference_temperatures
    rs = ctx.cfg.rejection_sampling
    with ctx.clock(GENERATE):
        a = ctx.rollout.generate(ids, 1, t_lo, rs.top_p, rs.max_new_tokens, seed)
        b = ctx.rollout.generate(ids, 1, t_hi, rs.top_p, rs.max_new_tokens, seed + 1)
    rng = random.Random(seed)
    gatt_ids = {p.id for p in gatt}
    out = []
    for p, x, y in zip(prompts, a, b):
        pref = annotate(p, ctx.tok.decode(x[0].token_ids), ctx.tok.decode(y[0].token_ids), rng,
                        noise=ctx.cfg.data.world.label_noise)
        if pref is not None:
            pref.source = f"policy samples v{version}" + (GATT_PAIRS if p.id in gatt_ids else "")  # v0: SFT policy
            out.append(pref)
    flush_truncation(ctx, f"v{version}/collect")
    write_jsonl(_collected_path(ctx.run, version), out)
    return out


def gatt_turn_prompts(ctx: Context, version: int, n: int) -> list:
    """`n` turns of the GAtt training dialogs for the annotators (`gatt.preferences_per_version`), from
    `gatt.from_version` on: distinct dialogs while they last, a random turn of each, the gold answers before
    it, in the GAtt sampling form; the prompt keeps the world's GAtt meta (task and instruction) for the judge."""
    from llama_rlhf.data.gatt import sampling_prompt
    from llama_rlhf.data.records import Prompt

    g, dialogs = ctx.cfg.gatt, ctx.data.gatt_dialogs
    if not (g.enabled and dialogs and n and version >= g.from_version):
        return []
    rng = random.Random(stage_seed(ctx.cfg.run.seed, "collect-gatt", version))
    order: list[int] = []
    while len(order) < n:
        order += rng.sample(range(len(dialogs)), len(dialogs))
    out = []
    for j, i in enumerate(order[:n]):
        p = dialogs[i].turn_prompt(rng.randrange(len(dialogs[i].user_turns)))
        msgs = sampling_prompt(None, p.messages, g.instruction_first_as_system)
        out.append(Prompt(f"{p.id}-c{j}", msgs, p.is_safety, p.kind, p.meta))
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
