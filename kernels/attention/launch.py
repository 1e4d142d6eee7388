"""Launchers of the gpt-oss attention: check shapes, allocate, compute the grid, launch.

Legend: B sequences, T queries per sequence, S cache capacity, Hq query heads, Hkv KV heads, G = Hq / Hkv, D head
dim, W sliding window (0: full causal).
"""

from __future__ import annotations

import torch
import triton

from kernels.attention.config import AttentionConfig
from kernels.attention.triton_kernels import (LOG2E, attention_combine_kernel, attention_decode_kernel,
                                              attention_prefill_kernel)
from kernels.launch_plan import KernelLaunch

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MIN_DOT_ROWS = 16
"""The smallest M of ``tl.dot``: decode pads the G query heads of a group to at least this many rows."""


def _check_last_dim_contiguous(name: str, x: torch.Tensor) -> None:
    if x.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last (head) dimension, got strides {tuple(x.stride())}")


def _check_common(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor, window: int,
                  config: AttentionConfig) -> tuple[int, int, int]:
    """Checks shared by both variants. Returns (Hq, Hkv, D)."""
    if q.dtype not in ACT_DTYPES:
        raise TypeError(f"q must be one of {ACT_DTYPES}, got {q.dtype}")
    expected = config.cache_dtype(q.dtype)
    if k_cache.dtype != expected or v_cache.dtype != expected:
        raise TypeError(f"kv_dtype={config.kv_dtype!r} with {q.dtype} queries reads a {expected} cache, got "
                        f"k {k_cache.dtype} / v {v_cache.dtype}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must both be [B, S, Hkv, D], got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    heads_q, head_dim = q.shape[-2], q.shape[-1]
    heads_kv = k_cache.shape[2]
    if k_cache.shape[3] != head_dim or k_cache.shape[0] != q.shape[0]:
        raise ValueError(f"q {tuple(q.shape)} does not match the cache {tuple(k_cache.shape)} (batch, head dim)")
    if heads_q % heads_kv:
        raise ValueError(f"Hq={heads_q} query heads is not a multiple of Hkv={heads_kv} KV heads")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head dim {head_dim} must be a power of two >= 16")
    if tuple(sinks.shape) != (heads_q,) or not sinks.is_floating_point():
        raise ValueError(f"sinks must be a float [Hq] = [{heads_q}] tensor, got {sinks.dtype} {tuple(sinks.shape)}")
    if window < 0:
        raise ValueError(f"window={window} must be >= 0 (0: full causal)")
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_last_dim_contiguous(name, x)
    return heads_q, heads_kv, head_dim


def _output(out: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"out must be {q.dtype} {tuple(q.shape)}, got {out.dtype} {tuple(out.shape)}")
    _check_last_dim_contiguous("out", out)
    return out


def prefill_launches(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor, *,
                     start_pos: int, window: int, sm_scale: float, config: AttentionConfig,
                     out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Allocate the output and plan the prefill launch (see :func:`attention_prefill`) without running it."""
    heads_q, heads_kv, head_dim = _check_common(q, k_cache, v_cache, sinks, window, config)
    if q.dim() != 4:
        raise ValueError(f"prefill q must be [B, T, Hq, D], got {tuple(q.shape)}")
    batch, queries = q.shape[0], q.shape[1]
    if start_pos < 0 or start_pos + queries > k_cache.shape[1]:
        raise ValueError(f"positions {start_pos}..{start_pos + queries - 1} do not fit a cache of "
                         f"{k_cache.shape[1]} positions")
    out = _output(out, q)
    if batch == 0 or queries == 0:
        return out, []
    sinks = sinks.contiguous()
    grid = (triton.cdiv(queries, config.BLOCK_M), batch * heads_q)
    args = (q, k_cache, v_cache, sinks, out, start_pos, queries, sm_scale * LOG2E,
            q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), out.stride(2))
    kwargs = dict(HEADS_Q=heads_q, GROUP=heads_q // heads_kv, HEAD_DIM=head_dim, WINDOW=window,
                  BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, num_warps=config.num_warps,
                  num_stages=config.num_stages)
    return out, [KernelLaunch(attention_prefill_kernel, grid, args, kwargs)]


def attention_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor, *,
                      start_pos: int, window: int, sm_scale: float, config: AttentionConfig,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention with sinks of T new queries per sequence over the cache (gpt-oss prefill).

    Args:
        q: ``[B, T, Hq, D]`` bf16/fp16/fp32 (a strided view is fine; D contiguous): queries at absolute positions
            ``start_pos .. start_pos + T - 1``.
        k_cache, v_cache: ``[B, S, Hkv, D]`` (views allowed, D contiguous) already holding positions
            ``0 .. start_pos + T - 1``; q's dtype for ``config.kv_dtype == "act"``, float8_e4m3fn for "fp8".
        sinks: ``[Hq]`` one logit per query head (any float dtype, read as fp32).
        start_pos: position of the first query (tokens already in the cache before this call).
        window: W: a query at p sees keys ``p - W + 1 .. p``; 0 for full causal attention.
        sm_scale: score scale (1/sqrt(D) = 0.125 in gpt-oss).
        config: launch config (BLOCK_M, BLOCK_N, num_warps, num_stages, kv_dtype; SPLIT_KV is not used).
        out: optional ``[B, T, Hq, D]`` destination in q's dtype.

    Returns:
        ``[B, T, Hq, D]`` in q's dtype.

    Raises:
        ValueError / TypeError: on inconsistent shapes or dtypes.
    """
    out, plan = prefill_launches(q, k_cache, v_cache, sinks, start_pos=start_pos, window=window, sm_scale=sm_scale,
                                 config=config, out=out)
    for item in plan:
        item.run()
    return out


def decode_launches(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                    cache_lens: torch.Tensor, *, window: int, sm_scale: float, config: AttentionConfig,
                    out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Allocate the output (and the split-KV scratch) and plan the decode launches (see :func:`attention_decode`)
    without running them: the split kernel, then the combine kernel when ``SPLIT_KV > 1``."""
    heads_q, heads_kv, head_dim = _check_common(q, k_cache, v_cache, sinks, window, config)
    if q.dim() != 3:
        raise ValueError(f"decode q must be [B, Hq, D], got {tuple(q.shape)}")
    batch = q.shape[0]
    if cache_lens.dtype != torch.int32 or tuple(cache_lens.shape) != (batch,) or cache_lens.device != q.device:
        raise ValueError(f"cache_lens must be int32 [B] = [{batch}] on {q.device}, got {cache_lens.dtype} "
                         f"{tuple(cache_lens.shape)} on {cache_lens.device}")
    out = _output(out, q)
    if batch == 0:
        return out, []
    sinks = sinks.contiguous()
    cache_lens = cache_lens.contiguous()
    group = heads_q // heads_kv
    split = config.SPLIT_KV
    part_shape = (batch, heads_q, split)
    m_part = torch.empty(part_shape if split > 1 else (1,), dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    acc_part = torch.empty((*part_shape, head_dim) if split > 1 else (1,), dtype=torch.float32, device=q.device)
    args = (q, k_cache, v_cache, sinks, cache_lens, out, m_part, l_part, acc_part, sm_scale * LOG2E,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1))
    kwargs = dict(HEADS_Q=heads_q, GROUP=group, BLOCK_H=max(MIN_DOT_ROWS, triton.next_power_of_2(group)),
                  HEAD_DIM=head_dim, WINDOW=window, BLOCK_N=config.BLOCK_N, SPLIT_KV=split,
                  num_warps=config.num_warps, num_stages=config.num_stages)
    plan = [KernelLaunch(attention_decode_kernel, (batch, heads_kv, split), args, kwargs)]
    if split > 1:
        plan.append(KernelLaunch(attention_combine_kernel, (batch, heads_q),
                                 (sinks, out, m_part, l_part, acc_part, out.stride(0), out.stride(1)),
                                 dict(HEADS_Q=heads_q, HEAD_DIM=head_dim, SPLIT_KV=split, num_warps=1)))
    return out, plan


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                     cache_lens: torch.Tensor, *, window: int, sm_scale: float, config: AttentionConfig,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention with sinks of one new query per sequence over its cache (gpt-oss decode step).

    CUDA-graph capturable: no host sync; the grid and the allocations depend on shapes and the config only (each
    program finds its slice of the keys from ``cache_lens`` on the device).

    Args:
        q: ``[B, Hq, D]`` bf16/fp16/fp32 (D contiguous): sequence b's query sits at position ``cache_lens[b] - 1``.
        k_cache, v_cache: ``[B, S, Hkv, D]`` (views allowed, D contiguous), positions ``< cache_lens[b]`` filled
            (the new token's K/V included); q's dtype for ``config.kv_dtype == "act"``, float8_e4m3fn for "fp8".
        sinks: ``[Hq]`` one logit per query head (any float dtype, read as fp32).
        cache_lens: int32 ``[B]`` on q's device: valid cache positions per sequence (ragged batches allowed).
        window: W: keys ``[max(0, len - W), len)`` are seen; 0 for full attention over ``[0, len)``.
        sm_scale: score scale (0.125 in gpt-oss).
        config: launch config (BLOCK_N, num_warps, num_stages, SPLIT_KV, kv_dtype; BLOCK_M is not used).
        out: optional ``[B, Hq, D]`` destination in q's dtype.

    Returns:
        ``[B, Hq, D]`` in q's dtype.

    Raises:
        ValueError / TypeError: on inconsistent shapes or dtypes.
    """
    out, plan = decode_launches(q, k_cache, v_cache, sinks, cache_lens, window=window, sm_scale=sm_scale,
                                config=config, out=out)
    for item in plan:
        item.run()
    return out
