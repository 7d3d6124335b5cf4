"""A DeepSpeed-engine owner shared by the trainable roles (policy, critic, reward models).

One instance per rank; N instances (Ray actors, or torchrun processes) form one torch.distributed group
(gloo on CPU, NCCL on GPU) and one DeepSpeed ZeRO engine. Plain class: no Ray imports, so it runs and is
tested as an ordinary object in one process (world size 1) too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_rlhf.actors.rendezvous import DistSpec, bind_master_store, init_process_group, node_endpoint
from llama_rlhf.algorithms.batching import pack_rows, response_state_index
from llama_rlhf.models import (
    DTYPES,
    build_causal_lm,
    build_scalar_model,
    init_score_,
    load_causal_lm,
    load_scalar_model,
    resolve_attn_implementation,
)
from llama_rlhf.optim import lr_factor, param_groups
from llama_rlhf.passes import RolePasses


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    """'causal' (policy, reference) or 'scalar' (reward model, critic)."""
    path: str | None = None
    """HF folder to load; for kind 'scalar' it may hold a causal LM (body reused, fresh scalar head)."""
    config: dict | None = None
    """A LlamaConfig dict for random init (tiny), used when path is None."""
    seed: int = 0
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class ZeroSpec:
    """How one role's engine is sharded and where its states live (`cluster.<role>` + `cluster.zero`)."""

    stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    param_persistence_threshold: int = 100_000
    reduce_bucket_size: int = 500_000_000
    prefetch_bucket_size: int = 50_000_000
    hpz_partition_size: int = 1
    forward_micro_batch: int = 8
    """Rows per forward chunk in this role's scoring passes."""

    @classmethod
    def from_config(cls, cluster, role: str) -> ZeroSpec:
        r, z = cluster.role(role), cluster.zero
        return cls(r.zero_stage, r.offload_optimizer, r.offload_params, z.param_persistence_threshold,
                   z.reduce_bucket_size, z.prefetch_bucket_size, z.hpz_partition_size, r.forward_micro_batch)


@dataclass(frozen=True)
class OptimSpec:
    lr: float
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    schedule: str = "cosine"
    total_steps: int = 1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1


@dataclass
class StepTimer:
    seconds: list[float] = field(default_factory=list)

    def __enter__(self):
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds.append(time.perf_counter() - self._t)


PACKED_INPUTS = ("input_ids", "position_ids", "segment_ids")
"""The model inputs of `pack_rows`' output (the rest are indices the pass reads its outputs at)."""

def hf_config(spec: ModelSpec):
    """The LlamaConfig of a spec (from its folder or its dict), the attention implementation applied; for
    a scalar model, the config of the scalar-head variant."""
    from transformers import LlamaConfig

    from llama_rlhf.models import scalar_config

    cfg = LlamaConfig.from_pretrained(spec.path) if spec.path else LlamaConfig.from_dict(spec.config)
    cfg._attn_implementation = resolve_attn_implementation(spec.attn_implementation)
    return scalar_config(cfg) if spec.kind == "scalar" else cfg


def load_model(spec: ModelSpec) -> torch.nn.Module:
    """The whole model in this process (ZeRO stages 0-2 keep full weights on every rank anyway)."""
    dtype = DTYPES[spec.dtype]
    if spec.path is None:
        build = build_causal_lm if spec.kind == "causal" else build_scalar_model
        model = build(hf_config(spec), seed=spec.seed, dtype=dtype)
        if spec.kind == "scalar":
            init_score_(model.score.weight, spec.seed)
        return model
    if spec.kind == "causal":
        return load_causal_lm(spec.path, dtype, spec.attn_implementation)
    return load_scalar_model(spec.path, dtype, spec.attn_implementation, seed=spec.seed)


def load_partitioned(spec: ModelSpec, ds_cfg: dict, rank: int) -> torch.nn.Module:
    """ZeRO-3: the model partitioned from the start, then filled from its checkpoint module by module
    (`loading.py`); no rank ever holds more than its shards plus one module."""
    from llama_rlhf.actors.loading import build_partitioned, init_score_head, load_streamed

    dtype, kind = DTYPES[spec.dtype], spec.kind
    if spec.path is None:
        module = build_partitioned(kind, hf_config(spec), dtype, ds_cfg, init=True)
        if kind == "scalar":
            init_score_head(module.score.weight, spec.seed, partitioned=True)
        return module
    module = build_partitioned(kind, hf_config(spec), dtype, ds_cfg, init=False)
    report = load_streamed(module, spec.path, rank)
    head_only = kind == "scalar" and report["missing"] == ["score.weight"]
    if report["missing"] and not head_only:
        raise ValueError(f"{spec.path}: the checkpoint lacks {len(report['missing'])} parameter(s) of a {kind} "
                         f"model, e.g. {report['missing'][:3]}")
    # a scalar model reads the body of a causal LM: its untied LM head (if any) is the one tensor left over
    allowed_unused = ["lm_head.weight"] if head_only else []
    if report["unused"] not in (allowed_unused, []):
        raise ValueError(f"{spec.path}: {len(report['unused'])} checkpoint tensor(s) match no parameter of a "
                         f"{kind} model, e.g. {report['unused'][:3]}")
    if head_only:  # a reward model / critic starting from the SFT (causal) checkpoint: a fresh head
        init_score_head(module.score.weight, spec.seed, partitioned=True)
    return module


def ds_config(zero: ZeroSpec, optim: OptimSpec | None, dtype: str, gpu: bool) -> dict:
    """The DeepSpeed config of one role. The optimizer is DeepSpeed's own AdamW: FusedAdam on GPU (its
    states can be offloaded between phases when colocated), DeepSpeedCPUAdam with optimizer offload,
    torch's AdamW on CPU (no fused kernel there)."""
    z: dict = {
        "stage": zero.stage,
        "stage3_param_persistence_threshold": zero.param_persistence_threshold,
        "stage3_prefetch_bucket_size": zero.prefetch_bucket_size,
        "reduce_bucket_size": zero.reduce_bucket_size,
        "zero_hpz_partition_size": zero.hpz_partition_size,
    }
    if zero.offload_optimizer:
        z["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if zero.offload_params:
        z["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": optim.grad_clip if optim else 1.0,
        "zero_optimization": z,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if optim is not None:
        params = {"lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps, "weight_decay": optim.weight_decay}
        if not gpu and not zero.offload_optimizer:
            params["torch_adam"] = True
        cfg["optimizer"] = {"type": "AdamW", "params": params}
    return cfg


def _release_tensors(module: torch.nn.Module, optimizer) -> None:
    """Drop the storage of every weight, shard, gradient and optimizer state of a destroyed engine. After a
    gradient-accumulated step DeepSpeed 0.19.8's ZeRO-3 leaves its engine in a reference cycle the garbage
    collector does not free (with one micro-batch per step it does); emptied, what stays is a few
    Python objects instead of the model and its Adam moments."""
    empty = torch.empty(0)
    with torch.no_grad():
        for p in module.parameters():
            p.grad = None
            p.data = empty
            if hasattr(p, "ds_tensor"):
                p.ds_tensor = empty
    inner = getattr(optimizer, "optimizer", None)
    if inner is not None and hasattr(inner, "state"):  # the torch optimizer: Adam moments, fp32 master shards
        inner.state.clear()
        for group in inner.param_groups:
            for p in group["params"]:
                p.grad = None
                p.data = empty
    for name, value in list(vars(optimizer).items() if optimizer is not None else []):
        # the ZeRO optimizer's own buffers: flat partitions, gradient partitions, buckets
        if isinstance(value, torch.Tensor):
            setattr(optimizer, name, None)
        elif isinstance(value, list | dict) and any(isinstance(v, torch.Tensor | list)
                                                    for v in (value.values() if isinstance(value, dict) else value)):
            value.clear()


class DeepSpeedModel:
    """Owns one rank's DeepSpeed engine: the model, AdamW, the lr schedule and gradient clipping."""

    def __init__(self, model: ModelSpec, optim: OptimSpec | None, dist: DistSpec, zero: ZeroSpec | None = None):
        import deepspeed

        zero = zero or ZeroSpec()
        self.dist, self.spec, self.optim_spec, self.zero = dist, model, optim, zero
        torch.manual_seed(model.seed + dist.rank)
        init_process_group(dist)
        gpu = dist.backend == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
        cfg = ds_config(zero, optim, model.dtype, gpu)
        hf = load_partitioned(model, cfg, dist.rank) if zero.stage == 3 else load_model(model)
        if model.gradient_checkpointing:
            hf.gradient_checkpointing_enable()
        # every pass goes through the engine's own forward: ZeRO-3 counts micro-steps there
        module = RolePasses(hf)
        if optim is None:  # frozen (reference policy, served reward models): inference engine, still sharded
            module.requires_grad_(False)
            module.eval()

        def schedule(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda s: lr_factor(s, optim.total_steps, optim.warmup_steps, optim.min_lr_ratio, optim.schedule),
            )

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module,
            model_parameters=param_groups(module, optim.weight_decay) if optim else None,
            lr_scheduler=schedule if optim else None,
            config=cfg,
            dist_init_required=False,
        )
        self.zero_stage = zero.stage
        self.steps = 0
        self.offloaded = False

    def close(self) -> None:
        """Free this engine now (weights, gradients, optimizer states), not whenever the GC gets to it: the
        roles reload an engine every phase and memory must stay flat across versions."""
        import gc

        from deepspeed.runtime.zero import parameter_offload

        module, optimizer = self.engine.module, self.engine.optimizer
        self.engine.destroy()
        # DeepSpeed 0.19.8 pushes every ZeRO-3 engine's top module on this module-level stack at set-up and
        # never pops it, destroy() included: each engine ever built stayed alive with its hooks, weights and
        # optimizer (measured: +65-90 MiB of RSS per load of the tiny model, without end)
        stack = parameter_offload.FWD_MODULE_STACK
        stack[:] = [m for m in stack if m is not module]
        _release_tensors(module, optimizer)
        del module, optimizer
        self.engine = self.optimizer = self.scheduler = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ colocation

    def offload(self) -> None:
        """Move the training states (weights, gradients, optimizer) to host RAM so colocated vLLM engines
        can use the GPU. CPU: a no-op, the states already live in host RAM. Frozen engines keep their
        (small, partitioned) weights."""
        # nothing to move: CPU (host RAM already), frozen, done, or ZeRO-Infinity (weights live on the host;
        # DeepSpeed's offload_states refuses that case)
        if self.device.type != "cuda" or self.optim_spec is None or self.offloaded or self.zero.offload_params:
            return
        from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as S

        include = None  # everything; with ZeRO-Offload the optimizer states are in host RAM already
        if self.zero.offload_optimizer:
            include = [S.lp_params, S.lp_grads, S.contiguous_grad_buffer]
        self.engine.offload_states(include=include)
        torch.cuda.empty_cache()
        self.offloaded = True

    def reload(self) -> None:
        if self.offloaded:
            self.engine.reload_states()
            self.offloaded = False

    # ------------------------------------------------------------------ training

    @property
    def module(self) -> torch.nn.Module:
        """The HF model (its parameter names are the checkpoint's)."""
        return self.engine.module.hf

    def run(self, batch: dict, **kwargs):
        """One pass (`RolePasses.forward`) through the engine on a batch already on this rank's device."""
        return self.engine(**batch, **kwargs)

    def run_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """r(x, y) (n,) of rows padded in any layout, run packed (`pack_rows`): no padding but the packed
        rows' tails, each score read at its row's last real token."""
        p = pack_rows(ids, mask)
        return self.run({k: p[k] for k in PACKED_INPUTS}, out="scores", last_index=p["last_index"])

    def run_response(self, chunk: dict, out: str, response_key: str = "response_mask", **kwargs):
        """A pass whose output is per response token (`out` "response_logprobs" or "values") on a chunk of
        [left-padded prompt | right-padded response] rows, run packed (`pack_rows`): each (b, R) output
        read at the states before the response tokens (`response_state_index`)."""
        ids, mask = chunk["input_ids"], chunk["attention_mask"]
        r = chunk[response_key].shape[1]
        p = pack_rows(ids, mask)
        return self.run({k: p[k] for k in PACKED_INPUTS}, out=out, state_index=response_state_index(p, mask, r),
                        labels=ids[:, ids.shape[1] - r :], **kwargs)

    def begin_step(self, num_micro: int) -> None:
        """One optimizer step accumulated over `num_micro` micro-batches (the same count on every rank).
        The boundary is set explicitly on each micro-batch: DeepSpeed's own counter assumes a fixed count,
        and steps differ (the last minibatch of a batch is smaller)."""
        self.engine.set_train_batch_size(num_micro * self.dist.world_size)
        self.engine.train()
        self._micro, self._num_micro = 0, num_micro

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by the accumulation steps; callers pass each micro-batch's share of the step
        # loss multiplied back by num_micro, so the accumulated gradient is exactly the step's.
        self.engine.set_gradient_accumulation_boundary(self._micro == self._num_micro - 1)
        self.engine.backward(loss)
        self.engine.step()  # the optimizer steps at the boundary only
        self._micro += 1

    def scaled_backward(self, share: torch.Tensor) -> None:
        """Backward of one micro-batch's share of the step loss (the shares add up to it): DeepSpeed
        divides by the accumulation count, put back here."""
        self.backward(share * self._num_micro)

    def end_step(self) -> dict:
        self.steps = self.engine.global_steps
        lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else 0.0
        return {"lr": lr, "grad_norm": float(self.engine.get_global_grad_norm() or 0.0)}

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ state out

    def named_full_parameters(self):
        """Yield (HF name, full tensor) for every parameter, gathered from the ZeRO-3 shards.

        Collective: every rank of the group must iterate it in step; only rank 0's tensors are
        meaningful to keep. One parameter at a time, so peak memory is one full tensor.
        """
        import deepspeed

        for name, p in self.module.named_parameters():
            whole = self._unsharded(p)
            if whole is not None:
                yield name, whole.clone()
            elif self.zero_stage == 3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    yield name, p.data.detach().clone() if self.dist.rank == 0 else None
            else:
                yield name, p.data.detach() if self.dist.rank == 0 else None

    def _unsharded(self, p: torch.nn.Parameter) -> torch.Tensor | None:
        """The whole of a ZeRO-3 parameter without a gather, where one rank holds it all: with a group of
        one rank, its partition (`ds_tensor`, padded to the partition size) *is* the parameter. None when
        a gather is needed (several ranks, not stage 3, or the partition is not in memory). A gather on one
        rank copies every tensor once more: SmolLM2's 538 MB (fp32) took 0.10 s of a sync sender's 0.19 s."""
        part = getattr(p, "ds_tensor", None)
        if self.zero_stage != 3 or self.dist.world_size != 1 or part is None or part.numel() < p.ds_numel:
            return None
        return part.detach().reshape(-1).narrow(0, 0, p.ds_numel).view(p.ds_shape)

    def named_gathered_parameters(self, chunk_bytes: int, read_partitions: bool = True):
        """Like `named_full_parameters`, but ZeRO-3 gathers parameters in chunks of up to `chunk_bytes`
        (one `GatheredParameters` per chunk instead of one per parameter: 39 gathers of the tiny model took
        11 ms, one took under 1 ms) and yields views, no copies: a tensor is valid only until the next one
        is asked for, so the consumer must copy it at once (the weight sync packs it into its bucket).
        Collective like `named_full_parameters`: every rank iterates it in step (the chunks depend only on
        the parameter shapes). One rank reads its partitions, which hold everything (`_unsharded`), unless
        `read_partitions` is False (the gathering sender, timed beside it by benchmarks/compare.py)."""
        import deepspeed

        params = list(self.module.named_parameters())
        if self.zero_stage != 3:
            for name, p in params:
                yield name, p.data.detach() if self.dist.rank == 0 else None
            return
        whole = [(name, self._unsharded(p)) for name, p in params] if read_partitions else []
        if whole and all(t is not None for _, t in whole):
            yield from whole
            return
        chunks, chunk, size = [], [], 0
        for name, p in params:
            n = p.ds_numel * p.element_size()
            if chunk and size + n > chunk_bytes:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append((name, p))
            size += n
        if chunk:
            chunks.append(chunk)
        for chunk in chunks:
            with deepspeed.zero.GatheredParameters([p for _, p in chunk], modifier_rank=None):
                for name, p in chunk:
                    yield name, p.data.detach() if self.dist.rank == 0 else None

    def save_hf(self, folder: str | Path, shard_bytes: int | None = None) -> str | None:
        """Write an HF folder (config + safetensors shards) from rank 0; every rank must call it. Streams:
        rank 0 holds one shard at a time (see `loading.save_hf_streamed`), never the whole model."""
        from llama_rlhf.actors.loading import SHARD_BYTES, save_hf_streamed

        self.last_export = save_hf_streamed(self.module, folder, self.named_full_parameters(),
                                            write=self.dist.rank == 0, shard_bytes=shard_bytes or SHARD_BYTES)
        return str(folder) if self.dist.rank == 0 else None

    def local_shapes(self) -> dict[str, tuple]:
        """The shapes this rank really holds (ZeRO-3: (0,) for partitioned parameters)."""
        return {n: tuple(p.shape) for n, p in self.module.named_parameters()}

    def local_numel(self) -> int:
        """Elements this rank stores for the parameters (its ZeRO-3 shards)."""
        return sum(int(getattr(p, "ds_tensor", p).numel()) for p in self.module.parameters())

    def save_state(self, folder: str | Path, client_state: dict | None = None) -> None:
        """Weights + optimizer + scheduler, each rank its own shards (DeepSpeed's sharded checkpoint);
        collective. `client_state` travels with it (rank 0's copy is what `load_state` returns)."""
        self.engine.save_checkpoint(str(folder), tag="state", client_state={"steps": self.steps,
                                                                            **(client_state or {})})

    def load_state(self, folder: str | Path) -> dict:
        _, client = self.engine.load_checkpoint(str(folder), tag="state")
        client = client or {}
        self.steps = client.get("steps", 0)
        return client


def set_cpu_threads(sharing: int = 1) -> None:
    """Ray gives fractional-CPU actors OMP_NUM_THREADS=1; a role busy on its own uses the node's cores
    (or LLAMA_RLHF_THREADS), and `sharing` processes busy at once (the ranks of the roles the orchestrator
    runs together) split them: more compute threads than cores make every one of them slower."""
    if not torch.cuda.is_available():
        cores = int(os.environ.get("LLAMA_RLHF_THREADS", os.cpu_count() or 1))
        torch.set_num_threads(cpu_threads(cores, sharing))


def cpu_threads(cores: int, sharing: int) -> int:
    """The compute threads of one of `sharing` processes busy at once on `cores` cores."""
    return max(1, cores // max(1, sharing))


class Role:
    """What every rank of every role shares: (re)loading its engine for a phase, saving, shapes."""

    def __init__(self, dist: DistSpec, zero: ZeroSpec | None = None):
        set_cpu_threads()
        self.dist, self.zero = dist, zero or ZeroSpec()
        self.m: DeepSpeedModel | None = None

    def process(self) -> dict:
        """Where this rank runs (node address, pid): written to the run folder's actors.json, for an
        operator's py-spy or kill, and for the fault-injection tests."""
        return {"rank": self.dist.rank, "node": node_endpoint()[0], "pid": os.getpid()}

    def master_endpoint(self) -> tuple[str, int]:
        """Rank 0 only: bind this role's rendezvous store and return where it listens."""
        host = node_endpoint()[0]
        return host, bind_master_store(host)

    def set_master(self, host: str, port: int) -> None:
        """Where rank 0 listens; set on every rank before the first `load`."""
        from dataclasses import replace

        self.dist = replace(self.dist, master_addr=host, master_port=port)

    def load(self, model: ModelSpec, optim: OptimSpec | None = None) -> dict:
        """Start a phase: the previous engine destroyed, a fresh one (and optimizer, schedule) from an HF
        folder or a config."""
        self.unload()
        with StepTimer() as t:
            self.m = DeepSpeedModel(model, optim, self.dist, self.zero)
        return {"rank": self.dist.rank, "seconds": t.seconds[-1] if t.seconds else 0.0,
                "local_numel": self.m.local_numel()}

    def unload(self) -> None:
        if self.m is not None:
            self.m.close()
            self.m = None

    def offload(self) -> None:
        """Colocated placement: free the GPU for the rollout engines (a no-op on CPU)."""
        if self.m is not None:
            self.m.offload()

    def reload(self) -> None:
        if self.m is not None:
            self.m.reload()

    def save_hf(self, folder: str) -> str | None:
        return self.m.save_hf(folder)

    def save_state(self, folder: str, client_state: dict | None = None) -> None:
        self.m.save_state(folder, client_state)

    def load_state(self, folder: str) -> dict:
        return self.m.load_state(folder)

    def local_shapes(self) -> dict[str, tuple]:
        return self.m.local_shapes()

    def ping(self) -> int:
        return self.dist.rank

    def share_cpu(self, sharing: int) -> None:
        """CPU nodes: `sharing` processes (this one included) compute at once until told otherwise."""
        set_cpu_threads(sharing=sharing)
