"""FlashAttention-2-style grouped-query attention in Triton: forward, and backward for dq, dk, dv.

Layout (flash-attn's): q (B, Tq, Hq, D), k and v (B, Tk, Hkv, D), last dim contiguous, any other
strides. Hq must be a multiple of Hkv; query head h reads KV head h // (Hq // Hkv) inside the kernel
(K/V are never repeated) and the dk/dv program of a KV head loops over its query group, so GQA
gradients are summed in registers without atomics. Packed batches are (1, total, H, D) with int32
`cu_seqlens` (num_samples + 1,); samples never attend across each other. Causal masks are aligned
bottom-right, as in flash-attn >= 2.1 (see gqa_reference.py). Any length works: tails are masked.

Forward saves the row log-sum-exp (base 2, in units of log2(e) * scale) for the backward, which
recomputes probabilities blockwise: one program per (query block, head) for dq and one per
(key block, KV head) for dk/dv. Runs on CUDA, or on CPU tensors under TRITON_INTERPRET=1 (set
before triton is first imported: jit functions bind to the interpreter when decorated).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .packing import max_seqlen_from_cu_seqlens

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOG2E = 1.4426950408889634

# Under the interpreter every tl op is a numpy call per program, so fewer, larger blocks win.
INTERPRET_BLOCK = 64


def is_interpreted() -> bool:
    """True when these kernels and triton.language's own jit helpers run on the CPU interpreter.

    Both are bound when decorated, i.e. TRITON_INTERPRET=1 must be set before triton is imported.
    """
    return all(type(f).__name__ == "InterpretedFunction" for f in (_fwd_kernel, tl.zeros))


@triton.jit
def _sample_bounds(CU, b, seqlen, IS_VARLEN: tl.constexpr):
    # Dense batches: every row starts at 0 with the full length. Packed: read the offsets.
    if IS_VARLEN:
        start = tl.load(CU + b)
        length = tl.load(CU + b + 1) - start
    else:
        start = b * 0
        length = seqlen + b * 0
    return start, length


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # The interpreter multiplies bf16 tiles as their raw uint16 bits; upcasting the (already
    # bf16-rounded) operands gives the same products as a bf16 MMA with fp32 accumulation.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, len_q = _sample_bounds(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sample_bounds(CU_K, b, seqlen_k, IS_VARLEN)
    if pid_m * BLOCK_M >= len_q:
        return
    b64, h64, kvh64 = b.to(tl.int64), h.to(tl.int64), (h // GROUP).to(tl.int64)
    Q += b64 * stride_qb + q_start.to(tl.int64) * stride_qt + h64 * stride_qh
    O += b64 * stride_ob + q_start.to(tl.int64) * stride_ot + h64 * stride_oh
    K += b64 * stride_kb + k_start.to(tl.int64) * stride_kt + kvh64 * stride_kh
    V += b64 * stride_vb + k_start.to(tl.int64) * stride_vt + kvh64 * stride_vh
    LSE += b64 * stride_lb + h64 * stride_lh + q_start.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < len_q
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    diag = len_k - len_q  # causal: key j is visible to query i iff j <= i + diag
    hi = len_k
    if CAUSAL:
        hi = tl.minimum(len_k, (pid_m + 1) * BLOCK_M + diag)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < len_k
        kt = tl.load(K + cols[None, :] * stride_kt + offs_d[:, None], mask=col_ok[None, :], other=0.0)
        qk = _dot(q, kt, PRECISION, UPCAST) * qk_scale  # (M, N), log2 units
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
        qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row that has seen no key yet keeps m = -inf; subtract 0 there to avoid inf - inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + cols[:, None] * stride_vt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new

    empty = l_i == 0.0  # a query with no visible key outputs 0; lse = +inf zeroes its gradient
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + offs_m, lse, mask=row_ok)
    tl.store(
        O + offs_m[:, None] * stride_ot + offs_d[None, :], acc.to(O.dtype.element_ty), mask=row_ok[:, None]
    )


@triton.jit
def _bwd_delta_kernel(
    O, DO, DELTA, CU_Q,
    stride_ob, stride_ot, stride_oh,
    stride_dob, stride_dot, stride_doh,
    stride_lb, stride_lh,
    seqlen_q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    # delta_i = sum_d O_id dO_id = sum_j P_ij dP_ij, the softmax-backward row term, in fp32.
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, len_q = _sample_bounds(CU_Q, b, seqlen_q, IS_VARLEN)
    if pid_m * BLOCK_M >= len_q:
        return
    b64, h64, qs64 = b.to(tl.int64), h.to(tl.int64), q_start.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < len_q
    o_ptrs = O + b64 * stride_ob + qs64 * stride_ot + h64 * stride_oh
    do_ptrs = DO + b64 * stride_dob + qs64 * stride_dot + h64 * stride_doh
    o = tl.load(o_ptrs + offs_m[:, None] * stride_ot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptrs + offs_m[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b64 * stride_lb + h64 * stride_lh + qs64 + offs_m, delta, mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dkb, stride_dkt, stride_dkh,
    stride_dvb, stride_dvt, stride_dvh,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k, qk_scale, sm_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    # One program owns a block of keys of one KV head and sums dk/dv over every query head of its group.
    pid_n, kvh, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, len_q = _sample_bounds(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sample_bounds(CU_K, b, seqlen_k, IS_VARLEN)
    if pid_n * BLOCK_N >= len_k:
        return
    b64, kvh64, qs64, ks64 = b.to(tl.int64), kvh.to(tl.int64), q_start.to(tl.int64), k_start.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < len_k
    k_ptrs = K + b64 * stride_kb + ks64 * stride_kt + kvh64 * stride_kh
    v_ptrs = V + b64 * stride_vb + ks64 * stride_vt + kvh64 * stride_vh
    k = tl.load(k_ptrs + offs_n[:, None] * stride_kt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(v_ptrs + offs_n[:, None] * stride_vt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    diag = len_k - len_q
    lo = 0
    if CAUSAL:  # the first query that sees this key block, rounded down to a block start
        lo = (tl.maximum(pid_n * BLOCK_N - diag, 0) // BLOCK_M) * BLOCK_M
    for g in range(GROUP):
        h64 = kvh64 * GROUP + g
        q_ptrs = Q + b64 * stride_qb + qs64 * stride_qt + h64 * stride_qh
        do_ptrs = DO + b64 * stride_dob + qs64 * stride_dot + h64 * stride_doh
        row_ptrs = b64 * stride_lb + h64 * stride_lh + qs64
        for start_m in range(lo, len_q, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < len_q
            q = tl.load(q_ptrs + rows[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            do = tl.load(
                do_ptrs + rows[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0
            )
            lse = tl.load(LSE + row_ptrs + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + row_ptrs + rows, mask=row_ok, other=0.0)
            qkt = _dot(k, tl.trans(q), PRECISION, UPCAST) * qk_scale  # (N, M)
            keep = col_ok[:, None] & row_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[:, None] <= rows[None, :] + diag)
            pt = tl.math.exp2(tl.where(keep, qkt - lse[None, :], float("-inf")))
            dv += _dot(pt.to(do.dtype), do, PRECISION, UPCAST)
            dpt = _dot(v, tl.trans(do), PRECISION, UPCAST)  # (N, M)
            dst = pt * (dpt - delta[None, :])
            dk += _dot(dst.to(q.dtype), q, PRECISION, UPCAST)

    dk_ptrs = DK + b64 * stride_dkb + ks64 * stride_dkt + kvh64 * stride_dkh
    dv_ptrs = DV + b64 * stride_dvb + ks64 * stride_dvt + kvh64 * stride_dvh
    dk = dk * sm_scale
    tl.store(
        dk_ptrs + offs_n[:, None] * stride_dkt + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=col_ok[:, None],
    )
    tl.store(
        dv_ptrs + offs_n[:, None] * stride_dvt + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=col_ok[:, None],
    )


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dqb, stride_dqt, stride_dqh,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k, qk_scale, sm_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, len_q = _sample_bounds(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sample_bounds(CU_K, b, seqlen_k, IS_VARLEN)
    if pid_m * BLOCK_M >= len_q:
        return
    b64, h64, kvh64 = b.to(tl.int64), h.to(tl.int64), (h // GROUP).to(tl.int64)
    qs64, ks64 = q_start.to(tl.int64), k_start.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < len_q
    q_ptrs = Q + b64 * stride_qb + qs64 * stride_qt + h64 * stride_qh
    do_ptrs = DO + b64 * stride_dob + qs64 * stride_dot + h64 * stride_doh
    k_ptrs = K + b64 * stride_kb + ks64 * stride_kt + kvh64 * stride_kh
    v_ptrs = V + b64 * stride_vb + ks64 * stride_vt + kvh64 * stride_vh
    q = tl.load(q_ptrs + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptrs + offs_m[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    row_ptrs = b64 * stride_lb + h64 * stride_lh + qs64
    lse = tl.load(LSE + row_ptrs + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_ptrs + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    diag = len_k - len_q
    hi = len_k
    if CAUSAL:
        hi = tl.minimum(len_k, (pid_m + 1) * BLOCK_M + diag)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < len_k
        k = tl.load(k_ptrs + cols[:, None] * stride_kt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(v_ptrs + cols[:, None] * stride_vt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        qk = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # (M, N)
        keep = row_ok[:, None] & col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
        p = tl.math.exp2(tl.where(keep, qk - lse[:, None], float("-inf")))
        dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST)

    dq_ptrs = DQ + b64 * stride_dqb + qs64 * stride_dqt + h64 * stride_dqh
    dq = dq * sm_scale
    tl.store(
        dq_ptrs + offs_m[:, None] * stride_dqt + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=row_ok[:, None],
    )


# Tiles per kernel on GPU (16-bit inputs), measured on an H200 at head dim 128, bf16, causal, 4096
# tokens with benchmarks/attention_tune.py: each beat the previous one-size 64x64 tiles by 1.2x (fwd),
# 1.4x (dkdv) and 1.3x (dq).
GPU_TILES: dict[str, dict] = {
    "fwd": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "dkdv": {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "dq": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
}
# benchmarks/attention_tune.py times candidates by setting entries here, keyed like GPU_TILES.
TILE_OVERRIDES: dict[str, dict] = {}


def _launch_config(dtype: torch.dtype, kernel: str) -> dict:
    """Block sizes and warps of `kernel` ("fwd", "dkdv", "dq"): large blocks under the interpreter,
    GPU_TILES on GPU (smaller tiles for fp32, which needs twice the shared memory per tile)."""
    if is_interpreted():
        return {"BLOCK_M": INTERPRET_BLOCK, "BLOCK_N": INTERPRET_BLOCK, "num_warps": 4, "num_stages": 1}
    if kernel in TILE_OVERRIDES:
        return dict(TILE_OVERRIDES[kernel])
    if dtype == torch.float32:
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    return dict(GPU_TILES[kernel])


def _strides(x: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, token, head) strides; the batch stride is 0 for a packed (1, total, H, D) tensor."""
    return (0 if varlen else x.stride(0)), x.stride(1), x.stride(2)


def _lse_strides(lse: torch.Tensor, varlen: bool) -> tuple[int, int]:
    return (0 if varlen else lse.stride(0)), lse.stride(1)


class _Problem:
    """Shapes and launch grid shared by the forward and backward launchers."""

    def __init__(self, q, k, causal, softmax_scale, cu_q, cu_k, max_q, max_k):
        self.varlen = cu_q is not None
        self.causal = causal
        self.batch = cu_q.numel() - 1 if self.varlen else q.shape[0]
        self.hq, self.hkv, self.head_dim = q.shape[2], k.shape[2], q.shape[3]
        self.seqlen_q = max_q if self.varlen else q.shape[1]
        self.seqlen_k = max_k if self.varlen else k.shape[1]
        self.sm_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.qk_scale = self.sm_scale * _LOG2E
        self.cu_q, self.cu_k = cu_q, cu_k
        # fp32 stays exact fp32 (no TF32); 16-bit dots take the default fp32-accumulate path.
        self.precision = "ieee" if q.dtype == torch.float32 else None
        self.upcast = q.dtype == torch.bfloat16 and is_interpreted()

    def cu(self, placeholder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Dense launches never read CU_*, but need some pointer there.
        return (self.cu_q, self.cu_k) if self.varlen else (placeholder, placeholder)

    def consts(self, cfg: dict) -> dict:
        return dict(
            GROUP=self.hq // self.hkv,
            HEAD_DIM=self.head_dim,
            CAUSAL=self.causal,
            IS_VARLEN=self.varlen,
            PRECISION=self.precision,
            UPCAST=self.upcast,
            **cfg,
        )


def _forward(q, k, v, prob: _Problem) -> tuple[torch.Tensor, torch.Tensor]:
    alloc = torch.zeros if prob.varlen else torch.empty  # packed rows past cu[-1] are never written
    o = alloc(q.shape, dtype=q.dtype, device=q.device)  # (B, Tq, Hq, D), contiguous
    lse = torch.empty(q.shape[0], prob.hq, q.shape[1], dtype=torch.float32, device=q.device)
    cfg = _launch_config(q.dtype, "fwd")
    grid = (triton.cdiv(prob.seqlen_q, cfg["BLOCK_M"]), prob.hq, prob.batch)
    _fwd_kernel[grid](
        q, k, v, o, lse, *prob.cu(lse),
        *_strides(q, prob.varlen), *_strides(k, prob.varlen), *_strides(v, prob.varlen),
        *_strides(o, prob.varlen), *_lse_strides(lse, prob.varlen),
        prob.seqlen_q, prob.seqlen_k, prob.qk_scale,
        **prob.consts(cfg),
    )  # fmt: skip
    return o, lse


def _backward(q, k, v, o, lse, do, prob: _Problem):
    v_ = prob.varlen
    alloc = torch.zeros if v_ else torch.empty
    dq = alloc(q.shape, dtype=q.dtype, device=q.device)
    dk = alloc(k.shape, dtype=k.dtype, device=k.device)
    dv = alloc(v.shape, dtype=v.dtype, device=v.device)
    delta = torch.empty_like(lse)
    cfg_kv = _launch_config(q.dtype, "dkdv")
    cfg_q = _launch_config(q.dtype, "dq")
    m_blocks = triton.cdiv(prob.seqlen_q, cfg_q["BLOCK_M"])
    _bwd_delta_kernel[(m_blocks, prob.hq, prob.batch)](
        o, do, delta, prob.cu(lse)[0],
        *_strides(o, v_), *_strides(do, v_), *_lse_strides(lse, v_),
        prob.seqlen_q, HEAD_DIM=prob.head_dim, BLOCK_M=cfg_q["BLOCK_M"], IS_VARLEN=v_,
    )  # fmt: skip
    _bwd_dkdv_kernel[(triton.cdiv(prob.seqlen_k, cfg_kv["BLOCK_N"]), prob.hkv, prob.batch)](
        q, k, v, do, lse, delta, dk, dv, *prob.cu(lse),
        *_strides(q, v_), *_strides(k, v_), *_strides(v, v_), *_strides(do, v_),
        *_strides(dk, v_), *_strides(dv, v_), *_lse_strides(lse, v_),
        prob.seqlen_q, prob.seqlen_k, prob.qk_scale, prob.sm_scale,
        **prob.consts(cfg_kv),
    )  # fmt: skip
    _bwd_dq_kernel[(m_blocks, prob.hq, prob.batch)](
        q, k, v, do, lse, delta, dq, *prob.cu(lse),
        *_strides(q, v_), *_strides(k, v_), *_strides(v, v_), *_strides(do, v_),
        *_strides(dq, v_), *_lse_strides(lse, v_),
        prob.seqlen_q, prob.seqlen_k, prob.qk_scale, prob.sm_scale,
        **prob.consts(cfg_q),
    )  # fmt: skip
    return dq, dk, dv


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(f"gqa_attention: {msg}")


def _check_inputs(q, k, v, cu_q, cu_k, max_q, max_k) -> None:
    _check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, "q, k, v must be 4-D (B, T, H, D)")
    _check(k.shape == v.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    _check(q.shape[0] == k.shape[0] and q.shape[3] == k.shape[3], "q and k differ in batch or head dim")
    _check(q.shape[2] % k.shape[2] == 0, f"{q.shape[2]} query heads not a multiple of {k.shape[2]} KV heads")
    _check(q.shape[3] in SUPPORTED_HEAD_DIMS, f"head dim {q.shape[3]} not in {SUPPORTED_HEAD_DIMS}")
    _check(q.dtype in SUPPORTED_DTYPES, f"dtype {q.dtype} not in {SUPPORTED_DTYPES}")
    _check(q.dtype == k.dtype == v.dtype, "q, k, v dtypes differ")
    _check(q.device == k.device == v.device, "q, k, v devices differ")
    _check(all(x.stride(-1) == 1 for x in (q, k, v)), "the head dim must be contiguous")
    _check(
        q.is_cuda or (q.device.type == "cpu" and is_interpreted()),
        "needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before importing gqa_triton",
    )
    if cu_q is not None:
        _check(q.shape[0] == 1, "packed input must be (1, total, H, D)")
        for cu, mx in ((cu_q, max_q), (cu_k, max_k)):
            _check(
                cu.dtype == torch.int32 and cu.dim() == 1 and cu.numel() >= 2,
                "cu_seqlens must be int32 (N+1,)",
            )
            _check(cu.device == q.device, "cu_seqlens must live on q's device")
            _check(mx is not None, "max_seqlen is required with cu_seqlens")
        _check(cu_q.numel() == cu_k.numel(), "cu_seqlens and cu_seqlens_k hold different sample counts")


class _GQAAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, softmax_scale, cu_q, cu_k, max_q, max_k):
        _check_inputs(q, k, v, cu_q, cu_k, max_q, max_k)
        prob = _Problem(q, k, causal, softmax_scale, cu_q, cu_k, max_q, max_k)
        o, lse = _forward(q, k, v, prob)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.prob = prob
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        if do.stride(-1) != 1:
            do = do.contiguous()
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.prob)
        return dq, dk, dv, None, None, None, None, None, None


def gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    softmax_scale: float | None = None,
    *,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_k: int | None = None,
) -> torch.Tensor:
    """Grouped-query attention with the Triton kernels; differentiable in q, k and v.

    q: (B, Tq, Hq, D); k, v: (B, Tk, Hkv, D) with Hq % Hkv == 0, D in SUPPORTED_HEAD_DIMS.
    Packed: q (1, total_q, Hq, D), k/v (1, total_k, Hkv, D), `cu_seqlens` int32 (N+1,) for the
    queries and, when keys are laid out differently (a decode step over a cache), `cu_seqlens_k`.
    `max_seqlen` (longest sample) is computed with one host sync when omitted.
    softmax_scale defaults to D ** -0.5. Returns (B, Tq, Hq, D) contiguous, in q's dtype.
    """
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32)
        cu_seqlens_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k.to(torch.int32)
        if max_seqlen is None:
            max_seqlen = max_seqlen_from_cu_seqlens(cu_seqlens)
        if max_seqlen_k is None:
            max_seqlen_k = (
                max_seqlen if cu_seqlens_k is cu_seqlens else max_seqlen_from_cu_seqlens(cu_seqlens_k)
            )
    return _GQAAttention.apply(
        q, k, v, causal, softmax_scale, cu_seqlens, cu_seqlens_k, max_seqlen, max_seqlen_k
    )
