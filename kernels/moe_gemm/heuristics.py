"""The default launch config of the MXFP4 MoE GEMM for a shape and a device: what a runtime launches without a tuned
table entry, and trial 0 of every study (the search space in ``search_spaces/moe_gemm.py`` reuses it).

Kept beside the launcher, as triton_kernels keeps ``opt_flags`` beside ``matmul_ogs``: the kernel family owns its
heuristic. ``device`` is any object with ``max_shared_mem_per_block`` (bytes), ``sm_count``, ``compute_capability``
and ``is_gpu`` (``autotune.device.DeviceProfile`` is one); ``None`` means "no device limits known".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernels import next_pow2
from kernels.moe_gemm.config import MoeGemmConfig


def rows_per_expert(shape: Mapping[str, int]) -> float:
    """Mean routed rows per expert hit under uniform routing (R = M·top_k rows spread over min(E, R) experts)."""
    rows = shape["M"] * shape["top_k"]
    return rows / max(1, min(shape["E"], rows))


def estimated_shared_bytes(config: Mapping[str, Any], act_bytes: int = 2) -> int:
    """Shared memory of the K-loop pipeline buffers: num_stages × (activation tile + packed e2m1 tile + scales).

    A model, not a measurement: Triton may use less (e.g. when it does not pipeline a load) or more (layout
    conversions). Each trial records the compiler's own figure (user attr ``shared_bytes``).
    """
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    per_stage = bm * bk * act_bytes + bn * bk // 2 + bn * bk // 32
    return max(1, config["num_stages"]) * per_stage


def default_config(variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
    """The config without a table: BLOCK_M from the rows per expert, wide N tiles for prefill.

    The choices follow the first H100 sweep (scripts/results/2026-11-21-h100-explore.log, Triton 3.6): BLOCK_N=64
    with BLOCK_K=128 and the upcast path led at decode; 128x128x64 tiles at 8192 tokens. Two pipeline stages instead
    of three when three would not fit the device's shared memory (GB10: 101,376 B per block).

    Args:
        variant: "mlp1" or "mlp2".
        shape: ``{"M", "N", "K", "E", "top_k"}``.
        device: the device limits (see the module docstring), or None.

    Returns:
        A complete config dict (every field of :class:`MoeGemmConfig`).
    """
    block_m = min(128, max(16, next_pow2(rows_per_expert(shape))))
    prefill = block_m >= 64
    config = MoeGemmConfig(  # the other fields (4 warps, grid schedule, the upcast decode, fused SwiGLU, no split-K)
        BLOCK_M=block_m,     # are the class's defaults
        BLOCK_N=min(128 if prefill else 64, max(32, next_pow2(shape["N"]))),
        BLOCK_K=min(64 if prefill else 128, max(32, next_pow2(shape["K"]))),
        GROUP_M=8 if prefill else 1,
        num_stages=3,
    ).as_dict()
    if device is not None and estimated_shared_bytes(config) > device.max_shared_mem_per_block:
        config["num_stages"] = 2
    return config
