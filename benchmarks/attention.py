"""Attention throughput: our Triton GQA kernels vs torch SDPA (flash backend, enable_gqa=True).

Measures forward and forward+backward TFLOP/s, side by side in one run, on the Llama 2 paper's
attention shapes at sequence length 4096, head dim 128, bf16, causal:
  7B  - 32 query heads, 32 KV heads (MHA)
  70B - 64 query heads over 8 KV heads (GQA)

Then the kernels where they are used: a 2-layer HF Llama (7B and 70B layer shapes, bf16) training on a
right-padded batch of responses of mixed lengths, as RLHF batches are, forward+backward tokens/s with
attn_implementation="llama_rlhf_gqa" (unpad + varlen kernels) against "sdpa" (padded, masked).

Run on a CUDA machine:  python benchmarks/attention.py [--batch 2] [--seqlen 4096] [--non-causal]
Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

SHAPES = {"7B": (32, 32), "70B": (64, 8)}  # (query heads, KV heads)
HEAD_DIM = 128


def attention_flops(
    batch: int, seqlen: int, heads: int, head_dim: int, causal: bool, backward: bool
) -> float:
    """QK^T and PV (2 matmuls, 2 flops per MAC); backward adds 5 matmuls' worth at recompute, 2.5x."""
    fwd = 4 * batch * heads * seqlen * seqlen * head_dim * (0.5 if causal else 1.0)
    return fwd * (3.5 if backward else 1.0)


def _bench_ms(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100)


def _sdpa_flash(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def _runners(batch, seqlen, hq, hkv, causal):
    """(ours_fwd, ours_fwd_bwd, sdpa_fwd, sdpa_fwd_bwd) closures, each on its native layout."""
    from llama_rlhf.kernels.gqa_triton import gqa_attention

    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(batch, seqlen, hq, HEAD_DIM, device=dev, dtype=dt, requires_grad=True)  # (B, T, H, D)
    k = torch.randn(batch, seqlen, hkv, HEAD_DIM, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(batch, seqlen, hkv, HEAD_DIM, device=dev, dtype=dt, requires_grad=True)
    qs, ks, vs = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))  # (B, H, T, D)
    do = torch.randn_like(q)
    dos = do.transpose(1, 2).contiguous()

    # Same inputs, same answer: check before timing.
    err = (
        (gqa_attention(q, k, v, causal=causal) - _sdpa_flash(qs, ks, vs, causal).transpose(1, 2)).abs().max()
    )
    print(f"  max |ours - sdpa| on {hq}:{hkv} heads: {err.item():.2e}")

    def ours_fwd():
        with torch.no_grad():
            gqa_attention(q, k, v, causal=causal)

    def ours_fwd_bwd():
        torch.autograd.grad(gqa_attention(q, k, v, causal=causal), (q, k, v), do)

    def sdpa_fwd():
        with torch.no_grad():
            _sdpa_flash(qs, ks, vs, causal)

    def sdpa_fwd_bwd():
        torch.autograd.grad(_sdpa_flash(qs, ks, vs, causal), (qs, ks, vs), dos)

    return ours_fwd, ours_fwd_bwd, sdpa_fwd, sdpa_fwd_bwd


LAYER_SHAPES = {"7B": (4096, 32, 32, 11008), "70B": (8192, 64, 8, 28672)}  # hidden, q heads, kv heads, mlp


def model_rows(batch: int, seqlen: int) -> list[tuple]:
    """(model, ours tok/s, sdpa tok/s) for fwd+bwd of a 2-layer HF Llama on a right-padded batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama_rlhf import kernels

    rows = []
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(seqlen // 4, seqlen + 1, (batch,), generator=gen)
    lengths[0] = seqlen
    mask = (torch.arange(seqlen)[None] < lengths[:, None]).long().cuda()
    ids = torch.randint(0, 32000, (batch, seqlen), generator=gen).cuda()
    labels = ids.masked_fill(mask == 0, -100)
    real_tokens = int(mask.sum())
    for name, (hidden, hq, hkv, mlp) in LAYER_SHAPES.items():
        cfg = dict(vocab_size=32000, hidden_size=hidden, num_attention_heads=hq, num_key_value_heads=hkv,
                   intermediate_size=mlp, num_hidden_layers=2, max_position_embeddings=seqlen)  # fmt: skip
        speeds = []
        for impl in (kernels.register(), "sdpa"):
            torch.manual_seed(0)
            model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation=impl)).to("cuda", torch.bfloat16)

            def step(model=model):
                model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()

            speeds.append(real_tokens / (_bench_ms(step) / 1e3))
            del model
            torch.cuda.empty_cache()
        rows.append((name, *speeds))
    print(f"\n2-layer HF Llama, bf16, fwd+bwd, batch {batch} x {seqlen} right-padded "
          f"({real_tokens} real tokens of {batch * seqlen})")  # fmt: skip
    print("| layer shape | llama_rlhf_gqa tok/s | sdpa tok/s | ours/sdpa |")
    print("|---|---|---|---|")
    for name, ours, sdpa in rows:
        print(f"| {name} | {ours:,.0f} | {sdpa:,.0f} | {ours / sdpa:.2f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=4096)
    parser.add_argument("--non-causal", action="store_true")
    parser.add_argument("--model-batch", type=int, default=4, help="rows of the padded HF-model batch")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU (none found); nothing measured.")
        return 0
    causal = not args.non_causal
    print(f"{torch.cuda.get_device_name()}  bf16  batch {args.batch}  seqlen {args.seqlen}  "
          f"head dim {HEAD_DIM}  {'causal' if causal else 'non-causal'}")  # fmt: skip
    rows = []
    for model, (hq, hkv) in SHAPES.items():
        ours_f, ours_fb, sdpa_f, sdpa_fb = _runners(args.batch, args.seqlen, hq, hkv, causal)
        for name, ours, sdpa, bwd in (("fwd", ours_f, sdpa_f, False), ("fwd+bwd", ours_fb, sdpa_fb, True)):
            flops = attention_flops(args.batch, args.seqlen, hq, HEAD_DIM, causal, bwd)
            t_ours, t_sdpa = _bench_ms(ours), _bench_ms(sdpa)
            rows.append(
                (model, f"{hq}:{hkv}", name, t_ours, flops / t_ours / 1e9, t_sdpa, flops / t_sdpa / 1e9)
            )
        torch.cuda.empty_cache()
    header = (
        "model",
        "heads q:kv",
        "pass",
        "ours ms",
        "ours TFLOP/s",
        "sdpa ms",
        "sdpa TFLOP/s",
        "ours/sdpa",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model, heads, name, t_o, tf_o, t_s, tf_s in rows:
        print(
            f"| {model} | {heads} | {name} | {t_o:.2f} | {tf_o:.1f} | {t_s:.2f} | {tf_s:.1f} | {tf_o / tf_s:.2f} |"
        )
    if causal:
        model_rows(args.model_batch, min(args.seqlen, 2048))
    return 0


if __name__ == "__main__":
    sys.exit(main())
