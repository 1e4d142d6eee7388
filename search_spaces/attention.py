"""Search space of the gpt-oss flash attention (``kernels.attention``), for both variants (prefill, decode).

Shape dimensions: batch B, seq (prefill: prompt tokens; decode: keys in the cache), heads_q Hq, heads_kv Hkv,
head_dim D, window W (0: full causal). "Visible keys" = min(seq, W), or seq without a window.
Every constraint returns a reason string when a config cannot work (the trial is PRUNED with that reason before
anything compiles) and None otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from autotune.tuning.space import Param, SearchSpace
from kernels.attention.heuristics import (DECODE_ROWS, block_m_limit, block_n_limit, default_config,
                                         estimated_shared_bytes, visible_keys)

POW2_TILES = (16, 32, 64, 128, 256)
SPLITS = (1, 2, 4, 8, 16, 32, 64)
FP8_MIN_CAPABILITY = (8, 9)
"""fp8 e4m3 conversions in Triton need sm_89 (Ada) or newer; the interpreter runs them on the CPU."""


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

COUPLED = (("BLOCK_M", "num_warps"),)
"""The incumbent moves also halve or double the query tile together with its warps. Triton lays the tile's query rows
over the warps (on Hopper, 64 rows per group of 4 warps; the default pairs 128 rows with 8 warps), so the two scale
together: at prefill 2048 on the H200 the best config, 64 rows with 4 warps, beat the default and neither change alone
did (64 with 8 warps 0.59x, 128 with 4 0.93x of the default; ``scripts/results/search-h200``). Decode offers one
BLOCK_M, so no joint move exists there."""


def space(variant: str, shape: Mapping[str, int], device) -> SearchSpace:
    """The search space of one variant at one shape on one device."""
    return SearchSpace(params=_params(variant, shape, device), constraints=CONSTRAINTS,
                       default=default_config(variant, shape, device), coupled=COUPLED)
