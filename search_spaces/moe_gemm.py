"""Search space of the MXFP4 MoE GEMM (``kernels.moe_gemm``), for both variants (mlp1, mlp2).

Shape dimensions: M tokens, N output features, K input features, E experts, top_k. R = M·top_k routed rows.
Every constraint returns a reason string when a config cannot work (the trial is PRUNED with that reason before
anything compiles) and None otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from autotune.tuning.space import Param, SearchSpace, next_pow2
from kernels.moe_gemm.config import DP4A_MIN_CAPABILITY, GEMV_MAX_BLOCK_M
from kernels.moe_gemm.heuristics import (
    default_config,
    estimated_shared_bytes,
    rows_per_expert,
)

POW2_TILES = (16, 32, 64, 128, 256)

GEMV_SPLIT_K_PROGRAMS_PER_SM = 16
"""Split-K of the gemv is pruned once its tiles alone give this many programs per SM (a gemv program has about one
K step of bytes in flight, so it needs several times the MMA path's 2 waves to cover DRAM latency)."""


def gemv_offered(shape: Mapping[str, int]) -> bool:
    """The gemv path is offered while BLOCK_M = 16 is the only useful row block (at most 8 rows per expert on
    average, :func:`block_m_limit`): one gemv program then covers an expert's rows (its row loop runs over the real
    rows only), and beyond, a 16-row MMA tile does the same work on tensor cores."""
    return block_m_limit(shape) <= GEMV_MAX_BLOCK_M


def _is_mma(config: Mapping) -> bool:
    return config.get("path", "mma") == "mma"


def _params(variant: str, shape: Mapping[str, int]) -> tuple[Param, ...]:
    """The tunables at one shape. Tile choices stop where a tile would be mostly padding (BLOCK_M beyond twice the
    rows per expert, BLOCK_N/BLOCK_K beyond N/K), so the sampler spends no trials there (seen on the H100,
    2026-11-21: with all five BLOCK_M offered, over 90% of the decode trials were pruned for it). ``dequant`` comes
    first and ``path`` after it (the gemv decodes in registers: it exists for "upcast" and "upcast_ptx", so a config
    naming "dot_scaled" is an MMA config; "dp4a" is offered only where the gemv is, exists only on it and so implies
    ``path = "gemv"``, and :class:`kernels.moe_gemm.config.MoeGemmConfig` refuses a hand-given MMA config naming it);
    the MMA-only tunables (GROUP_M, schedule) are inactive on the gemv path, ``swap_ab``
    also with "dot_scaled", ``l2_prefetch`` everywhere but the dp4a gemv; where the gemv is offered it adds
    BLOCK_N = 16 and BLOCK_K = 512 (narrow, long programs) to the choices."""
    gemv = gemv_offered(shape)
    block_m = tuple(b for b in POW2_TILES if b <= block_m_limit(shape))
    block_n = tuple(b for b in POW2_TILES if (16 if gemv else 32) <= b <= max(32, next_pow2(shape["N"])))
    block_k = tuple(b for b in (32, 64, 128, 256, 512)
                    if b <= max(32, next_pow2(shape["K"])) and (gemv or b <= 256))
    params = [
        Param("dequant", ("dot_scaled", "upcast", "upcast_ptx") + (("dp4a",) if gemv else ()),
              doc="tl.dot_scaled, or decode in registers (Triton ops, or inline PTX on sm_90+), or (gemv only) "
                  "int8 lookup + dp4a on exact activation byte planes"),
        Param("path", ("mma", "gemv") if gemv else ("mma",), when=lambda c: c["dequant"] in ("upcast", "upcast_ptx"),
              inactive="mma", implied=(("dequant", "dp4a", "gemv"),),
              doc="tensor-core tiles, or CUDA-core dot products for few rows per expert"),
        Param("swap_ab", (False, True), when=lambda c: _is_mma(c) and c["dequant"] in ("upcast", "upcast_ptx"),
              inactive=False, doc="decoded weights as the MMA's first operand (wgmma reads it from registers)"),
        Param("l2_prefetch", (False, True), when=lambda c: c["dequant"] == "dp4a", inactive=False,
              doc="dp4a gemv: prefetch each program's weight tile into L2 before its K loop"),
        Param("BLOCK_M", block_m, doc="routed rows per tile (gemv: the most rows of one expert per program)"),
        Param("BLOCK_N", block_n, doc="output features per tile (mma >= 32: the fused SwiGLU halves it)"),
        Param("BLOCK_K", block_k, doc="K step, a multiple of the MXFP4 group 32"),
        Param("GROUP_M", (1, 4, 8, 16), when=_is_mma, inactive=1, doc="row blocks sweeping N together (L2 reuse)"),
        Param("num_warps", (2, 4, 8)),
        Param("num_stages", (1, 2, 3, 4, 5), doc="software-pipelining depth"),
        Param("schedule", ("grid", "persistent"), when=_is_mma, inactive="grid",
              doc="persistent: a program per SM slot loops over the tiles (MMA path; the dp4a gemv's persistent "
                  "schedule is not offered: slower at all 48 points of the 2026-12-08 H100 sweep)"),
        Param("programs_per_sm", (1, 2, 4), when=lambda c: c["schedule"] == "persistent", inactive=1,
              doc="persistent schedule only"),
    ]
    if variant == "mlp1":
        params.append(Param("fuse_swiglu", (True, False), doc="SwiGLU in the GEMM epilogue"))
        params.append(Param("SPLIT_K", (1, 2, 4, 8), when=lambda c: not c["fuse_swiglu"], inactive=1,
                            doc="unfused SwiGLU only"))
    else:
        params.append(Param("fuse_swiglu", (True,), doc="not used by mlp2"))
        params.append(Param("SPLIT_K", (1, 2, 4, 8)))
    return tuple(params)


def fits_shared_memory(config, shape, device) -> str | None:
    """Pipeline buffers must fit the device's shared memory per block (GB10: 101,376 B)."""
    need = estimated_shared_bytes(config)
    if need > device.max_shared_mem_per_block:
        return (f"shared memory: ~{need} B of pipeline buffers > {device.max_shared_mem_per_block} B per block "
                f"on {device.name}")
    return None


def block_m_limit(shape: Mapping[str, int]) -> int:
    """Largest useful BLOCK_M: twice the mean rows per expert, rounded up to a power of two, at least 16."""
    return max(16, next_pow2(2 * rows_per_expert(shape)))


def block_m_fits_rows(config, shape, device) -> str | None:
    """BLOCK_M beyond twice the mean rows per expert would be mostly padding (for configs given by hand)."""
    limit = block_m_limit(shape)
    if config["BLOCK_M"] > limit:
        return (f"BLOCK_M={config['BLOCK_M']} > {limit}: about {rows_per_expert(shape):.1f} routed rows per expert, "
                "the tile would be mostly padding")
    return None


def tile_fits_problem(config, shape, device) -> str | None:
    """A tile wider than the problem (N or K rounded up) only adds masked work."""
    if config["BLOCK_N"] > next_pow2(shape["N"]) or config["BLOCK_K"] > next_pow2(shape["K"]):
        return f"tile {config['BLOCK_N']}x{config['BLOCK_K']} exceeds N={shape['N']}, K={shape['K']}"
    if _is_mma(config) and config.get("fuse_swiglu") and config["BLOCK_N"] < 32:
        return "fused SwiGLU needs BLOCK_N >= 32 (its output tile is BLOCK_N/2 >= 16 columns)"
    if _is_mma(config) and config["BLOCK_N"] < 16:
        return f"BLOCK_N={config['BLOCK_N']} < 16, the smallest tl.dot N"
    return None


GEMV_MAX_DECODED_PER_THREAD = 128
"""Most registers of decoded weights a gemv thread holds per K step: half the 255-register limit, leaving the rest
for the products, activations and addresses. The float decodes hold one float32 per weight (BLOCK_N·BLOCK_K /
threads); dp4a holds, per 32-weight group of a row, 4 code words, their 8 int32 lookup sums and the partial sums:
about 27 registers (sm_90 SASS of the mlp1 kernel compiled offline with Triton 3.9.0, BLOCK_K 512, 4 warps: 72 /
124 / 247 registers at 2 / 4 / 8 rows per thread, i.e. BLOCK_N 16 / 32 / 64; ncu on the H200 with Triton 3.6.0 read
122 at 4 rows, scripts/results/2026-12-04-h200-ncu-mlp1-M1-dp4a-rows-in-thread.txt)."""


def gemv_tile_fits_registers(config, shape, device) -> str | None:
    """The gemv decodes a whole ``[BLOCK_N, BLOCK_K]`` weight tile to registers per K step."""
    if _is_mma(config):
        return None
    weights = config["BLOCK_N"] * config["BLOCK_K"] // (32 * config["num_warps"])
    per_thread = weights * 27 // 32 if config["dequant"] == "dp4a" else weights
    if per_thread > GEMV_MAX_DECODED_PER_THREAD:
        return (f"gemv tile {config['BLOCK_N']}x{config['BLOCK_K']} over {config['num_warps']} warps holds "
                f"{per_thread} registers of decoded weights per thread > {GEMV_MAX_DECODED_PER_THREAD}")
    return None


def split_k_useful(config, shape, device) -> str | None:
    """Split-K only helps when the tiles alone leave SMs idle; each slice must own at least one K step."""
    split = config["SPLIT_K"]
    if split == 1:
        return None
    k_steps = -(-shape["K"] // config["BLOCK_K"])
    if split > k_steps:
        return f"SPLIT_K={split} > {k_steps} K steps of BLOCK_K={config['BLOCK_K']}"
    rows = shape["M"] * shape["top_k"]
    row_blocks = min(shape["E"], rows) + max(0, rows - shape["E"]) // config["BLOCK_M"]
    tiles = row_blocks * -(-shape["N"] // config["BLOCK_N"])
    # A gemv program holds ~1 K step of bytes in flight, far less than an MMA tile's pipeline: split-K is offered up
    # to GEMV_SPLIT_K_PROGRAMS_PER_SM programs per SM.
    waves = 2 if _is_mma(config) else GEMV_SPLIT_K_PROGRAMS_PER_SM
    if tiles >= waves * device.sm_count:
        return (f"SPLIT_K={split} with {tiles} tiles >= {waves} programs per SM on {device.sm_count} SMs: atomics "
                "for no parallelism")
    return None


def dequant_supported(config, shape, device) -> str | None:
    """The inline-PTX decode uses ``mul.rn.bf16x2`` (PTX ISA 7.8: sm_90 and newer) and needs a CUDA device; dp4a
    needs sm_61 or newer on a GPU (the interpreter runs its Triton-op twin)."""
    if config["dequant"] == "upcast_ptx" and (not device.is_gpu or tuple(device.compute_capability) < (9, 0)):
        return f"dequant=upcast_ptx needs a CUDA GPU with compute capability >= 9.0 ({device.name})"
    if (config["dequant"] == "dp4a" and device.is_gpu
            and tuple(device.compute_capability) < DP4A_MIN_CAPABILITY):
        return f"dequant=dp4a needs compute capability >= 6.1 ({device.name})"
    return None


MAX_REGISTERS_PER_THREAD = 255
"""NVIDIA's per-thread register limit (CUDA C Programming Guide, compute capabilities table)."""


def accumulator_fits_registers(config, shape, device) -> str | None:
    """The fp32 accumulator alone must fit a thread's registers, or the kernel spills it to local memory.

    Seen on the H100 (2026-11-21, Triton 3.6): BLOCK 256x256 with 2 warps (1024 accumulator registers per thread)
    produced NaN in 6% of the mlp2 outputs at M=4096, caught by the correctness check.
    """
    per_thread = config["BLOCK_M"] * config["BLOCK_N"] // (32 * config["num_warps"])
    if per_thread > MAX_REGISTERS_PER_THREAD:  # (the gemv's accumulator is at most 16 x BLOCK_N: gemv limit below)
        return (f"accumulator needs {per_thread} fp32 registers per thread "
                f"({config['BLOCK_M']}x{config['BLOCK_N']} over {config['num_warps']} warps) > "
                f"{MAX_REGISTERS_PER_THREAD}")
    return None


CONSTRAINTS = (tile_fits_problem, block_m_fits_rows, split_k_useful, accumulator_fits_registers,
               gemv_tile_fits_registers, fits_shared_memory, dequant_supported)


def space(variant: str, shape: Mapping[str, int], device) -> SearchSpace:
    """The search space of one variant at one shape on one device."""
    return SearchSpace(params=_params(variant, shape), constraints=CONSTRAINTS,
                       default=default_config(variant, shape, device))
