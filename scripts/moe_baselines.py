"""torch baselines of the MoE GEMM for the benchmarks: bf16 weights dequantized once, then either
``torch._grouped_mm`` over the expert segments or one ``torch.matmul`` per expert.

Legend: T tokens, R = T·k sorted rows, E experts, N output features, K input features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.moe_gemm import MoeGemmInputs, swiglu_reference
from kernels.mxfp4 import dequantize


def dequantized_weights(inputs: MoeGemmInputs, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``[E, N, K]`` weights in ``dtype`` (done once, outside any timing)."""
    return torch.stack([dequantize(inputs.w_blocks[e], inputs.w_scales[e], dtype) for e in range(inputs.shape.E)])


def _epilogue(variant: str, inputs: MoeGemmInputs, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    routing = inputs.routing
    h = h + inputs.bias[routing.row_expert.long()]  # [R, N]
    if variant == "mlp1":
        return swiglu_reference(h.float()).to(inputs.act.dtype)  # [R, N/2]
    out.zero_()
    return out.index_add_(0, routing.row_token.long(), h.float() * routing.row_gate[:, None])  # [T, N]


def grouped_mm_call(variant: str, inputs: MoeGemmInputs, w: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One call through ``torch._grouped_mm`` (no host sync: CUDA-graph capturable)."""
    routing = inputs.routing
    ends = routing.expert_offsets[1:].contiguous()  # [E] int32 segment ends
    w_t = w.transpose(1, 2)  # [E, K, N] view of [E, N, K]
    out = torch.empty((inputs.shape.M, inputs.shape.N), dtype=torch.float32, device=w.device)

    def call() -> torch.Tensor:
        a = inputs.act[routing.row_token.long()] if variant == "mlp1" else inputs.act  # [R, K]
        return _epilogue(variant, inputs, torch._grouped_mm(a, w_t, offs=ends), out)

    return call


def per_expert_call(variant: str, inputs: MoeGemmInputs, w: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One call as a loop of per-expert matmuls (segment bounds read on the host once, before timing)."""
    routing = inputs.routing
    bounds = routing.expert_offsets.tolist()
    out = torch.empty((inputs.shape.M, inputs.shape.N), dtype=torch.float32, device=w.device)
    h = torch.empty((inputs.shape.rows, inputs.shape.N), dtype=inputs.act.dtype, device=w.device)

    def call() -> torch.Tensor:
        a = inputs.act[routing.row_token.long()] if variant == "mlp1" else inputs.act  # [R, K]
        for e in range(inputs.shape.E):
            lo, hi = bounds[e], bounds[e + 1]
            if hi > lo:
                torch.matmul(a[lo:hi], w[e].T, out=h[lo:hi])
        return _epilogue(variant, inputs, h, out)

    return call
