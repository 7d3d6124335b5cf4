"""Thin Ray shells around the plain role classes, and the rank groups that drive them.

The classes do the work (and are tested without Ray); this file adds only placement, resources and the
fan-out of one call to every rank of a role. No actor calls another actor: the orchestrator holds the
groups and moves data between them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import ray
import torch

from llama_rlhf.actors.batches import PackedBatch, PairBatch, PPOBatch, SequenceBatch
from llama_rlhf.actors.engine import DistSpec, ModelSpec, OptimSpec, ZeroSpec
from llama_rlhf.actors.policy import PolicyTrainer, ReferencePolicy
from llama_rlhf.actors.scalar import CriticTrainer, RewardModelTrainer
from llama_rlhf.algorithms.batching import length_balanced_order, num_micro

PolicyActor = ray.remote(PolicyTrainer)
ReferenceActor = ray.remote(ReferencePolicy)
RewardActor = ray.remote(RewardModelTrainer)
CriticActor = ray.remote(CriticTrainer)

T = TypeVar("T")


def _mean_metrics(results: list[dict]) -> dict:
    keys = {k for r in results for k, v in r.items() if isinstance(v, int | float)}
    return {k: sum(r[k] for r in results if k in r) / sum(1 for r in results if k in r) for k in sorted(keys)}


def gather(*calls: Callable[[], T]) -> list[T]:
    """Issue independent group calls together and return their results in order.

    Each call is an ordinary blocking group method (`lambda: ctx.critic.values(seq)`); the groups are
    different actors, so their work overlaps, and the orchestrator's loop still reads top to bottom:

        rh, rs, ref_logp = gather(lambda: rm_h.score(seq), lambda: rm_s.score(seq), lambda: ref.logprobs(seq))

    The first failure is raised once every call has returned.
    """
    if len(calls) == 1:
        return [calls[0]()]
    # A gather inside a gathered call (PPO scores with the two RMs' own gather among four calls): each of
    # its calls is one of outer x inner running at once, so the cores are split that much finer.
    together = getattr(_together, "calls", 1) * len(calls)

    def run(call: Callable[[], T]) -> T:
        _together.calls = together  # read by RankGroup._each in this worker thread: the cores are shared
        return call()

    with ThreadPoolExecutor(len(calls), thread_name_prefix="gather") as pool:
        futures = [pool.submit(run, c) for c in calls]
        wait(futures)
    return [f.result() for f in futures]


_together = threading.local()
"""`calls`: how many group calls `gather` is running at once, as seen from one of its worker threads."""


def get_all(refs: list) -> list:
    """`ray.get(refs)`, but the first failure is raised as soon as it happens: when one rank of a
    collective dies, the others block in the collective forever, and a plain `ray.get` would wait on
    them first."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)  # raises the failure of a finished task now
    return ray.get(refs)


def push_weights(policy, rollout, backend: str, dtype: str, init: bool, lost_timeout_s: float = 60.0) -> dict:
    """Push the policy's current weights into every engine of `rollout` (ZeRO-3 gather + bucketed broadcast),
    building the sync group first when `init`; returns the sender's stats, with the bytes every engine
    received and the slowest engine's seconds (its reload included).

    A receiving engine that dies mid-sync shows on the sender's side only as a closed connection (a plain
    RuntimeError from gloo or NCCL): the engine's own RayActorError is raised instead, chained to it, so
    that the fault layer (orchestrator/faults.py) recognises a lost actor and restarts the run."""
    from llama_rlhf.actors.weight_sync import DEFAULT_BUCKET_BYTES, SyncMeta

    receivers: list = []
    try:
        if init:
            host, port = policy.weight_sync_endpoint()
            receivers = rollout.init_weight_sync(host, port, backend)
            get_all(receivers + policy.init_weight_sync(host, port, rollout.sync_world_size, backend))
        wire = policy.sync_meta(dtype, DEFAULT_BUCKET_BYTES)
        receivers = rollout.receive_weights(SyncMeta.from_wire(wire))
        sent = policy.sync_weights(wire)
        done = get_all(sent + receivers)
        stats, received = dict(done[0]), done[len(sent):]
    except Exception as e:
        lost = None if isinstance(e, ray.exceptions.RayActorError) else lost_actor(receivers, lost_timeout_s)
        if lost is None:
            raise
        raise lost from e
    stats["received_bytes"] = min(r.bytes for r in received)  # every engine got every byte
    stats["receiver_seconds"] = max(r.seconds for r in received)  # the slowest engine, reload included
    return stats


def lost_actor(refs: list, timeout_s: float):
    """The RayActorError of the first of `refs` whose actor died (waiting up to `timeout_s` for them to
    settle), else None."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as err:
            return err
        except Exception:  # noqa: S112 - a peer's own error: look for a lost actor among the others
            continue
    return None


class Colocation:
    """The hybrid engine's turn-taking when the DeepSpeed roles and the rollout engines share GPUs.

    Three states, switched lazily by the calls themselves (the orchestrator never names them):
      training  DeepSpeed states on the GPUs; vLLM asleep (weights in host RAM, no KV cache)
      sync      as training, plus vLLM's weights awake to receive a weight sync
      rollout   the trainable roles' states offloaded to host RAM; vLLM awake (weights and KV cache)
    A group call enters `training`, `RolloutGroup.generate` enters `rollout`, a weight sync `sync`.
    Disabled (separate placement) every switch is a no-op. On CPU the offloads and sleeps are no-ops
    inside the actors, and the same transitions run (that is what the CPU test checks).
    """

    def __init__(self, enabled: bool, note: Callable[[str], None] | None = None):
        self.enabled = enabled
        self.groups: list[RankGroup] = []
        self.rollout = None
        self.state = "training"
        self.switches: list[str] = []
        self._note = note
        self._lock = threading.RLock()

    def attach_rollout(self, rollout) -> None:
        """A fresh engine is awake: send it to sleep if the GPUs are the trainers' now."""
        self.rollout = rollout
        if self.enabled and self.state != "rollout":
            rollout.sleep()
            if self.state == "sync":
                rollout.wake_up(["weights"])

    def _go(self, state: str) -> None:
        if not self.enabled or self.state == state:
            return
        with self._lock:
            if self.state == state:
                return
            r = self.rollout
            if state == "rollout":
                _call_all(self.groups, "offload")
                if r is not None:
                    r.wake_up()
            else:  # training or sync: the trainers' states back first, vLLM's weights only for a sync
                if r is not None and self.state == "rollout":
                    r.sleep()
                if self.state == "rollout":
                    _call_all(self.groups, "reload")
                if r is not None and state == "sync":
                    r.wake_up(["weights"])
                elif r is not None and self.state == "sync":
                    r.sleep()
            switch = f"{self.state}->{state}"
            if self._note is not None and switch not in self.switches:
                self._note(f"colocation: {switch} (first time; {len(self.groups)} DeepSpeed groups, "
                           f"{0 if r is None else len(r.workers)} vLLM engines share the GPUs)")
            self.switches.append(switch)
            self.state = state

    def for_training(self) -> None:
        self._go("training")

    def for_sync(self) -> None:
        self._go("sync")

    def for_rollout(self) -> None:
        self._go("rollout")


def _call_all(groups: list, method: str) -> None:
    """One method on every rank of every group, all at once (no colocation hook: used by it)."""
    ray.get([getattr(r, method).remote() for g in groups for r in g.ranks])


def _rank_minibatch(batch, n_ranks: int, minibatch_size: int) -> int:
    """Each rank takes minibatch_size / n rows per gradient step; every rank must take the same number of
    steps (the gradient all-reduce is collective), so the batch must split evenly."""
    rows = batch.rows()
    if rows % n_ranks or minibatch_size % n_ranks:
        raise ValueError(f"ppo: batch ({rows}) and minibatch ({minibatch_size}) must divide by {n_ranks} ranks")
    return minibatch_size // n_ranks


def equal_count(shards: list, micro_batch_size: int) -> int:
    """Micro-batches (or scoring chunks) per rank: the same on every rank (ZeRO-3 forwards and gradient
    reductions are collective), at most `micro_batch_size` rows on the smallest shard."""
    return num_micro(min(s.rows() for s in shards), micro_batch_size)


class RankGroup:
    """N ranks of one role = one torch.distributed group = one DeepSpeed ZeRO engine."""

    def __init__(self, actor_cls, name: str, n: int, options: Callable[[int], dict], backend: str,
                 zero: ZeroSpec | None = None, colocation: Colocation | None = None):
        self.name, self.n, self.zero = name, n, zero or ZeroSpec()
        self.ranks = [
            actor_cls.options(name=None, **options(i)).remote(DistSpec(i, n, backend=backend), self.zero)
            for i in range(n)
        ]
        self._joined = False
        self._cpu, self._sharing = backend == "gloo", 1  # each rank starts with all of its node's cores
        self.colocation = colocation
        if colocation is not None:
            colocation.groups.append(self)

    def _each(self, call: Callable, shards: list | None = None) -> list:
        if self.colocation is not None:
            self.colocation.for_training()
        sharing = getattr(_together, "calls", 1) * self.n
        if self._cpu and sharing != self._sharing:  # an actor runs its calls in order: this one comes first
            for r in self.ranks:
                r.share_cpu.remote(sharing)
            self._sharing = sharing
        refs = [call(r, shards[i] if shards is not None else None) for i, r in enumerate(self.ranks)]
        return get_all(refs)

    def load(self, model: ModelSpec, optim: OptimSpec | None = None) -> list[dict]:
        if not self._joined:
            # Rank 0 binds its rendezvous store first and the others are told its port (first load only).
            host, port = ray.get(self.ranks[0].master_endpoint.remote())
            ray.get([r.set_master.remote(host, port) for r in self.ranks])
            self._joined = True
        return self._each(lambda r, _: r.load.remote(model, optim))

    def unload(self) -> None:
        self._each(lambda r, _: r.unload.remote())

    def save_hf(self, folder: str) -> str:
        return self._each(lambda r, _: r.save_hf.remote(folder))[0]

    def save_state(self, folder: str, client_state: dict | None = None) -> None:
        self._each(lambda r, _: r.save_state.remote(folder, client_state))

    def load_state(self, folder: str) -> dict:
        return self._each(lambda r, _: r.load_state.remote(folder))[0]

    def local_shapes(self) -> list[dict]:
        return self._each(lambda r, _: r.local_shapes.remote())

    def processes(self) -> list[dict]:
        """(rank, node, pid) of every rank."""
        return get_all([r.process.remote() for r in self.ranks])

    def kill(self) -> None:
        for r in self.ranks:
            ray.kill(r)

    def _cat(self, call: Callable, batch: SequenceBatch) -> torch.Tensor:
        """Scoring fan-out: rows sharded over ranks, each shard in the same number of row chunks, results
        returned in the batch's row order. ZeRO-3 forwards are collective, so every rank must get rows: a
        batch smaller than the group is padded by repeats (and cut back). Rows go out sorted by length
        (`length_balanced_order`): chunk k carries about the same tokens on every rank, and each rank
        packs its chunks (`pack_rows`) into dense rows."""
        n_rows = batch.rows()
        order = length_balanced_order(batch.attention_mask.sum(1), self.n) if n_rows >= self.n else None
        idx = order if order is not None else torch.arange(self.n) % n_rows
        shards = batch.take(idx).shard(self.n)
        k = equal_count(shards, self.zero.forward_micro_batch)
        out = torch.cat(self._each(lambda r, b: call(r, b, k), shards))
        if order is None:
            return out[:n_rows]
        back = torch.empty_like(out)
        back[order] = out
        return back


class PolicyGroup(RankGroup):
    def __init__(self, n: int, options: Callable[[int], dict], backend: str, zero: ZeroSpec | None = None,
                 colocation: Colocation | None = None):
        super().__init__(PolicyActor, "policy", n, options, backend, zero, colocation)

    def sft_step(self, batch: PackedBatch, num_micro: int = 1) -> dict:
        """One optimizer step over the packed rows, each rank accumulating over `num_micro` micro-batches
        (the caller takes it from the smallest shard: `equal_count`)."""
        return _mean_metrics(self._each(lambda r, b: r.sft_step.remote(b, num_micro), batch.shard(self.n)))

    def sft_eval(self, batch: PackedBatch) -> float:
        shards = batch.shard(self.n)
        k = equal_count(shards, self.zero.forward_micro_batch)
        res = self._each(lambda r, b: r.sft_eval.remote(b, k), shards)
        return sum(x["loss_sum"] for x in res) / max(1, sum(x["tokens"] for x in res))

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        return self._cat(lambda r, b, k: r.logprobs.remote(b, k), batch)

    def ppo_step(self, batch: PPOBatch, minibatch_size: int, clip_range: float, seed: int,
                 micro_batch_size: int | None = None) -> dict:
        mb = _rank_minibatch(batch, self.n, minibatch_size)
        return _mean_metrics(self._each(lambda r, b: r.ppo_step.remote(b, mb, clip_range, seed, micro_batch_size),
                                        batch.shard(self.n)))

    def weight_sync_endpoint(self) -> tuple[str, int]:
        return ray.get(self.ranks[0].weight_sync_endpoint.remote())

    def init_weight_sync(self, host: str, port: int, world_size: int, backend: str) -> list:
        """Returns the refs (the call blocks until the receivers join): get them with the receivers'."""
        return [r.init_weight_sync.remote(host, port, world_size, backend) for r in self.ranks]

    def sync_meta(self, engine_dtype: str, bucket_bytes: int):
        return ray.get(self.ranks[0].sync_meta.remote(engine_dtype, bucket_bytes))

    def sync_weights(self, meta_wire) -> list:
        """Refs of the send on every rank (rank 0 sends, the others take part in the gathers)."""
        return [r.sync_weights.remote(meta_wire) for r in self.ranks]

    def broadcast_probe(self, nbytes: int) -> list:
        """Refs of rank 0's raw broadcast of `nbytes` to the sync group (the limit a sync is measured against)."""
        return [self.ranks[0].broadcast_probe.remote(nbytes)]


class ReferenceGroup(RankGroup):
    def __init__(self, n: int, options: Callable[[int], dict], backend: str, zero: ZeroSpec | None = None,
                 colocation: Colocation | None = None):
        super().__init__(ReferenceActor, "reference", n, options, backend, zero, colocation)

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        return self._cat(lambda r, b, k: r.logprobs.remote(b, k), batch)


class RewardGroup(RankGroup):
    def __init__(self, name: str, n: int, options: Callable[[int], dict], backend: str,
                 zero: ZeroSpec | None = None, colocation: Colocation | None = None):
        super().__init__(RewardActor, name, n, options, backend, zero, colocation)

    def train_step(self, batch: PairBatch, margin: str, aux_safety_weight: float = 0.0,
                   micro_batch_pairs: int | None = None) -> dict:
        """One optimizer step over the pairs, each rank accumulating over micro-batches of at most
        `micro_batch_pairs` pairs (default: one micro-batch)."""
        shards = batch.shard(self.n)
        k = equal_count(shards, micro_batch_pairs or batch.rows())
        return _mean_metrics(self._each(lambda r, b: r.train_step.remote(b, margin, aux_safety_weight, k), shards))

    def pair_scores(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        shards = batch.shard(self.n)
        k = equal_count(shards, self.zero.forward_micro_batch)
        res = self._each(lambda r, b: r.pair_scores.remote(b, k), shards)
        return torch.cat([c for c, _ in res]), torch.cat([r for _, r in res])

    def score(self, batch: SequenceBatch) -> torch.Tensor:
        return self._cat(lambda r, b, k: r.score.remote(b, k), batch)


class CriticGroup(RankGroup):
    def __init__(self, n: int, options: Callable[[int], dict], backend: str, zero: ZeroSpec | None = None,
                 colocation: Colocation | None = None):
        super().__init__(CriticActor, "critic", n, options, backend, zero, colocation)

    def values(self, batch: SequenceBatch) -> torch.Tensor:
        return self._cat(lambda r, b, k: r.values.remote(b, k), batch)

    def value_step(self, batch: PPOBatch, minibatch_size: int, clip_range: float, seed: int,
                   micro_batch_size: int | None = None) -> dict:
        mb = _rank_minibatch(batch, self.n, minibatch_size)
        return _mean_metrics(self._each(
            lambda r, b: r.value_step.remote(b, mb, clip_range, seed, micro_batch_size), batch.shard(self.n)))


def start_groups(cluster, placement, ppo: tuple[str, ...],
                 note: Callable[[str], None] | None = None) -> tuple[dict[str, RankGroup], Colocation]:
    """Every DeepSpeed role of the job as a group of `cluster.<role>.ranks` ranks, placed by `placement`
    (orchestrator/cluster.py), sized and sharded by its own `cluster.<role>` section. Returns the groups by
    role name and the colocation switch the rollout group must join (a no-op unless colocated)."""
    colocation = Colocation(cluster.placement == "colocated", note)

    def make(cls, role: str, *name):
        zero = ZeroSpec.from_config(cluster, role)
        return cls(*name, cluster.role(role).ranks, placement.options(role), placement.backend, zero, colocation)

    groups = {"policy": make(PolicyGroup, "policy"),
              "rm_helpful": make(RewardGroup, "rm_helpful", "helpful"),
              "rm_safety": make(RewardGroup, "rm_safety", "safety")}
    if "reference" in ppo:
        groups["reference"] = make(ReferenceGroup, "reference")
    if "critic" in ppo:
        groups["critic"] = make(CriticGroup, "critic")
    return groups, colocation
