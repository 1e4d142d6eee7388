"""Build a :class:`GptOss` from loaded weights or from a checkpoint folder, with its kernel configs."""

from __future__ import annotations

from pathlib import Path

import torch

from autotune.model.config import ModelConfig
from autotune.model.kernel_configs import KernelConfigs
from autotune.model.model import GptOss

DEFAULT_MAX_POSITIONS = 16384
"""RoPE table length: the longest prompt + generation served by default."""


def activation_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs; float32 under the Triton interpreter (its bf16 ``tl.dot`` is wrong, triton#11584)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _torch_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_model(config: ModelConfig, weights: dict[str, torch.Tensor], *, table: str | Path | None = None,
                use_table: bool = True, max_positions: int = DEFAULT_MAX_POSITIONS,
                kv_dtype: str | None = None) -> GptOss:
    """A :class:`GptOss` over loaded weights, with kernel configs from the table (or defaults with ``use_table``
    False). The activation dtype is the weights' (embedding) dtype; the KV cache's storage is ``kv_dtype`` ("act"
    or "fp8"), or the table's choice for contexts up to ``max_positions`` when None.

    Raises:
        TableError: the table cannot be loaded.
    """
    from autotune import device as device_mod

    embedding = weights["embedding.weight"]
    profile = device_mod.current(embedding.device.index or 0) if embedding.device.type == "cuda" \
        else device_mod.INTERPRETER
    configs = KernelConfigs(config, profile, table_path=table, use_table=use_table, kv_dtype=kv_dtype,
                            max_context=max_positions, act_dtype=embedding.dtype)
    return GptOss(config, weights, configs=configs, act_dtype=embedding.dtype, max_positions=max_positions)


def load_model(checkpoint: str | Path, *, device: str | torch.device | None = None,
               act_dtype: torch.dtype | None = None, table: str | Path | None = None, use_table: bool = True,
               max_positions: int = DEFAULT_MAX_POSITIONS, kv_dtype: str | None = None) -> GptOss:
    """Load an original-layout checkpoint onto ``device`` (default: CUDA if available, else CPU + interpreter).

    Raises:
        CheckpointError: missing/invalid files or tensors (one line naming the file or tensor).
        TableError: the table cannot be loaded.
    """
    from autotune.model.checkpoint import load_checkpoint

    torch_device = _torch_device(device)
    dtype = act_dtype or activation_dtype(torch_device)
    config, weights = load_checkpoint(checkpoint, device=torch_device, dtype=dtype)
    return build_model(config, weights, table=table, use_table=use_table, max_positions=max_positions,
                       kv_dtype=kv_dtype)
