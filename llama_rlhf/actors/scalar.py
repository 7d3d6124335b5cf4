"""The scalar-head roles: the helpfulness and safety reward models, and the PPO critic.

Both are a Llama body with a regression head (`LlamaForSequenceClassification(num_labels=1)`),
initialised from the SFT checkpoint (paper section 3.2.2: "initialized from pretrained chat model
checkpoints"; our critic is initialised from the helpfulness RM, as in InstructGPT). Training steps
accumulate over micro-batches, scoring passes run in row chunks (counts equal on every rank, from the
group: ZeRO-3 forwards are collective).
"""

from __future__ import annotations

import torch

from llama_rlhf.actors.batches import PairBatch, PPOBatch, SequenceBatch
from llama_rlhf.actors.engine import Role, StepTimer
from llama_rlhf.algorithms.batching import micro_batches
from llama_rlhf.algorithms.ppo import critic_update
from llama_rlhf.algorithms.reward import reward_model_loss, rm_accuracy


def _pair_scores(m, d: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) of a dict of pairs, chosen and rejected rows in one forward (2b, T)."""
    r = m.run_scores(*_stack_pairs(d))
    b = d["rating"].shape[0]
    return r[:b], r[b:]


class RewardModelTrainer(Role):
    """One rank of a reward model (helpfulness or safety): ranking-loss training and scoring."""

    def train_step(self, batch: PairBatch, margin: str, aux_safety_weight: float = 0.0,
                   num_micro: int = 1) -> dict:
        """One optimizer step of the margin ranking loss over this rank's pairs, accumulated over
        `num_micro` micro-batches (each pair's chosen and rejected rows stay in one micro-batch)."""
        m = self.m
        d = m.to_device(batch.to_dict())
        n = d["rating"].shape[0]
        m.begin_step(num_micro)
        chosen, rejected, total = [], [], 0.0
        with StepTimer() as t:
            for mb in micro_batches(d, num_micro):
                r_c, r_r = _pair_scores(m, mb)
                # both terms are means over this micro-batch's pairs: weighted by its share of the pairs
                share = mb["rating"].shape[0] / n
                loss = reward_model_loss(r_c, r_r, mb["rating"], margin, mb["chosen_safe"], mb["rejected_safe"],
                                         aux_safety_weight) * share
                m.scaled_backward(loss)
                total += float(loss.detach())
                chosen.append(r_c.detach())
                rejected.append(r_r.detach())
        acc = rm_accuracy(torch.cat(chosen), torch.cat(rejected))["accuracy"]
        return {"loss": total, "accuracy": float(acc), "seconds": t.seconds[0], **m.end_step()}

    @torch.no_grad()
    def pair_scores(self, batch: PairBatch, num_chunks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (r_chosen, r_rejected) for accuracy by rating level."""
        self.m.engine.eval()
        parts = [_pair_scores(self.m, c) for c in micro_batches(self.m.to_device(batch.to_dict()), num_chunks)]
        return torch.cat([c for c, _ in parts]).cpu(), torch.cat([r for _, r in parts]).cpu()

    @torch.no_grad()
    def score(self, batch: SequenceBatch, num_chunks: int = 1) -> torch.Tensor:
        """σ(r(x, y)) in (0, 1) per row (B,): the paper thresholds Rs at 0.15 and applies LOGIT to Rc,
        so the served score is the sigmoid of the regression head."""
        self.m.engine.eval()
        out = []
        for c in micro_batches(self.m.to_device(batch.to_dict()), num_chunks):
            out.append(torch.sigmoid(self.m.run_scores(c["input_ids"], c["attention_mask"])).cpu())
        return torch.cat(out)


def _stack_pairs(d: dict) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(d["chosen_ids"].shape[1], d["rejected_ids"].shape[1])

    def lpad(x):  # left pad to a common length (pad id value is irrelevant: masked)
        return torch.nn.functional.pad(x, (t - x.shape[1], 0))

    ids = torch.cat([lpad(d["chosen_ids"]), lpad(d["rejected_ids"])])
    mask = torch.cat([lpad(d["chosen_mask"]), lpad(d["rejected_mask"])])
    return ids, mask


class CriticTrainer(Role):
    """One rank of the PPO value model."""

    @torch.no_grad()
    def values(self, batch: SequenceBatch, num_chunks: int = 1) -> torch.Tensor:
        self.m.engine.eval()
        out = []
        for c in micro_batches(self.m.to_device(batch.to_dict()), num_chunks):
            out.append((self.m.run_response(c, "values") * c["response_mask"]).cpu())
        return torch.cat(out)

    def value_step(self, batch: PPOBatch, minibatch_size: int, clip_range: float, seed: int,
                   micro_batch_size: int | None = None) -> dict:
        m = self.m
        d = m.to_device(batch.to_dict())
        d["mask"] = d.pop("response_mask").float()
        gen = torch.Generator().manual_seed(seed)
        keep = ("input_ids", "attention_mask", "mask", "old_values", "returns")
        with StepTimer() as t:
            metrics = critic_update(
                None, {k: d[k] for k in keep}, lambda _, mb: m.run_response(mb, "values", "mask"),
                m.scaled_backward, minibatch_size=minibatch_size, clip_range=clip_range, generator=gen,
                micro_batch_size=micro_batch_size or minibatch_size, begin_step=m.begin_step)
        return {**metrics, "seconds": t.seconds[0], **m.end_step()}
