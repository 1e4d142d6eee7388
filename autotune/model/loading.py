"""Build a :class:`GptOss` from loaded weights or from a checkpoint folder, with its kernel configs."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from autotune.model.config import CheckpointError, ModelConfig
from autotune.model.kernel_configs import KernelConfigs
from autotune.model.model import GptOss

DEFAULT_MAX_POSITIONS = 16384
"""RoPE table length: the longest prompt + generation served by default."""

MAX_POSITIONS = 2**20
"""Largest RoPE table accepted (``[MAX_POSITIONS, head_dim / 2]`` cos and sin in fp32: 256 MiB at head_dim 64), so a
huge ``max_positions`` fails at once instead of allocating."""


def activation_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs; float32 under the Triton interpreter (its bf16 ``tl.dot`` is wrong, triton#11584)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _torch_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _positions(config: ModelConfig, max_positions: int | None) -> int:
    """The RoPE table length: ``max_positions``, or :data:`DEFAULT_MAX_POSITIONS` capped at the model's context.

    Positions past the model's context (``initial_context_length x rope_scaling_factor``) are allowed, as HF
    transformers allows them, with one warning: RoPE extrapolates there and quality is not what the model was trained
    for.

    Raises:
        CheckpointError: ``max_positions`` outside 1..:data:`MAX_POSITIONS`.
    """
    if max_positions is None:
        return min(DEFAULT_MAX_POSITIONS, config.max_context)
    if not 1 <= max_positions <= MAX_POSITIONS:
        raise CheckpointError(f"{max_positions} positions asked for; the RoPE table holds 1..{MAX_POSITIONS}")
    if max_positions > config.max_context:
        warnings.warn(f"{max_positions} positions asked for, past the model's context of {config.max_context} "
                      f"(initial_context_length {config.initial_context_length} x rope_scaling_factor "
                      f"{config.rope_scaling_factor:g}): RoPE extrapolates there", RuntimeWarning, stacklevel=3)
    return max_positions


def build_model(config: ModelConfig, weights: dict[str, torch.Tensor], *, table: str | Path | None = None,
                use_table: bool = True, max_positions: int | None = None,
                kv_dtype: str | None = None) -> GptOss:
    """A :class:`GptOss` over loaded weights, with kernel configs from the table (or defaults with ``use_table``
    False). ``max_positions`` (the RoPE table length; default :data:`DEFAULT_MAX_POSITIONS`, at most the model's
    ``max_context``) bounds prompt + generation. The activation dtype is the weights' (embedding) dtype; the KV cache's storage is ``kv_dtype`` ("act"
    or "fp8"), or the table's choice for contexts up to ``max_positions`` when None.

    Raises:
        CheckpointError: ``max_positions`` is outside 1..``config.max_context`` (checked before anything is
            allocated).
        TableError: the table cannot be loaded.
    """
    from autotune import device as device_mod

    max_positions = _positions(config, max_positions)
    embedding = weights["embedding.weight"]
    profile = device_mod.current(embedding.device.index or 0) if embedding.device.type == "cuda" \
        else device_mod.INTERPRETER
    configs = KernelConfigs(config, profile, table_path=table, use_table=use_table, kv_dtype=kv_dtype,
                            max_context=max_positions, act_dtype=embedding.dtype)
    return GptOss(config, weights, configs=configs, act_dtype=embedding.dtype, max_positions=max_positions)


def load_model(checkpoint: str | Path, *, device: str | torch.device | None = None,
               act_dtype: torch.dtype | None = None, table: str | Path | None = None, use_table: bool = True,
               max_positions: int | None = None, kv_dtype: str | None = None) -> GptOss:
    """Load an original-layout checkpoint onto ``device`` (default: CUDA if available, else CPU + interpreter).

    Raises:
        CheckpointError: missing/invalid files or tensors (one line naming the file or tensor), or
            ``max_positions`` beyond the model's context (checked before any weight is read).
        TableError: the table cannot be loaded.
    """
    from autotune.model.checkpoint import load_checkpoint

    with warnings.catch_warnings():  # load_checkpoint reads it again and warns
        warnings.simplefilter("ignore")
        _positions(ModelConfig.from_checkpoint(checkpoint), max_positions)  # before any weight is read
    torch_device = _torch_device(device)
    dtype = act_dtype or activation_dtype(torch_device)
    config, weights = load_checkpoint(checkpoint, device=torch_device, dtype=dtype)
    return build_model(config, weights, table=table, use_table=use_table, max_positions=max_positions,
                       kv_dtype=kv_dtype)
