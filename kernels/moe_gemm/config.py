"""Shapes and launch configs of the MXFP4 MoE GEMM."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kernels import config_from_dict

VARIANTS = ("mlp1", "mlp2")
"""mlp1: hidden → 2·intermediate with SwiGLU (gate/linear interleaved); mlp2: intermediate → hidden, gate-weighted
sum over the top-k."""

SCHEDULES = ("grid", "persistent")
DEQUANT_PATHS = ("dot_scaled", "upcast", "upcast_ptx", "dp4a")
DP4A_MIN_CAPABILITY = (6, 1)
"""``dp4a`` exists from sm_61 on (PTX ISA, "Integer Arithmetic Instructions: dp4a")."""

PATHS = ("mma", "gemv")
"""Kernel designs: "mma" (BLOCK_M x BLOCK_N tiles through the tensor cores, BLOCK_M >= 16 rows, padded when an
expert has fewer) and "gemv" (CUDA-core dot products for few rows per expert: BLOCK_M in 1..16 rows, no padding to an
MMA tile; see :func:`kernels.moe_gemm.triton_kernels.moe_mxfp4_gemv_kernel`)."""
GEMV_MAX_BLOCK_M = 16
"""Most rows one gemv program owns: its FMAs grow with BLOCK_M while its weight decode does not, so past ~16 rows per
expert the MMA path does the same work with tensor cores."""


MAX_NUM_WARPS = 32
"""1024 threads per block at most on every CUDA GPU (CUDA C Programming Guide, "Technical Specifications per Compute
Capability"): 32 warps of 32 threads."""

MAX_BLOCK = 1024
"""Largest tile side accepted: a 1024 x 1024 tile is Triton's largest tensor (``TRITON_MAX_TENSOR_NUMEL`` = 2**20
elements, ``triton/language/core.py``); the search space offers at most 256."""

MAX_GROUP_M = 1024
MAX_SPLIT_K = 64
MAX_PROGRAMS_PER_SM = 32
"""Bounds of the schedule knobs, far above what the search space offers (GROUP_M 16, SPLIT_K 8, 4 programs per SM):
they keep grid arithmetic in int32 and refuse nonsense such as ``GROUP_M: 2**62`` from a hand-edited table."""

_UPPER = {"BLOCK_M": MAX_BLOCK, "BLOCK_N": MAX_BLOCK, "BLOCK_K": MAX_BLOCK, "GROUP_M": MAX_GROUP_M,
          "num_warps": MAX_NUM_WARPS, "SPLIT_K": MAX_SPLIT_K, "programs_per_sm": MAX_PROGRAMS_PER_SM}


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class MoeShape:
    """Problem size of one MoE GEMM call.

    Attributes:
        M: tokens T in the batch (decode: 1..16, prefill: up to 8192).
        N: output features of the GEMM (mlp1: 2·intermediate = 5760 in gpt-oss; mlp2: hidden = 2880).
        K: input features (mlp1: hidden; mlp2: intermediate); a multiple of 32 (MXFP4 group).
        E: experts (32 in gpt-oss-20b, 128 in 120b).
        top_k: experts per token (4 in gpt-oss).
    """

    M: int
    N: int
    K: int
    E: int
    top_k: int

    def __post_init__(self) -> None:
        if self.M < 0 or min(self.N, self.K, self.E, self.top_k) < 1:
            raise ValueError(f"invalid MoE shape {self}")
        if self.K % 32:
            raise ValueError(f"K={self.K} is not a multiple of the MXFP4 group size 32")
        if self.top_k > self.E:
            raise ValueError(f"top_k={self.top_k} exceeds E={self.E}")

    @property
    def rows(self) -> int:
        """R = M · top_k routed rows."""
        return self.M * self.top_k

    @classmethod
    def for_variant(cls, variant: str, *, M: int, hidden: int, intermediate: int, E: int, top_k: int) -> MoeShape:
        """The GEMM shape of one MLP call of a gpt-oss model.

        Args:
            variant: "mlp1" or "mlp2".
            M: tokens.
            hidden: model width (2880 in gpt-oss).
            intermediate: expert width (2880 in gpt-oss).
            E: experts.
            top_k: experts per token.

        Raises:
            ValueError: for an unknown variant.
        """
        if variant == "mlp1":
            return cls(M=M, N=2 * intermediate, K=hidden, E=E, top_k=top_k)
        if variant == "mlp2":
            return cls(M=M, N=hidden, K=intermediate, E=E, top_k=top_k)
        raise ValueError(f"unknown moe_gemm variant {variant!r} (expected one of {VARIANTS})")

    def as_dict(self) -> dict[str, int]:
        """``{"M": .., "N": .., "K": .., "E": .., "top_k": ..}``."""
        return asdict(self)


@dataclass(frozen=True)
class MoeGemmConfig:
    """Launch config of :func:`kernels.moe_gemm.moe_mlp1` / :func:`kernels.moe_gemm.moe_mlp2`.

    Attributes:
        path: "mma" (tensor-core tiles) or "gemv" (CUDA-core dot products for few rows per expert); see
            :data:`PATHS`.
        BLOCK_M: routed rows per tile (path "mma": power of two ≥ 16, the smallest tl.dot M; path "gemv": power of
            two in 1..16, the most rows of one expert a program multiplies with each decoded weight tile; its loop
            runs over the real rows only, so the default 16 covers an expert's rows in one program).
        BLOCK_N: output features per tile (power of two ≥ 16).
        BLOCK_K: reduction step (power of two, multiple of the MXFP4 group 32).
        GROUP_M: row blocks that sweep the N blocks together (L2 reuse of weight tiles; path "mma" only, must be 1
            for "gemv", whose programs already reuse each weight tile over their BLOCK_M rows).
        num_warps: warps per program.
        num_stages: software-pipelining depth of the K loop.
        schedule: "grid" (one program per tile) or "persistent" (programs_per_sm · SMs programs loop over tiles;
            path "gemv" only with ``dequant="dp4a"``, where ``l2_prefetch`` then fetches each program's next tile).
        programs_per_sm: programs per SM of the persistent schedule (1 for "grid").
        SPLIT_K: K slices reduced with float32 atomics (decode: more programs in flight). mlp1 needs the unfused
            SwiGLU for SPLIT_K > 1, since the activation applies to the whole sum.
        fuse_swiglu: mlp1 only: SwiGLU in the GEMM epilogue instead of a second kernel over h.
        dequant: "dot_scaled" (``tl.dot_scaled`` with e2m1 operands), "upcast" (decode to the activation dtype in
            registers, then ``tl.dot``) or "upcast_ptx" (the same with the inline-PTX decode; sm_90+, bf16 activations
            on the MMA path). Path "gemv" decodes to float32 with Triton ops ("upcast") or the inline PTX
            ("upcast_ptx", any activation dtype), not "dot_scaled"; "dp4a" (gemv only) multiplies in int32 instead:
            weights looked up as int8, activations split into exact byte planes
            (:mod:`kernels.moe_gemm.gemv_dp4a`).
        swap_ab: path "mma" with a register decode ("upcast", "upcast_ptx") only: the decoded weights are the MMA's
            first (M-side) operand and the routed rows its second, ``acc^T[BN, BM] = W · A^T`` (CUTLASS and
            TensorRT-LLM call this swap-AB, triton_kernels ``swap_xw``). On Hopper, wgmma reads its first operand
            from registers and only its second from shared memory, so the decoded tile feeds the tensor cores
            without a shared-memory round trip, and BLOCK_M (the MMA's N side) can be as small as 16 rows.
        l2_prefetch: path "gemv" with ``dequant="dp4a"`` only: before its K loop each program asks L2 for its whole
            weight tile (codes and scales of its rows and K slice, one ``prefetch.global.L2`` per 128-byte line), so
            that the loads of each K step wait on L2 instead of DRAM while only one step is held in registers; with
            the persistent schedule, for its next tile while it multiplies the current one.

    The field defaults are the shape-independent part of the default config; the tile fields' defaults are generic
    and :func:`kernels.moe_gemm.heuristics.default_config` replaces them per shape and device (it is the default a
    runtime launches, built from this class, so the two cannot disagree).

    Raises:
        ValueError: on an impossible combination or a value out of bounds (checked at construction): every integer
            knob is a power of two, at most :data:`MAX_BLOCK` (tiles), :data:`MAX_GROUP_M`, :data:`MAX_NUM_WARPS`,
            :data:`MAX_SPLIT_K`, :data:`MAX_PROGRAMS_PER_SM`.
    """

    BLOCK_M: int = 64
    BLOCK_N: int = 64
    BLOCK_K: int = 64
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 3
    schedule: str = "grid"
    programs_per_sm: int = 1
    SPLIT_K: int = 1
    fuse_swiglu: bool = True
    dequant: str = "upcast"
    path: str = "mma"
    swap_ab: bool = False
    l2_prefetch: bool = False

    def __post_init__(self) -> None:
        for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "SPLIT_K", "programs_per_sm"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not _is_pow2(value):
                raise ValueError(f"{name}={value!r} must be a positive power of two")
            if value > _UPPER[name]:
                raise ValueError(f"{name}={value} must be <= {_UPPER[name]}")
        if self.path not in PATHS:
            raise ValueError(f"path={self.path!r} must be one of {PATHS}")
        if self.path == "mma" and min(self.BLOCK_M, self.BLOCK_N) < 16:
            raise ValueError(f"BLOCK_M={self.BLOCK_M} and BLOCK_N={self.BLOCK_N} must be ≥ 16 (tl.dot minimum)")
        if self.path == "gemv":
            if self.BLOCK_M > GEMV_MAX_BLOCK_M:
                raise ValueError(f"path='gemv' takes BLOCK_M <= {GEMV_MAX_BLOCK_M} rows, got {self.BLOCK_M}")
            if self.BLOCK_N < 16:
                raise ValueError(f"path='gemv' needs BLOCK_N >= 16, got {self.BLOCK_N}")
            if self.dequant == "dot_scaled":
                raise ValueError("path='gemv' decodes in registers (dequant='upcast', 'upcast_ptx' or 'dp4a'): "
                                 "tl.dot_scaled needs an MMA")
            if self.GROUP_M != 1:
                raise ValueError("path='gemv' takes GROUP_M=1 (its programs already reuse each weight tile over "
                                 "their rows)")
            if self.schedule != "grid" and self.dequant != "dp4a":
                raise ValueError("path='gemv' runs one program per tile (schedule='grid') except with dequant='dp4a'")
        elif self.dequant == "dp4a":
            raise ValueError("dequant='dp4a' is a gemv decode (path='gemv'): its int32 products have no MMA tile")
        if self.BLOCK_K < 32:
            raise ValueError(f"BLOCK_K={self.BLOCK_K} must be a multiple of the MXFP4 group size 32")
        if not isinstance(self.num_stages, int) or isinstance(self.num_stages, bool) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages={self.num_stages!r} must be in 1..8")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} must be one of {SCHEDULES}")
        if self.schedule == "grid" and self.programs_per_sm != 1:
            raise ValueError("programs_per_sm only applies to the persistent schedule")
        if self.dequant not in DEQUANT_PATHS:
            raise ValueError(f"dequant={self.dequant!r} must be one of {DEQUANT_PATHS}")
        if not isinstance(self.fuse_swiglu, bool):
            raise ValueError(f"fuse_swiglu={self.fuse_swiglu!r} must be a bool")
        if not isinstance(self.swap_ab, bool):
            raise ValueError(f"swap_ab={self.swap_ab!r} must be a bool")
        if not isinstance(self.l2_prefetch, bool):
            raise ValueError(f"l2_prefetch={self.l2_prefetch!r} must be a bool")
        if self.l2_prefetch and (self.path != "gemv" or self.dequant != "dp4a"):
            raise ValueError("l2_prefetch=True needs path='gemv' with dequant='dp4a', got "
                             f"path={self.path!r}, dequant={self.dequant!r}")
        if self.swap_ab and (self.path != "mma" or self.dequant not in ("upcast", "upcast_ptx")):
            raise ValueError("swap_ab=True needs path='mma' with a register decode (dequant='upcast' or "
                             f"'upcast_ptx'), got path={self.path!r}, dequant={self.dequant!r}")

    @classmethod
    def from_dict(cls, params: dict) -> MoeGemmConfig:
        """Build from a mapping of field names; unknown keys raise ValueError."""
        return config_from_dict(cls, params, "moe_gemm")

    def as_dict(self) -> dict:
        """The config as a plain dict (JSON-ready)."""
        return asdict(self)
