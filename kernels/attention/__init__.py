"""Flash attention with sinks of gpt-oss (GQA, causal or sliding window, bf16/fp16/fp32 or fp8 KV cache).

The module-level functions below form the uniform kernel interface the tuner uses (variant, inputs, config):
:func:`default_config` (the default heuristic, :mod:`kernels.attention.heuristics`), :func:`make_inputs`,
:func:`make_empty_inputs`, :func:`make_timing_inputs`, :func:`launches`, :func:`launch`,
:func:`reference`, :func:`cost`, :func:`tolerance`, :func:`shape_from_dims`, :func:`model_shapes`. A runtime calls
:func:`attention_prefill` and :func:`attention_decode` directly (and :func:`to_kv_dtype` to fill the cache).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from kernels.attention.config import (KV_DTYPES, VARIANTS, AttentionConfig, AttentionShape, kv_storage_dtype,
                                      to_kv_dtype)
from kernels.attention.inputs import AttentionInputs, make_empty_inputs, make_inputs, make_rotating_inputs
from kernels.attention.launch import attention_decode, attention_prefill, decode_launches, prefill_launches
from kernels.attention.reference import Cost, Tolerance, attention_reference, tolerance
from kernels.attention.reference import cost as _cost
from kernels.launch_plan import KernelLaunch
from kernels.attention.heuristics import default_config

NAME = "attention"
BUCKET_DIM = "seq"
"""The shape dimension that varies at run time (prompt length or context length); tables bucket on it."""

EXAMPLE_DIMS = {"batch": 1, "seq": 2048, "heads_q": 64, "heads_kv": 8, "head_dim": 64, "window": 0}
"""gpt-oss (both sizes) at a 2048-token context: the shape ``autotune list`` shows the search space for."""

SOURCE_FILES = tuple(Path(__file__).parent / name for name in ("triton_kernels.py", "launch.py", "config.py")) + (
    Path(__file__).parent.parent / "launch_plan.py",)
"""Files that decide what runs on the GPU (hashed into the table fingerprint)."""

__all__ = [
    "default_config",
    "BUCKET_DIM", "EXAMPLE_DIMS", "KV_DTYPES", "NAME", "SOURCE_FILES", "VARIANTS", "AttentionConfig",
    "AttentionInputs", "AttentionShape", "Cost", "KernelLaunch", "Tolerance", "attention_decode",
    "attention_prefill", "attention_reference", "config_from_dict", "cost", "launch", "launches",
    "make_empty_inputs", "make_inputs", "make_timing_inputs", "model_shapes", "reference", "shape_from_dims",
    "kv_storage_dtype", "to_kv_dtype", "tolerance",
]

_DIMS = ("batch", "seq", "heads_q", "heads_kv", "head_dim", "window")


def shape_from_dims(variant: str, dims: Mapping[str, int]) -> AttentionShape:
    """Shape from a ``{"batch", "seq", "heads_q", "heads_kv", "head_dim", "window"}`` mapping.

    Raises:
        ValueError: on missing/extra dimensions or an invalid shape.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown attention variant {variant!r} (expected one of {VARIANTS})")
    if set(dims) != set(_DIMS):
        raise ValueError(f"attention shape needs exactly {sorted(_DIMS)}, got {sorted(dims)}")
    return AttentionShape(**{name: int(value) for name, value in dims.items()})


def _as_list(value: int | Sequence[int]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


def model_shapes(variant: str, seq: int | Sequence[int], *, batch: int | Sequence[int], heads_q: int, heads_kv: int,
                 head_dim: int, window: int | Sequence[int],
                 prefill_seq_max: int | None = None) -> list[AttentionShape]:
    """The shapes of one attention call of a gpt-oss model: every (batch, window, seq) of the cartesian product.

    Args:
        variant: "prefill" or "decode".
        seq: prompt lengths (prefill) or context lengths (decode).
        batch, window: one value or several.
        heads_q, heads_kv, head_dim: the model's attention heads.
        prefill_seq_max: prefill drops longer seq values (a preset lists decode contexts beyond the prompts it
            tunes); None keeps all.

    Raises:
        ValueError: for an unknown variant or an invalid shape.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown attention variant {variant!r} (expected one of {VARIANTS})")
    seqs = [s for s in _as_list(seq) if variant == "decode" or prefill_seq_max is None or s <= prefill_seq_max]
    return [AttentionShape(batch=b, seq=s, heads_q=heads_q, heads_kv=heads_kv, head_dim=head_dim, window=w)
            for b, w, s in itertools.product(_as_list(batch), _as_list(window), seqs)]


def config_from_dict(params: Mapping) -> AttentionConfig:
    """Validated :class:`AttentionConfig` from a plain mapping (raises ValueError)."""
    return AttentionConfig.from_dict(dict(params))


def make_timing_inputs(variant: str, shape: AttentionShape, *, dtype: torch.dtype, device: torch.device | str,
                       seed: int, cache_bytes: int) -> list[AttentionInputs]:
    """Rotating input sets for timing (see :func:`kernels.attention.inputs.make_rotating_inputs`)."""
    return make_rotating_inputs(variant, shape, dtype=dtype, device=device, seed=seed, cache_bytes=cache_bytes)


def launches(variant: str, inputs: AttentionInputs, config: AttentionConfig,
             out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Allocate the output and plan the Triton launches of one call without running them."""
    k, v = inputs.cache(config.kv_dtype)
    window = inputs.shape.window
    if variant == "prefill":
        return prefill_launches(inputs.q, k, v, inputs.sinks, start_pos=0, window=window, sm_scale=inputs.sm_scale,
                                config=config, out=out)
    return decode_launches(inputs.q, k, v, inputs.sinks, inputs.cache_lens, window=window,
                           sm_scale=inputs.sm_scale, config=config, out=out)


def launch(variant: str, inputs: AttentionInputs, config: AttentionConfig,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Run one call. Returns prefill ``[B, T, Hq, D]`` or decode ``[B, Hq, D]`` in the activation dtype."""
    result, plan = launches(variant, inputs, config, out)
    for item in plan:
        item.run()
    return result


def reference(variant: str, inputs: AttentionInputs, kv_dtype: str = "act") -> torch.Tensor:
    """fp32 reference of :func:`launch` from the cache in ``kv_dtype`` storage. The tuner checks every config
    against the activation-dtype cache ("act"), fp8 configs with the looser fp8 tolerance."""
    k, v = inputs.cache(kv_dtype)
    seq = inputs.shape.seq
    if variant == "prefill":
        positions = torch.arange(seq, device=inputs.q.device).expand(inputs.shape.batch, seq)
        return attention_reference(inputs.q, k, v, inputs.sinks, positions, inputs.cache_lens,
                                   window=inputs.shape.window, sm_scale=inputs.sm_scale)
    positions = (inputs.cache_lens.long() - 1)[:, None]                               # [B, 1]
    return attention_reference(inputs.q[:, None], k, v, inputs.sinks, positions, inputs.cache_lens,
                               window=inputs.shape.window, sm_scale=inputs.sm_scale)[:, 0]


def cost(variant: str, inputs: Sequence[AttentionInputs], config: AttentionConfig | None = None) -> Cost:
    """FLOPs and fewest bytes of one call; the cache bytes per element follow the config's ``kv_dtype``."""
    first = inputs[0]
    kv_bytes = first.k_fp8.element_size() if config is not None and config.kv_dtype == "fp8" else \
        first.k_cache.element_size()
    return _cost(variant, first.shape, first.q.element_size(), kv_bytes)
