"""Tile sweep for the Triton GQA kernels: times each candidate (BLOCK_M, BLOCK_N, warps, stages) per
kernel (fwd, dkdv, dq) on the Llama 2 7B (32:32) and 70B (64:8) attention shapes, bf16, causal,
head dim 128, and prints the best beside the current default. Each candidate's output or gradients
are checked against the default's before it is timed.

Run on a CUDA machine:  python benchmarks/attention_tune.py [--batch 2] [--seqlen 4096]
Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys

import torch

SHAPES = {"7B": (32, 32), "70B": (64, 8)}
CANDIDATES = {  # (BLOCK_M, BLOCK_N, num_warps, num_stages); the first of each is today's default
    "fwd": [(64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3),
            (64, 32, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3)],
    "dkdv": [(32, 64, 4, 3), (64, 64, 8, 2), (32, 128, 8, 3), (64, 128, 8, 3), (64, 64, 4, 3),
             (32, 32, 4, 3), (32, 64, 4, 4), (32, 64, 8, 3)],
    "dq": [(128, 64, 8, 3), (64, 64, 8, 2), (128, 32, 4, 3), (64, 32, 4, 3), (128, 64, 8, 4),
           (128, 128, 8, 3), (64, 64, 4, 3)],
}  # fmt: skip


def _cfg(c):
    return {"BLOCK_M": c[0], "BLOCK_N": c[1], "num_warps": c[2], "num_stages": c[3]}


def sweep(batch: int, seqlen: int, hq: int, hkv: int) -> dict[str, list[tuple]]:
    from triton.testing import do_bench

    from llama_rlhf.kernels import gqa_triton as gt

    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda h: torch.randn(batch, seqlen, h, 128, generator=g, device="cuda").bfloat16().requires_grad_()
    q, k, v = mk(hq), mk(hkv), mk(hkv)
    do = torch.randn_like(q)
    gt.TILE_OVERRIDES.clear()
    ref_out = gt.gqa_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), do)
    results: dict[str, list[tuple]] = {}
    for kernel, cands in CANDIDATES.items():
        rows = []
        for c in cands:
            gt.TILE_OVERRIDES.clear()
            gt.TILE_OVERRIDES[kernel] = _cfg(c)
            try:
                out = gt.gqa_attention(q, k, v)
                if kernel == "fwd":
                    got, want = [out], [ref_out]
                    fn = lambda: gt.gqa_attention(q.detach(), k.detach(), v.detach())
                else:
                    got, want = list(torch.autograd.grad(out, (q, k, v), do, retain_graph=True)), list(ref_grads)
                    fn = lambda out=out: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
                err = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want))
                ms = do_bench(fn, warmup=10, rep=50) if err < 0.05 else float("nan")
                rows.append((c, ms, err))
            except Exception as e:  # out of shared memory / registers for this tile
                rows.append((c, float("nan"), f"{type(e).__name__}"))
        results[kernel] = rows
    gt.TILE_OVERRIDES.clear()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=4096)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/attention_tune.py needs a CUDA GPU (none found); nothing measured.")
        return 0
    print(f"{torch.cuda.get_device_name()}  bf16 causal  batch {args.batch}  seqlen {args.seqlen}  head dim 128")
    print("backward candidates are timed as the whole backward (delta + dkdv + dq) with the other kernel at default")
    for model, (hq, hkv) in SHAPES.items():
        for kernel, rows in sweep(args.batch, args.seqlen, hq, hkv).items():
            print(f"\n{model} {hq}:{hkv} {kernel}: (BLOCK_M, BLOCK_N, warps, stages)  ms  max|diff vs default|")
            for c, ms, err in rows:
                print(f"  {c}  {ms:7.3f}  {err if isinstance(err, str) else f'{err:.1e}'}")
            ok = [r for r in rows if r[1] == r[1]]
            best = min(ok, key=lambda r: r[1])
            print(f"  best {best[0]}: {rows[0][1] / best[1]:.2f}x the default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
