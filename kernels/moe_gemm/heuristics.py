"""The default launch config of the MXFP4 MoE GEMM for a shape and a device: what a runtime launches without a tuned
table entry, and trial 0 of every study (the search space in ``search_spaces/moe_gemm.py`` reuses it).

Kept beside the launcher, as triton_kernels keeps ``opt_flags`` beside ``matmul_ogs``: the kernel family owns its
heuristic. ``device`` is any object with ``max_shared_mem_per_block`` (bytes), ``sm_count``, ``compute_capability``
and ``is_gpu`` (``autotune.device.DeviceProfile`` is one); ``None`` means "no device limits known".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kernels import next_pow2
from kernels.moe_gemm.config import DP4A_MIN_CAPABILITY, GEMV_MAX_BLOCK_M, MoeGemmConfig


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


DP4A_GEMV_MAX_ROWS = 32
"""Largest routed-row count R = M·top_k at which the default is the gemv path where it runs on dp4a (gpt-oss: M <= 8).
Measured on the H200 with the defaults of both paths (scripts/results/2026-12-04-h200-moe-variants-defaults.md,
Triton 3.6, gpt-oss-20b): dp4a gemv against MMA at M = 4 mlp1 77.3 vs 91.7 µs, mlp2 50.7 vs 63.9; at M = 8 146.9 vs
162.0 and 82.9 vs 98.9; at M = 16 (2 rows per expert) it loses, 267.5 vs 232.3 and 161.1 vs 134.2."""

DP4A_GEMV_TILES = {"mlp1": {"BLOCK_N": 16, "BLOCK_K": 512, "num_warps": 8},
                   "mlp2": {"BLOCK_N": 16, "BLOCK_K": 512, "num_warps": 2}}
"""Default dp4a gemv tiles (SPLIT_K 1): the fastest of the H200 sweep of 18 tiles (BLOCK_N 16..128, BLOCK_K 256..1024,
2..8 warps; scripts/results/2026-12-04-h200-moe-variants-dp4a-rows-in-thread.md) at M = 1: mlp1 28.2 µs, mlp2 17.9 µs;
mlp1 also at M = 4, 77.7 µs; mlp2 at M = 4 50.3 µs with BLOCK_K 256 against 50.7 with these."""

GEMV_MAX_ROWS = 8
"""Largest routed-row count R = M·top_k of a call at which the default is the float-decode gemv path, where dp4a is
not available (gpt-oss: M <= 2). Measured
on the H200 (scripts/results/2026-12-02-h200-moe-variants-run2*.md, Triton 3.6, defaults of both paths): the gemv
was faster at R = 4 and 8 (20b mlp1 38.6 vs 43.4 µs and 59.9 vs 69.6; mlp2 19.5 vs 33.2 and 33.9 vs 41.8; 120b M=1
alike), even at R = 16 for mlp2 (62.7 vs 63.8) but slower for mlp1 (107 vs 92), and slower at R >= 32."""

GEMV_BLOCK_N = 64
"""Output columns per gemv program: 64 weight rows × BLOCK_K/2 bytes per K step (4 · 5760/64 = 360 mlp1 programs at
M = 1). The fastest BLOCK_N of the gemv sweep at M = 1 for both variants on the H200 (run 2 above; 32 at M = 8)."""

GEMV_BLOCK_K = 256
"""K per gemv step: 128 contiguous bytes (one 128-byte cache line) of each weight row per load; faster than 512 in
every cell of the H200 sweep."""

GEMV_NUM_STAGES = 1
"""The H200 sweep's fastest at M = 1 (33.8 µs mlp1 / 19.4 µs mlp2 against 38.6 / 19.5 for 2 stages at BLOCK_N 32)."""

GEMV_TARGET_PROGRAMS_PER_SM = 2
"""Split-K of the default gemv (mlp2 only, whose output is accumulated atomically anyway) is the smallest power of
two giving at least this many programs per SM: SPLIT_K = 2 at mlp2 M = 1 (4 · 2880/64 = 180 programs), the H200
sweep's best of 1, 2, 4 there."""


def has_dp4a(device) -> bool:
    """Whether the default gemv runs on dp4a: a GPU of compute capability 6.1 or newer (the interpreter could run
    its Triton-op twin, but far slower than the float decode, so CPU defaults keep the float gemv)."""
    return (device is not None and getattr(device, "is_gpu", False)
            and tuple(device.compute_capability) >= DP4A_MIN_CAPABILITY)


def _gemv_default(variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
    """Default of ``path="gemv"``: one program per BLOCK_N columns of (up to 16 of) one expert's rows. On GPUs with
    dp4a, the dp4a decode with :data:`DP4A_GEMV_TILES`; otherwise the float decode with split-K (mlp2, whose output is
    accumulated atomically anyway) until the SMs hold about GEMV_TARGET_PROGRAMS_PER_SM programs each."""
    block_m = GEMV_MAX_BLOCK_M  # the row loop runs over the real rows only: one program covers an expert's rows
    if has_dp4a(device):
        tiles = DP4A_GEMV_TILES[variant]
        return MoeGemmConfig(path="gemv", dequant="dp4a", BLOCK_M=block_m,
                             BLOCK_N=min(tiles["BLOCK_N"], max(16, next_pow2(shape["N"]))),
                             BLOCK_K=min(tiles["BLOCK_K"], max(32, next_pow2(shape["K"]))), GROUP_M=1,
                             num_warps=tiles["num_warps"], num_stages=GEMV_NUM_STAGES).as_dict()
    rpe = rows_per_expert(shape)
    block_n = min(GEMV_BLOCK_N, max(16, next_pow2(shape["N"])))
    block_k = min(GEMV_BLOCK_K, max(32, next_pow2(shape["K"])))
    split_k = 1
    if variant == "mlp2" and device is not None and getattr(device, "is_gpu", False):
        rows = shape["M"] * shape["top_k"]
        experts = min(shape["E"], rows)
        programs = experts * math.ceil(rpe / block_m) * math.ceil(shape["N"] / block_n)
        k_steps = math.ceil(shape["K"] / block_k)
        while (split_k * 2 <= min(8, k_steps)
               and programs * split_k < GEMV_TARGET_PROGRAMS_PER_SM * device.sm_count):
            split_k *= 2
    return MoeGemmConfig(path="gemv", BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=1, num_warps=4,
                         num_stages=GEMV_NUM_STAGES, SPLIT_K=split_k).as_dict()


def default_config(variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
    """The config without a table: the gemv path for at most DP4A_GEMV_MAX_ROWS routed rows on GPUs with dp4a
    (GEMV_MAX_ROWS elsewhere); else the MMA path with BLOCK_M from the rows per expert, wide N tiles for prefill.

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
    max_rows = DP4A_GEMV_MAX_ROWS if has_dp4a(device) else GEMV_MAX_ROWS
    path = "gemv" if shape["M"] * shape["top_k"] <= max_rows else "mma"
    return path_default(variant, shape, device, path)


def path_default(variant: str, shape: Mapping[str, int], device, path: str) -> dict[str, Any]:
    """The default config of one kernel path (``"mma"`` or ``"gemv"``, :data:`kernels.moe_gemm.config.PATHS`) at a
    shape, whatever the rows per expert: what :func:`default_config` returns when it picks that path (benchmarks
    time both to place the switch).

    Raises:
        ValueError: for an unknown path.
    """
    if path == "gemv":
        return _gemv_default(variant, shape, device)
    if path != "mma":
        raise ValueError(f"unknown moe_gemm path {path!r}")
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
