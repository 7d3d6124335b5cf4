"""The policy (SFT, rejection-sampling fine-tuning, PPO) and the frozen reference policy.

Plain classes, one instance per rank; `actors/remote.py` wraps them as Ray actors. Math comes from
`llama_rlhf.algorithms`; this file only moves tensors through the DeepSpeed engine. Every training step
accumulates gradients over micro-batches and every scoring pass runs in row chunks; the counts come
from the group (`remote.py`), equal on every rank, because ZeRO-3 forwards are collective.
"""

from __future__ import annotations

import torch

from llama_rlhf.actors.batches import PackedBatch, PPOBatch, SequenceBatch
from llama_rlhf.actors.engine import Role, StepTimer
from llama_rlhf.algorithms.batching import micro_batches
from llama_rlhf.algorithms.ppo import ppo_update
from llama_rlhf.algorithms.sft import IGNORE_INDEX


@torch.no_grad()
def response_logprobs(m, batch: SequenceBatch, num_chunks: int = 1) -> torch.Tensor:
    """Log-probs (B, R) of the response tokens under a rank's engine, 0 off the response mask."""
    m.engine.eval()
    out = []
    for c in micro_batches(m.to_device(batch.to_dict()), num_chunks):
        logp, _ = m.run_response(c, "response_logprobs")
        out.append((logp * c["response_mask"]).cpu())
    return torch.cat(out)


def global_count(n: int, m) -> int:
    """Sum of a per-rank count over the role's process group. The tensor lives on the engine's device:
    the default group is NCCL on GPU, which takes CUDA tensors only."""
    if m.dist.world_size == 1:
        return n
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.long, device=m.device)
    dist.all_reduce(t)
    return int(t.item())


def _packed_inputs(mb: dict) -> dict:
    return {k: mb[k] for k in ("input_ids", "position_ids", "segment_ids", "labels")}


class PolicyTrainer(Role):
    """One rank of the policy's ZeRO-3 group."""

    def __init__(self, dist, zero=None):
        super().__init__(dist, zero)
        self.sender = None
        self._sync_socket = None

    # ------------------------------------------------------------------ SFT / rejection sampling

    def sft_step(self, batch: PackedBatch, num_micro: int = 1) -> dict:
        """One optimizer step of the answer-only loss over packed rows (the paper's SFT objective;
        rejection-sampling fine-tuning trains the same way on the selected samples), accumulated over
        `num_micro` micro-batches."""
        m = self.m
        data = m.to_device(batch.to_dict())
        n_tokens = global_count(int((data["labels"][:, 1:] != IGNORE_INDEX).sum()), m)
        m.begin_step(num_micro)
        total = 0.0
        # One token mean over every answer token of the step on all ranks: DeepSpeed divides each micro
        # loss by num_micro and averages gradients over the ranks, so both factors are put back here.
        scale = num_micro * self.dist.world_size
        with StepTimer() as t:
            for mb in micro_batches(data, num_micro):
                logp = m.run(_packed_inputs(mb), out="packed_logprobs")  # (b, T - 1), 0 off the answers
                loss = -logp.sum() / max(n_tokens, 1) * scale
                m.backward(loss)
                total += float(loss.detach()) / num_micro  # the ranks' mean of this is the step's token mean
        return {"loss": total, "tokens": n_tokens, "seconds": t.seconds[0], **m.end_step()}

    @torch.no_grad()
    def sft_eval(self, batch: PackedBatch, num_chunks: int = 1) -> dict:
        m = self.m
        m.engine.eval()
        data = m.to_device(batch.to_dict())
        loss_sum = sum(-float(m.run(_packed_inputs(c), out="packed_logprobs").sum())
                       for c in micro_batches(data, num_chunks))
        return {"loss_sum": loss_sum, "tokens": int((data["labels"][:, 1:] != IGNORE_INDEX).sum())}

    # ------------------------------------------------------------------ PPO

    def logprobs(self, batch: SequenceBatch, num_chunks: int = 1) -> torch.Tensor:
        """log π_θ of each response token (B, R), 0 off the response mask."""
        return response_logprobs(self.m, batch, num_chunks)

    def ppo_step(self, batch: PPOBatch, minibatch_size: int, clip_range: float, seed: int,
                 micro_batch_size: int | None = None) -> dict:
        """One pass over this rank's share of the rollout batch: one clipped-surrogate gradient step
        per minibatch (the paper: batch 512, minibatch 64, clip 0.2), each accumulated over micro-batches
        of `micro_batch_size` rows."""
        m = self.m
        d = m.to_device(batch.to_dict())
        d["mask"] = d.pop("response_mask").float()

        def logprob_fn(_, mb):
            return m.run_response(mb, "response_logprobs", "mask", with_entropy=True)

        # the same permutation on every rank keeps the collective gradient steps in lockstep
        gen = torch.Generator().manual_seed(seed)
        keep = ("input_ids", "attention_mask", "mask", "old_logprobs", "advantages")
        with StepTimer() as t:
            metrics = ppo_update(None, {k: d[k] for k in keep}, logprob_fn, m.scaled_backward,
                                 minibatch_size=minibatch_size, clip_range=clip_range, generator=gen,
                                 micro_batch_size=micro_batch_size or minibatch_size, begin_step=m.begin_step)
        return {**metrics, "seconds": t.seconds[0], **m.end_step()}

    # ------------------------------------------------------------------ weight sync to vLLM

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """Rank 0: bind the sync group's rendezvous now (a listening socket) and return where it listens;
        `init_weight_sync` hands the socket to the group, so no other process can take the port between."""
        from llama_rlhf.actors.rendezvous import node_endpoint
        from llama_rlhf.actors.weight_sync import listen_socket

        if self._sync_socket is not None:
            self._sync_socket.close()
        host = node_endpoint()[0]
        self._sync_socket = listen_socket(host)
        return host, self._sync_socket.getsockname()[1]

    def init_weight_sync(self, host: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 joins the policy -> rollout broadcast group as its rank 0 (blocks until all join). A
        previous group (rollout workers were replaced) is torn down first."""
        if self.dist.rank != 0:
            return
        from llama_rlhf.actors.weight_sync import WeightSyncSender

        if self.sender is not None:
            self.sender.close()
            self.sender = None
        sock, self._sync_socket = self._sync_socket, None
        self.sender = WeightSyncSender(host, port, world_size, backend, sock=sock)

    def sync_meta(self, engine_dtype: str, bucket_bytes: int):
        """The parameter list (names, shapes) the receivers need before a sync."""
        from llama_rlhf.actors.weight_sync import SyncMeta

        shapes = [(n, tuple(getattr(p, "ds_shape", p.shape))) for n, p in self.m.module.named_parameters()]
        return SyncMeta.build(shapes, engine_dtype, bucket_bytes).to_wire()

    def sync_weights(self, meta_wire) -> dict:
        """Gather the ZeRO-3 shards a bucket's worth at a time (every rank takes part) and broadcast them
        from rank 0 in buckets to every vLLM worker."""
        from llama_rlhf.actors.weight_sync import SyncMeta

        meta = SyncMeta.from_wire(meta_wire)
        named = self.m.named_gathered_parameters(meta.bucket_bytes)
        if self.dist.rank != 0:
            for _ in named:  # take part in each gather
                pass
            return {}
        s = self.sender.send(named, meta)
        return {"bytes": s.bytes, "seconds": s.seconds, "buckets": s.buckets, "mb_per_s": s.mb_per_s}

    def broadcast_probe(self, nbytes: int) -> dict:
        """Rank 0: one raw broadcast of `nbytes` over the sync group (the receivers call `receive_probe`)."""
        if self.dist.rank != 0:
            return {}
        from llama_rlhf.actors.weight_sync import raw_broadcast

        return {"bytes": nbytes, "seconds": raw_broadcast(self.sender.pg, nbytes, self.sender.device)}


class ReferencePolicy(Role):
    """The frozen π_0 of the KL penalty: log-probs only (ZeRO-3 inference engine, no optimizer)."""

    def logprobs(self, batch: SequenceBatch, num_chunks: int = 1) -> torch.Tensor:
        return response_logprobs(self.m, batch, num_chunks)
