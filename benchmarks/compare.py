"""Ours against what a user would pick instead, side by side in one run: ratios, not absolutes.

Same tiny fp32 Llama (`tiny` preset, the trained 1024-piece tokenizer), same data (the embedded world), same
machine, one process tree. Each pair is measured back to back, `--repeats` times (ours, then theirs, then
ours again...); a repeat's rate is the median over `--steps` timed calls after a warm-up; the table shows
the median over repeats, and the ratio is the median over repeats of each repeat's ours/theirs. Pairs:

  SFT         tokens/s  our policy (Ray actor, DeepSpeed ZeRO-3, 1 rank, packed rows with per-sample
                        attention) vs TRL `SFTTrainer(packing=True)` (best-fit packing, padding-free) on the
                        same encoded dialogs, same rows per step and row length, answer-only loss on both
  RM          pairs/s   our reward model (1 rank, margin "small") vs TRL `RewardTrainer` with the same pairs
                        and the same margins in its `margin` column
  rollout     new tok/s our vLLM engine (Ray actor, seeded sampling, log-probs, the config's bf16) vs HF
                        `generate` in this process (sampling, temperature 1, no top-k; fp32, its fast path
                        on CPU, bf16 there is ~10x slower), same prompts, batch and max new tokens
  weight sync MB/s      policy -> vLLM sync (ZeRO-3 gather, pack, broadcast, vLLM reload), seen from the
                        driver, vs one raw gloo broadcast of the same bytes between the same two processes
                        (timed on the wire inside the sender: the limit); again on SmolLM2-135M when
                        `make smollm2` has put it in models/ (`--sync-model`)
  RL iteration          responses/s: one PPO iteration of the pipeline's own loop and actors (generate,
                        score with two RMs, policy, reference and critic, update policy and critic, sync)
                        vs one step of TRL `GRPOTrainer` on the same prompts and model (`compare_rl.py`
                        says what each does more or less)

Threads: our trainer ranks use all cores when they run alone (`set_cpu_threads`), as does this process for TRL
and HF; the vLLM engine runs one (Ray's OMP_NUM_THREADS=1 for a fractional-CPU actor: two threads were
tried and collapsed under a shared machine's load). Rates count real tokens (no padding) for SFT, pairs
for the RM, generated tokens (up to and with EOS) for the rollout. Roles that the pipeline runs at once
(the RL iteration's scoring and update) split the cores between them (`remote.gather`).

    .venv/bin/python benchmarks/compare.py [--repeats 3] [--steps 3] [--rows 8] [--seq-len 256] [--prompts 16]
        [--rollout-prompts 16,64]

CPU: about 4 minutes on 2 cores (4m10s measured). vLLM spawns its engine core,
hence the `__main__` guard.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@dataclass
class Pair:
    name: str
    unit: str
    shape: str
    theirs_name: str
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """The median over repeats of ours/theirs within a repeat: the two sides of a repeat ran back to
        back under the same load, so the load cancels there, not across repeats."""
        return statistics.median(o / t for o, t in zip(self.ours, self.theirs))


def median_rate(fn, steps: int) -> float:
    """`fn()` returns (work, seconds) of one call; the rate of the median call (by seconds)."""
    runs = sorted((fn() for _ in range(steps)), key=lambda r: r[1])
    work, seconds = runs[len(runs) // 2]
    return work / seconds


def measure(pair: Pair, ours, theirs, repeats: int) -> Pair:
    """Warm both up once, then `repeats` x (ours, theirs) back to back; each returns a rate."""
    ours(warm=True)
    theirs(warm=True)
    for r in range(repeats):
        pair.ours.append(ours())
        pair.theirs.append(theirs())
        print(f"  {pair.name} repeat {r + 1}: ours {pair.ours[-1]:,.0f} {pair.unit}, "
              f"{pair.theirs_name} {pair.theirs[-1]:,.0f} {pair.unit}", flush=True)
    return pair


def wall(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------- TRL runs


class _Clock:
    """A TRL callback: the time of every optimizer step's end; collated work per batch (`count`)."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                clock.marks.append(time.perf_counter())

        self.callback = CB()
        self.marks: list[float] = []
        self.work: list[float] = []

    def wrap(self, trainer, count) -> None:
        collate = trainer.data_collator

        def counted(features):
            batch = collate(features)
            self.work.append(count(batch))
            return batch

        trainer.data_collator = counted

    def run(self, trainer, steps: int) -> float:
        """`steps` + 1 optimizer steps (the first untimed); the rate of the median step-to-step interval
        (data loading and collation included), with the mean work of the steps timed."""
        self.marks, self.work = [], []
        trainer.args.max_steps = steps + 1
        trainer.train()
        gaps = [b - a for a, b in zip(self.marks, self.marks[1:])]
        work = statistics.mean(self.work[1: steps + 1])
        return work / statistics.median(gaps)


def trl_args(cls, out: Path, batch: int, seq_len: int, **kw):
    return cls(output_dir=str(out), per_device_train_batch_size=batch, max_length=seq_len, max_steps=2,
               learning_rate=1e-4, lr_scheduler_type="constant", bf16=False, gradient_checkpointing=False,
               use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
               dataloader_num_workers=0, seed=0, **kw)


def trl_sft(tok, v0: str, records, rows: int, seq_len: int, work: Path, strategy: str = "bfd"):
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from llama_rlhf.data.chat import encode_dialog

    enc = [encode_dialog(tok, r.messages, r.train_turns) for r in records]
    data = Dataset.from_list([{"input_ids": e.input_ids, "assistant_masks": e.loss_mask} for e in enc])
    model = LlamaForCausalLM.from_pretrained(v0, dtype="float32")
    pad = tok.hf.convert_ids_to_tokens(tok.pad_id)
    args = trl_args(SFTConfig, work / "trl_sft", rows, seq_len, packing=True, packing_strategy=strategy,
                    pad_token=pad)
    clock = _Clock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok.hf,
                         callbacks=[clock.callback])
    clock.wrap(trainer, lambda b: float(b["attention_mask"].sum() if "attention_mask" in b else b["input_ids"].numel()))
    return lambda steps: clock.run(trainer, steps)


def trl_rm(tok, v0: str, pairs, seq_len: int, work: Path):
    from datasets import Dataset
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from llama_rlhf.algorithms.reward import margin_for

    margins = margin_for(pairs.rating, "small").tolist()
    strip = lambda ids, mask: ids[mask.bool()].tolist()  # noqa: E731 - our batch is left-padded
    data = Dataset.from_list([
        {"chosen_ids": strip(pairs.chosen_ids[i], pairs.chosen_mask[i]),
         "rejected_ids": strip(pairs.rejected_ids[i], pairs.rejected_mask[i]), "margin": margins[i]}
        for i in range(pairs.rows())])
    model = LlamaForSequenceClassification.from_pretrained(v0, num_labels=1, dtype="float32")
    model.config.pad_token_id = tok.pad_id
    pad = tok.hf.convert_ids_to_tokens(tok.pad_id)
    args = trl_args(RewardConfig, work / "trl_rm", pairs.rows(), seq_len, pad_token=pad,
                    center_rewards_coefficient=None)
    clock = _Clock()
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok.hf,
                            callbacks=[clock.callback])
    clock.wrap(trainer, lambda b: float(b["margin"].numel()))
    return lambda steps: clock.run(trainer, steps)


# --------------------------------------------------------------------------- HF generate


def hf_generate(tok, v0: str, prompt_ids, max_new: int, dtype: str):
    """One HF `generate` call on the rollout's shape: (new tokens up to and with EOS, seconds)."""
    import torch
    from transformers import LlamaForCausalLM

    from llama_rlhf.actors.batches import left_pad

    model = LlamaForCausalLM.from_pretrained(v0, dtype=getattr(torch, dtype)).eval()
    ids, mask = left_pad(prompt_ids, tok.pad_id)
    gen = torch.Generator().manual_seed(0)

    def call():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        with torch.inference_mode():
            out, s = wall(lambda: model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                max_new_tokens=max_new, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
        new = out[:, ids.shape[1]:]
        ended = (new == tok.eos_id).int().cumsum(1)
        n = int(((ended == 0) | ((ended == 1) & (new == tok.eos_id))).sum())
        return n, s

    return call


# --------------------------------------------------------------------------- pairs


def sft_pair(a, policy, packed, trl_run) -> Pair:
    tokens = int((packed.segment_ids > 0).sum())
    pair = Pair("SFT", "tok/s", f"{a.rows}x{a.seq_len} packed", "TRL SFTTrainer packing")

    def ours(warm=False):
        if warm:
            return policy.sft_step(packed)
        return median_rate(lambda: (tokens, wall(lambda: policy.sft_step(packed))[1]), a.steps)

    return measure(pair, ours, lambda warm=False: trl_run(1 if warm else a.steps), a.repeats)


def rm_pair(a, rm, pairs, trl_run) -> Pair:
    pair = Pair("RM", "pairs/s", f"{pairs.rows()} pairs x<={pairs.chosen_ids.shape[1]}", "TRL RewardTrainer margin")

    def ours(warm=False):
        step = lambda: rm.train_step(pairs, "small")  # noqa: E731
        if warm:
            return step()
        return median_rate(lambda: (pairs.rows(), wall(step)[1]), a.steps)

    return measure(pair, ours, lambda warm=False: trl_run(1 if warm else a.steps), a.repeats)


def rm_together_pair(a, rms: list, pairs) -> Pair:
    """The pipeline's two RMs (two groups, one rank each) taking a step each at once (`gather`: they split
    the cores) vs the same two steps one after the other, each with every core (how they trained before)."""
    from llama_rlhf.actors.remote import gather

    pair = Pair("two RMs together", "pairs/s", f"2 x {pairs.rows()} pairs x<={pairs.chosen_ids.shape[1]}",
                "one after the other")
    step = lambda rm: lambda: rm.train_step(pairs, "small")  # noqa: E731

    def together(warm=False):
        if warm:
            return gather(*map(step, rms))
        return median_rate(lambda: (2 * pairs.rows(), wall(lambda: gather(*map(step, rms)))[1]), a.steps)

    def in_turn(warm=False):
        if warm:
            return [step(rm)() for rm in rms]
        return median_rate(lambda: (2 * pairs.rows(), wall(lambda: [step(rm)() for rm in rms])[1]), a.steps)

    return measure(pair, together, in_turn, a.repeats)


def rollout_pairs(a, rollouts: dict, prompt_ids, hf_call) -> list[Pair]:
    """Each engine group in `rollouts` (label -> RolloutGroup) against HF `generate` on `prompt_ids`; all
    back to back in every repeat (more than one group: variants of the engine compared in one run)."""
    shape = f"{len(prompt_ids)} prompts x{a.max_new} new, vLLM {a.rollout_dtype}"
    pairs = {k: Pair(k, "new tok/s", shape, f"HF generate {a.hf_dtype}") for k in rollouts}
    seeds = iter(range(10**6))

    def ours(group):
        def call():
            outs, s = wall(lambda: group.generate(prompt_ids, 1, 1.0, 1.0, a.max_new, seed=next(seeds) * 1000))
            return sum(len(o[0].token_ids) for o in outs), s
        return call

    for g in rollouts.values():
        ours(g)()
    hf_call()
    for r in range(a.repeats):
        for k, g in rollouts.items():
            pairs[k].ours.append(median_rate(ours(g), a.steps))
        hf = median_rate(hf_call, a.steps)
        for p in pairs.values():
            p.theirs.append(hf)
        print(f"  rollout repeat {r + 1}: " + ", ".join(f"{k} {p.ours[-1]:,.0f}" for k, p in pairs.items())
              + f", HF generate {hf:,.0f} new tok/s", flush=True)
    return list(pairs.values())


def _send_gathered(self, wire):
    """Inside the policy actor: the sync's sender as it was before, a ZeRO-3 gather per bucket even on one
    rank (which holds every partition whole and now reads them), for the before/after rows of one run."""
    from llama_rlhf.actors.weight_sync import SyncMeta

    meta = SyncMeta.from_wire(wire)
    return self.sender.send(self.m.named_gathered_parameters(meta.bucket_bytes, read_partitions=False), meta).seconds


def sync_pairs(a, policy, rollout, backend: str, dtype: str, name: str = "weight sync",
               before_name: str = "sync (before)") -> list[Pair]:
    """The sync now (`name`), and (`--sync-before`, one policy rank) the gathering sender it replaced
    (`before_name`), each against the raw broadcast of the same bytes; all three back to back in every repeat."""
    import ray

    from llama_rlhf.actors.remote import get_all
    from llama_rlhf.actors.weight_sync import DEFAULT_BUCKET_BYTES, SyncMeta

    host, port = policy.weight_sync_endpoint()
    refs = rollout.init_weight_sync(host, port, backend)
    refs += policy.init_weight_sync(host, port, rollout.sync_world_size, backend)
    ray.get(refs)
    wire = policy.sync_meta(dtype, a.bucket_mb * 2**20 if a.bucket_mb else DEFAULT_BUCKET_BYTES)
    nbytes = SyncMeta.from_wire(wire).total_bytes
    mb = nbytes / 1e6

    # get_all: a receiver that fails must fail the call, not leave it waiting on the sender's broadcast
    def sync(before=False):
        def call():
            recv = rollout.receive_weights(SyncMeta.from_wire(wire))
            if before:
                sent = [policy.ranks[0].__ray_call__.remote(_send_gathered, wire)]
            else:
                sent = policy.sync_weights(wire)
            get_all(sent + recv)
        return call

    def raw():
        recv = rollout.receive_probe(nbytes)
        sent = get_all(policy.broadcast_probe(nbytes) + recv)[0]
        return mb, sent["seconds"]

    shape = f"{mb:.1f} MB {dtype}, {policy.n} -> 1"
    now = Pair(name, "MB/s", shape, "raw gloo broadcast")
    with_old = a.sync_before and policy.n == 1
    old = Pair(before_name, "MB/s", shape, "raw gloo broadcast") if with_old else None
    for fn in (sync(), raw) + ((sync(before=True),) if old else ()):
        fn()  # warm-up
    for r in range(a.repeats):
        if old:
            old.ours.append(median_rate(lambda: (mb, wall(sync(before=True))[1]), a.steps))
        now.ours.append(median_rate(lambda: (mb, wall(sync())[1]), a.steps))
        now.theirs.append(median_rate(raw, a.steps))
        if old:
            old.theirs.append(now.theirs[-1])
        print(f"  weight sync repeat {r + 1}: ours {now.ours[-1]:,.0f} MB/s"
              + (f", before {old.ours[-1]:,.0f} MB/s" if old else "") + f", raw {now.theirs[-1]:,.0f} MB/s",
              flush=True)
    return [p for p in (old, now) if p]


# --------------------------------------------------------------------------- output


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def print_table(pairs: list[Pair], load: tuple[float, float]) -> None:
    head = ("pair", "shape", "unit", "ours", "theirs", "theirs is", "ours/theirs", "ours per repeat")
    rows = [(p.name, p.shape, p.unit, fmt(statistics.median(p.ours)), fmt(statistics.median(p.theirs)),
             p.theirs_name, f"{p.ratio:.2f}x", " ".join(fmt(x) for x in p.ours)) for p in pairs]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    print("\n" + line(head) + "\n" + "  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print(f"load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}")
    print("ratios (ours/theirs): " + ", ".join(f"{p.name} {p.ratio:.2f}x" for p in pairs))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="back-to-back (ours, theirs) rounds per pair")
    ap.add_argument("--steps", type=int, default=3, help="timed calls per round (median), after one warm-up")
    ap.add_argument("--rows", type=int, default=8, help="packed SFT rows per step")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=16, help="preference pairs per RM step")
    ap.add_argument("--prompts", type=int, default=16, help="responses per RL iteration (compare_rl.py)")
    ap.add_argument("--max-new", type=int, default=48, help="new tokens per rollout")
    ap.add_argument("--rollout-prompts", type=lambda v: [int(x) for x in v.split(",")], default=[16, 64],
                    help="prompts per generate call of the rollout pairs, one pair each: 16 (the issue's shape) "
                         "and 64 (one PPO batch of configs/local.yaml; a rejection-sampling round there is 512)")
    ap.add_argument("--rollout-engines", type=lambda v: [int(x) for x in v.split(",")], default=[1],
                    help="vLLM engines of the rollout pair; more values add variants to the same run (1,2)")
    ap.add_argument("--rollout-dtype", default="bfloat16", help="vLLM dtype (the config's default)")
    ap.add_argument("--hf-dtype", default="float32", help="HF generate dtype (fp32: its fast path on CPU)")
    ap.add_argument("--bucket-mb", type=float, default=0, help="weight-sync bucket size (0: the default)")
    ap.add_argument("--sync-model", default=str(Path(__file__).parents[1] / "models" / "smollm2-135m-instruct"),
                    help="also time the sync on this HF folder's model (skipped when absent; `make smollm2`)")
    ap.add_argument("--sync-before", type=int, default=1, help="also time the sync's previous sender (1 rank)")
    ap.add_argument("--trl-packing", default="bfd", help="TRL packing_strategy: bfd (its default, padding-free:"
                    " a step is one row of rows x seq-len tokens) or wrapped (rows x seq-len, no per-sample mask)")
    ap.add_argument("--zero-persistence", type=int, default=None,
                    help="ZeRO-3 stage3_param_persistence_threshold of our SFT/RM/sync roles (elements; default:"
                    " the config's): smaller parameters stay whole on every rank, with no fetch per forward")
    ap.add_argument("--zero-stage", type=int, default=None, choices=(0, 1, 2, 3),
                    help="ZeRO stage of our SFT/RM/sync roles (default: the config's, 3); on one rank stage 3"
                    " partitions nothing and its per-module hooks are all that differs")
    ap.add_argument("--only", default="sft,rm,rollout,sync,rl", help="comma-separated pairs to run")
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    only = set(a.only.split(","))
    warnings.filterwarnings("ignore")
    import ray
    import torch

    from llama_rlhf.actors.engine import ModelSpec, OptimSpec, ZeroSpec
    from llama_rlhf.actors.remote import PolicyGroup, RewardGroup
    from llama_rlhf.actors.rollout import RolloutGroup
    from llama_rlhf.config import ClusterConfig
    from llama_rlhf.data.world import build_world
    from llama_rlhf.models import count_parameters, llama_config
    from llama_rlhf.tokenizer import shipped_corpus, train_tokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from actors import build_data

    load0 = os.getloadavg()[0]
    backend = "gloo"
    cluster = ClusterConfig(gpus_per_node=0, rollout={"kv_cache_gib": 0.25, "dtype": a.rollout_dtype})
    opts = lambda i: {"num_cpus": cluster.cpus_per_actor, "num_gpus": 0}  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="bench_compare_"))
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=0, include_dashboard=False,
             _temp_dir=tempfile.mkdtemp(prefix="rb_", dir="/tmp"), _node_ip_address="127.0.0.1", log_to_driver=False)
    tok = train_tokenizer(shipped_corpus(), work / "tok", vocab_size=1024)
    cfg = llama_config("tiny", vocab_size=tok.vocab_size, max_seq_len=a.seq_len, pad_token_id=tok.pad_id,
                       bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    packed, pairs, prompt_ids, _ = build_data(tok, a.seq_len, a.rows, a.pairs, max(a.prompts, *a.rollout_prompts),
                                              a.max_new)
    sft_records = build_world(seed=0, n_sft=200, n_preferences=a.pairs, n_rlhf=a.prompts, n_eval=4).sft_records()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"tiny Llama: {count_parameters(cfg):,} parameters fp32; {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; load average {load0:.2f}", flush=True)
    optim = OptimSpec(lr=1e-4, schedule="constant")
    zero = ZeroSpec(**{k: v for k, v in (("stage", a.zero_stage), ("param_persistence_threshold",
                                                                    a.zero_persistence)) if v is not None})
    policy = PolicyGroup(1, opts, backend, zero)
    policy.load(ModelSpec("causal", config=cfg.to_dict(), seed=0), optim)
    v0 = policy.save_hf(str(work / "v0"))
    tok.save(v0)
    done: list[Pair] = []
    if "sft" in only:
        done.append(sft_pair(a, policy, packed, trl_sft(tok, v0, sft_records, a.rows, a.seq_len, work,
                                                                       a.trl_packing)))
    if "rm" in only:
        rm = RewardGroup("helpful", 1, opts, backend, zero)
        rm.load(ModelSpec("scalar", path=v0, seed=1), optim)
        done.append(rm_pair(a, rm, pairs, trl_rm(tok, v0, pairs, a.seq_len, work)))
        safety = RewardGroup("safety", 1, opts, backend, zero)
        safety.load(ModelSpec("scalar", path=v0, seed=2), optim)
        done.append(rm_together_pair(a, [rm, safety], pairs))
        rm.kill()
        safety.kill()

    def engines(path: str, n: int) -> RolloutGroup:  # the prompts split over n one-thread engines
        c = cluster.model_copy(update={"rollout": cluster.rollout.model_copy(update={"engines": n})})
        return RolloutGroup(path, c, seed=0, max_model_len=a.seq_len)

    if only & {"rollout", "sync"}:
        rollout = engines(v0, a.rollout_engines[0])
        if "rollout" in only:
            for i, batch in enumerate(a.rollout_prompts):  # the batch sizes, one pair each
                label = "rollout" if i == 0 else f"rollout {batch} prompts"
                hf = hf_generate(tok, v0, prompt_ids[:batch], a.max_new, a.hf_dtype)
                groups = {label: rollout}
                for n in a.rollout_engines[1:] if i == 0 else ():  # variants, in the same run
                    groups[f"rollout, {n} engines"] = engines(v0, n)
                done += rollout_pairs(a, groups, prompt_ids[:batch], hf)
                for g in list(groups.values())[1:]:
                    g.shutdown()
        if "sync" in only:
            done += sync_pairs(a, policy, rollout, backend, a.rollout_dtype)
        rollout.shutdown()
    policy.kill()
    if "sync" in only and a.sync_model and Path(a.sync_model, "config.json").exists():
        # the same sync on a real checkpoint's size: the fixed costs (vLLM's reload, the round trips) shrink
        big = PolicyGroup(1, opts, backend, zero)
        big.load(ModelSpec("causal", path=a.sync_model, seed=0))
        engine = engines(a.sync_model, a.rollout_engines[0])
        label = f"sync {Path(a.sync_model).name}"
        done += sync_pairs(a, big, engine, backend, a.rollout_dtype, label, f"{label} (before)")
        engine.shutdown()
        big.kill()
    ray.shutdown()
    if "rl" in only:  # the pipeline's own actors, in a Ray of their own
        from compare_rl import rl_pairs

        done += rl_pairs(a, work, Pair)
    print_table(done, (load0, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
