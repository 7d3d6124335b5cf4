"""The compiled Triton GQA kernels on a CUDA GPU: outputs and gradients at training shapes.

CI has no GPU, so this file skips there. On a GPU run it on its own, with the interpreter off:

    TRITON_INTERPRET=0 pytest tests/test_kernels_cuda.py

Two references we did not write the kernels against: an fp32 attention computed from the same
low-precision inputs (gqa_reference), and torch's own FlashAttention (SDPA). The kernel must be at
least about as close to the fp32 answer as torch's flash kernel is, for the output and every gradient.
"""

import os

import pytest
import torch
import torch.nn.functional as F

if torch.cuda.is_available():  # before triton is first imported in this process
    os.environ["TRITON_INTERPRET"] = "0"

from llama_rlhf.kernels import gqa_reference  # noqa: E402
from llama_rlhf.kernels.gqa_triton import gqa_attention, is_interpreted  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(is_interpreted(), reason="triton runs interpreted here; run this file alone on a GPU"),
]
DEV = "cuda"
# fp32 runs with ieee dots on both sides; 16-bit: the kernel may be at most 2x further from the fp32
# truth than torch's flash kernel (plus a floor of a few ulp, for gradients where both are tiny).
FP32_TOL = 2e-4
ULP = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _inputs(b, tq, tk, hq, hkv, d, dtype, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    mk = lambda t, h: torch.randn(b, t, h, d, generator=g, device=DEV).to(dtype).requires_grad_()
    q, k, v = mk(tq, hq), mk(tk, hkv), mk(tk, hkv)
    do = torch.randn(b, tq, hq, d, generator=g, device=DEV).to(dtype)
    return q, k, v, do


def _run(fn, q, k, v, do, **kw):
    out = fn(q, k, v, **kw)
    return [out, *torch.autograd.grad(out, (q, k, v), do)]


def _fp32_truth(q, k, v, do, **kw):
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    return _run(gqa_reference.gqa_attention_reference, q32, k32, v32, do.float(), **kw)


def _sdpa_flash(q, k, v, causal=True):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=True).transpose(1, 2)


def _err(got, want):
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1.0)).item()


def _check_vs_truth(ours, truth, dtype, torch_flash=None):
    names = ("out", "dq", "dk", "dv")
    for i, name in enumerate(names):
        assert torch.isfinite(ours[i]).all(), name
        e = _err(ours[i], truth[i])
        if dtype == torch.float32:
            assert e < FP32_TOL, f"{name}: {e:.3g}"
        else:
            bound = ULP[dtype] + (2 * _err(torch_flash[i], truth[i]) if torch_flash else 2 * ULP[dtype])
            assert e <= bound, f"{name}: ours {e:.3g} > bound {bound:.3g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq,hkv", [(16, 16), (16, 2), (8, 1)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seqlen,head_dim", [(1, 128), (129, 64), (1024, 128), (2048, 64)])
def test_dense_matches_fp32_as_well_as_torch_flash(dtype, hq, hkv, causal, seqlen, head_dim):
    q, k, v, do = _inputs(2, seqlen, seqlen, hq, hkv, head_dim, dtype)
    truth = _fp32_truth(q, k, v, do, causal=causal)
    ours = _run(gqa_attention, q, k, v, do, causal=causal)
    flash = _run(_sdpa_flash, q, k, v, do, causal=causal)
    _check_vs_truth(ours, truth, dtype, flash)


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_fp32_is_exact_fp32(head_dim, causal):
    q, k, v, do = _inputs(2, 300, 300, 8, 2, head_dim, torch.float32)
    _check_vs_truth(_run(gqa_attention, q, k, v, do, causal=causal), _fp32_truth(q, k, v, do, causal=causal),
                    torch.float32)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_samples_match_reference_and_stay_apart(dtype):
    lengths = [1, 63, 64, 65, 700, 3]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEV)
    total = int(cu[-1])
    q, k, v, do = _inputs(1, total, total, 16, 4, 128, dtype)
    kw = {"causal": True, "cu_seqlens": cu}
    _check_vs_truth(_run(gqa_attention, q, k, v, do, max_seqlen=700, **kw), _fp32_truth(q, k, v, do, **kw), dtype)
    packed = gqa_attention(q, k, v, causal=True, cu_seqlens=cu).detach()
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = gqa_attention(q[:, s:e], k[:, s:e], v[:, s:e], causal=True).detach()
        assert _err(packed[:, s:e], alone) < (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("tq,tk", [(1, 4096), (7, 1000), (128, 2048)])
def test_decode_queries_over_a_longer_cache(tq, tk):
    q, _, _, do = _inputs(2, tq, tq, 32, 8, 128, torch.bfloat16)
    _, k, v, _ = _inputs(2, tk, tk, 32, 8, 128, torch.bfloat16, seed=1)
    truth = _fp32_truth(q, k, v, do, causal=True)
    _check_vs_truth(_run(gqa_attention, q, k, v, do, causal=True), truth, torch.bfloat16)


def _llama_pair(dtype, **shape):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama_rlhf import kernels

    cfg = dict(vocab_size=512, intermediate_size=512, num_hidden_layers=2, max_position_embeddings=1024,
               hidden_size=256, num_attention_heads=8, num_key_value_heads=2, **shape)  # fmt: skip
    torch.manual_seed(0)
    sdpa = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa")).to(DEV, dtype)
    ours = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation=kernels.register())).to(DEV, dtype)
    ours.load_state_dict(sdpa.state_dict())
    return sdpa, ours


@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_hf_llama_fp32_logits_and_grads_match_sdpa(padding):
    sdpa, ours = _llama_pair(torch.float32)
    ids = torch.randint(0, 512, (3, 300), device=DEV, generator=torch.Generator(device=DEV).manual_seed(1))
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, 200:], mask[2, 31:] = 0, 0
    elif padding == "left":
        mask[1, :100], mask[2, :269] = 0, 0
    labels = ids.masked_fill(mask == 0, -100)
    outs = []
    for m in (sdpa, ours):
        out = m(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        outs.append(out)
    keep = mask.bool()
    torch.testing.assert_close(outs[1].logits[keep], outs[0].logits[keep], atol=2e-4, rtol=1e-3)
    for (name, a), b in zip(sdpa.named_parameters(), ours.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=2e-4, rtol=1e-3, msg=name)


def test_hf_llama_bf16_training_follows_sdpa_and_generation_agrees():
    sdpa, ours = _llama_pair(torch.bfloat16, head_dim=128)
    ids = torch.randint(0, 512, (4, 256), device=DEV, generator=torch.Generator(device=DEV).manual_seed(2))
    curves = []
    for m in (sdpa, ours):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        losses = []
        for _ in range(30):
            loss = m(input_ids=ids, labels=ids, use_cache=False).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0] - 1.0  # it learns
    assert max(abs(a - b) for a, b in zip(*curves)) < 0.15, curves
    m32 = _llama_pair(torch.float32)
    prompt = ids[:2, :40]
    gen = [m.generate(input_ids=prompt, max_new_tokens=32, do_sample=False) for m in m32]
    assert torch.equal(gen[0], gen[1])
