"""The policy (SFT, rejection-sampling fine-tuning, PPO) and the frozen reference policy.

Plain classes, one instance per rank; `actors/remote.py` wraps them as Ray actors. Math comes from
`llama_rlhf.algorithms`; this file only moves tensors through the DeepSpeed engine.
"""

from __future__ import annotations

import torch

from llama_rlhf.actors.batches import PackedBatch, PPOBatch, SequenceBatch
from llama_rlhf.actors.engine import Role, StepTimer, micro_batches
from llama_rlhf.algorithms.logprobs import causal_lm_response_logprobs
from llama_rlhf.algorithms.ppo import ppo_update
from llama_rlhf.algorithms.sft import IGNORE_INDEX, sft_loss
from llama_rlhf.data.packing import block_causal_mask


def packed_forward(module, batch: dict) -> torch.Tensor:
    """Logits of packed rows: samples never attend across their boundaries.

    Our Triton kernel reads the restarting position ids (varlen); every other attention backend gets
    the block-diagonal causal mask built here from the segment ids.
    """
    impl = getattr(module.config, "_attn_implementation", "sdpa")
    if impl == "llama_rlhf_gqa":
        out = module(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    else:
        dtype = next(module.parameters()).dtype
        mask = block_causal_mask(batch["segment_ids"], dtype if dtype.is_floating_point else torch.float32)
        out = module(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask,
                     use_cache=False)
    return out.logits


@torch.no_grad()
def response_logprobs(m, batch: SequenceBatch) -> torch.Tensor:
    """Log-probs (B, R) of the response tokens under a rank's engine, 0 off the response mask."""
    m.engine.eval()
    d = m.to_device(batch.to_dict())
    logp, _ = causal_lm_response_logprobs(m.engine, d["input_ids"], d["attention_mask"], batch.response_len)
    return (logp * d["response_mask"]).cpu()


def global_count(n: int, world_size: int) -> int:
    """Sum of a per-rank count over the role's process group."""
    if world_size == 1:
        return n
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.long)
    dist.all_reduce(t)
    return int(t.item())


class PolicyTrainer(Role):
    """One rank of the policy's ZeRO-3 group."""

    def __init__(self, dist, zero_stage: int = 3):
        super().__init__(dist, zero_stage)
        self.sender = None

    # ------------------------------------------------------------------ SFT / rejection sampling

    def sft_step(self, batch: PackedBatch, num_micro: int = 1) -> dict:
        """One optimizer step of the answer-only loss over packed rows (the paper's SFT objective;
        rejection-sampling fine-tuning trains the same way on the selected samples)."""
        m = self.m
        data = m.to_device(batch.to_dict())
        n_tokens = global_count(int((data["labels"][:, 1:] != IGNORE_INDEX).sum()), self.dist.world_size)
        m.begin_step(num_micro)
        total = 0.0
        # One token mean over every answer token of the step on all ranks: DeepSpeed divides each micro
        # loss by num_micro and averages gradients over the ranks, so both factors are put back here.
        scale = num_micro * self.dist.world_size
        with StepTimer() as t:
            for mb in micro_batches(data, num_micro):
                logits = packed_forward(m.engine, mb)
                loss = sft_loss(logits, mb["labels"], num_items=n_tokens) * scale
                m.backward(loss)
                total += float(loss.detach()) / num_micro  # the ranks' mean of this is the step's token mean
        return {"loss": total, "tokens": n_tokens, "seconds": t.seconds[0], **m.end_step()}

    @torch.no_grad()
    def sft_eval(self, batch: PackedBatch) -> dict:
        m = self.m
        m.engine.eval()
        data = m.to_device(batch.to_dict())
        n = int((data["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss = sft_loss(packed_forward(m.engine, data), data["labels"], num_items=n)
        return {"loss_sum": float(loss) * n, "tokens": n}

    # ------------------------------------------------------------------ PPO

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        """log π_θ of each response token (B, R), 0 off the response mask."""
        return response_logprobs(self.m, batch)

    def ppo_step(self, batch: PPOBatch, minibatch_size: int, clip_range: float, seed: int) -> dict:
        """One pass over this rank's share of the rollout batch: one clipped-surrogate gradient step
        per minibatch (the paper: batch 512, minibatch 64, clip 0.2)."""
        m = self.m
        m.begin_step(1)
        d = m.to_device(batch.to_dict())
        d["mask"] = d.pop("response_mask").float()
        r = batch.response_len

        def logprob_fn(engine, mb):
            return causal_lm_response_logprobs(engine, mb["input_ids"], mb["attention_mask"], r, with_entropy=True)

        def backward_and_step(loss):
            m.backward(loss)

        # the same permutation on every rank keeps the collective gradient steps in lockstep
        gen = torch.Generator().manual_seed(seed)
        keep = ("input_ids", "attention_mask", "mask", "old_logprobs", "advantages")
        with StepTimer() as t:
            metrics = ppo_update(m.engine, {k: d[k] for k in keep}, logprob_fn, backward_and_step,
                                 minibatch_size=minibatch_size, clip_range=clip_range, generator=gen)
        return {**metrics, "seconds": t.seconds[0], **m.end_step()}

    # ------------------------------------------------------------------ weight sync to vLLM

    def init_weight_sync(self, host: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 joins the policy -> rollout broadcast group as its rank 0 (blocks until all join)."""
        if self.dist.rank == 0:
            from llama_rlhf.actors.weight_sync import WeightSyncSender

            self.sender = WeightSyncSender(host, port, world_size, backend)

    def sync_meta(self, engine_dtype: str, bucket_bytes: int):
        """The parameter list (names, shapes) the receivers need before a sync."""
        from llama_rlhf.actors.weight_sync import SyncMeta

        shapes = [(n, tuple(getattr(p, "ds_shape", p.shape))) for n, p in self.m.module.named_parameters()]
        return SyncMeta.build(shapes, engine_dtype, bucket_bytes).to_wire()

    def sync_weights(self, meta_wire) -> dict:
        """Gather the ZeRO-3 shards one parameter at a time (every rank takes part) and broadcast them
        from rank 0 in buckets to every vLLM worker."""
        from llama_rlhf.actors.weight_sync import SyncMeta

        named = self.m.named_full_parameters()
        if self.dist.rank != 0:
            for _ in named:  # take part in each gather
                pass
            return {}
        s = self.sender.send(named, SyncMeta.from_wire(meta_wire))
        return {"bytes": s.bytes, "seconds": s.seconds, "buckets": s.buckets, "mb_per_s": s.mb_per_s}


class ReferencePolicy(Role):
    """The frozen π_0 of the KL penalty: log-probs only (ZeRO-3 inference engine, no optimizer)."""

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        return response_logprobs(self.m, batch)
