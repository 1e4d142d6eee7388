"""The default launch config of the gpt-oss flash attention for a shape and a device: what a runtime launches without
a tuned table entry, and trial 0 of every study (``search_spaces/attention.py`` reuses it and the tile limits below).

Shape dimensions: batch B, seq (prefill: prompt tokens; decode: keys in the cache), heads_q Hq, heads_kv Hkv,
head_dim D, window W (0: full causal). ``device`` is any object with ``max_shared_mem_per_block`` (bytes) and
``sm_count`` (``autotune.device.DeviceProfile`` is one); ``None`` means "no device limits known".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernels import next_pow2
from kernels.attention.config import MAX_SPLIT_KV, AttentionConfig

DECODE_ROWS = 16
"""Decode's M: the G query heads of a GQA group padded to at least 16 rows (``tl.dot``'s minimum)."""

MIN_SPLIT_KEYS = 64
"""Keys per split-KV slice the default keeps at least (one 64-key block of one KV head is 16 KB of bf16 K/V)."""


def visible_keys(shape: Mapping[str, int]) -> int:
    """Most keys one query sees: min(seq, W), or seq without a window."""
    return min(shape["seq"], shape["window"]) if shape["window"] else shape["seq"]


def block_n_limit(shape: Mapping[str, int]) -> int:
    """Largest useful BLOCK_N: the visible keys rounded up to a power of two, at least 16."""
    return max(16, next_pow2(visible_keys(shape)))


def block_m_limit(shape: Mapping[str, int]) -> int:
    """Largest useful prefill BLOCK_M: the prompt length rounded up to a power of two, at least 16."""
    return max(16, next_pow2(shape["seq"]))


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
    while split < min(want, MAX_SPLIT_KV) and keys // (2 * split) >= max(MIN_SPLIT_KEYS, block_n):
        split *= 2
    return split


def default_config(variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
    """The config without a table.

    From a sweep on the H100 (2026-11-21, Triton 3.6, bf16, gpt-oss heads; 24 prefill and ~150 decode configs per
    shape). Prefill: 128 x 64 tiles, 8 warps, 3 stages for long full-causal prompts (8192 tokens: 1376 µs, 400
    TFLOP/s, the best of the sweep); 64 x 64 with 4 warps under a sliding window or up to 1024 tokens (W = 128 at
    2048 tokens: 39 µs against 70 µs with 128-row tiles, which visit more masked blocks). Decode: split-KV from
    :func:`default_split` over 64-key blocks, one 128-key block when a window of <= 128 keys is all there is (3.1 µs
    against 3.6 µs). Both keep the class's default activation-dtype cache (fp8 changes the numerics: a table entry may
    choose it).
    """
    keys = visible_keys(shape)
    if variant == "prefill":
        long_causal = not shape["window"] and shape["seq"] > 1024
        block_m = min(128 if long_causal else 64, block_m_limit(shape))
        config = AttentionConfig(BLOCK_M=block_m, BLOCK_N=min(64, block_n_limit(shape)),
                                 num_warps=8 if block_m >= 128 else 4, num_stages=3 if long_causal else 2).as_dict()
    else:
        block_n = min(128 if keys <= 128 else 64, block_n_limit(shape))
        config = AttentionConfig(BLOCK_M=DECODE_ROWS, BLOCK_N=block_n, num_warps=4, num_stages=2,
                                 SPLIT_KV=default_split(shape, device, block_n)).as_dict()
    if device is not None and estimated_shared_bytes(config, shape) > device.max_shared_mem_per_block:
        config["num_stages"] = 1
    return config
