"""Triton kernels of the few-token projection: the streaming GEMV and the split-K reduction.

Legend: M rows (tokens), K input features, N output features, S = SPLIT_K slices of K.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gemv_kernel(x_ptr, w_ptr, b_ptr, out_ptr, part_ptr, M, N, K, K_PER_SPLIT, stride_xm, stride_wn, stride_om,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """One program: features ``pid_n·BLOCK_N ..`` of row ``pid_m`` over K slice ``pid_s`` (``K_PER_SPLIT``
    elements, a multiple of BLOCK_K).

    x ``[M, K]``, W ``[N, K]`` (last dims contiguous), bias ``[N]``; SPLIT_K == 1 writes ``out [M, N]`` (bias
    added, rounded once to out's dtype), SPLIT_K > 1 writes the fp32 partial sum to ``part [S, M, N]``.
    """
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn                     # [BLOCK_N, 1] row starts
    x_row = x_ptr + pid_m * stride_xm
    k_start = pid_s * K_PER_SPLIT
    k_end = tl.minimum(K, k_start + K_PER_SPLIT)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x = tl.load(x_row + offs_k, mask=k_mask, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    out = tl.sum(acc, axis=1)                                                     # [BLOCK_N] fp32
    if SPLIT_K == 1:
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + pid_m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:
        tl.store(part_ptr + (pid_s * M + pid_m) * N + offs_n, out, mask=n_mask)


@triton.jit
def gemv_reduce_kernel(part_ptr, b_ptr, out_ptr, M, N, stride_om, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                       BLOCK: tl.constexpr):
    """One program: features ``pid_n·BLOCK ..`` of row ``pid_m``: the sum over the S fp32 partial sums of
    ``part [S, M, N]`` plus the bias, rounded once into ``out [M, N]``."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_n = pid_n * BLOCK + tl.arange(0, BLOCK)
    n_mask = offs_n < N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + (s * M + pid_m) * N + offs_n, mask=n_mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid_m * stride_om + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)
