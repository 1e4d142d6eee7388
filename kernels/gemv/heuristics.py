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


def estimated_shared_bytes(config: Mapping[str, Any]) -> int:
    """Shared memory of one program, bytes: the scratch of the final cross-warp sum and of the layout conversions
    around it, bounded by ``4 · max(BLOCK_K, 32 · num_warps · BLOCK_N)`` (fp32).

    Triton 3.9 keeps the W and x loads of this loop in registers (it stages only loads that feed a ``tl.dot``
    through shared memory): offline compiles for sm_90 and sm_121 of 84 configs (qkv shape, BLOCK_N 1-32 × 1-8
    warps × BLOCK_K 128 and 1024 × 1 and 4 stages, 2026-12-02) used 0 to 4,096 B, the same for every num_stages
    (identical PTX), and never more than this bound (4,096 B at 2 x 1024 with 8 warps: equal to it).
    tests/test_gb10_offline_gemv.py checks the bound against the compiler's figure, so a Triton that starts staging
    these loads fails there; each trial records the compiler's own figure (user attr ``shared_bytes``).
    """
    return 4 * max(config["BLOCK_K"], 32 * config["num_warps"] * config["BLOCK_N"])


def default_config(variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
    """The config without a table (every variant alike: the shape decides).

    From a sweep on the lent H100 (2026-11-21, Triton 3.6, bf16, batch 1, CUDA graphs, weights rotated out of L2;
    BLOCK_N 1-32 x BLOCK_K 128-1024 x 1-8 warps): 2 x 1024 with 4 warps led for qkv [5120, 2880] (14.3 µs, cuBLAS
    15.0) and out [2880, 4096] (11.6 µs, cuBLAS 15.7); one feature per program with 8 warps for the router [32, 2880]
    (2.7 µs, cuBLAS 7.0); scripts/results/2026-11-21-h100-gemv-sweep.md. Narrow K (tiny models) gets fewer warps, so
    that every thread holds at least one accumulator element. The shared memory it needs (at most 4 kB, see
    :func:`estimated_shared_bytes`) fits every device, so ``device`` changes nothing today.

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
    return GemvConfig(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps).as_dict()  # 3 stages, no split-K
