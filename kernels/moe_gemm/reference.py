"""fp32 torch reference, cost model and tolerances of the MXFP4 MoE GEMM.

Legend: T tokens, R = T·k routed rows sorted by expert, E experts, N output features, K input features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.moe_gemm.config import MoeGemmConfig, MoeShape
from kernels.moe_gemm.launch import SWIGLU_ALPHA, SWIGLU_LIMIT
from kernels.moe_routing import Routing
from kernels.mxfp4 import dequantize


def swiglu_reference(h: torch.Tensor, alpha: float = SWIGLU_ALPHA, limit: float = SWIGLU_LIMIT) -> torch.Tensor:
    """gpt-oss SwiGLU on interleaved columns (openai/gpt-oss ``gpt_oss/torch/model.py``, ``swiglu``).

    Args:
        h: ``[..., 2C]``; ``h[..., ::2]`` is the gate, ``h[..., 1::2]`` the linear half.

    Returns:
        ``[..., C]`` = ``min(g, L) · sigmoid(alpha · min(g, L)) · (clamp(l, -L, L) + 1)``.
    """
    gate = h[..., ::2].clamp(max=limit)
    lin = h[..., 1::2].clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (lin + 1.0)


def _expert_rows(routing: Routing) -> list[tuple[int, torch.Tensor]]:
    """(expert, sorted-row indices) for every expert with rows, from ``row_expert`` (not from the offsets)."""
    experts = torch.unique(routing.row_expert).tolist()
    return [(e, torch.nonzero(routing.row_expert == e).squeeze(1)) for e in experts]


def swiglu_sensitivity(h: torch.Tensor, alpha: float = SWIGLU_ALPHA, limit: float = SWIGLU_LIMIT) -> torch.Tensor:
    """First-order change of :func:`swiglu_reference` when each input moves by its own magnitude.

    ``|g · ∂y/∂g| + |l · ∂y/∂l|`` per output, from ``y = g·σ(αg)·(l + 1)`` on the clamped inputs (a clamped input
    has no derivative). Times the unit roundoff u it bounds what rounding ``h`` to a dtype of roundoff u does to y:
    where ``l ≈ −1`` the output is near 0 but still moves by about ``u·|g·σ(αg)|``.

    Args:
        h: ``[..., 2C]`` float32, gate and linear interleaved as in :func:`swiglu_reference`.

    Returns:
        ``[..., C]`` float32, ≥ 0.
    """
    gate, lin = h[..., ::2], h[..., 1::2]
    g = gate.clamp(max=limit)
    lc = lin.clamp(min=-limit, max=limit)
    sig = torch.sigmoid(alpha * g)
    d_gate = torch.where(gate < limit, sig * (1.0 + alpha * g * (1.0 - sig)) * (lc + 1.0), 0.0)
    d_lin = torch.where(lin.abs() < limit, g * sig, 0.0)
    return (gate * d_gate).abs() + (lin * d_lin).abs()


def _mlp1_preactivations(x: torch.Tensor, routing: Routing, w_blocks: torch.Tensor, w_scales: torch.Tensor,
                         bias: torch.Tensor):
    """Yield ``(rows, h)`` per expert with rows: ``h = x[row_token[rows]] @ W1[e]^T + b1[e]``, ``[rows, N]`` fp32."""
    for expert, rows in _expert_rows(routing):
        w = dequantize(w_blocks[expert], w_scales[expert])  # [N, K] fp32
        yield rows, torch.matmul(x[routing.row_token[rows].long()].float(), w.T) + bias[expert].float()


@torch.no_grad()
def mlp1_reference(x: torch.Tensor, routing: Routing, w_blocks: torch.Tensor, w_scales: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """fp32 mlp1: ``swiglu(x[row_token[r]] @ W1[e]^T + b1[e])`` for each sorted row r of expert e.

    Args:
        x: ``[T, K]``; w_blocks ``[E, N, K/32, 16]`` uint8; w_scales ``[E, N, K/32]`` uint8; bias ``[E, N]``.

    Returns:
        ``[R, N/2]`` float32.
    """
    n = w_blocks.shape[1]
    out = torch.zeros((routing.num_rows, n // 2), dtype=torch.float32, device=x.device)
    for rows, h in _mlp1_preactivations(x, routing, w_blocks, w_scales, bias):
        out[rows] = swiglu_reference(h)
    return out


@torch.no_grad()
def mlp1_stored_h_sensitivity(x: torch.Tensor, routing: Routing, w_blocks: torch.Tensor, w_scales: torch.Tensor,
                              bias: torch.Tensor) -> torch.Tensor:
    """:func:`swiglu_sensitivity` of every mlp1 output: what an output element's error is measured against, on top of
    its row's RMS, when ``h`` is stored in the activation dtype before the SwiGLU (``fuse_swiglu=False``,
    ``SPLIT_K = 1``).

    The row RMS alone (the fused check) fails correct kernels there: h's rounding passes through the SwiGLU, and where
    ``l ≈ −1`` an output near 0 moves by ``u·|g·σ(αg)|``. Measured with the unfused gemv under the Triton interpreter
    (fp16, 100 seeds of 8 tokens × 256 outputs): up to 17.5u of the row RMS, 1.34u against RMS + sensitivity
    (``tests/test_kernel_moe_gemm.py::test_unfused_stored_h_passes_the_tuners_element_check`` keeps two such cases,
    8.7u and 12.1u at one token); four mlp1 trials in the H200 tuning logs of 2026-12-03/04 failed just above the
    8u limit (8.0–8.6u, bf16; their configs are not logged).

    Args:
        as :func:`mlp1_reference`.

    Returns:
        ``[R, N/2]`` float32, ≥ 0.
    """
    n = w_blocks.shape[1]
    out = torch.zeros((routing.num_rows, n // 2), dtype=torch.float32, device=x.device)
    for rows, h in _mlp1_preactivations(x, routing, w_blocks, w_scales, bias):
        out[rows] = swiglu_sensitivity(h)
    return out


@torch.no_grad()
def mlp2_reference(a: torch.Tensor, routing: Routing, w_blocks: torch.Tensor, w_scales: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """fp32 mlp2 with the top-k combine: ``out[t] = Σ_r→t row_gate[r] (a[r] @ W2[e]^T + b2[e])``.

    Args:
        a: ``[R, K]`` in sorted-row order; weights as in :func:`mlp1_reference`.

    Returns:
        ``[T, N]`` float32.
    """
    n = w_blocks.shape[1]
    out = torch.zeros((routing.num_tokens, n), dtype=torch.float32, device=a.device)
    for expert, rows in _expert_rows(routing):
        w = dequantize(w_blocks[expert], w_scales[expert])  # [N, K] fp32
        y = torch.matmul(a[rows].float(), w.T) + bias[expert].float()  # [rows, N]
        out.index_add_(0, routing.row_token[rows].long(), y * routing.row_gate[rows, None])
    return out


@dataclass(frozen=True)
class Cost:
    """Work of one call: ``flops`` (multiply-adds count 2) and ``bytes`` (the fewest that must move)."""

    flops: float
    bytes: float


def cost(variant: str, shape: MoeShape, experts_hit: float, act_bytes: int, bias_bytes: int) -> Cost:
    """FLOPs and the fewest bytes of one MoE GEMM call.

    Bytes count each input once and each output once: the weights, scales and biases of the experts actually hit,
    the activations (mlp1 reads each token once however many rows gather it), the outputs and the routing arrays.

    Args:
        variant: "mlp1" or "mlp2".
        shape: the problem size.
        experts_hit: distinct experts with at least one row (mean over the timed input sets).
        act_bytes: bytes per activation element (2 for bf16/fp16).
        bias_bytes: bytes per bias element.

    Returns:
        The :class:`Cost`.
    """
    rows, n, k = shape.rows, shape.N, shape.K
    flops = 2.0 * rows * n * k
    weight_bytes = experts_hit * n * (k // 2 + k // 32 + bias_bytes)  # e2m1 + e8m0 + bias
    routing_bytes = rows * 4 * 2 + (shape.E + 1) * 4
    if variant == "mlp1":
        act = shape.M * k * act_bytes + rows * (n // 2) * act_bytes
    else:
        act = rows * k * act_bytes + shape.M * n * 4
    return Cost(flops=flops, bytes=weight_bytes + act + routing_bytes)


@dataclass(frozen=True)
class Tolerance:
    """Accepted error against the fp32 reference, and why.

    Attributes:
        max_rel_err: largest row-wise relative error ``max_r ‖out_r − ref_r‖ / ‖ref_r‖``.
        max_elem_err: largest element error relative to its row's RMS, ``max |out − ref| / rms(ref_r)`` (plus the
            element's :func:`mlp1_stored_h_sensitivity` where h is stored); catches an error confined to a few
            columns (one bad tile) that the row norm dilutes.
        reason: where the numbers come from.
    """

    max_rel_err: float
    max_elem_err: float
    reason: str


_UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def tolerance(variant: str, dtype: torch.dtype, config: MoeGemmConfig | None = None) -> Tolerance:
    """Accepted error of the kernel against the fp32 reference, per variant and activation dtype.

    The weights decode exactly and the reference sees the same rounded activations, so the error comes from the fp32
    accumulation order (~1e-7 relative) and, for mlp1, from rounding its output (and, unfused, h) to the activation
    dtype: row-wise about u/√3 for unit roundoff u, elementwise at most u·max|ref_r|/rms(ref_r) ≈ 4u (unfused with a
    stored h, of the row RMS plus the element's SwiGLU sensitivity: :func:`mlp1_stored_h_sensitivity`). Measured on the
    H100 (2026-11-21, ~600 trials of the gpt_oss_20b preset, bf16): mlp1 row error ≤ 1.81e-3 fused, ≤ 2.82e-3 unfused
    (0.72u); mlp2 ≤ 7.9e-7. Limits: mlp1 3u per row and 8u per element; mlp2 1e-5 per row and 1e-4 per element. A
    doubled scale byte across one 64-column tile at gpt-oss sizes gives ~1e-2 per row but 0.1–0.4 per element, so the
    element limit is what catches a tile-local bug. fp32 activations: 1e-3 / 1e-2, since ``tl.dot`` on GPUs rounds
    fp32 operands to tf32 (10-bit mantissa).

    Args:
        variant: "mlp1" or "mlp2".
        dtype: activation dtype.
        config: the launch config (the uniform interface passes it; the MoE limits do not depend on it).

    Returns:
        The :class:`Tolerance`.
    """
    unit = _UNIT_ROUNDOFF[dtype]
    if dtype == torch.float32:
        return Tolerance(1e-3, 1e-2, "fp32 operands: tl.dot rounds them to tf32 on GPUs")
    if variant == "mlp1":
        return Tolerance(3 * unit, 8 * unit,
                         f"{dtype} output rounding (unit roundoff {unit:.2e}) of h and of the SwiGLU output")
    return Tolerance(1e-5, 1e-4, "float32 output; error from accumulation order only (measured <= 7.9e-7 per row)")
