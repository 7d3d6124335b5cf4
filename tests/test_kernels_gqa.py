"""Triton GQA kernels vs the pure-torch reference, and the reference vs torch SDPA.

The kernels run for real under the Triton CPU interpreter; shapes are small and blocks large (64)
to keep this file fast. Run: pytest tests/test_kernels_gqa.py
"""

import os

# Before triton is first imported (conftest.py does the same): jit functions bind when decorated.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import torch.nn.functional as F

from llama_rlhf.kernels import gqa_reference, packing, select
from llama_rlhf.kernels.gqa_triton import SUPPORTED_HEAD_DIMS, gqa_attention, is_interpreted

pytestmark = pytest.mark.skipif(
    not is_interpreted(), reason="triton was imported before TRITON_INTERPRET=1 was set"
)

# max |kernel - reference| / max(1, max |reference|), for the output and each gradient. The
# reference computes in fp32 from the same low-precision inputs; the kernel also rounds P and dS
# to the input dtype before its matmuls (as FlashAttention does), hence ~1-2 ulp of the dtype.
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}
RATIOS = [(4, 4), (4, 1), (8, 1)]  # (query heads, KV heads): GQA ratios 1, 4, 8


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the selector reads it per call


def _inputs(b, tq, tk, hq, hkv, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, tq, hq, d, generator=g).to(dtype).requires_grad_()
    k = torch.randn(b, tk, hkv, d, generator=g).to(dtype).requires_grad_()
    v = torch.randn(b, tk, hkv, d, generator=g).to(dtype).requires_grad_()
    do = torch.randn(b, tq, hq, d, generator=g).to(dtype)
    return q, k, v, do


def _assert_matches(fn, q, k, v, do, dtype, **kw):
    """Output and dq, dk, dv of the kernel against the reference on the same inputs."""
    out = gqa_attention(q, k, v, **kw)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = fn(q, k, v, **kw)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        assert torch.isfinite(got).all(), name
        err = (got.float() - want.float()).abs().max().item()
        scale = max(1.0, want.float().abs().max().item())
        assert err <= TOL[dtype] * scale, f"{name}: max err {err:.3g} > {TOL[dtype]} * {scale:.3g}"


@pytest.mark.parametrize("hq,hkv", RATIOS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seqlen", [1, 17, 100])
def test_dense_fp32(hq, hkv, causal, seqlen):
    q, k, v, do = _inputs(2, seqlen, seqlen, hq, hkv, 32, torch.float32)
    _assert_matches(gqa_reference.gqa_attention_reference, q, k, v, do, torch.float32, causal=causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv", RATIOS)
@pytest.mark.parametrize("causal", [True, False])
def test_dense_half(dtype, hq, hkv, causal):
    q, k, v, do = _inputs(1, 100, 100, hq, hkv, 32, dtype)
    _assert_matches(gqa_reference.gqa_attention_reference, q, k, v, do, dtype, causal=causal)


@pytest.mark.parametrize("head_dim,dtype", [(16, torch.float32), (64, torch.bfloat16), (128, torch.float16)])
def test_head_dims(head_dim, dtype):
    q, k, v, do = _inputs(1, 70, 70, 4, 1, head_dim, dtype)
    _assert_matches(gqa_reference.gqa_attention_reference, q, k, v, do, dtype, causal=True)


@pytest.mark.parametrize("tq,tk", [(1, 37), (5, 70), (70, 70)])
def test_causal_is_bottom_right_when_queries_are_a_suffix(tq, tk):
    # A decode step: the last tq queries over a cache of tk keys.
    q, k, v, do = _inputs(2, tq, tk, 4, 2, 32, torch.float32)
    _assert_matches(gqa_reference.gqa_attention_reference, q, k, v, do, torch.float32, causal=True)
    # ... and equals the last tq rows of full causal attention over all tk positions.
    qf, kf, vf = (x.detach() for x in _inputs(2, tk, tk, 4, 2, 32, torch.float32, seed=1)[:3])
    full = gqa_reference.gqa_attention_reference(qf, kf, vf, causal=True)
    suffix = gqa_attention(qf[:, tk - tq :], kf, vf, causal=True)
    torch.testing.assert_close(suffix, full[:, tk - tq :], atol=2e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv", RATIOS)
@pytest.mark.parametrize("causal", [True, False])
def test_packed_three_samples(dtype, hq, hkv, causal):
    cu = torch.tensor([0, 5, 69, 100], dtype=torch.int32)  # lengths 5, 64, 31
    q, k, v, do = _inputs(1, 100, 100, hq, hkv, 32, dtype)
    _assert_matches(
        gqa_reference.gqa_attention_reference, q, k, v, do, dtype, causal=causal, cu_seqlens=cu, max_seqlen=64
    )


def test_packed_equals_samples_run_alone():
    cu = torch.tensor([0, 5, 69, 100], dtype=torch.int32)
    q, k, v, _ = _inputs(1, 100, 100, 4, 1, 32, torch.float32)
    packed = gqa_attention(q, k, v, causal=True, cu_seqlens=cu)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = gqa_attention(q[:, s:e], k[:, s:e], v[:, s:e], causal=True)
        torch.testing.assert_close(packed[:, s:e], alone, atol=2e-6, rtol=0)


def test_packed_queries_over_longer_keys():
    # Varlen decode: 1 and 3 new queries per sample over caches of 20 and 45 keys.
    cu_q = torch.tensor([0, 1, 4], dtype=torch.int32)
    cu_k = torch.tensor([0, 20, 65], dtype=torch.int32)
    q, _, _, do = _inputs(1, 4, 4, 8, 2, 32, torch.float32)
    _, k, v, _ = _inputs(1, 65, 65, 8, 2, 32, torch.float32, seed=3)
    _assert_matches(
        gqa_reference.gqa_attention_reference,
        q,
        k,
        v,
        do,
        torch.float32,
        causal=True,
        cu_seqlens=cu_q,
        cu_seqlens_k=cu_k,
    )


def test_strided_inputs_from_hf_layout():
    # transformers hands over (B, H, T, D); the kernel reads the transposed views without copies.
    q, k, v, do = _inputs(2, 33, 33, 4, 1, 32, torch.float32)
    qt, kt, vt = (x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for x in (q, k, v))
    assert not qt.is_contiguous()
    _assert_matches(gqa_reference.gqa_attention_reference, qt, kt, vt, do, torch.float32, causal=True)


def test_forward_asserts_limits():
    q, k, v, _ = _inputs(1, 8, 8, 4, 2, 32, torch.float32)
    with pytest.raises(ValueError, match="head dim"):
        gqa_attention(q[..., :24], k[..., :24], v[..., :24])
    with pytest.raises(ValueError, match="multiple"):
        gqa_attention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="dtypes differ"):
        gqa_attention(q, k.half(), v.half())
    with pytest.raises(ValueError, match=r"\(1, total, H, D\)"):
        gqa_attention(
            q.expand(2, -1, -1, -1),
            k.expand(2, -1, -1, -1),
            v.expand(2, -1, -1, -1),
            cu_seqlens=torch.tensor([0, 8]),
        )
    assert SUPPORTED_HEAD_DIMS == select._TRITON_HEAD_DIMS


# --- the reference against code we did not write: torch SDPA -------------------------------------


@pytest.mark.parametrize("hq,hkv", RATIOS)
@pytest.mark.parametrize("causal", [True, False])
def test_reference_matches_sdpa(hq, hkv, causal):
    q, k, v, do = _inputs(2, 19, 19, hq, hkv, 16, torch.float64)
    ref = gqa_reference.gqa_attention_reference(q, k, v, causal=causal)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    sdpa_gqa = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=True).transpose(1, 2)
    rep = hq // hkv
    kr, vr = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1)
    sdpa_rep = F.scaled_dot_product_attention(qt, kr, vr, is_causal=causal).transpose(1, 2)
    torch.testing.assert_close(ref, sdpa_gqa)
    torch.testing.assert_close(ref, sdpa_rep)
    for a, b in zip(torch.autograd.grad(ref, (q, k, v), do), torch.autograd.grad(sdpa_rep, (q, k, v), do)):
        torch.testing.assert_close(a, b)


def test_reference_packed_matches_sdpa_with_hand_built_block_mask():
    lengths = [5, 9, 6]
    cu = torch.tensor([0, 5, 14, 20], dtype=torch.int32)
    q, k, v, do = _inputs(1, 20, 20, 4, 2, 16, torch.float64)
    mask = torch.zeros(20, 20, dtype=torch.bool)
    start = 0
    for n in lengths:  # causal lower triangle inside each sample's diagonal block
        mask[start : start + n, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
        start += n
    ref = gqa_reference.gqa_attention_reference(q, k, v, causal=True, cu_seqlens=cu)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    sdpa = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(ref, sdpa)
    for a, b in zip(torch.autograd.grad(ref, (q, k, v), do), torch.autograd.grad(sdpa, (q, k, v), do)):
        torch.testing.assert_close(a, b)


# --- packing helpers and the selector ------------------------------------------------------------


def test_cu_seqlens_from_position_ids():
    cu, longest = packing.cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and longest == 4
    cu, longest = packing.cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0], [0, 1, 2, 3]]))
    assert cu.tolist() == [0, 3, 4, 8] and longest == 4  # every row starts a sample
    assert packing.is_packed(torch.tensor([[0, 1, 0]])) and not packing.is_packed(torch.tensor([[3, 4, 5]]))


def test_unpad_pad_roundtrip():
    x = torch.randn(2, 5, 3, 4)
    keep = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    packed, idx = packing.unpad(x, keep)
    assert packed.shape == (1, 7, 3, 4)
    back = packing.pad(packed, idx, 2, 5)
    torch.testing.assert_close(back[keep], x[keep])
    assert (back[~keep] == 0).all()


def test_selector_picks_triton_only_with_cuda_or_interpreter(monkeypatch):
    q = torch.randn(1, 4, 2, 32)
    assert select.pick_backend(q, q) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert select.pick_backend(q, q) == "sdpa"
    assert select.pick_backend(torch.randn(1, 4, 2, 24), q) == "sdpa"


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("tq", [3, 12])
def test_sdpa_fallback_matches_reference(packed, tq):
    cu_q = torch.tensor([0, 1, tq], dtype=torch.int32) if packed else None
    cu_k = torch.tensor([0, 4, 12], dtype=torch.int32) if packed else None
    q, _, _, _ = _inputs(1, tq, tq, 4, 2, 16, torch.float64)
    _, k, v, _ = _inputs(1, 12, 12, 4, 2, 16, torch.float64, seed=2)
    kw = {"causal": True, "cu_seqlens": cu_q, "cu_seqlens_k": cu_k}
    want = select.attention(q, k, v, backend="reference", **kw)
    torch.testing.assert_close(select.attention(q, k, v, backend="sdpa", **kw), want)
