"""Search space of the few-token projection (``kernels.gemv``), for every variant (qkv, attn_out, router).

Shape dimensions: M rows (tokens, 1..4), N output features, K input features. The values span the H100 sweep that
chose the default (scripts/results/2026-11-21-h100-gemv-sweep.md: BLOCK_N 1-32 × BLOCK_K 128-1024 × 1-8 warps),
plus split-K, which that sweep did not try. num_stages has one choice: with Triton 3.9 it does not change the
compiled code of this kernel (offline compiles, 2026-12-02: identical sm_90 PTX for 1-4 stages at 2 x 1024 with 4
warps, and the same shared memory for 1 and 4 stages in all 84 configs of ``kernels.gemv.heuristics
.estimated_shared_bytes``'s check: the loads feed no ``tl.dot``, so nothing is staged); give it more values when a
Triton version pipelines them (a GPU sweep on Triton 3.6 was not done).
Every constraint returns a reason string when a config cannot work or cannot be good (the trial is PRUNED with that
reason before anything compiles) and None otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from autotune.tuning.space import Param, SearchSpace
from kernels.gemv.heuristics import (
    MAX_ACC_PER_THREAD,
    acc_per_thread,
    block_k_limit,
    block_n_limit,
    default_config,
    estimated_shared_bytes,
)

BLOCK_N = (1, 2, 4, 8, 16, 32)
BLOCK_K = (16, 32, 64, 128, 256, 512, 1024)
SPLITS = (1, 2, 4, 8, 16)
BLOCK_K_RANGE = 8
"""BLOCK_K spans the limit and the 3 powers of two below it (1024 down to 128 at gpt-oss widths, as swept)."""


def _block_k_choices(shape: Mapping[str, int]) -> tuple[int, ...]:
    top = block_k_limit(shape)
    return tuple(b for b in BLOCK_K if top // BLOCK_K_RANGE <= b <= top)


def _params(variant: str, shape: Mapping[str, int], device) -> tuple[Param, ...]:
    """The tunables at one shape: tiles stop at N and K rounded up to powers of two, split counts where a slice
    would hold less than the narrowest BLOCK_K."""
    block_k = _block_k_choices(shape)
    return (
        Param("BLOCK_N", tuple(b for b in BLOCK_N if b <= block_n_limit(shape)), doc="output features per program"),
        Param("BLOCK_K", block_k, doc="K elements per loop step and weight row"),
        Param("num_warps", (1, 2, 4, 8)),
        Param("num_stages", (3,), doc="software-pipelining depth of the K loop (no effect with Triton 3.9)"),
        Param("SPLIT_K", tuple(s for s in SPLITS if s == 1 or shape["K"] // s >= block_k[0]),
              doc="programs per output feature, each over one K slice, summed by a second kernel"),
    )


def tile_fits_problem(config, shape, device) -> str | None:
    """A feature tile wider than N, or a K step longer than K, only adds masked work."""
    if config["BLOCK_N"] > block_n_limit(shape):
        return f"BLOCK_N={config['BLOCK_N']} > {block_n_limit(shape)}: the weight has {shape['N']} rows"
    if config["BLOCK_K"] > block_k_limit(shape):
        return f"BLOCK_K={config['BLOCK_K']} > {block_k_limit(shape)}: K is {shape['K']}"
    return None


def accumulator_fits_threads(config, shape, device) -> str | None:
    """The fp32 ``[BLOCK_N, BLOCK_K]`` accumulator spread over the program's threads: at most
    :data:`kernels.gemv.heuristics.MAX_ACC_PER_THREAD` elements each (more spills registers), at least one (fewer:
    threads hold copies and load nothing of their own)."""
    per_thread = acc_per_thread(config)
    tile = f"{config['BLOCK_N']}x{config['BLOCK_K']} fp32 accumulator over {config['num_warps']} warps"
    if per_thread > MAX_ACC_PER_THREAD:
        return f"{tile}: {per_thread:g} elements per thread > {MAX_ACC_PER_THREAD}"
    if per_thread < 1:
        return f"{tile}: {per_thread:g} elements per thread < 1 (idle threads)"
    return None


def split_k_useful(config, shape, device) -> str | None:
    """Each K slice must own at least one BLOCK_K block (a slice past K only adds zeros and launches)."""
    blocks = math.ceil(shape["K"] / config["BLOCK_K"])
    if config["SPLIT_K"] > blocks:
        return (f"SPLIT_K={config['SPLIT_K']} > {blocks} BLOCK_K={config['BLOCK_K']} blocks of K={shape['K']}: "
                f"some slices are empty")
    return None


def fits_shared_memory(config, shape, device) -> str | None:
    """The reduction scratch must fit the device's shared memory per block (GB10: 101,376 B; the largest config
    here needs <= 32 kB, so this prunes only on a device with less)."""
    need = estimated_shared_bytes(config)
    if need > device.max_shared_mem_per_block:
        return (f"shared memory: ~{need} B of reduction scratch > {device.max_shared_mem_per_block} B per block "
                f"on {device.name}")
    return None


CONSTRAINTS = (tile_fits_problem, accumulator_fits_threads, split_k_useful, fits_shared_memory)


def space(variant: str, shape: Mapping[str, int], device) -> SearchSpace:
    """The search space of one variant at one shape on one device."""
    return SearchSpace(params=_params(variant, shape, device), constraints=CONSTRAINTS,
                       default=default_config(variant, shape, device))
