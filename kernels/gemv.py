"""Dense projections of a few tokens (decode): ``out = x @ W.T + b`` as one Triton launch streaming W once.

At batch-1 decode gpt-oss's qkv, out and router projections are matrix-vector products. cuBLAS picks split-K
kernels plus a separate reduce for them; on the lent H100 (2026-11-21, torch 2.11, CUDA graphs, weights rotated
out of L2) they ran at 1.96 TB/s (qkv, 29.5 MB), 1.57 TB/s (out, 23.6 MB) and 7.0 µs for the 184 kB router, against
3.0 TB/s measured copy bandwidth (scripts/results/2026-11-21-h100-gemv-sweep.md). Here every program owns
BLOCK_N output features and walks K once, accumulating ``x · W`` elementwise in float32 and reducing at the end.

Legend: M rows (tokens), K input features, N output features.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch_plan import KernelLaunch

MAX_ROWS = 4
"""Largest M served: each row's program re-reads W (from L2 when the rows run together), so beyond a few rows a
tensor-core GEMM wins."""

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def gemv_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, K, stride_xm, stride_wn, stride_om,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One program: rows ``pid_n·BLOCK_N ..`` of W against row ``pid_m`` of x."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    x_row = x_ptr + pid_m * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x = tl.load(x_row + offs_k, mask=k_mask, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid_m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=n_mask)


def block_sizes(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for an ``[N, K]`` weight.

    From a sweep on the lent H100 (2026-11-21, Triton 3.6, bf16, batch 1, CUDA graphs, weights rotated out of L2;
    BLOCK_N 1-32 x BLOCK_K 128-1024 x 1-8 warps): 2 x 1024 with 4 warps led for qkv [5120, 2880] (14.3 µs, cuBLAS
    15.0) and out [2880, 4096] (11.6 µs, cuBLAS 15.7); one feature per program with 8 warps for the router [32, 2880]
    (2.7 µs, cuBLAS 7.0); scripts/results/2026-11-21-h100-gemv-sweep.md. BLOCK_K = 1024 bf16 elements = 2 kB
    contiguous per weight row and step.
    """
    block_k = min(1024, max(16, triton.next_power_of_2(k)))
    if n >= 1024:
        return 2, block_k, 4
    return 1, block_k, 8


def gemv_launches(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                  out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Check, allocate and plan :func:`gemv` without running it."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be a {_DTYPES} tensor, got {getattr(t, 'dtype', type(t))}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x [M, K] and weight [N, K] do not match: {tuple(x.shape)} and {tuple(weight.shape)}")
    rows, k = x.shape
    n = weight.shape[0]
    if rows > MAX_ROWS:
        raise ValueError(f"gemv serves at most {MAX_ROWS} rows, got {rows}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("x and weight need a contiguous last dimension")
    if bias is not None and (bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous [{n}] tensor, got {tuple(bias.shape)}")
    if out is None:
        out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    elif out.shape != (rows, n) or out.stride(1) != 1:
        raise ValueError(f"out must be [{rows}, {n}] with a contiguous last dimension, got {tuple(out.shape)}")
    if rows == 0 or n == 0:
        return out, []
    block_n, block_k, warps = block_sizes(n, k)
    grid = (triton.cdiv(n, block_n), rows)
    args = (x, weight, bias if bias is not None else weight, out, n, k, x.stride(0), weight.stride(0), out.stride(0))
    kwargs = dict(HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return out, [KernelLaunch(gemv_kernel, grid, args, kwargs)]


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for up to :data:`MAX_ROWS` rows (``torch.nn.functional.linear``'s contract).

    Args:
        x: ``[M, K]`` bf16/fp16/fp32, M <= :data:`MAX_ROWS`, last dim contiguous.
        weight: ``[N, K]`` bf16/fp16/fp32, last dim contiguous.
        bias: optional ``[N]`` contiguous.
        out: optional ``[M, N]`` destination (last dim contiguous); default a new tensor of x's dtype.

    Returns:
        ``[M, N]`` in out's dtype: the float32 sum over K (in BLOCK_K-wide partial sums) plus the bias, rounded once.

    Raises:
        TypeError: a dtype outside the above. ValueError: mismatched shapes, M > MAX_ROWS, non-contiguous rows.
    """
    out, plan = gemv_launches(x, weight, bias, out=out)
    for item in plan:
        item.run()
    return out
