"""Weights in and out of a ZeRO-3 group without any process holding the whole model.

In: the model is built partitioned from the start (`deepspeed.zero.Init`: each parameter is split over
the ranks as its module is constructed) and the HF checkpoint is streamed into it one module at a time:
rank 0 reads that module's tensors from the safetensors files, the module's shards are gathered, filled
and re-partitioned. Peak per rank: its shards plus one module's full parameters (the largest is the
embedding or the LM head, 32000 x 8192 at 70B = 0.5 GB in bf16). A scalar model (reward, critic)
initialised from a causal-LM checkpoint reads only the body's tensors; its head is initialised in place.

Out: `save_hf_streamed` gathers one parameter at a time (every rank takes part) and rank 0 writes
safetensors shards of at most `shard_bytes` as they fill, plus the HF index: rank 0 holds one shard
(2 GiB by default) at a time, whatever the model size. The folder loads in stock transformers and vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

SHARD_BYTES = 2 * 2**30
SAFE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


# --------------------------------------------------------------------------- reading a checkpoint


def checkpoint_index(folder: str | Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (one file, or a sharded index)."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SAFE_NAME
    if not single.exists():
        raise FileNotFoundError(f"{folder}: no {SAFE_NAME} or {INDEX_NAME} (only safetensors checkpoints load)")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def check_init_checkpoint(folder: str | Path, vocab_size: int) -> dict:
    """Start-up check of `model.init_checkpoint`: a Llama-architecture HF folder (config.json and
    safetensors, one file or a sharded index) whose embedding covers the tokenizer. Returns its config;
    a problem is a one-line ValueError naming the field."""
    folder = Path(folder)
    where = f"model.init_checkpoint: {folder}"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{where}: no config.json (an HF model folder is expected)")
    c = json.loads((folder / "config.json").read_text())
    if c.get("model_type") != "llama":
        raise ValueError(f"{where}: model_type {c.get('model_type')!r}; only Llama-architecture checkpoints load")
    try:
        checkpoint_index(folder)
    except FileNotFoundError as e:
        raise ValueError(f"model.init_checkpoint: {e}") from None
    if vocab_size > c["vocab_size"]:
        raise ValueError(f"{where}: its embedding has {c['vocab_size']} rows, the tokenizer has {vocab_size} tokens")
    return c


class CheckpointReader:
    """Lazy reads of single tensors (safetensors memory-maps the files; one tensor is copied at a time)."""

    def __init__(self, folder: str | Path):
        self.index = checkpoint_index(folder)
        self._open: dict[Path, object] = {}

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self.index[name]
        if path not in self._open:
            self._open[path] = safe_open(str(path), framework="pt")
        return self._open[path].get_tensor(name)


# --------------------------------------------------------------------------- building partitioned


def hf_class(kind: str):
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    return LlamaForCausalLM if kind == "causal" else LlamaForSequenceClassification


def build_partitioned(kind: str, config, dtype: torch.dtype, ds_config: dict, init: bool) -> torch.nn.Module:
    """An HF Llama whose parameters are ZeRO-3 partitioned as they are created. `init=True` gives HF's
    random init (rank 0 initialises each module, the others receive it); `init=False` leaves the weights
    for `load_streamed` to fill, skipping the init a checkpoint would overwrite."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    cls = hf_class(kind)
    if init:
        # keep the object alive while building: transformers holds it by weakref and switches its
        # from_config path to zero.Init + rank-0 initialisation while it lives
        hf_ds = HfDeepSpeedConfig(ds_config)
        model = cls._from_config(config, dtype=dtype)
        del hf_ds
        return model
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # no `dtype=` here: with a config given, DeepSpeed 0.19.8's zero.Init evaluates
        # `dtype or fp16 if fp16_supported else bf16 ...` and, on CPU, turns float32 into bfloat16; the
        # config's bf16/fp16 flags (which ds_config sets from the model dtype) pick the same dtype right
        with no_init_weights(), deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    if getattr(model, "all_tied_weights_keys", None):
        # no_init_weights skips the tying that init_weights does: a tied LM head (SmolLM2's) would stay a
        # separate parameter that no checkpoint fills. Tied here, it is the embedding's partitioned
        # parameter, filled once by load_streamed, trained once and saved once (as HF saves it)
        model.tie_weights()
    model.config.dtype = dtype
    return model


def load_streamed(model: torch.nn.Module, folder: str | Path, rank: int) -> dict:
    """Fill a partitioned model from an HF folder, module by module (collective: every rank calls it).

    Returns {"loaded", "missing" (model parameters the checkpoint lacks), "unused" (checkpoint tensors
    the model has no parameter for, e.g. `lm_head.weight` when a scalar model starts from a causal LM)}.
    """
    import deepspeed

    reader = CheckpointReader(folder)
    loaded, missing, seen = [], [], set()
    for mod_name, mod in model.named_modules():
        # a tied LM head is the embedding's parameter: filled once, under the embedding's name
        params = [(f"{mod_name}.{n}" if mod_name else n, p) for n, p in mod.named_parameters(recurse=False)
                  if id(p) not in seen]
        seen.update(id(p) for _, p in params)
        present = [(n, p) for n, p in params if n in reader.index]
        missing += [n for n, p in params if n not in reader.index]
        if not present:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in present], modifier_rank=0):
            if rank == 0:
                with torch.no_grad():
                    for name, p in present:
                        t = reader.get(name)
                        if tuple(t.shape) != tuple(p.shape):
                            raise ValueError(f"{folder}: {name} has shape {tuple(t.shape)}, the model "
                                             f"expects {tuple(p.shape)}")
                        p.data.copy_(t)
        loaded += [n for n, _ in present]
    unused = sorted(set(reader.index) - set(loaded))
    return {"loaded": len(loaded), "missing": missing, "unused": unused}


def init_score_head(weight: torch.nn.Parameter, seed: int, partitioned: bool) -> None:
    """A fresh scalar head N(0, 1/(H+1)) (the reward model's regression head), the same on every rank."""
    from llama_rlhf.models import init_score_

    if not partitioned:
        init_score_(weight, seed)
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight], modifier_rank=0):
        init_score_(weight, seed)  # every rank draws the same values; rank 0's are broadcast


# --------------------------------------------------------------------------- writing a checkpoint


def shard_plan(named_sizes: Iterable[tuple[str, int]], shard_bytes: int = SHARD_BYTES) -> list[list[str]]:
    """Consecutive tensors grouped into shards of at most `shard_bytes` (a larger tensor alone)."""
    shards: list[list[str]] = []
    size = 0
    for name, nbytes in named_sizes:
        if not shards or (size + nbytes > shard_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def shard_file(i: int, n: int) -> str:
    return SAFE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def save_hf_streamed(module: torch.nn.Module, folder: str | Path, tensors: Iterator[tuple[str, torch.Tensor | None]],
                     write: bool, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write an HF folder from `tensors` = (name, full tensor) in `named_parameters` order (None on the
    ranks that do not write, which still drive the iterator: it may be a collective gather). Returns
    {"shards", "bytes", "peak_shard_bytes"} (the most rank 0 held at once, the cost of the export)."""
    from safetensors.torch import save_file

    dtype = next(module.parameters()).dtype
    tied = set(getattr(module, "all_tied_weights_keys", None) or {})  # e.g. lm_head.weight -> the embedding
    if set(module.state_dict()) - tied != {n for n, _ in module.named_parameters()}:
        # Llama has none (rotary inv_freq is not persistent): refuse rather than drop one silently. A tied
        # alias is written once under its source's name, as save_pretrained does; the config says it is tied
        raise ValueError("save_hf_streamed: the module has persistent buffers; not supported")
    sizes = [(n, _full_numel(p) * p.element_size()) for n, p in module.named_parameters()]
    plan = shard_plan(sizes, shard_bytes)
    owner = {name: i for i, names in enumerate(plan) for name in names}
    folder = Path(folder)
    if write:
        folder.mkdir(parents=True, exist_ok=True)
    current: dict[str, torch.Tensor] = {}
    weight_map, peak, total, shard = {}, 0, 0, 0

    def flush() -> None:
        nonlocal current, peak, total
        nbytes = sum(t.numel() * t.element_size() for t in current.values())
        peak, total = max(peak, nbytes), total + nbytes
        if write:
            save_file(current, str(folder / shard_file(shard, len(plan))), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(current, shard_file(shard, len(plan))))
        current = {}

    for name, t in tensors:
        if owner[name] != shard:
            flush()
            shard = owner[name]
        if write:
            current[name] = t.detach().to("cpu", copy=True).contiguous()
    if write:
        flush()
        if len(plan) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True))
        module.config.dtype = dtype
        # what the folder holds, as save_pretrained writes it: a model built from a config has none, and a
        # scalar model read from a causal folder inherits "LlamaForCausalLM" (`is_causal_checkpoint` reads it)
        module.config.architectures = [type(module).__name__]
        module.config.save_pretrained(folder)
        if getattr(module, "generation_config", None) is not None and module.can_generate():
            module.generation_config.save_pretrained(folder)
    return {"shards": len(plan), "bytes": total, "peak_shard_bytes": peak}


def _full_numel(p: torch.Tensor) -> int:
    """The full element count of a (possibly ZeRO-3 partitioned) parameter."""
    shape = getattr(p, "ds_shape", p.shape)
    n = 1
    for s in shape:
        n *= int(s)
    return n
