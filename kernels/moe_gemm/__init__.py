"""MXFP4 MoE grouped GEMM of gpt-oss: mlp1 (with the SwiGLU-OAI epilogue) and mlp2 (with the top-k combine).

The module-level functions below form the uniform kernel interface the tuner uses (variant, inputs, config):
:func:`default_config` (the default heuristic, :mod:`kernels.moe_gemm.heuristics`), :func:`make_inputs`,
:func:`make_empty_inputs`, :func:`make_timing_inputs`, :func:`launches`, :func:`launch`, :func:`reference`,
:func:`element_sensitivity`, :func:`cost`, :func:`tolerance`, :func:`shape_from_dims`, :func:`model_shapes`. A
runtime calls :func:`moe_mlp1` and :func:`moe_mlp2` directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from kernels.moe_gemm.config import VARIANTS, MoeGemmConfig, MoeShape
from kernels.moe_gemm.inputs import MoeGemmInputs, make_empty_inputs, make_inputs, make_rotating_inputs
from kernels.launch_plan import KernelLaunch
from kernels.moe_gemm.heuristics import default_config
from kernels.moe_gemm.launch import (activation_dtype_problem, activation_records, mlp1_launches, mlp2_launches,
                                    moe_mlp1, moe_mlp2)
from kernels.moe_gemm.reference import (Cost, Tolerance, mlp1_reference, mlp1_stored_h_sensitivity, mlp2_reference,
                                       swiglu_reference)
from kernels.moe_gemm.reference import cost as _cost
from kernels.moe_gemm.reference import tolerance

NAME = "moe_gemm"
BUCKET_DIM = "M"
"""The shape dimension that varies at run time (tokens); tables bucket on it."""

EXAMPLE_DIMS = {"M": 16, "hidden": 2880, "intermediate": 2880, "E": 32, "top_k": 4}
"""gpt-oss-20b at 16 tokens: the shape ``autotune list`` shows the search space for."""

SOURCE_FILES = tuple(Path(__file__).parent / name for name in ("triton_kernels.py", "e2m1_ptx.py", "gemv_dp4a.py",
                                                                   "launch.py", "config.py")) + tuple(
    Path(__file__).parent.parent / name for name in ("launch_plan.py", "moe_routing.py"))
"""Files that decide what runs on the GPU (hashed into the table fingerprint; the reference, inputs and search space
are not: they do not change a measured config's speed)."""

__all__ = [
    "default_config", "config_problem", "activation_records", "element_sensitivity",
    "BUCKET_DIM", "EXAMPLE_DIMS", "NAME", "SOURCE_FILES", "VARIANTS", "Cost", "KernelLaunch", "MoeGemmConfig",
    "MoeGemmInputs",
    "MoeShape", "Tolerance", "config_from_dict", "cost", "launch", "launches", "make_empty_inputs", "make_inputs",
    "make_timing_inputs",
    "mlp1_reference", "mlp2_reference", "model_shapes", "moe_mlp1", "moe_mlp2", "reference", "shape_from_dims",
    "swiglu_reference", "tolerance",
]


def shape_from_dims(variant: str, dims: Mapping[str, int]) -> MoeShape:
    """Shape from a ``{"M", "N", "K", "E", "top_k"}`` mapping (a table key or study attribute).

    Raises:
        ValueError: on missing/extra dimensions or an invalid shape.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown moe_gemm variant {variant!r} (expected one of {VARIANTS})")
    expected = {"M", "N", "K", "E", "top_k"}
    if set(dims) != expected:
        raise ValueError(f"moe_gemm shape needs exactly {sorted(expected)}, got {sorted(dims)}")
    return MoeShape(**{name: int(value) for name, value in dims.items()})


def model_shapes(variant: str, M: Sequence[int], *, hidden: int, intermediate: int, E: int,
                 top_k: int) -> list[MoeShape]:
    """The shapes of one MLP call of a gpt-oss model at each token count in ``M``."""
    return [MoeShape.for_variant(variant, M=m, hidden=hidden, intermediate=intermediate, E=E, top_k=top_k)
            for m in M]


def config_from_dict(params: Mapping) -> MoeGemmConfig:
    """Validated :class:`MoeGemmConfig` from a plain mapping (raises ValueError)."""
    return MoeGemmConfig.from_dict(dict(params))


def config_problem(variant: str, config: MoeGemmConfig, dtype: torch.dtype) -> str | None:
    """Why ``config`` (a :class:`MoeGemmConfig`) cannot launch ``variant`` on activations of ``dtype``, or None.

    The launcher's own dtype rule (:func:`kernels.moe_gemm.launch.activation_dtype_problem`); a runtime asks it
    before serving a table entry tuned in another dtype (e.g. fp16 under the interpreter, served to the fp32 CPU
    loop).
    """
    return activation_dtype_problem(config, dtype)


def make_timing_inputs(variant: str, shape: MoeShape, *, dtype: torch.dtype, device: torch.device | str,
                       seed: int, cache_bytes: int) -> list[MoeGemmInputs]:
    """Rotating input sets for timing (see :func:`kernels.moe_gemm.inputs.make_rotating_inputs`)."""
    return make_rotating_inputs(variant, shape, dtype=dtype, device=device, seed=seed, cache_bytes=cache_bytes)


def launches(variant: str, inputs: MoeGemmInputs, config: MoeGemmConfig,
             out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Allocate the output and plan the Triton launches of one call without running them."""
    plan = mlp1_launches if variant == "mlp1" else mlp2_launches
    return plan(inputs.act, inputs.routing, inputs.w_blocks, inputs.w_scales, inputs.bias, config, out)


def launch(variant: str, inputs: MoeGemmInputs, config: MoeGemmConfig,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Run one call. Returns mlp1 ``[R, N/2]`` (activation dtype) or mlp2 ``[T, N]`` float32."""
    result, plan = launches(variant, inputs, config, out)
    for item in plan:
        item.run()
    return result


def reference(variant: str, inputs: MoeGemmInputs) -> torch.Tensor:
    """fp32 reference of :func:`launch`."""
    ref = mlp1_reference if variant == "mlp1" else mlp2_reference
    return ref(inputs.act, inputs.routing, inputs.w_blocks, inputs.w_scales, inputs.bias)


def element_sensitivity(variant: str, inputs: MoeGemmInputs, config: MoeGemmConfig) -> torch.Tensor | None:
    """What the element check adds to the row RMS that each output element's error is measured against, or None.

    Only mlp1 with ``h`` stored in a 16-bit activation dtype before the SwiGLU (``fuse_swiglu=False`` with
    ``SPLIT_K = 1``; split-K sums ``h`` in float32) rounds an intermediate that the SwiGLU amplifies: there it is
    :func:`kernels.moe_gemm.reference.mlp1_stored_h_sensitivity`, ``[R, N/2]`` float32. The limit itself
    (:func:`tolerance`) stays 8u.
    """
    if variant != "mlp1" or config.fuse_swiglu or config.SPLIT_K > 1 or inputs.act.dtype == torch.float32:
        return None
    return mlp1_stored_h_sensitivity(inputs.act, inputs.routing, inputs.w_blocks, inputs.w_scales, inputs.bias)


def cost(variant: str, inputs: Sequence[MoeGemmInputs], config: MoeGemmConfig | None = None) -> Cost:
    """FLOPs and fewest bytes of one call, averaged over input sets (the experts hit differ between sets); the
    config does not change them."""
    first = inputs[0]
    hit = sum(item.experts_hit for item in inputs) / len(inputs)
    return _cost(variant, first.shape, hit, first.act.element_size(), first.bias.element_size())
