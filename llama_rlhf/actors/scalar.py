"""The scalar-head roles: the helpfulness and safety reward models, and the PPO critic.

Both are a Llama body with a regression head (`LlamaForSequenceClassification(num_labels=1)`),
initialised from the SFT checkpoint (paper section 3.2.2: "initialized from pretrained chat model
checkpoints"; our critic is initialised from the helpfulness RM, as in InstructGPT).
"""

from __future__ import annotations

import torch

from llama_rlhf.actors.batches import PairBatch, PPOBatch, SequenceBatch
from llama_rlhf.actors.engine import Role, StepTimer
from llama_rlhf.algorithms.logprobs import response_position_ids
from llama_rlhf.algorithms.ppo import critic_update
from llama_rlhf.algorithms.reward import reward_model_loss, rm_accuracy


def _hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, T, H) of the Llama body, positions skipping left padding."""
    out = model.model(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=response_position_ids(attention_mask), use_cache=False)
    return out.last_hidden_state


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The raw scalar r(x, y) of each row (B,): the head at the last real token (rows are left padded
    and/or right padded; the last non-pad token is found from the attention mask)."""
    hidden = _hidden(model, input_ids, attention_mask)
    t = attention_mask.shape[1]
    last = torch.where(attention_mask.bool(), torch.arange(t, device=input_ids.device), -1).max(1).values
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return model.score(pooled).squeeze(-1).float()


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """V of the state before each response token (B, R): aligned with the log-probs of those tokens."""
    values = model.score(_hidden(model, input_ids, attention_mask)).squeeze(-1).float()  # (B, T)
    return values[:, -response_len - 1 : -1]


class RewardModelTrainer(Role):
    """One rank of a reward model (helpfulness or safety): ranking-loss training and scoring."""

    def train_step(self, batch: PairBatch, margin: str, aux_safety_weight: float = 0.0) -> dict:
        m = self.m
        m.begin_step(1)
        d = m.to_device(batch.to_dict())
        with StepTimer() as t:
            # chosen and rejected rows in one forward: (2B, T)
            ids, mask = _stack_pairs(d)
            r = sequence_scores(m.engine, ids, mask)
            b = d["rating"].shape[0]
            loss = reward_model_loss(r[:b], r[b:], d["rating"], margin, d["chosen_safe"], d["rejected_safe"],
                                     aux_safety_weight)
            m.backward(loss)
        acc = rm_accuracy(r[:b].detach(), r[b:].detach())["accuracy"]
        return {"loss": float(loss), "accuracy": float(acc), "seconds": t.seconds[0], **m.end_step()}

    @torch.no_grad()
    def pair_scores(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (r_chosen, r_rejected) for accuracy by rating level."""
        self.m.engine.eval()
        d = self.m.to_device(batch.to_dict())
        ids, mask = _stack_pairs(d)
        r = sequence_scores(self.m.engine, ids, mask).cpu()
        b = batch.rating.shape[0]
        return r[:b], r[b:]

    @torch.no_grad()
    def score(self, batch: SequenceBatch) -> torch.Tensor:
        """σ(r(x, y)) in (0, 1) per row (B,): the paper thresholds Rs at 0.15 and applies LOGIT to Rc,
        so the served score is the sigmoid of the regression head."""
        self.m.engine.eval()
        d = self.m.to_device(batch.to_dict())
        return torch.sigmoid(sequence_scores(self.m.engine, d["input_ids"], d["attention_mask"])).cpu()


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
    def values(self, batch: SequenceBatch) -> torch.Tensor:
        self.m.engine.eval()
        d = self.m.to_device(batch.to_dict())
        v = token_values(self.m.engine, d["input_ids"], d["attention_mask"], batch.response_len)
        return (v * d["response_mask"]).cpu()

    def value_step(self, batch: PPOBatch, minibatch_size: int, clip_range: float, seed: int) -> dict:
        m = self.m
        m.begin_step(1)
        d = m.to_device(batch.to_dict())
        d["mask"] = d.pop("response_mask").float()
        r = batch.response_len
        gen = torch.Generator().manual_seed(seed)
        keep = ("input_ids", "attention_mask", "mask", "old_values", "returns")
        with StepTimer() as t:
            metrics = critic_update(
                m.engine, {k: d[k] for k in keep},
                lambda eng, mb: token_values(eng, mb["input_ids"], mb["attention_mask"], r),
                m.backward, minibatch_size=minibatch_size, clip_range=clip_range, generator=gen)
        return {**metrics, "seconds": t.seconds[0], **m.end_step()}
