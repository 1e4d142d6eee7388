"""The default launch config of the few-token projection for a shape and a device: what a runtime launches without a
tuned table entry, and trial 0 of every study (``search_spaces/gemv.py`` reuses it and the limits below).

Shape dimensions: M rows (tokens), N output features, K input features. ``device`` is any object with
``max_shared_mem_per_block`` (bytes) (``autotune.device.DeviceProfile`` is one); ``None`` means "no device limits
known".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernels import next_pow2
from kernels.gemv.config import GemvConfig

MAX_BLOCK_K = 1024
"""Widest K step: 1024 bf16 elements = 2 kB contiguous per weight row and step, the widest the H100 sweep tried
(and the one that led: scripts/results/2026-11-21-h100-gemv-sweep.md)."""

MAX_ACC_PER_THREAD = 128
"""Most fp32 accumulator elements per thread (BLOCK_N·BLOCK_K / (32·num_warps)): the H100 sweep's bound, leaving
registers for addresses and loads under NVIDIA's 255 per thread."""


def block_k_limit(shape: Mapping[str, int]) -> int:
    """Largest useful BLOCK_K: K rounded up to a power of two, between 16 and :data:`MAX_BLOCK_K`."""
    return min(MAX_BLOCK_K, max(16, next_pow2(shape["K"])))


def block_n_limit(shape: Mapping[str, int]) -> int:
    """Largest useful BLOCK_N: N rounded up to a power of two."""
    return next_pow2(shape["N"])


def acc_per_thread(config: Mapping[str, Any]) -> float:
    """fp32 accumulator elements per thread of a program (the ``[BLOCK_N, BLOCK_K]`` tile over its threads)."""
    return config["BLOCK_N"] * config["BLOCK_K"] / (32 * config["num_warps"])


def estimated_shared_bytes(config: Mapping[str, Any], w_bytes: int = 2) -> int:
    """Shared memory of the K loop if Triton pipelines its loads: num_stages × (W tile + x tile), plus the
    cross-warp scratch of the final sum (one fp32 per feature and warp).

    A model, not a measurement (the compiler may keep a stage in registers); each trial records the compiler's own
    figure (user attr ``shared_bytes``) and tests/test_gb10_offline_gemv.py checks it does not exceed this estimate.
    """
    tile = config["BLOCK_N"] * config["BLOCK_K"] * w_bytes + config["BLOCK_K"] * w_bytes
    return max(1, config["num_stages"]) * tile + 4 * config["BLOCK_N"] * config["num_warps"]


def default_config(variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
    """The config without a table (every variant alike: the shape decides).

    From a sweep on the lent H100 (2026-11-21, Triton 3.6, bf16, batch 1, CUDA graphs, weights rotated out of L2;
    BLOCK_N 1-32 x BLOCK_K 128-1024 x 1-8 warps): 2 x 1024 with 4 warps led for qkv [5120, 2880] (14.3 µs, cuBLAS
    15.0) and out [2880, 4096] (11.6 µs, cuBLAS 15.7); one feature per program with 8 warps for the router [32, 2880]
    (2.7 µs, cuBLAS 7.0); scripts/results/2026-11-21-h100-gemv-sweep.md. Narrow K (tiny models) gets fewer warps, so
    that every thread holds at least one accumulator element; 1 stage when 3 would not fit the device's shared memory.

    Args:
        variant: "qkv", "attn_out" or "router".
        shape: ``{"M", "N", "K"}``.
        device: the device limits (see the module docstring), or None.

    Returns:
        A complete config dict (every field of :class:`GemvConfig`).
    """
    block_k = block_k_limit(shape)
    block_n, warps = (2, 4) if shape["N"] >= 1024 else (1, 8)
    warps = max(1, min(warps, block_n * block_k // 32))
    config = GemvConfig(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps).as_dict()  # 3 stages, no split-K
    if device is not None and estimated_shared_bytes(config) > device.max_shared_mem_per_block:
        config["num_stages"] = 1
    return config
