"""GPU checks of the cluster path that one lent GPU can run (benchmarks/gpu.sh calls it; CPU: says so, exits 0).

  nccl      the training step's collectives at world size 1 on NCCL: `policy.global_count` (a CUDA
            tensor, as NCCL requires; a CPU tensor is refused, the defect this fixed), all-reduce,
            all-gather, reduce-scatter and broadcast of CUDA tensors (what ZeRO-3 issues)
  sync      the weight-sync data path on CUDA: `WeightSyncSender.send` over the NCCL group, buckets packed
            on the GPU, unpacked byte-exact; peak memory of a send of 7B-layer tensors bounded by two
            buckets plus the largest tensor
  dispatch  the Triton GQA kernel is what runs in every pass of every role (`RolePasses`: packed SFT
            log-probs with backward, PPO response log-probs with backward, scoring log-probs, critic
            values, RM scores), counted per call: one call per layer per forward (twice with
            checkpointing), no SDPA fallback
  memory    peak memory of one decoder layer at the real 7B / 13B / 70B widths (bf16, our kernel) for
            the SFT, PPO, RM and log-prob passes, next to the planner's count (`plan.layer_activation_bytes`);
            the worst measured/planned ratio is written as `activation_scale` for `llama-rlhf plan --calibration`
  zero3     DeepSpeed ZeRO-3 on the GPU when DeepSpeed (and pydantic) can be imported: one SFT and one PPO
            step of a small model through `DeepSpeedModel`, micro-batched, with their peak memory

    python benchmarks/gpu_scale.py [--out DIR] [--only nccl,sync,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MiB = 2**20


def init_nccl() -> None:
    if not torch.distributed.is_initialized():
        store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(minutes=2))
        torch.distributed.init_process_group("nccl", store=store, rank=0, world_size=1,
                                             device_id=torch.device("cuda", 0))


def check_nccl() -> dict:
    from types import SimpleNamespace

    import torch.distributed as dist

    from llama_rlhf.actors.engine import DistSpec
    from llama_rlhf.actors.policy import global_count

    init_nccl()
    dev = torch.device("cuda", 0)
    # global_count's early exit is for world size 1: run its collective by claiming 2, on the real group
    fake_two = SimpleNamespace(dist=DistSpec(0, 2, backend="nccl"), device=dev)
    assert global_count(7, fake_two) == 7
    x = torch.arange(8, dtype=torch.float32, device=dev)
    dist.all_reduce(x)
    out = torch.empty(8, device=dev)
    dist.all_gather_into_tensor(out, x)
    rs = torch.empty(8, device=dev)
    dist.reduce_scatter_tensor(rs, x)
    dist.broadcast(x, 0)
    torch.cuda.synchronize()
    cpu_refused = False
    try:
        dist.all_reduce(torch.ones(1))
        torch.cuda.synchronize()
    except Exception as e:  # NCCL takes CUDA tensors only: the original global_count failed here
        cpu_refused = "CPU" in str(e) or "cpu" in str(e) or "device" in str(e)
    return {"ok": bool(torch.equal(out, x) and torch.equal(rs, x)), "cpu_tensor_refused": cpu_refused}


def check_sync() -> dict:
    from llama_rlhf.actors.weight_sync import SyncMeta, WeightSyncSender, pack_bucket, unpack_bucket

    init_nccl()
    dev = torch.device("cuda", 0)
    pg = torch.distributed.distributed_c10d._get_default_group()
    g = torch.Generator(device=dev).manual_seed(0)
    # one 7B decoder layer's tensors (fp32 on the trainer, bf16 on the wire), plus an embedding-sized one
    shapes = {"embed": (32000, 4096), "q": (4096, 4096), "k": (4096, 4096), "v": (4096, 4096), "o": (4096, 4096),
              "gate": (11008, 4096), "up": (11008, 4096), "down": (4096, 11008), "norm": (4096,)}
    tensors = {n: torch.randn(s, generator=g, device=dev) for n, s in shapes.items()}
    meta = SyncMeta.build(((n, t.shape) for n, t in tensors.items()), "bfloat16", bucket_bytes=64 * MiB)
    exact = True
    it = iter(tensors.items())
    for b in meta.plan():  # pack on the GPU, broadcast, unpack: byte-exact against the cast source
        buf = pack_bucket(it, b, meta.params, dev)
        pg.broadcast(buf, 0).wait()
        for name, t in unpack_bucket(buf, b, meta.params):
            exact &= torch.equal(t.view(torch.int16), tensors[name].to(torch.bfloat16).view(torch.int16))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    stats = WeightSyncSender.on_group(pg, dev).send(iter(tensors.items()), meta)
    peak = torch.cuda.max_memory_allocated() - base
    largest = max(p.nbytes for p in meta.params)
    bound = 2 * meta.bucket_bytes + largest
    return {"byte_exact": bool(exact), "bytes": stats.bytes, "buckets": stats.buckets, "mb_per_s": stats.mb_per_s,
            "peak_mib": peak / MiB, "bound_mib": bound / MiB, "bounded": peak <= bound}


def _small_config(attn: str):
    from llama_rlhf.models import llama_config

    cfg = llama_config("tiny", vocab_size=2048, max_seq_len=512)
    cfg.num_hidden_layers = 3
    cfg._attn_implementation = attn
    return cfg


def check_dispatch() -> dict:
    """Count the Triton kernel's calls in every pass; any SDPA fallback is counted too."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from llama_rlhf.kernels import gqa_triton, register, select
    from llama_rlhf.models import scalar_config
    from llama_rlhf.passes import RolePasses

    register()
    calls = {"triton": 0, "sdpa": 0}
    real_kernel, real_sdpa = gqa_triton.gqa_attention, select.sdpa_attention

    def kernel(*a, **k):
        calls["triton"] += 1
        return real_kernel(*a, **k)

    def sdpa(*a, **k):
        calls["sdpa"] += 1
        return real_sdpa(*a, **k)

    gqa_triton.gqa_attention, select.sdpa_attention = kernel, sdpa
    dev = torch.device("cuda", 0)
    cfg = _small_config("llama_rlhf_gqa")
    layers = cfg.num_hidden_layers
    causal = RolePasses(LlamaForCausalLM(cfg).to(dev, torch.bfloat16))
    scalar = RolePasses(LlamaForSequenceClassification(scalar_config(cfg)).to(dev, torch.bfloat16))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 2048, (4, 96), generator=g).to(dev)
    mask = torch.ones_like(ids)
    mask[0, :20] = 0  # a left-padded row
    pos = torch.cat([torch.arange(40), torch.arange(56)]).expand(4, -1).to(dev)  # two packed samples per row
    seg = torch.cat([torch.ones(40), 2 * torch.ones(56)]).long().expand(4, -1).to(dev)
    labels = ids.clone()
    out = {}

    def count(name, fn, ckpt: bool = False):
        calls.update(triton=0, sdpa=0)
        fn()
        torch.cuda.synchronize()
        want = layers * (2 if ckpt else 1)
        out[name] = {**calls, "expected_triton": want, "ok": calls["triton"] == want and calls["sdpa"] == 0}

    count("sft packed_logprobs fwd+bwd", lambda: causal(ids, out="packed_logprobs", labels=labels, position_ids=pos,
                                                        segment_ids=seg).sum().backward())
    count("ppo response_logprobs fwd+bwd", lambda: causal(ids, mask, out="response_logprobs", response_len=32,
                                                          with_entropy=True)[0].sum().backward())
    with torch.no_grad():
        count("scoring response_logprobs", lambda: causal(ids, mask, out="response_logprobs", response_len=32))
        count("critic values", lambda: scalar(ids, mask, out="values", response_len=32))
        count("rm scores", lambda: scalar(ids, mask, out="scores"))
    count("critic values fwd+bwd", lambda: scalar(ids, mask, out="values", response_len=32).sum().backward())
    count("rm scores fwd+bwd", lambda: scalar(ids, mask, out="scores").sum().backward())
    causal.hf.gradient_checkpointing_enable()
    causal.train()
    count("ppo response_logprobs, checkpointing", lambda: causal(ids, mask, out="response_logprobs",
                                                                 response_len=32)[0].sum().backward(), ckpt=True)
    gqa_triton.gqa_attention, select.sdpa_attention = real_kernel, real_sdpa
    return out


PASSES = {  # (rows, tokens per row, with backward) per micro-batch at the presets' defaults
    "sft": (1, 4096, True),
    "ppo": (1, 4096, True),
    "rm": (2, 4096, True),
    "logprobs": (8, 4096, False),
}


def check_memory() -> dict:
    """One decoder layer at each real width: activation bytes per token, measured vs planned."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from llama_rlhf.kernels import register
    from llama_rlhf.models import PRESETS
    from llama_rlhf.plan import Shape, layer_activation_bytes

    register()
    dev = torch.device("cuda", 0)
    out, worst = {}, 0.0
    for preset in ("7b", "13b", "70b"):
        p = PRESETS[preset]
        cfg = LlamaConfig(hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
                          num_attention_heads=p.num_attention_heads, num_key_value_heads=p.num_key_value_heads,
                          num_hidden_layers=1, vocab_size=p.vocab_size, max_position_embeddings=4096)
        cfg._attn_implementation = "llama_rlhf_gqa"
        shape = Shape(p.hidden_size, 1, p.num_attention_heads, p.num_key_value_heads, p.intermediate_size,
                      p.vocab_size)
        planned = layer_activation_bytes(shape, 2, gqa_native=True)
        layer = LlamaDecoderLayer(cfg, 0).to(dev, torch.bfloat16)
        rope = LlamaRotaryEmbedding(cfg).to(dev)
        for name, (rows, seq, backward) in PASSES.items():
            x = torch.randn(rows, seq, cfg.hidden_size, device=dev, dtype=torch.bfloat16, requires_grad=backward)
            pos = torch.arange(seq, device=dev)[None].expand(rows, -1)
            cos, sin = rope(x, pos)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            with torch.set_grad_enabled(backward):
                y = layer(x, position_embeddings=(cos, sin), position_ids=pos)
                y = y[0] if isinstance(y, tuple) else y
                saved = torch.cuda.memory_allocated() - base - y.numel() * y.element_size()
                if backward:
                    y.float().pow(2).mean().backward()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            tokens = rows * seq
            row = {"tokens": tokens, "planned_saved_per_token": planned, "peak_per_token": peak / tokens}
            if backward:
                row["saved_per_token"] = saved / tokens
                worst = max(worst, row["saved_per_token"] / planned)
            out[f"{preset} {name}"] = row
            layer.zero_grad(set_to_none=True)
            del x, y, cos, sin
        del layer
        torch.cuda.empty_cache()
    out["activation_scale"] = worst
    return out


def check_zero3() -> dict:
    """ZeRO-3 on one GPU through the real DeepSpeedModel, when DeepSpeed and pydantic were carried."""
    import shutil

    try:
        import deepspeed  # noqa: F401
        import pydantic  # noqa: F401
    except ImportError as e:
        return {"skipped": f"not importable here: {e.name} (carry its wheels, see benchmarks/gpu.sh)"}
    if not (shutil.which("nvcc") or os.environ.get("CUDA_HOME")):
        return {"skipped": "no CUDA toolkit: DeepSpeed's FusedAdam is compiled on first use"}
    from llama_rlhf.actors.batches import PackedBatch, PPOBatch
    from llama_rlhf.actors.engine import DistSpec, ModelSpec, OptimSpec, ZeroSpec
    from llama_rlhf.actors.policy import PolicyTrainer

    cfg = _small_config("llama_rlhf_gqa")
    role = PolicyTrainer(DistSpec(0, 1, backend="nccl"), ZeroSpec(param_persistence_threshold=0))
    t0 = time.perf_counter()
    role.load(ModelSpec("causal", config=cfg.to_dict(), dtype="bfloat16", attn_implementation="llama_rlhf_gqa"),
              OptimSpec(lr=1e-4, schedule="constant"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 2048, (8, 256), generator=g)
    labels = ids.clone()
    labels[:, :32] = -100
    pos = torch.arange(256).expand(8, -1).contiguous()
    sft = role.sft_step(PackedBatch(ids, labels, pos, torch.ones_like(ids)), 4)
    mask = torch.ones(8, 64)
    z = torch.zeros(8, 64)
    ppo = role.ppo_step(PPOBatch(ids, torch.ones_like(ids), mask.long(), z - 3, torch.randn(8, 64, generator=g), z, z),
                        8, 0.2, 0, micro_batch_size=2)
    return {"sft_loss": sft["loss"], "ppo_loss": ppo["loss"], "seconds": time.perf_counter() - t0,
            "peak_mib": torch.cuda.max_memory_allocated() / MiB}


CHECKS = {"nccl": check_nccl, "sync": check_sync, "dispatch": check_dispatch, "memory": check_memory,
          "zero3": check_zero3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--only", default=",".join(CHECKS))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_scale: no CUDA GPU here; nothing to check")
        return 0
    os.environ.setdefault("TRITON_INTERPRET", "0")
    results, failed = {}, []
    for name in args.only.split(","):
        t0 = time.perf_counter()
        try:
            results[name] = CHECKS[name]()
        except Exception:  # one broken check must not hide the others' results
            results[name] = {"error": traceback.format_exc(limit=4)}
            failed.append(name)
        print(f"[{name}] {time.perf_counter() - t0:.1f}s {json.dumps(results[name], indent=1)}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_scale.json").write_text(json.dumps(results, indent=1))
    if "memory" in results and "activation_scale" in results["memory"]:
        (out / "calibration.json").write_text(json.dumps({"activation_scale": results["memory"]["activation_scale"]}))
    bad = [n for n, r in results.items() if isinstance(r, dict) and r.get("ok") is False]
    bad += [n for n in ("sync",) if n in results and not results[n].get("byte_exact", True)]
    bad += [f"dispatch:{k}" for k, v in results.get("dispatch", {}).items() if isinstance(v, dict) and not v["ok"]]
    print("gpu_scale: " + ("all checks passed" if not (failed or bad) else f"FAILED {failed + bad}"))
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
