"""Thin Ray shells around the plain role classes, and the rank groups that drive them.

The classes do the work (and are tested without Ray); this file adds only placement, resources and the
fan-out of one call to every rank of a role. No actor calls another actor: the orchestrator holds the
groups and moves data between them.
"""

from __future__ import annotations

from collections.abc import Callable

import ray
import torch

from llama_rlhf.actors.batches import PackedBatch, PairBatch, PPOBatch, SequenceBatch
from llama_rlhf.actors.engine import DistSpec, ModelSpec, OptimSpec
from llama_rlhf.actors.policy import PolicyTrainer, ReferencePolicy
from llama_rlhf.actors.scalar import CriticTrainer, RewardModelTrainer

PolicyActor = ray.remote(PolicyTrainer)
ReferenceActor = ray.remote(ReferencePolicy)
RewardActor = ray.remote(RewardModelTrainer)
CriticActor = ray.remote(CriticTrainer)


def _mean_metrics(results: list[dict]) -> dict:
    keys = {k for r in results for k, v in r.items() if isinstance(v, int | float)}
    return {k: sum(r[k] for r in results if k in r) / sum(1 for r in results if k in r) for k in sorted(keys)}


def _rank_minibatch(batch, n_ranks: int, minibatch_size: int) -> int:
    """Each rank takes minibatch_size / n rows per gradient step; every rank must take the same number of
    steps (the gradient all-reduce is collective), so the batch must split evenly."""
    rows = batch.rows()
    if rows % n_ranks or minibatch_size % n_ranks:
        raise ValueError(f"ppo: batch ({rows}) and minibatch ({minibatch_size}) must divide by {n_ranks} ranks")
    return minibatch_size // n_ranks


class RankGroup:
    """N ranks of one role = one torch.distributed group = one DeepSpeed ZeRO engine."""

    def __init__(self, actor_cls, name: str, n: int, options: Callable[[int], dict], backend: str,
                 zero_stage: int = 3):
        self.name, self.n = name, n
        self.ranks = [
            actor_cls.options(name=None, **options(i)).remote(DistSpec(i, n, backend=backend), zero_stage)
            for i in range(n)
        ]
        self._joined = False

    def _each(self, call: Callable, shards: list | None = None) -> list:
        refs = [call(r, shards[i] if shards is not None else None) for i, r in enumerate(self.ranks)]
        return ray.get(refs)

    def load(self, model: ModelSpec, optim: OptimSpec | None = None) -> list[dict]:
        if not self._joined:
            # Rank 0 binds its rendezvous store first and the others are told its port (first load only).
            host, port = ray.get(self.ranks[0].master_endpoint.remote())
            ray.get([r.set_master.remote(host, port) for r in self.ranks])
            self._joined = True
        return self._each(lambda r, _: r.load.remote(model, optim))

    def save_hf(self, folder: str) -> str:
        return self._each(lambda r, _: r.save_hf.remote(folder))[0]

    def save_state(self, folder: str) -> None:
        self._each(lambda r, _: r.save_state.remote(folder))

    def load_state(self, folder: str) -> None:
        self._each(lambda r, _: r.load_state.remote(folder))

    def local_shapes(self) -> list[dict]:
        return self._each(lambda r, _: r.local_shapes.remote())

    def kill(self) -> None:
        for r in self.ranks:
            ray.kill(r)

    def _cat(self, call: Callable, batch) -> torch.Tensor:
        """Scoring fan-out: rows sharded over ranks, results concatenated in order. ZeRO-3 forwards are
        collective, so every rank must get rows: a batch smaller than the group is padded by repeats."""
        n_rows = batch.rows()
        if n_rows < self.n:
            idx = torch.arange(self.n) % n_rows
            batch = type(batch)(**{k: v[idx] for k, v in batch.to_dict().items()})
        return torch.cat(self._each(call, batch.shard(self.n)))[:n_rows]


class PolicyGroup(RankGroup):
    def __init__(self, n: int, options: Callable[[int], dict], backend: str, zero_stage: int = 3):
        super().__init__(PolicyActor, "policy", n, options, backend, zero_stage)

    def sft_step(self, batch: PackedBatch, num_micro: int = 1) -> dict:
        return _mean_metrics(self._each(lambda r, b: r.sft_step.remote(b, num_micro), batch.shard(self.n)))

    def sft_eval(self, batch: PackedBatch) -> float:
        res = self._each(lambda r, b: r.sft_eval.remote(b), batch.shard(self.n))
        return sum(x["loss_sum"] for x in res) / max(1, sum(x["tokens"] for x in res))

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        return self._cat(lambda r, b: r.logprobs.remote(b), batch)

    def ppo_step(self, batch: PPOBatch, minibatch_size: int, clip_range: float, seed: int) -> dict:
        mb = _rank_minibatch(batch, self.n, minibatch_size)
        return _mean_metrics(self._each(lambda r, b: r.ppo_step.remote(b, mb, clip_range, seed), batch.shard(self.n)))

    def init_weight_sync(self, host: str, port: int, world_size: int, backend: str) -> list:
        """Returns the refs (the call blocks until the receivers join): get them with the receivers'."""
        return [r.init_weight_sync.remote(host, port, world_size, backend) for r in self.ranks]

    def sync_meta(self, engine_dtype: str, bucket_bytes: int):
        return ray.get(self.ranks[0].sync_meta.remote(engine_dtype, bucket_bytes))

    def sync_weights(self, meta_wire) -> list:
        """Refs of the send on every rank (rank 0 sends, the others take part in the gathers)."""
        return [r.sync_weights.remote(meta_wire) for r in self.ranks]


class ReferenceGroup(RankGroup):
    def __init__(self, n: int, options: Callable[[int], dict], backend: str, zero_stage: int = 3):
        super().__init__(ReferenceActor, "reference", n, options, backend, zero_stage)

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        return self._cat(lambda r, b: r.logprobs.remote(b), batch)


class RewardGroup(RankGroup):
    def __init__(self, name: str, n: int, options: Callable[[int], dict], backend: str, zero_stage: int = 3):
        super().__init__(RewardActor, name, n, options, backend, zero_stage)

    def train_step(self, batch: PairBatch, margin: str, aux_safety_weight: float = 0.0) -> dict:
        return _mean_metrics(self._each(lambda r, b: r.train_step.remote(b, margin, aux_safety_weight),
                                        batch.shard(self.n)))

    def pair_scores(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        res = self._each(lambda r, b: r.pair_scores.remote(b), batch.shard(self.n))
        return torch.cat([c for c, _ in res]), torch.cat([r for _, r in res])

    def score(self, batch: SequenceBatch) -> torch.Tensor:
        return self._cat(lambda r, b: r.score.remote(b), batch)


class CriticGroup(RankGroup):
    def __init__(self, n: int, options: Callable[[int], dict], backend: str, zero_stage: int = 3):
        super().__init__(CriticActor, "critic", n, options, backend, zero_stage)

    def values(self, batch: SequenceBatch) -> torch.Tensor:
        return self._cat(lambda r, b: r.values.remote(b), batch)

    def value_step(self, batch: PPOBatch, minibatch_size: int, clip_range: float, seed: int) -> dict:
        mb = _rank_minibatch(batch, self.n, minibatch_size)
        return _mean_metrics(self._each(lambda r, b: r.value_step.remote(b, mb, clip_range, seed),
                                        batch.shard(self.n)))
