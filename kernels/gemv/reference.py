"""fp32 torch reference, cost model and tolerances of the few-token projection.

Legend: M rows (tokens), K input features, N output features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.gemv.config import GemvConfig, GemvShape


@torch.no_grad()
def gemv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` in float32 from the (already rounded) inputs.

    Args:
        x: ``[M, K]``; weight: ``[N, K]``; bias: ``[N]`` or None (any float dtypes).

    Returns:
        ``[M, N]`` float32.
    """
    out = x.float() @ weight.float().T
    return out + bias.float() if bias is not None else out


@dataclass(frozen=True)
class Cost:
    """Work of one call: ``flops`` (multiply-adds count 2) and ``bytes`` (the fewest that must move)."""

    flops: float
    bytes: float


def cost(shape: GemvShape, w_bytes: int, act_bytes: int, bias_bytes: int) -> Cost:
    """FLOPs and the fewest bytes of one call: ``2·M·N·K`` FLOPs; W, x, the bias and the output once (the split-K
    partial sums are the kernel's choice, not needed work).

    Args:
        shape: the problem size.
        w_bytes: bytes per weight element (2 for bf16).
        act_bytes: bytes per x and output element.
        bias_bytes: bytes per bias element (0 without a bias).

    Returns:
        The :class:`Cost`.
    """
    m, n, k = shape.M, shape.N, shape.K
    return Cost(flops=2.0 * m * n * k, bytes=float(n * k * w_bytes + m * k * act_bytes + m * n * act_bytes
                                                   + n * bias_bytes))


@dataclass(frozen=True)
class Tolerance:
    """Accepted error against the fp32 reference, and why.

    Attributes:
        max_rel_err: largest row-wise relative error ``max_r ‖out_r − ref_r‖ / ‖ref_r‖`` (a row: one token's N
            outputs).
        max_elem_err: largest element error relative to its row's RMS, ``max |out − ref| / rms(ref_r)``; catches an
            error confined to a few features (one program's tile) that the row norm dilutes.
        reason: where the numbers come from.
    """

    max_rel_err: float
    max_elem_err: float
    reason: str


_UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def tolerance(variant: str, dtype: torch.dtype, config: GemvConfig | None = None) -> Tolerance:
    """Accepted error of the kernel against the fp32 reference (every variant and config alike).

    The kernel multiplies and adds in fp32 (no ``tl.dot``, so no tf32) and rounds the output once to the activation
    dtype. bf16/fp16: the rounding errs by at most u·|out| (unit roundoff u), about u/√3 RMS per row; element-wise
    at most u·max|ref_r|/rms(ref_r), ~4u for the ~N(0, 1) outputs of the tuning inputs at N = 5120 (the maximum of
    5120 normal values is ~3.9σ). Limits 2u per row and 8u per element. fp32 output: only the summation order
    differs from the reference; random rounding errors grow like √K·2^-24 (~4e-6 relative at K = 4096; the worst
    case K·2^-24 = 2.4e-4 needs every error to point the same way, which random inputs do not give). Limits 1e-5 per
    row and 1e-4 per element, as for the MoE GEMM's fp32 output. A dropped bias or one wrong feature tile errs by
    O(1) of the row RMS, far above both.

    Args:
        variant: "qkv", "attn_out" or "router".
        dtype: activation dtype (x, W, output).
        config: the launch config (the uniform interface passes it; the limits do not depend on it).

    Returns:
        The :class:`Tolerance`.
    """
    if dtype == torch.float32:
        return Tolerance(1e-5, 1e-4, "float32 output; error from summation order only")
    unit = _UNIT_ROUNDOFF[dtype]
    return Tolerance(2 * unit, 8 * unit, f"{dtype} rounding of the output (unit roundoff {unit:.2e})")
