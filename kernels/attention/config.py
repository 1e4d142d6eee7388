"""Shapes, launch configs and KV-cache storage formats of the gpt-oss flash attention.

Legend: B sequences, S keys per sequence (the context), Hq query heads, Hkv KV heads, D head dim, W sliding window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kernels import config_from_dict

import torch

VARIANTS = ("prefill", "decode")
"""prefill: every position of a prompt attends (causal, FlashAttention-2 style); decode: one new query per sequence
attends to its whole cache (split-KV, all heads of a GQA group in one program)."""

KV_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}
"""Storage formats of the KV cache by name."""

KV_CONFIG_DTYPES = ("act", "fp8")
"""``AttentionConfig.kv_dtype``: "act" = the activation dtype (bf16 on GPUs), "fp8" = e4m3 (no scale)."""

FP8_MAX = 448.0
"""Largest finite float8_e4m3fn (OCP FP8 spec: S.1111.110 = 1.75 · 2^8)."""

MAX_SPLIT_KV = 64

MAX_NUM_WARPS = 32
"""1024 threads per block at most on every CUDA GPU (CUDA C Programming Guide, "Technical Specifications per Compute
Capability"): 32 warps of 32 threads."""

MAX_BLOCK = 1024
"""Largest tile side accepted: a 1024 x 1024 tile is Triton's largest tensor (``TRITON_MAX_TENSOR_NUMEL`` = 2**20
elements, ``triton/language/core.py``); the search space offers at most 256."""


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def kv_storage_dtype(kv_dtype: str, act_dtype: torch.dtype) -> torch.dtype:
    """The cache tensor dtype of an ``AttentionConfig.kv_dtype`` name: "act" → ``act_dtype``, "fp8" → e4m3.

    The one place the names map to dtypes (the kernels' launch checks, the model's cache, the benchmarks' byte
    counts).

    Raises:
        ValueError: for a name outside :data:`KV_CONFIG_DTYPES`.
    """
    if kv_dtype not in KV_CONFIG_DTYPES:
        raise ValueError(f"kv_dtype={kv_dtype!r} must be one of {KV_CONFIG_DTYPES}")
    return act_dtype if kv_dtype == "act" else KV_DTYPES[kv_dtype]


def to_kv_dtype(x: torch.Tensor, kv_dtype: torch.dtype) -> torch.Tensor:
    """Cast keys or values for storing into the cache.

    Args:
        x: ``[..., D]`` keys or values in the activation dtype.
        kv_dtype: the cache's dtype; float8_e4m3fn saturates to ±448 first (an e4m3 cast of a larger value would be
            NaN), with no scale: gpt-oss keys and values after RMSNorm and the projections stay far below that.

    Returns:
        ``x`` in ``kv_dtype`` (``x`` itself when it already is).
    """
    if kv_dtype == torch.float8_e4m3fn:
        return x.clamp(-FP8_MAX, FP8_MAX).to(kv_dtype)
    return x.to(kv_dtype)


@dataclass(frozen=True)
class AttentionShape:
    """Problem size of one attention call.

    Attributes:
        batch: B sequences.
        seq: prefill: prompt tokens per sequence (queries at positions 0..seq-1, keys the same); decode: keys in the
            cache of each sequence (the one query sits at position seq-1).
        heads_q: Hq query heads (64 in gpt-oss).
        heads_kv: Hkv KV heads (8 in gpt-oss); Hq is a multiple of it.
        head_dim: D (64 in gpt-oss); a power of two >= 16 (the smallest ``tl.dot`` K).
        window: W, the sliding window (128 on gpt-oss's even layers), 0 for full causal attention.
    """

    batch: int
    seq: int
    heads_q: int
    heads_kv: int
    head_dim: int
    window: int

    def __post_init__(self) -> None:
        if min(self.batch, self.seq, self.heads_q, self.heads_kv) < 1 or self.window < 0:
            raise ValueError(f"invalid attention shape {self}")
        if self.heads_q % self.heads_kv:
            raise ValueError(f"heads_q={self.heads_q} is not a multiple of heads_kv={self.heads_kv}")
        if self.head_dim < 16 or not _is_pow2(self.head_dim):
            raise ValueError(f"head_dim={self.head_dim} must be a power of two >= 16")

    @property
    def group(self) -> int:
        """G = Hq / Hkv query heads per KV head."""
        return self.heads_q // self.heads_kv

    @property
    def visible_keys(self) -> int:
        """Most keys one query sees: min(seq, W), or seq without a window."""
        return min(self.seq, self.window) if self.window else self.seq

    def as_dict(self) -> dict[str, int]:
        """``{"batch", "seq", "heads_q", "heads_kv", "head_dim", "window"}``."""
        return asdict(self)


@dataclass(frozen=True)
class AttentionConfig:
    """Launch config of :func:`kernels.attention.attention_prefill` / :func:`kernels.attention.attention_decode`.

    Attributes:
        BLOCK_M: prefill: queries per program (power of two >= 16); decode ignores it (its M is the GQA group,
            padded to 16 rows).
        BLOCK_N: keys per loop step (power of two >= 16).
        num_warps: warps per program.
        num_stages: software-pipelining depth of the key loop.
        SPLIT_KV: decode: programs that share one sequence's keys (power of two, 1..64), merged by a second kernel
            when > 1; prefill ignores it.
        kv_dtype: "act" (the cache holds the activation dtype) or "fp8" (float8_e4m3fn, converted to the query dtype
            in registers).

    Raises:
        ValueError: on an impossible value (checked at construction): tiles are powers of two in 16..
            :data:`MAX_BLOCK`, ``num_warps`` a power of two up to :data:`MAX_NUM_WARPS`, ``SPLIT_KV`` up to
            :data:`MAX_SPLIT_KV`.
    """

    BLOCK_M: int = 64
    BLOCK_N: int = 64
    num_warps: int = 4
    num_stages: int = 2
    SPLIT_KV: int = 1
    kv_dtype: str = "act"

    def __post_init__(self) -> None:
        for name in ("BLOCK_M", "BLOCK_N", "num_warps", "SPLIT_KV"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not _is_pow2(value):
                raise ValueError(f"{name}={value!r} must be a positive power of two")
        if min(self.BLOCK_M, self.BLOCK_N) < 16:
            raise ValueError(f"BLOCK_M={self.BLOCK_M} and BLOCK_N={self.BLOCK_N} must be >= 16 (tl.dot minimum)")
        if max(self.BLOCK_M, self.BLOCK_N) > MAX_BLOCK:
            raise ValueError(f"BLOCK_M={self.BLOCK_M} and BLOCK_N={self.BLOCK_N} must be <= {MAX_BLOCK}")
        if self.num_warps > MAX_NUM_WARPS:
            raise ValueError(f"num_warps={self.num_warps} must be <= {MAX_NUM_WARPS}")
        if self.SPLIT_KV > MAX_SPLIT_KV:
            raise ValueError(f"SPLIT_KV={self.SPLIT_KV} must be <= {MAX_SPLIT_KV}")
        if not isinstance(self.num_stages, int) or isinstance(self.num_stages, bool) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages={self.num_stages!r} must be in 1..8")
        if self.kv_dtype not in KV_CONFIG_DTYPES:
            raise ValueError(f"kv_dtype={self.kv_dtype!r} must be one of {KV_CONFIG_DTYPES}")

    @classmethod
    def from_dict(cls, params: dict) -> AttentionConfig:
        """Build from a mapping of field names; unknown keys raise ValueError."""
        return config_from_dict(cls, params, "attention")

    def as_dict(self) -> dict:
        """The config as a plain dict (JSON-ready)."""
        return asdict(self)

    def cache_dtype(self, act_dtype: torch.dtype) -> torch.dtype:
        """The KV-cache tensor dtype this config reads, given the activation dtype."""
        return kv_storage_dtype(self.kv_dtype, act_dtype)
