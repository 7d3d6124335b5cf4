"""Seconds per step of every actor on the tiny model, side by side in one run, and the weight-sync speed.

Real local Ray, DeepSpeed ZeRO-3 over gloo (NCCL on GPU), vLLM; one tiny fp32 Llama (`tiny` preset, the
trained 1024-piece tokenizer) and the embedded world's data. The roles run one at a time, as in the
orchestrator, so each step has the node to itself (other processes on the machine aside: the load
average is printed). Rows:

  policy SFT step (1 and 2 ranks), reward-model train step, critic value step, reference log-probs,
  policy PPO step (2 ranks), vLLM generate (tokens/s), policy -> vLLM weight sync (MB/s) from 1 and from
  2 ZeRO-3 ranks (the second includes a real all-gather per parameter).

Each timing is the median over `--steps` calls after one warm-up call: "wall" is the driver's view (Ray
round trip, batch pickling, every rank), "actor" what the rank itself timed around the step (for the sync:
the sender's ZeRO-3 gather + broadcast). "start+load" is the group's actor start-up plus its engine load
(for the sync: joining the sync group). Throughputs count every position a step runs through the model,
padding included; vLLM's counts the generated tokens.

    .venv/bin/python benchmarks/actors.py [--steps 5] [--rows 8] [--seq-len 256]

CPU: about 2-3 minutes on 2 cores. vLLM spawns its engine core, hence the `__main__` guard.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


def timed(fn, steps: int):
    """(median wall seconds, the per-call results) over `steps` calls after one warm-up call."""
    fn()
    walls, results = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        results.append(fn())
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), results


def actor_seconds(results) -> float:
    return statistics.median(r["seconds"] for r in results)


class Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, actor, ranks, batch, startup, wall, actor_s=None, rate=""):
        self.rows.append((actor, str(ranks), batch, "" if startup is None else f"{startup:.1f}", f"{wall:.3f}",
                          "" if actor_s is None else f"{actor_s:.3f}", rate))
        print(f"  {actor}: {wall:.3f} s {rate}", flush=True)

    def print(self):
        head = ("actor", "ranks", "batch", "start+load s", "wall s/step", "actor s/step", "throughput")
        widths = [max(len(str(r[i])) for r in [head, *self.rows]) for i in range(len(head))]
        line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
        print("\n" + line(head) + "\n" + "  ".join("-" * w for w in widths))
        for r in self.rows:
            print(line(r))


def bench_sync(table: Table, policy, rollout, backend: str, dtype: str, steps: int) -> None:
    """Policy -> vLLM weight sync, wired as orchestrator.stages.sync_rollout (a fresh sync group per policy
    group: a new sender, the engine re-joins, as after a replaced rollout worker)."""
    import ray

    from llama_rlhf.actors.weight_sync import DEFAULT_BUCKET_BYTES, SyncMeta

    t0 = time.perf_counter()
    host, port = policy.weight_sync_endpoint()
    refs = rollout.init_weight_sync(host, port, backend)
    refs += policy.init_weight_sync(host, port, rollout.sync_world_size, backend)
    ray.get(refs)
    up = time.perf_counter() - t0
    wire = policy.sync_meta(dtype, DEFAULT_BUCKET_BYTES)

    def sync():
        recv = rollout.receive_weights(SyncMeta.from_wire(wire))
        sent = ray.get(policy.sync_weights(wire))[0]
        ray.get(recv)
        return sent

    wall, res = timed(sync, steps)
    mbytes = res[0]["bytes"] / 1e6
    sender = statistics.median(r["seconds"] for r in res)
    table.add("weight sync", f"{policy.n} -> 1", f"{mbytes:.1f} MB {dtype}", up, wall, sender,
              f"{mbytes / wall:,.0f} MB/s (sender {mbytes / sender:,.0f} MB/s)")


def _loaded(group, spec, optim=None):
    group.load(spec, optim)
    return group


def build_data(tok, seq_len: int, rows: int, pairs: int, prompts: int, max_new: int):
    from llama_rlhf.actors.batches import sequence_batch
    from llama_rlhf.data.chat import encode_response
    from llama_rlhf.data.records import Preference
    from llama_rlhf.data.world import build_world
    from llama_rlhf.orchestrator.datasets import packed_batches, pair_batch, prompt_token_ids

    world = build_world(seed=0, n_sft=200, n_preferences=pairs, n_rlhf=prompts, n_eval=4)
    sft = world.sft_records()
    packed = packed_batches(tok, sft, seq_len, rows, seed=0)[0][0]
    prefs: list[Preference] = world.preference_records()
    pairs_batch = pair_batch(tok, prefs, seq_len)
    prompt_ids = prompt_token_ids(tok, world.rlhf_prompts(), seq_len - max_new)
    answers = [encode_response(tok, r.messages[-1]["content"]) for r in sft[:prompts]]
    seq = sequence_batch(prompt_ids, answers, tok.pad_id)
    return packed, pairs_batch, prompt_ids, seq


def started(make):
    """(the group, seconds to start its actors and load its engine)."""
    t0 = time.perf_counter()
    group = make()
    return group, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed calls per row (after one warm-up)")
    ap.add_argument("--rows", type=int, default=8, help="packed SFT rows per step")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=16, help="preference pairs per RM step")
    ap.add_argument("--prompts", type=int, default=16, help="rollout prompts (= PPO / critic / reference batch)")
    ap.add_argument("--max-new", type=int, default=48, help="new tokens per rollout")
    ap.add_argument("--rollout-dtype", default=None, help="vLLM dtype (default: the config's)")
    args = ap.parse_args()

    import ray
    import torch

    from llama_rlhf.actors.batches import PPOBatch, sequence_batch
    from llama_rlhf.actors.engine import ModelSpec, OptimSpec
    from llama_rlhf.actors.remote import CriticGroup, PolicyGroup, ReferenceGroup, RewardGroup
    from llama_rlhf.actors.rollout import RolloutGroup
    from llama_rlhf.algorithms.ppo import gae, whiten_advantages
    from llama_rlhf.config import ClusterConfig
    from llama_rlhf.models import count_parameters, llama_config
    from llama_rlhf.tokenizer import shipped_corpus, train_tokenizer

    gpu = torch.cuda.is_available()
    backend = "nccl" if gpu else "gloo"
    cluster = ClusterConfig(gpus_per_node=torch.cuda.device_count(),
                            rollout={"kv_cache_gib": 0.25, **({"dtype": args.rollout_dtype} if args.rollout_dtype
                                                              else {})})
    opts = lambda i: {"num_cpus": cluster.cpus_per_actor, "num_gpus": 1 if gpu else 0}  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="bench_actors_"))
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), include_dashboard=False,
             _temp_dir=tempfile.mkdtemp(prefix="rb_", dir="/tmp"), _node_ip_address="127.0.0.1", log_to_driver=False)

    tok = train_tokenizer(shipped_corpus(), work / "tok", vocab_size=1024)
    cfg = llama_config("tiny", vocab_size=tok.vocab_size, max_seq_len=args.seq_len, pad_token_id=tok.pad_id,
                       bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    packed, pairs, prompt_ids, seq = build_data(tok, args.seq_len, args.rows, args.pairs, args.prompts,
                                                args.max_new)
    spec = ModelSpec("causal", config=cfg.to_dict(), seed=0)
    optim = OptimSpec(lr=1e-4, schedule="constant")
    print(f"tiny Llama: {count_parameters(cfg):,} parameters fp32; {os.cpu_count()} CPUs"
          f"{', ' + torch.cuda.get_device_name() if gpu else ''}; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    table = Table()
    torch.manual_seed(0)


    # ---- policy SFT on 1 rank; its weights start the vLLM engine; sync from 1 rank (no real gather)
    tps = lambda ids, wall: f"{ids.numel() / wall:,.0f} tok/s"  # noqa: E731
    policy, up = started(lambda: _loaded(PolicyGroup(1, opts, backend), spec, optim))
    wall, res = timed(lambda: policy.sft_step(packed), args.steps)
    table.add("policy SFT step", 1, f"{args.rows}x{args.seq_len} packed", up, wall, actor_seconds(res),
              tps(packed.input_ids, wall))
    v0 = policy.save_hf(str(work / "v0"))

    rollout, up = started(lambda: RolloutGroup(v0, cluster, seed=0, max_model_len=args.seq_len))
    gen = lambda: rollout.generate(prompt_ids, 1, 1.0, 1.0, args.max_new, seed=0)  # noqa: E731
    wall, outs = timed(gen, args.steps)
    new_tokens = sum(len(o[0].token_ids) for o in outs[-1])
    table.add("vLLM generate", 1, f"{len(prompt_ids)} prompts x{args.max_new} new, {cluster.rollout.dtype}",
              up, wall, None, f"{new_tokens / wall:,.0f} new tok/s")
    bench_sync(table, policy, rollout, backend, cluster.rollout.dtype, args.steps)
    policy.kill()

    # ---- the same on 2 ZeRO-3 ranks: SFT, the sync (one all-gather per parameter), later PPO
    policy, up = started(lambda: _loaded(PolicyGroup(2, opts, backend), spec, optim))
    wall, res = timed(lambda: policy.sft_step(packed), args.steps)
    table.add("policy SFT step", 2, f"{args.rows}x{args.seq_len} packed", up, wall, actor_seconds(res),
              tps(packed.input_ids, wall))
    bench_sync(table, policy, rollout, backend, cluster.rollout.dtype, args.steps)

    # ---- reward model and critic (1 rank each), the reference (as many ranks as the policy)
    rm, up = started(lambda: _loaded(RewardGroup("helpful", 1, opts, backend), ModelSpec("scalar", path=v0, seed=1),
                                     optim))
    wall, res = timed(lambda: rm.train_step(pairs, "small"), args.steps)
    table.add("RM train step", 1, f"{pairs.rows()} pairs x{pairs.chosen_ids.shape[1]}", up, wall,
              actor_seconds(res), f"{2 * pairs.chosen_ids.numel() / wall:,.0f} tok/s")
    rm.kill()

    critic, up = started(lambda: _loaded(CriticGroup(1, opts, backend), ModelSpec("scalar", path=v0, seed=2),
                                         optim))
    mask = seq.response_mask.float()
    zeros = torch.zeros_like(mask)
    returns = torch.linspace(-1, 1, seq.rows())[:, None] * mask
    vbatch = PPOBatch(seq.input_ids, seq.attention_mask, seq.response_mask, zeros, zeros, critic.values(seq),
                      returns)
    mb = seq.rows() // 2
    wall, res = timed(lambda: critic.value_step(vbatch, mb, 0.2, 0), args.steps)
    table.add("critic value step", 1, f"{seq.rows()}x{seq.input_ids.shape[1]}, mb {mb}", up, wall,
              actor_seconds(res), tps(seq.input_ids, wall))

    reference, up = started(lambda: _loaded(ReferenceGroup(2, opts, backend), ModelSpec("causal", path=v0)))
    wall, _ = timed(lambda: reference.logprobs(seq), args.steps)
    table.add("reference logprobs", 2, f"{seq.rows()}x{seq.input_ids.shape[1]}", up, wall, None,
              tps(seq.input_ids, wall))
    reference.kill()

    # ---- a PPO step on the engine's samples (2 gradient steps: minibatch = half the batch)
    rollout_seq = sequence_batch(prompt_ids, [o[0].token_ids for o in outs[-1]], tok.pad_id)
    m = rollout_seq.response_mask.float()
    logp, old_values = policy.logprobs(rollout_seq), critic.values(rollout_seq)
    critic.kill()
    rewards = torch.zeros_like(m)
    # a sequence score on each last response token (what the RMs give): values only, not timed
    rewards[torch.arange(m.shape[0]), m.sum(1).long() - 1] = torch.randn(m.shape[0])
    adv, ret = gae(rewards, old_values, m, 1.0, 0.95)
    ppo = PPOBatch(rollout_seq.input_ids, rollout_seq.attention_mask, rollout_seq.response_mask, logp,
                   whiten_advantages(adv, m), old_values, ret)
    wall, res = timed(lambda: policy.ppo_step(ppo, mb, 0.2, 0), args.steps)
    table.add("policy PPO step", 2, f"{ppo.rows()}x{ppo.input_ids.shape[1]}, mb {mb}", None, wall,
              actor_seconds(res), tps(ppo.input_ids, wall))

    rollout.shutdown()
    policy.kill()
    table.print()
    ray.shutdown()


if __name__ == "__main__":
    main()
