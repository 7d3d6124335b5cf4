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

from llama_rlhf.models import (
    DTYPES,
    build_causal_lm,
    build_scalar_model,
    load_causal_lm,
    load_scalar_model,
    resolve_attn_implementation,
)
from llama_rlhf.optim import lr_factor, param_groups


@dataclass(frozen=True)
class DistSpec:
    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str = "gloo"
    """gloo on CPU, nccl on GPU."""


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


_MASTER_STORE = None
"""Rank 0's rendezvous store, bound (port 0: the OS picks) before its port is handed to the other ranks."""


def bind_master_store(host: str) -> int:
    """Bind this process's rendezvous store now and return its port. Binding first and publishing after
    leaves no window in which another process can take the port (picking a free port, releasing it and
    binding later raced: EADDRINUSE)."""
    global _MASTER_STORE
    from datetime import timedelta

    if _MASTER_STORE is None:
        _MASTER_STORE = torch.distributed.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                                                   timeout=timedelta(minutes=10))
    return _MASTER_STORE.port


def init_process_group(dist: DistSpec) -> None:
    """Join the torch.distributed group of this role, then DeepSpeed's comm layer on top of it."""
    from datetime import timedelta

    import deepspeed

    if not torch.distributed.is_initialized():
        if dist.rank == 0:
            bind_master_store(dist.master_addr)
            store = _MASTER_STORE
        else:
            store = torch.distributed.TCPStore(dist.master_addr, dist.master_port, is_master=False,
                                               timeout=timedelta(minutes=10))
        torch.distributed.init_process_group(dist.backend, store=store, rank=dist.rank, world_size=dist.world_size)
    os.environ.update(
        MASTER_ADDR=dist.master_addr,
        MASTER_PORT=str(dist.master_port),
        RANK=str(dist.rank),
        WORLD_SIZE=str(dist.world_size),
        LOCAL_RANK="0",  # one device per actor: Ray sets CUDA_VISIBLE_DEVICES
        LOCAL_SIZE="1",
    )
    deepspeed.init_distributed(dist_backend=dist.backend, rank=dist.rank, world_size=dist.world_size,
                               verbose=False)


def load_model(spec: ModelSpec) -> torch.nn.Module:
    dtype = DTYPES[spec.dtype]
    if spec.path is None:
        from transformers import LlamaConfig

        cfg = LlamaConfig.from_dict(spec.config)
        cfg._attn_implementation = resolve_attn_implementation(spec.attn_implementation)
        build = build_causal_lm if spec.kind == "causal" else build_scalar_model
        return build(cfg, seed=spec.seed, dtype=dtype)
    if spec.kind == "causal":
        return load_causal_lm(spec.path, dtype, spec.attn_implementation)
    import json

    arch = json.loads((Path(spec.path) / "config.json").read_text()).get("architectures", [""])[0]
    if arch == "LlamaForCausalLM":  # RM / critic initialised from the SFT (chat) checkpoint
        from llama_rlhf.models import scalar_from_causal_lm

        return scalar_from_causal_lm(load_causal_lm(spec.path, dtype, spec.attn_implementation), seed=spec.seed)
    return load_scalar_model(spec.path, dtype, spec.attn_implementation)


def ds_config(zero_stage: int, grad_clip: float, dtype: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {
            "stage": zero_stage,
            # partition every parameter (no small-tensor persistence), so sharding is real even at tiny size
            "stage3_param_persistence_threshold": 0,
            "stage3_prefetch_bucket_size": 5e7,
            "reduce_bucket_size": 5e7,
        },
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DeepSpeedModel:
    """Owns one rank's DeepSpeed engine: the model, AdamW, the lr schedule and gradient clipping."""

    def __init__(self, model: ModelSpec, optim: OptimSpec | None, dist: DistSpec, zero_stage: int = 3):
        import deepspeed

        self.dist, self.spec, self.optim_spec = dist, model, optim
        torch.manual_seed(model.seed + dist.rank)
        init_process_group(dist)
        self.device = torch.device("cuda", 0) if dist.backend == "nccl" else torch.device("cpu")
        module = load_model(model)
        if model.gradient_checkpointing:
            module.gradient_checkpointing_enable()
        if optim is None:  # frozen (reference policy): inference engine, still sharded at ZeRO-3
            module.requires_grad_(False)
            module.eval()
        optimizer = scheduler = None
        if optim is not None:
            optimizer = torch.optim.AdamW(param_groups(module, optim.weight_decay), lr=optim.lr,
                                          betas=optim.betas, eps=optim.eps)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda s: lr_factor(s, optim.total_steps, optim.warmup_steps, optim.min_lr_ratio, optim.schedule),
            )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config(zero_stage, optim.grad_clip if optim else 1.0, model.dtype),
            dist_init_required=False,
        )
        self.zero_stage = zero_stage
        self.steps = 0

    # ------------------------------------------------------------------ training

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def begin_step(self, num_micro: int) -> None:
        """Gradient accumulation over `num_micro` micro-batches (same count on every rank)."""
        self.engine.set_train_batch_size(num_micro * self.dist.world_size)
        self.engine.train()

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by the accumulation steps; callers pass loss already normalised per step
        # and multiplied back by num_micro (see `micro_scale`), so the sum is exactly the step loss.
        self.engine.backward(loss)
        self.engine.step()  # a no-op until the accumulation boundary

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
            if self.zero_stage == 3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    yield name, p.data.detach().clone() if self.dist.rank == 0 else None
            else:
                yield name, p.data.detach()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        sd = {}
        for name, t in self.named_full_parameters():
            if t is not None:
                sd[name] = t.cpu()
        if self.dist.rank != 0:
            return None
        for name, b in self.module.named_buffers():  # rotary inv_freq etc. are not parameters
            if b is not None and name in self.module.state_dict():
                sd[name] = b.cpu()
        return sd

    def save_hf(self, folder: str | Path) -> str | None:
        """Write an HF folder (config + safetensors) from rank 0; every rank must call it."""
        sd = self.full_state_dict()
        if self.dist.rank != 0:
            return None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(folder, state_dict=sd, safe_serialization=True)
        return str(folder)

    def local_shapes(self) -> dict[str, tuple]:
        """The shapes this rank really holds (ZeRO-3: (0,) for partitioned parameters)."""
        return {n: tuple(p.shape) for n, p in self.module.named_parameters()}

    def local_numel(self) -> int:
        """Elements this rank stores for the parameters (its ZeRO-3 shards)."""
        return sum(int(getattr(p, "ds_tensor", p).numel()) for p in self.module.parameters())

    def save_state(self, folder: str | Path) -> None:
        """Optimizer + scheduler + RNG, for resume (DeepSpeed's own sharded checkpoint)."""
        self.engine.save_checkpoint(str(folder), tag="state", client_state={"steps": self.steps})

    def load_state(self, folder: str | Path) -> None:
        _, client = self.engine.load_checkpoint(str(folder), tag="state")
        self.steps = (client or {}).get("steps", 0)


def micro_batches(batch: dict, num_micro: int) -> list[dict]:
    """Split every (B, ...) tensor of a batch into `num_micro` consecutive chunks."""
    n = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
    if num_micro > n:
        raise ValueError(f"cannot split {n} rows into {num_micro} micro-batches")
    bounds = [round(i * n / num_micro) for i in range(num_micro + 1)]
    return [
        {k: v[a:b] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def set_cpu_threads(threads: int | None = None) -> None:
    """Ray gives fractional-CPU actors OMP_NUM_THREADS=1; the roles run one at a time, so let each use
    the node's cores (or LLAMA_RLHF_THREADS) for its own turn."""
    if not torch.cuda.is_available():
        torch.set_num_threads(threads or int(os.environ.get("LLAMA_RLHF_THREADS", os.cpu_count() or 1)))


def node_endpoint() -> tuple[str, int]:
    """This node's address and a free TCP port on it: the rendezvous of a group whose rank 0 runs here."""
    import socket

    try:
        import ray

        host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    except ImportError:  # pragma: no cover - ray is a dependency
        host = "127.0.0.1"
    with socket.socket() as s:
        s.bind((host, 0))
        return host, s.getsockname()[1]


class Role:
    """What every rank of every role shares: (re)loading its engine for a phase, saving, shapes."""

    def __init__(self, dist: DistSpec, zero_stage: int = 3):
        set_cpu_threads()
        self.dist, self.zero_stage = dist, zero_stage
        self.m: DeepSpeedModel | None = None

    def endpoint(self) -> tuple[str, int]:
        """A free port on this node (the weight-sync group's rendezvous, bound by its own code)."""
        return node_endpoint()

    def master_endpoint(self) -> tuple[str, int]:
        """Rank 0 only: bind this role's rendezvous store and return where it listens."""
        host = node_endpoint()[0]
        return host, bind_master_store(host)

    def set_master(self, host: str, port: int) -> None:
        """Where rank 0 listens; set on every rank before the first `load`."""
        from dataclasses import replace

        self.dist = replace(self.dist, master_addr=host, master_port=port)

    def load(self, model: ModelSpec, optim: OptimSpec | None = None) -> dict:
        """Start a phase: a fresh engine (and optimizer, schedule) from an HF folder or a config."""
        import gc

        self.m = None
        gc.collect()
        with StepTimer() as t:
            self.m = DeepSpeedModel(model, optim, self.dist, self.zero_stage)
        return {"rank": self.dist.rank, "seconds": t.seconds[-1] if t.seconds else 0.0,
                "local_numel": self.m.local_numel()}

    def save_hf(self, folder: str) -> str | None:
        return self.m.save_hf(folder)

    def save_state(self, folder: str) -> None:
        self.m.save_state(folder)

    def load_state(self, folder: str) -> None:
        self.m.load_state(folder)

    def local_shapes(self) -> dict[str, tuple]:
        return self.m.local_shapes()

    def ping(self) -> int:
        return self.dist.rank
