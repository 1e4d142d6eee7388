"""Random inputs of the gpt-oss attention at a given shape, for correctness checks and timing.

Legend: B sequences, T queries per sequence, S cache positions, Hq query heads, Hkv KV heads, D head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.attention.config import KV_DTYPES, AttentionShape, to_kv_dtype

@dataclass
class AttentionInputs:
    """Everything one attention call reads, with the cache in both storage formats (a config's ``kv_dtype`` picks
    one; the tuner builds inputs per shape and dtype, not per config).

    Attributes:
        variant: "prefill" or "decode".
        shape: the problem size.
        q: prefill ``[B, T, Hq, D]`` (positions 0..T-1), decode ``[B, Hq, D]`` (position seq-1).
        k_cache, v_cache: ``[B, S, Hkv, D]`` in the activation dtype.
        k_fp8, v_fp8: the same rounded to float8_e4m3fn.
        sinks: ``[Hq]`` float32.
        cache_lens: int32 ``[B]`` (decode: all seq).
        sm_scale: score scale.
    """

    variant: str
    shape: AttentionShape
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    k_fp8: torch.Tensor
    v_fp8: torch.Tensor
    sinks: torch.Tensor
    cache_lens: torch.Tensor
    sm_scale: float

    def cache(self, kv_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) in the storage of a config's ``kv_dtype`` ("act" or "fp8")."""
        return (self.k_fp8, self.v_fp8) if kv_dtype == "fp8" else (self.k_cache, self.v_cache)


def _q_shape(variant: str, shape: AttentionShape) -> tuple[int, ...]:
    if variant == "prefill":
        return (shape.batch, shape.seq, shape.heads_q, shape.head_dim)
    return (shape.batch, shape.heads_q, shape.head_dim)


def random_sinks(shape: AttentionShape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Sinks spread uniformly over ``[-1, ln(visible keys) + 2]`` across heads. With N(0, 1) queries and keys the
    scores are about N(0, 1) (``q·k / sqrt(D)``), so the keys' softmax mass is ``~n·e^0.5`` for n visible keys:
    the spread gives every visible-key count some heads where the sink takes 5% to 90% of the mass, so a dropped
    or doubled sink changes the output (a sink drawn N(0, 1) would vanish next to thousands of keys)."""
    top = math.log(shape.visible_keys) + 2.0
    return torch.rand((shape.heads_q,), generator=generator, device=device) * (top + 1.0) - 1.0


def make_inputs(variant: str, shape: AttentionShape, *, dtype: torch.dtype, device: torch.device | str,
                seed: int) -> AttentionInputs:
    """Fresh random inputs: N(0, 1) queries, keys and values (rounded to ``dtype``, then to fp8 for the fp8 copy),
    sinks from :func:`random_sinks`, every sequence full (seq keys).

    Args:
        variant: "prefill" or "decode".
        shape: the problem size.
        dtype: activation dtype (queries, outputs, the "act" cache).
        device: where to allocate.
        seed: RNG seed (every check uses a new one).

    Returns:
        The :class:`AttentionInputs`.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    cache_shape = (shape.batch, shape.seq, shape.heads_kv, shape.head_dim)
    q = torch.randn(_q_shape(variant, shape), generator=gen, device=device).to(dtype)
    k = torch.randn(cache_shape, generator=gen, device=device).to(dtype)
    v = torch.randn(cache_shape, generator=gen, device=device).to(dtype)
    fp8 = KV_DTYPES["fp8"]
    return AttentionInputs(
        variant, shape, q, k, v, to_kv_dtype(k, fp8), to_kv_dtype(v, fp8), random_sinks(shape, gen, device),
        cache_lens=torch.full((shape.batch,), shape.seq, dtype=torch.int32, device=device),
        sm_scale=1.0 / math.sqrt(shape.head_dim))


def min_call_bytes(variant: str, shape: AttentionShape, act_bytes: int) -> int:
    """Bytes one call reads and writes with the fp8 cache (the smaller storage): queries, outputs and the K/V
    positions it visits."""
    queries = shape.seq if variant == "prefill" else 1
    keys = shape.seq if variant == "prefill" else shape.visible_keys
    return (2 * shape.batch * queries * shape.heads_q * shape.head_dim * act_bytes
            + 2 * shape.batch * keys * shape.heads_kv * shape.head_dim)


def make_rotating_inputs(variant: str, shape: AttentionShape, *, dtype: torch.dtype, device: torch.device | str,
                         seed: int, cache_bytes: int, max_sets: int = 64) -> list[AttentionInputs]:
    """Independent input sets, enough that one cycle through them moves 3× ``cache_bytes`` (counted with the
    smaller fp8 cache), so that timing consecutive calls reads the cache from DRAM as a real decode step does
    (between two steps of one layer, the rest of the model streams gigabytes through the L2).

    At most ``max_sets`` sets: below ~2.5 MB per call (decode of a few hundred keys at batch 1) the cycle stays in
    an H100's 50 MB L2; such calls take a few µs, mostly fixed launch and reduction latency, which the L2 barely
    changes.

    Args:
        variant, shape, dtype, device, seed: as in :func:`make_inputs`.
        cache_bytes: the last-level cache size to defeat (L2 bytes of the GPU).
        max_sets: upper bound on the number of sets.

    Returns:
        A list of :class:`AttentionInputs`.
    """
    call_bytes = min_call_bytes(variant, shape, torch.empty((), dtype=dtype).element_size())
    num_sets = max(1, min(max_sets, math.ceil(3 * cache_bytes / max(call_bytes, 1))))
    return [make_inputs(variant, shape, dtype=dtype, device=device, seed=seed + i) for i in range(num_sets)]


def make_empty_inputs(variant: str, shape: AttentionShape, *, dtype: torch.dtype,
                      device: torch.device | str = "meta") -> AttentionInputs:
    """Uninitialized inputs (``meta`` by default: shapes and dtypes only, no memory): enough to plan launches and to
    compile kernels, e.g. offline for a GPU this machine does not have. Never launch on them."""
    meta = torch.device(device)
    cache_shape = (shape.batch, shape.seq, shape.heads_kv, shape.head_dim)
    fp8 = KV_DTYPES["fp8"]
    return AttentionInputs(
        variant, shape,
        q=torch.empty(_q_shape(variant, shape), dtype=dtype, device=meta),
        k_cache=torch.empty(cache_shape, dtype=dtype, device=meta),
        v_cache=torch.empty(cache_shape, dtype=dtype, device=meta),
        k_fp8=torch.empty(cache_shape, dtype=fp8, device=meta),
        v_fp8=torch.empty(cache_shape, dtype=fp8, device=meta),
        sinks=torch.empty((shape.heads_q,), dtype=torch.float32, device=meta),
        cache_lens=torch.empty((shape.batch,), dtype=torch.int32, device=meta),
        sm_scale=1.0 / math.sqrt(shape.head_dim))
