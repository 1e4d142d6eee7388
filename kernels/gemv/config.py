"""Shapes and launch configs of the few-token dense projection (``out = x @ W.T + b``).

Legend: M rows (tokens), K input features, N output features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kernels import config_from_dict

VARIANTS = ("qkv", "attn_out", "router")
"""The projections gpt-oss launches through the gemv at decode (``autotune/model/model.py``): qkv (hidden →
Hq·D + 2·Hkv·D, with bias), attn_out (Hq·D → hidden, with bias) and router (hidden → E, with bias)."""

MAX_ROWS = 4
"""Largest M served: each row's program re-reads W (from L2 when the rows run together), so beyond a few rows a
tensor-core GEMM wins."""

MAX_SPLIT_K = 64
"""Most K slices of one output row (their fp32 partial sums are reduced by a second kernel)."""

MAX_WARPS = 32
"""1024 threads per block: CUDA's limit on every compute capability (CUDA C Programming Guide, Table 21)."""


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be an integer")  # noqa: TRY004 - config_from_dict raises ValueError


@dataclass(frozen=True)
class GemvShape:
    """Problem size of one projection call.

    Attributes:
        M: rows (tokens), 0..:data:`MAX_ROWS`.
        N: output features (gpt-oss: qkv 5120, attn_out 2880, router E = 32 or 128).
        K: input features (gpt-oss: qkv and router 2880, attn_out 4096).
    """

    M: int
    N: int
    K: int

    def __post_init__(self) -> None:
        for name in ("M", "N", "K"):
            _check_int(name, getattr(self, name))
        if self.M < 0 or self.N < 1 or self.K < 1:
            raise ValueError(f"invalid gemv shape {self}")
        if self.M > MAX_ROWS:
            raise ValueError(f"gemv serves at most {MAX_ROWS} rows, got M={self.M}")

    @classmethod
    def for_variant(cls, variant: str, *, M: int, hidden: int, heads_q: int, heads_kv: int, head_dim: int,
                    E: int) -> GemvShape:
        """The shape of one projection of a gpt-oss model.

        Args:
            variant: "qkv", "attn_out" or "router".
            M: tokens.
            hidden: model width (2880 in gpt-oss).
            heads_q, heads_kv, head_dim: attention heads (64, 8, 64 in gpt-oss).
            E: experts (32 in gpt-oss-20b, 128 in 120b).

        Raises:
            ValueError: for an unknown variant or an invalid shape.
        """
        if variant == "qkv":
            return cls(M=M, N=(heads_q + 2 * heads_kv) * head_dim, K=hidden)
        if variant == "attn_out":
            return cls(M=M, N=hidden, K=heads_q * head_dim)
        if variant == "router":
            return cls(M=M, N=E, K=hidden)
        raise ValueError(f"unknown gemv variant {variant!r} (expected one of {VARIANTS})")

    def as_dict(self) -> dict[str, int]:
        """``{"M": .., "N": .., "K": ..}``."""
        return asdict(self)


@dataclass(frozen=True)
class GemvConfig:
    """Launch config of :func:`kernels.gemv.gemv`.

    Attributes:
        BLOCK_N: output features per program (power of two >= 1).
        BLOCK_K: K elements per loop step and row of W (power of two >= 16).
        num_warps: warps per program (power of two, 1..32).
        num_stages: software-pipelining depth of the K loop (1..8).
        SPLIT_K: programs that share one output feature's K (power of two, 1..64); their fp32 partial sums are
            added, with the bias, by a second kernel when > 1.

    The field defaults are the shape-independent part of the default config (what the launcher ran before it took
    a config: Triton's default of 3 stages for CUDA, no split-K); :func:`kernels.gemv.heuristics.default_config`
    sets the tiles and warps per shape, built from this class, so the two cannot disagree.

    Raises:
        ValueError: on an impossible value (checked at construction).
    """

    BLOCK_N: int = 2
    BLOCK_K: int = 1024
    num_warps: int = 4
    num_stages: int = 3
    SPLIT_K: int = 1

    def __post_init__(self) -> None:
        for name in ("BLOCK_N", "BLOCK_K", "num_warps", "SPLIT_K"):
            value = getattr(self, name)
            _check_int(name, value)
            if not _is_pow2(value):
                raise ValueError(f"{name}={value!r} must be a positive power of two")
        if self.BLOCK_K < 16:
            raise ValueError(f"BLOCK_K={self.BLOCK_K} must be >= 16")
        if self.num_warps > MAX_WARPS:
            raise ValueError(f"num_warps={self.num_warps} must be <= {MAX_WARPS}")
        if self.SPLIT_K > MAX_SPLIT_K:
            raise ValueError(f"SPLIT_K={self.SPLIT_K} must be <= {MAX_SPLIT_K}")
        _check_int("num_stages", self.num_stages)
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages={self.num_stages!r} must be in 1..8")

    @classmethod
    def from_dict(cls, params: dict) -> GemvConfig:
        """Build from a mapping of field names; unknown keys raise ValueError."""
        return config_from_dict(cls, params, "gemv")

    def as_dict(self) -> dict:
        """The config as a plain dict (JSON-ready)."""
        return asdict(self)
