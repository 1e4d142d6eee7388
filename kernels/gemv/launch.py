"""Launchers of the few-token dense projection ``out = x @ W.T + b``: one Triton launch streaming W once (two with
split-K).

At batch-1 decode gpt-oss's qkv, out and router projections are matrix-vector products. cuBLAS picks split-K
kernels plus a separate reduce for them; on the lent H100 (2026-11-21, torch 2.11, CUDA graphs, weights rotated
out of L2) they ran at 1.96 TB/s (qkv, 29.5 MB), 1.57 TB/s (out, 23.6 MB) and 7.0 µs for the 184 kB router, against
3.0 TB/s measured copy bandwidth (scripts/results/2026-11-21-h100-gemv-sweep.md). Here every program owns
BLOCK_N output features and walks K (or one of SPLIT_K slices of it) once, accumulating ``x · W`` elementwise in
float32 and reducing at the end.

Legend: M rows (tokens), K input features, N output features, S = SPLIT_K.
"""

from __future__ import annotations

import torch
import triton

from kernels.gemv.config import MAX_ROWS, GemvConfig
from kernels.gemv.triton_kernels import gemv_kernel, gemv_reduce_kernel
from kernels.launch_plan import KernelLaunch

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

REDUCE_BLOCK = 256
"""Features per program of the split-K reduction (not tuned: it reads S·M·N fp32 values, 16 kB for the router at
S = 16 and M = 4, next to the 184 kB of W)."""

REDUCE_WARPS = 4


def gemv_launches(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: GemvConfig, *,
                  out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Check, allocate and plan :func:`gemv` without running it (arguments as there).

    Returns:
        ``(out, launches)``: the ``[M, N]`` output (unwritten until the launches run) and the planned launches
        (none for M = 0 or N = 0; the split-K partial sums ``[S, M, N]`` fp32 are allocated here).
    """
    if not isinstance(config, GemvConfig):
        raise TypeError(f"config must be a GemvConfig, got {type(config).__name__}")
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
    split = config.SPLIT_K
    # every slice starts on a BLOCK_K boundary; slices past K (a SPLIT_K the search space prunes) add zeros
    k_per_split = triton.cdiv(max(1, triton.cdiv(k, config.BLOCK_K)), split) * config.BLOCK_K
    part = torch.empty(split, rows, n, dtype=torch.float32, device=x.device) if split > 1 else out
    b = bias if bias is not None else weight
    grid = (triton.cdiv(n, config.BLOCK_N), rows, split)
    args = (x, weight, b, out, part, rows, n, k, k_per_split, x.stride(0), weight.stride(0), out.stride(0))
    kwargs = {"HAS_BIAS": bias is not None, "BLOCK_N": config.BLOCK_N, "BLOCK_K": config.BLOCK_K, "SPLIT_K": split,
              "num_warps": config.num_warps, "num_stages": config.num_stages}
    plan = [KernelLaunch(gemv_kernel, grid, args, kwargs)]
    if split > 1:
        plan.append(KernelLaunch(gemv_reduce_kernel, (triton.cdiv(n, REDUCE_BLOCK), rows),
                                 (part, b, out, rows, n, out.stride(0)),
                                 {"HAS_BIAS": bias is not None, "SPLIT_K": split, "BLOCK": REDUCE_BLOCK,
                                  "num_warps": REDUCE_WARPS}))
    return out, plan


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: GemvConfig, *,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for up to :data:`MAX_ROWS` rows (``torch.nn.functional.linear``'s contract).

    Args:
        x: ``[M, K]`` bf16/fp16/fp32, M <= :data:`MAX_ROWS`, last dim contiguous.
        weight: ``[N, K]`` bf16/fp16/fp32, last dim contiguous.
        bias: ``[N]`` contiguous, or None.
        config: the launch config (a table entry or :func:`kernels.gemv.heuristics.default_config`).
        out: optional ``[M, N]`` destination (last dim contiguous); default a new tensor of x's dtype.

    Returns:
        ``[M, N]`` in out's dtype: the float32 sum over K (in BLOCK_K-wide partial sums, per K slice with split-K)
        plus the bias, rounded once.

    Raises:
        TypeError: a dtype outside the above, or config not a :class:`GemvConfig`. ValueError: mismatched shapes,
        M > MAX_ROWS, non-contiguous rows.
    """
    out, plan = gemv_launches(x, weight, bias, config, out=out)
    for item in plan:
        item.run()
    return out
