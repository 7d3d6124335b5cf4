"""The online RL iteration pair of `compare.py`: one PPO iteration of ours against one step of TRL's
`GRPOTrainer`, on the same tiny Llama, the same RLHF prompts and the same new-token budget.

Ours is the pipeline's own `ppo_iteration` on the pipeline's own actors (built from `configs/ci.yaml` as
`tests/test_ppo_learns.py` builds them): vLLM generates one response per prompt; both reward models, the
policy, the reference and the critic score the batch in parallel; the policy and the critic take one
gradient step each (minibatch = batch); the new weights are synced into the vLLM engine.

Theirs is TRL's nearest trainer. TRL removed its PPO trainer; `GRPOTrainer` and `RLOOTrainer` are both
critic-free group-baseline trainers with the same loop (generate a group per prompt, score, one update),
GRPO being the one TRL documents first, so GRPO it is: `num_generations=2` (its minimum) responses per
prompt, half as many prompts, so both sides generate, score and train on the same number of responses per
step; both reward models as reward functions (TRL sums them, weights 1: no safety gate); `beta` > 0 so it
loads and scores a reference model, as ours does; generation with HF `generate` in the trainer's process
(`use_vllm=False`: TRL's colocated vLLM needs CUDA and its server mode a separate `trl vllm-serve`).
What ours does more: a critic (one more forward and a backward), a weight sync into vLLM, Ray round trips.
What TRL does more: nothing this pair measures; it runs everything in one process, nothing crosses a
process boundary.

A second row runs ours critic-free (`ppo.advantage: rloo`, 2 responses per prompt, GRPO's shape) on the same
actors against the same TRL steps: what is left over GRPO is the policy's own log-probs before the update
(the KL penalty sits in the reward) and the weight sync.

The unit is responses per second (generated, scored and trained on); prompts/s are half that for GRPO.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ours_ppo(a, work: Path):
    """(run(steps) -> (responses/s, mean new tokens), close(), the init checkpoint, the RLHF prompts as text)."""
    from llama_rlhf.config import load_config
    from llama_rlhf.orchestrator import pipeline
    from llama_rlhf.orchestrator import stages as S
    from llama_rlhf.orchestrator.datasets import prompt_token_ids
    from llama_rlhf.orchestrator.ppo_stage import ppo_iteration
    from llama_rlhf.orchestrator.progress import Progress
    from llama_rlhf.orchestrator.run_dir import RunDir

    rm_len = min(128, a.seq_len)
    overrides = [f"run.output_dir={work}", f"model.max_seq_len={a.seq_len}", f"sft.seq_len={a.seq_len}",
                 f"reward.helpful.max_len={rm_len}", f"reward.safety.max_len={rm_len}", f"ppo.batch_size={a.prompts}",
                 f"ppo.minibatch_size={a.prompts}", f"ppo.micro_batch_size={a.prompts}",
                 f"ppo.max_new_tokens={a.max_new}", "ppo.early_stop_patience=0", "ppo.checkpoint_every=0",
                 f"cluster.rollout.dtype={a.rollout_dtype}", f"data.world.n_rlhf={4 * a.prompts}"]
    cfg = load_config(ROOT / "configs" / "ci.yaml", overrides)
    ctx = pipeline._context(cfg, RunDir(work / "ci"), Progress(enabled=False))
    p = cfg.ppo
    ctx.policy.load(S.model_spec(ctx, "causal", None, "init"), S.optim_spec(cfg, p.lr, 1000, 0, "constant"))
    init = S.save_checkpoint(ctx, ctx.policy, "init")  # what the engine, the reference, critic and RMs start from
    pipeline._start_rollout(ctx, init)
    ctx.reference.load(S.model_spec(ctx, "causal", init, "ref"))
    ctx.critic.load(S.model_spec(ctx, "scalar", init, "critic"), S.optim_spec(cfg, p.critic_lr, 1000, 0, "constant"))
    for k in ("helpful", "safety"):
        ctx.rm[k].load(S.model_spec(ctx, "scalar", init, f"rm_{k}"))
    S.sync_rollout(ctx)  # the sync group is built before the first timed iteration
    its = iter(range(10**6))
    # the critic-free variant on the same actors: GRPO's group shape (2 responses per prompt), no critic call
    rloo = cfg.model_copy(update={"ppo": p.model_copy(update={"advantage": "rloo", "samples_per_prompt": 2})})

    def one(c):
        ctx.cfg = c
        t0 = time.perf_counter()
        m = ppo_iteration(ctx, 1, next(its))
        return time.perf_counter() - t0, m["response_len"]

    def run(steps: int, critic_free: bool = False):
        runs = sorted((one(rloo if critic_free else cfg) for _ in range(steps)), key=lambda r: r[0])
        seconds, length = runs[len(runs) // 2]
        return a.prompts / seconds, length

    texts = [ctx.tok.hf.decode(ids) for ids in prompt_token_ids(ctx.tok, ctx.data.rlhf_prompts, ctx.max_prompt_len)]
    return run, lambda: pipeline._shutdown(ctx), init, texts, ctx.tok, ctx.clock


def trl_grpo(a, tok, init: str, texts: list[str], work: Path):
    """run(steps) -> (responses/s of the median step-to-step interval, mean new tokens of the steps timed)."""
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    def rm():
        model = LlamaForSequenceClassification.from_pretrained(init, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_id
        return model

    pad = tok.hf.convert_ids_to_tokens(tok.pad_id)
    tok.hf.pad_token = pad
    args = GRPOConfig(
        output_dir=str(work / "trl_grpo"), per_device_train_batch_size=a.prompts, num_generations=2,
        max_completion_length=a.max_new, temperature=1.0, top_p=1.0, top_k=0, beta=0.04, num_iterations=1,
        learning_rate=1e-5, lr_scheduler_type="constant", bf16=False, use_cpu=True, report_to="none",
        save_strategy="no", logging_strategy="steps", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, gradient_checkpointing=False, use_vllm=False, log_completions=False)
    trainer = GRPOTrainer(
        model=LlamaForCausalLM.from_pretrained(init, dtype=torch.float32), reward_funcs=[rm(), rm()], args=args,
        train_dataset=Dataset.from_list([{"prompt": t} for t in texts]), processing_class=tok.hf,
        reward_processing_classes=[tok.hf, tok.hf], callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # its per-step log lines (read from log_history instead)

    def run(steps: int):
        marks.clear()
        trainer.args.max_steps = steps + 1
        trainer.train()
        gaps = [b - a for a, b in zip(marks, marks[1:])]
        lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
        return a.prompts / statistics.median(gaps), statistics.mean(lengths[1:] or lengths)

    return run


def rl_pairs(a, work: Path, Pair):
    """Warm-up, then `a.repeats` x (ours with a critic, ours critic-free, theirs) back to back; returns the
    two filled `Pair`s (the same TRL figures on both)."""
    run_ours, close, init, texts, tok, clock = ours_ppo(a, work)
    try:
        run_theirs = trl_grpo(a, tok, init, texts, work)
        shape, theirs = f"{a.prompts} responses x<={a.max_new} new, 2 RMs + ref", "TRL GRPOTrainer (HF generate)"
        pair = Pair("RL iteration", "responses/s", shape, theirs)
        free = Pair("RL iteration critic-free (RLOO)", "responses/s", f"{a.prompts // 2} prompts x 2, 2 RMs + ref",
                    theirs)
        run_ours(1)
        run_ours(1, critic_free=True)
        run_theirs(1)
        totals = {False: {}, True: {}}  # our seconds per phase, with and without the critic
        for r in range(a.repeats):
            for critic_free, target in ((False, pair), (True, free)):
                before = dict(clock.totals)
                o, ol = run_ours(a.steps, critic_free)
                target.ours.append(o)
                for k, v in clock.totals.items():
                    totals[critic_free][k] = totals[critic_free].get(k, 0.0) + v - before.get(k, 0.0)
            t, tl = run_theirs(a.steps)
            pair.theirs.append(t)
            free.theirs.append(t)
            print(f"  RL iteration repeat {r + 1}: ours {pair.ours[-1]:,.1f} responses/s with the critic, "
                  f"{o:,.1f} critic-free ({ol:.0f} new tokens each), TRL GRPO {t:,.1f} responses/s "
                  f"({tl:.0f} new tokens each)", flush=True)
        its = a.repeats * a.steps
        for critic_free, name in ((False, "with the critic"), (True, "critic-free")):
            print(f"  our RL iteration {name}, ms per phase (mean): " + ", ".join(
                f"{k} {v / its * 1000:.0f}" for k, v in totals[critic_free].items() if v > 0), flush=True)
        return [pair, free]
    finally:
        close()
