"""Dense projections of a few tokens (decode): ``out = x @ W.T + b`` streaming W once.

The module-level functions below form the uniform kernel interface the tuner uses (variant, inputs, config):
:func:`default_config` (the default heuristic, :mod:`kernels.gemv.heuristics`), :func:`make_inputs`,
:func:`make_empty_inputs`, :func:`make_timing_inputs`, :func:`launches`, :func:`launch`, :func:`reference`,
:func:`cost`, :func:`tolerance`, :func:`shape_from_dims`, :func:`model_shapes`. A runtime calls :func:`gemv`
directly for up to :data:`MAX_ROWS` rows.

Variants are gpt-oss's projections (qkv, attn_out, router): one kernel, tuned and looked up per projection.
Legend: M rows (tokens), K input features, N output features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from kernels.gemv.config import MAX_ROWS, VARIANTS, GemvConfig, GemvShape
from kernels.gemv.heuristics import default_config
from kernels.gemv.inputs import GemvInputs, make_rotating_inputs
from kernels.gemv.inputs import make_empty_inputs as _make_empty_inputs
from kernels.gemv.inputs import make_inputs as _make_inputs
from kernels.gemv.launch import gemv, gemv_launches
from kernels.gemv.reference import Cost, Tolerance, gemv_reference, tolerance
from kernels.gemv.reference import cost as _cost
from kernels.launch_plan import KernelLaunch

NAME = "gemv"
BUCKET_DIM = "M"
"""The shape dimension that varies at run time (tokens); tables bucket on it."""

EXAMPLE_DIMS = {"M": 1, "hidden": 2880, "heads_q": 64, "heads_kv": 8, "head_dim": 64, "E": 32}
"""gpt-oss-20b at one token (the dimensions :func:`model_shapes` takes): the shapes ``autotune list`` shows the
search space for."""

SOURCE_FILES = tuple(Path(__file__).parent / name for name in ("triton_kernels.py", "launch.py", "config.py")) + (
    Path(__file__).parent.parent / "launch_plan.py",)
"""Files that decide what runs on the GPU (hashed into the table fingerprint)."""

__all__ = [
    "BUCKET_DIM", "EXAMPLE_DIMS", "MAX_ROWS", "NAME", "SOURCE_FILES", "VARIANTS", "Cost", "GemvConfig",
    "GemvInputs", "GemvShape", "KernelLaunch", "Tolerance", "config_from_dict", "cost", "default_config", "gemv",
    "gemv_launches", "gemv_reference", "launch", "launches", "make_empty_inputs", "make_inputs",
    "make_timing_inputs", "model_shapes", "reference", "shape_from_dims", "tolerance",
]

_DIMS = ("M", "N", "K")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown gemv variant {variant!r} (expected one of {VARIANTS})")


def shape_from_dims(variant: str, dims: Mapping[str, int]) -> GemvShape:
    """Shape from a ``{"M", "N", "K"}`` mapping (a table key or study attribute).

    Raises:
        ValueError: on an unknown variant, missing/extra dimensions or an invalid shape.
    """
    _check_variant(variant)
    if set(dims) != set(_DIMS):
        raise ValueError(f"gemv shape needs exactly {sorted(_DIMS)}, got {sorted(dims)}")
    return GemvShape(**{name: int(value) for name, value in dims.items()})


def model_shapes(variant: str, M: Sequence[int], *, hidden: int, heads_q: int, heads_kv: int, head_dim: int,
                 E: int) -> list[GemvShape]:
    """The shapes of one projection of a gpt-oss model at each token count in ``M`` (see
    :meth:`GemvShape.for_variant`)."""
    return [GemvShape.for_variant(variant, M=m, hidden=hidden, heads_q=heads_q, heads_kv=heads_kv,
                                  head_dim=head_dim, E=E) for m in M]


def config_from_dict(params: Mapping) -> GemvConfig:
    """Validated :class:`GemvConfig` from a plain mapping (raises ValueError)."""
    return GemvConfig.from_dict(dict(params))


def make_inputs(variant: str, shape: GemvShape, *, dtype: torch.dtype, device: torch.device | str,
                seed: int) -> GemvInputs:
    """Fresh random inputs (see :func:`kernels.gemv.inputs.make_inputs`)."""
    return _make_inputs(shape, dtype=dtype, device=device, seed=seed)


def make_empty_inputs(variant: str, shape: GemvShape, *, dtype: torch.dtype,
                      device: torch.device | str = "meta") -> GemvInputs:
    """Uninitialized inputs for planning and offline compiles (see :func:`kernels.gemv.inputs.make_empty_inputs`)."""
    return _make_empty_inputs(shape, dtype=dtype, device=device)


def make_timing_inputs(variant: str, shape: GemvShape, *, dtype: torch.dtype, device: torch.device | str,
                       seed: int, cache_bytes: int) -> list[GemvInputs]:
    """Rotating input sets for timing (see :func:`kernels.gemv.inputs.make_rotating_inputs`)."""
    return make_rotating_inputs(shape, dtype=dtype, device=device, seed=seed, cache_bytes=cache_bytes)


def launches(variant: str, inputs: GemvInputs, config: GemvConfig,
             out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Allocate the output and plan the Triton launches of one call without running them."""
    return gemv_launches(inputs.x, inputs.weight, inputs.bias, config, out=out)


def launch(variant: str, inputs: GemvInputs, config: GemvConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """Run one call. Returns ``[M, N]`` in the inputs' dtype."""
    result, plan = launches(variant, inputs, config, out)
    for item in plan:
        item.run()
    return result


def reference(variant: str, inputs: GemvInputs) -> torch.Tensor:
    """fp32 reference of :func:`launch`: ``[M, N]`` float32."""
    return gemv_reference(inputs.x, inputs.weight, inputs.bias)


def cost(variant: str, inputs: Sequence[GemvInputs], config: GemvConfig | None = None) -> Cost:
    """FLOPs and fewest bytes of one call; the config does not change them."""
    first = inputs[0]
    return _cost(first.shape, first.weight.element_size(), first.x.element_size(), first.bias.element_size())
