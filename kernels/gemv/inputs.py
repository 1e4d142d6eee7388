"""Random inputs of the few-token projection at a given shape, for correctness checks and timing.

Legend: M rows (tokens), K input features, N output features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.gemv.config import GemvShape


@dataclass
class GemvInputs:
    """Everything one projection call reads.

    Attributes:
        shape: the problem size.
        x: ``[M, K]`` activations.
        weight: ``[N, K]``.
        bias: ``[N]`` (every gpt-oss projection served by the gemv has one).
    """

    shape: GemvShape
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor


def make_inputs(shape: GemvShape, *, dtype: torch.dtype, device: torch.device | str, seed: int) -> GemvInputs:
    """Fresh random inputs: x ~ N(0, 1), W ~ N(0, 1/K) (so each output's x·W part is ~N(0, 1), as in a trained
    projection of a normed input), bias ~ N(0, 1); all rounded to ``dtype``.

    Args:
        shape: the problem size.
        dtype: dtype of x, W and the bias (the output's too).
        device: where to allocate.
        seed: RNG seed (every check uses a new one).

    Returns:
        The :class:`GemvInputs`.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    x = torch.randn((shape.M, shape.K), generator=gen, device=device).to(dtype)
    weight = (torch.randn((shape.N, shape.K), generator=gen, device=device) / math.sqrt(shape.K)).to(dtype)
    bias = torch.randn((shape.N,), generator=gen, device=device).to(dtype)
    return GemvInputs(shape, x, weight, bias)


def call_bytes(shape: GemvShape, elem_bytes: int) -> int:
    """Bytes one call reads and writes: W, x, the bias and the output."""
    return (shape.N * shape.K + shape.M * shape.K + shape.N + shape.M * shape.N) * elem_bytes


def make_rotating_inputs(shape: GemvShape, *, dtype: torch.dtype, device: torch.device | str, seed: int,
                         cache_bytes: int, max_sets: int = 1024) -> list[GemvInputs]:
    """Independent input sets, enough that one cycle through them moves 3× ``cache_bytes``, so that timing
    consecutive calls reads W from DRAM as a decode step does (between two calls of one layer the rest of the model
    streams far more than the L2 holds).

    The router's W is 184 kB (32 × 2880 bf16): a 60 MB L2 takes ~980 sets (the H100 sweep of
    scripts/results/2026-11-21-h100-gemv-sweep.md cycled >= 200 MB of copies); at most ``max_sets``.

    Args:
        shape, dtype, device, seed: as in :func:`make_inputs`.
        cache_bytes: the last-level cache size to defeat (L2 bytes of the GPU; 0 under the interpreter: one set).
        max_sets: upper bound on the number of sets.

    Returns:
        A list of :class:`GemvInputs`.
    """
    per_call = call_bytes(shape, torch.empty((), dtype=dtype).element_size())
    num_sets = max(1, min(max_sets, math.ceil(3 * cache_bytes / max(per_call, 1))))
    return [make_inputs(shape, dtype=dtype, device=device, seed=seed + i) for i in range(num_sets)]


def make_empty_inputs(shape: GemvShape, *, dtype: torch.dtype, device: torch.device | str = "meta") -> GemvInputs:
    """Uninitialized inputs (``meta`` by default: shapes and dtypes only, no memory): enough to plan launches and to
    compile kernels, e.g. offline for a GPU this machine does not have. Never launch on them."""
    meta = torch.device(device)
    return GemvInputs(shape, x=torch.empty((shape.M, shape.K), dtype=dtype, device=meta),
                      weight=torch.empty((shape.N, shape.K), dtype=dtype, device=meta),
                      bias=torch.empty((shape.N,), dtype=dtype, device=meta))
