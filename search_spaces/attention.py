"""Search space of the gpt-oss flash attention (``kernels.attention``), for both variants (prefill, decode).

Shape dimensions: batch B, seq (prefill: prompt tokens; decode: keys in the cache), heads_q Hq, heads_kv Hkv,
head_dim D, window W (0: full causal). "Visible keys" = min(seq, W), or seq without a window.
Every constraint returns a reason string when a config cannot work (the trial is PRUNED with that reason before
anything compiles) and None otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotune.tuning.space import Param, SearchSpace, next_pow2

POW2_TILES = (16, 32, 64, 128, 256)
SPLITS = (1, 2, 4, 8, 16, 32, 64)
DECODE_ROWS = 16
"""Decode's M: the G query heads of a GQA group padded to at least 16 rows (``tl.dot``'s minimum)."""

MIN_SPLIT_KEYS = 64
"""Keys per split-KV slice the default keeps at least (one 64-key block of one KV head is 16 KB of bf16 K/V)."""

FP8_MIN_CAPABILITY = (8, 9)
"""fp8 e4m3 conversions in Triton need sm_89 (Ada) or newer; the interpreter runs them on the CPU."""


def visible_keys(shape: Mapping[str, int]) -> int:
    """Most keys one query sees: min(seq, W), or seq without a window."""
    return min(shape["seq"], shape["window"]) if shape["window"] else shape["seq"]


def block_n_limit(shape: Mapping[str, int]) -> int:
    """Largest useful BLOCK_N: the visible keys rounded up to a power of two, at least 16."""
    return max(16, next_pow2(visible_keys(shape)))


def block_m_limit(shape: Mapping[str, int]) -> int:
    """Largest useful prefill BLOCK_M: the prompt length rounded up to a power of two, at least 16."""
    return max(16, next_pow2(shape["seq"]))


def fp8_supported(device) -> bool:
    """Whether the device converts fp8 e4m3 (compute capability >= 8.9, or the interpreter)."""
    return not device.is_gpu or tuple(device.compute_capability) >= FP8_MIN_CAPABILITY


def _params(variant: str, shape: Mapping[str, int], device) -> tuple[Param, ...]:
    """The tunables at one shape. Tiles stop where they would be mostly padding (BLOCK_M beyond the prompt,
    BLOCK_N beyond the visible keys), split counts where a slice would hold fewer than 16 keys."""
    block_n = tuple(b for b in POW2_TILES if b <= block_n_limit(shape))
    kv_dtypes = ("act", "fp8") if fp8_supported(device) else ("act",)
    if variant == "prefill":
        block_m = tuple(b for b in POW2_TILES[:4] if b <= block_m_limit(shape))
        split = (1,)
    else:
        block_m = (DECODE_ROWS,)
        split = tuple(s for s in SPLITS if s == 1 or visible_keys(shape) // s >= 16)
    return (
        Param("BLOCK_M", block_m, doc="prefill: queries per program (decode: not used)"),
        Param("BLOCK_N", block_n, doc="keys per loop step"),
        Param("num_warps", (2, 4, 8)),
        Param("num_stages", (1, 2, 3, 4), doc="software-pipelining depth of the key loop"),
        Param("SPLIT_KV", split, doc="decode: programs per (sequence, KV head), merged by a combine kernel"),
        Param("kv_dtype", kv_dtypes, doc="KV cache storage: the activation dtype or fp8 e4m3"),
    )


def estimated_shared_bytes(config: Mapping[str, Any], shape: Mapping[str, int], act_bytes: int = 2) -> int:
    """Shared memory of the key loop: num_stages × (K tile + V tile) in the cache's storage, plus the query tile
    and, for fp8, the K/V tiles converted to the activation dtype for ``tl.dot``.

    A model, not a measurement (Triton may keep the query tile or the converted tiles in registers); each trial
    records the compiler's own figure (user attr ``shared_bytes``).
    """
    d = shape["head_dim"]
    kv_bytes = 1 if config["kv_dtype"] == "fp8" else act_bytes
    rows = config["BLOCK_M"]
    kv_tile = config["BLOCK_N"] * d
    converted = 2 * kv_tile * act_bytes if config["kv_dtype"] == "fp8" else 0
    return max(1, config["num_stages"]) * 2 * kv_tile * kv_bytes + rows * d * act_bytes + converted


def fits_shared_memory(config, shape, device) -> str | None:
    """Pipeline buffers must fit the device's shared memory per block (GB10: 101,376 B)."""
    need = estimated_shared_bytes(config, shape)
    if need > device.max_shared_mem_per_block:
        return (f"shared memory: ~{need} B of K/V pipeline buffers > {device.max_shared_mem_per_block} B per block "
                f"on {device.name}")
    return None


def tile_fits_problem(config, shape, device) -> str | None:
    """A query tile longer than the prompt, or a key tile longer than the visible keys, only adds masked work."""
    if config["BLOCK_N"] > block_n_limit(shape):
        return f"BLOCK_N={config['BLOCK_N']} > {block_n_limit(shape)}: only {visible_keys(shape)} keys are visible"
    if config["BLOCK_M"] > block_m_limit(shape):
        return f"BLOCK_M={config['BLOCK_M']} > {block_m_limit(shape)}: the prompt has {shape['seq']} tokens"
    return None


def split_kv_useful(config, shape, device) -> str | None:
    """Each split-KV slice must own at least one BLOCK_N block of the visible keys."""
    split = config["SPLIT_KV"]
    if split == 1:
        return None
    keys = visible_keys(shape)
    if -(-keys // split) < config["BLOCK_N"]:
        return (f"SPLIT_KV={split}: slices of {-(-keys // split)} of {keys} visible keys are shorter than "
                f"BLOCK_N={config['BLOCK_N']}")
    return None


def kv_dtype_supported(config, shape, device) -> str | None:
    """fp8 K/V needs a device that converts e4m3 (compute capability >= 8.9)."""
    if config["kv_dtype"] == "fp8" and not fp8_supported(device):
        return (f"kv_dtype=fp8 needs compute capability >= {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} "
                f"({device.name})")
    return None


MAX_REGISTERS_PER_THREAD = 255
"""NVIDIA's per-thread register limit (CUDA C Programming Guide, compute capabilities table)."""


def tiles_fit_registers(config, shape, device) -> str | None:
    """The fp32 accumulator ``[M, D]`` and score tile ``[M, BLOCK_N]`` must fit a thread's registers together, or
    the kernel spills them to local memory (M = BLOCK_M; decode's is fixed at 16 rows)."""
    rows = config["BLOCK_M"]
    per_thread = rows * (shape["head_dim"] + config["BLOCK_N"]) // (32 * config["num_warps"])
    if per_thread > MAX_REGISTERS_PER_THREAD:
        return (f"accumulator + scores need {per_thread} fp32 registers per thread ({rows}x{shape['head_dim']} + "
                f"{rows}x{config['BLOCK_N']} over {config['num_warps']} warps) > {MAX_REGISTERS_PER_THREAD}")
    return None


CONSTRAINTS = (tile_fits_problem, split_kv_useful, kv_dtype_supported, tiles_fit_registers, fits_shared_memory)


def default_split(shape: Mapping[str, int], device, block_n: int) -> int:
    """Split-KV for decode: enough programs that B · Hkv · SPLIT_KV covers every SM twice, with slices of at
    least :data:`MIN_SPLIT_KEYS` keys and one BLOCK_N block, a power of two <= 64.

    gpt-oss at batch 1 has 8 KV-head programs: without splits 8 of an H100's 132 SMs stream the whole cache (measured
    on the H100, 2026-11-21, Triton 3.6, bf16: 28 GB/s at 32768 keys with SPLIT_KV = 1 against ~2 TB/s with 32-64).
    """
    sms = device.sm_count if device is not None else 132
    want = next_pow2(-(-2 * sms // (shape["batch"] * shape["heads_kv"])))
    keys = visible_keys(shape)
    split = 1
    while split < min(want, SPLITS[-1]) and keys // (2 * split) >= max(MIN_SPLIT_KEYS, block_n):
        split *= 2
    return split


def default(variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
    """The config without a table.

    From a sweep on the H100 (2026-11-21, Triton 3.6, bf16, gpt-oss heads; 24 prefill and ~150 decode configs per
    shape). Prefill: 128 x 64 tiles, 8 warps, 3 stages for long full-causal prompts (8192 tokens: 1376 µs, 400
    TFLOP/s, the best of the sweep); 64 x 64 with 4 warps under a sliding window or up to 1024 tokens (W = 128 at
    2048 tokens: 39 µs against 70 µs with 128-row tiles, which visit more masked blocks). Decode: split-KV from
    :func:`default_split` over 64-key blocks, one 128-key block when a window of <= 128 keys is all there is (3.1 µs
    against 3.6 µs). Both keep the activation-dtype cache (fp8 changes the numerics: a table entry may choose it).
    """
    keys = visible_keys(shape)
    if variant == "prefill":
        long_causal = not shape["window"] and shape["seq"] > 1024
        block_m = min(128 if long_causal else 64, block_m_limit(shape))
        config = {"BLOCK_M": block_m, "BLOCK_N": min(64, block_n_limit(shape)),
                  "num_warps": 8 if block_m >= 128 else 4, "num_stages": 3 if long_causal else 2, "SPLIT_KV": 1,
                  "kv_dtype": "act"}
    else:
        block_n = min(128 if keys <= 128 else 64, block_n_limit(shape))
        config = {"BLOCK_M": DECODE_ROWS, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 2,
                  "SPLIT_KV": default_split(shape, device, block_n), "kv_dtype": "act"}
    if device is not None and fits_shared_memory(config, shape, device):
        config["num_stages"] = 1
    return config


def space(variant: str, shape: Mapping[str, int], device) -> SearchSpace:
    """The search space of one variant at one shape on one device."""
    return SearchSpace(params=_params(variant, shape, device), constraints=CONSTRAINTS,
                       default=default(variant, shape, device))
