"""Random inputs of the MXFP4 MoE GEMM at a given shape, for correctness checks and timing.

Legend: T tokens, R = T·k routed rows, E experts, N output features, K input features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.moe_gemm.config import MoeShape
from kernels.moe_routing import Routing, route
from kernels.mxfp4 import random_mxfp4

SCALE_RANGE = (117, 123)
"""e8m0 scale bytes drawn for random weights: with uniform e2m1 codes and unit-variance activations at K = 2880,
h = x·W has a standard deviation of about 2.5, so the SwiGLU clamp at 7 is reached by a few percent of values."""


@dataclass
class MoeGemmInputs:
    """Everything one MoE GEMM call reads.

    Attributes:
        variant: "mlp1" or "mlp2".
        shape: the problem size.
        act: mlp1 ``[T, K]`` tokens; mlp2 ``[R, K]`` sorted rows.
        routing: rows sorted by expert.
        w_blocks: ``[E, N, K/32, 16]`` uint8.
        w_scales: ``[E, N, K/32]`` uint8.
        bias: ``[E, N]`` in the activation dtype.
        experts_hit: distinct experts with at least one row.
    """

    variant: str
    shape: MoeShape
    act: torch.Tensor
    routing: Routing
    w_blocks: torch.Tensor
    w_scales: torch.Tensor
    bias: torch.Tensor
    experts_hit: int


def _generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def _random_weights(shape: MoeShape, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    blocks, scales = random_mxfp4((shape.E, shape.N, shape.K), scale_min=SCALE_RANGE[0], scale_max=SCALE_RANGE[1],
                                  generator=gen, device=device)
    bias = (0.5 * torch.randn((shape.E, shape.N), generator=gen, device=device)).to(dtype)
    return blocks, scales, bias


def _inputs_with_weights(variant, shape, dtype, device, gen, weights, eligible: torch.Tensor | None):
    logits = torch.randn((shape.M, shape.E), generator=gen, device=device)  # [T, E]
    if eligible is not None:
        mask = torch.full((shape.E,), float("-inf"), device=device)
        mask[eligible] = 0.0
        logits = logits + mask
    routing = route(logits, shape.top_k)
    rows = shape.M if variant == "mlp1" else shape.rows
    act = torch.randn((rows, shape.K), generator=gen, device=device).to(dtype)
    hit = int(torch.unique(routing.row_expert).numel())
    return MoeGemmInputs(variant, shape, act, routing, *weights, experts_hit=hit)


def make_inputs(variant: str, shape: MoeShape, *, dtype: torch.dtype, device: torch.device | str,
                seed: int) -> MoeGemmInputs:
    """Fresh random inputs: uniform routing over all E experts, N(0, 1) activations, random MXFP4 weights.

    Args:
        variant: "mlp1" or "mlp2".
        shape: the problem size.
        dtype: activation and bias dtype.
        device: where to allocate.
        seed: RNG seed (every check uses a new one).

    Returns:
        The :class:`MoeGemmInputs`.
    """
    device = torch.device(device)
    gen = _generator(seed, device)
    weights = _random_weights(shape, dtype, device, gen)
    return _inputs_with_weights(variant, shape, dtype, device, gen, weights, eligible=None)


def make_rotating_inputs(variant: str, shape: MoeShape, *, dtype: torch.dtype, device: torch.device | str,
                         seed: int, cache_bytes: int, max_sets: int = 16) -> list[MoeGemmInputs]:
    """Input sets that share one weight tensor but route to different experts, so that timing consecutive calls
    reads the weights from DRAM rather than from the L2 cache.

    When R = T·k rows cannot cover all experts, set i may only route to the i-th disjoint chunk of
    c = max(k, R) experts (a random permutation of the experts, cut into E // c chunks), so consecutive calls share
    no weights. Enough sets are made that one cycle touches 3× ``cache_bytes`` (at most E // c sets when chunked).

    Args:
        variant, shape, dtype, device, seed: as in :func:`make_inputs`.
        cache_bytes: the last-level cache size to defeat (L2 bytes of the GPU).
        max_sets: upper bound on the number of sets.

    Returns:
        A list of :class:`MoeGemmInputs` (sharing ``w_blocks``, ``w_scales`` and ``bias``).
    """
    device = torch.device(device)
    gen = _generator(seed, device)
    weights = _random_weights(shape, dtype, device, gen)
    chunk = min(shape.E, max(shape.top_k, shape.rows))
    num_chunks = shape.E // chunk
    per_expert = shape.N * (shape.K // 2 + shape.K // 32)
    act_rows = shape.M if variant == "mlp1" else shape.rows
    call_bytes = min(shape.E, max(shape.rows, 1)) * per_expert + act_rows * shape.K * 2
    num_sets = max(1, min(max_sets, math.ceil(3 * cache_bytes / max(call_bytes, 1))))
    if num_chunks > 1:
        num_sets = min(num_sets, num_chunks)  # the last set and the first must not share a chunk
    perm = torch.randperm(shape.E, generator=gen, device=device)
    sets = []
    for i in range(num_sets):
        eligible = perm[(i % num_chunks) * chunk:(i % num_chunks + 1) * chunk] if num_chunks > 1 else None
        sets.append(_inputs_with_weights(variant, shape, dtype, device, gen, weights, eligible))
    return sets


def make_empty_inputs(variant: str, shape: MoeShape, *, dtype: torch.dtype,
                      device: torch.device | str = "meta") -> MoeGemmInputs:
    """Uninitialized inputs (``meta`` by default: shapes and dtypes only, no memory): enough to plan launches and to
    compile kernels, e.g. offline for a GPU this machine does not have. Never launch on them."""
    meta = torch.device(device)
    rows = shape.rows
    routing = Routing(
        topk_ids=torch.empty((shape.M, shape.top_k), dtype=torch.int32, device=meta),
        topk_gates=torch.empty((shape.M, shape.top_k), dtype=torch.float32, device=meta),
        row_token=torch.empty((rows,), dtype=torch.int32, device=meta),
        row_expert=torch.empty((rows,), dtype=torch.int32, device=meta),
        row_gate=torch.empty((rows,), dtype=torch.float32, device=meta),
        expert_offsets=torch.empty((shape.E + 1,), dtype=torch.int32, device=meta),
    )
    act_rows = shape.M if variant == "mlp1" else rows
    groups = shape.K // 32
    return MoeGemmInputs(
        variant, shape,
        act=torch.empty((act_rows, shape.K), dtype=dtype, device=meta),
        routing=routing,
        w_blocks=torch.empty((shape.E, shape.N, groups, 16), dtype=torch.uint8, device=meta),
        w_scales=torch.empty((shape.E, shape.N, groups), dtype=torch.uint8, device=meta),
        bias=torch.empty((shape.E, shape.N), dtype=dtype, device=meta),
        experts_hit=min(shape.E, rows),
    )
