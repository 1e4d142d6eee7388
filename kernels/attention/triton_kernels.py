"""Triton kernels of the gpt-oss attention with sinks: prefill (FlashAttention-2), split-KV decode, split combine.

Legend: B sequences, T queries per sequence (prefill), S cache positions, Hq query heads, Hkv KV heads,
G = Hq / Hkv (GQA group), D head dim, W sliding window (0: full causal).

Semantics (HF transformers ``GptOssAttention`` eager path, ``models/gpt_oss/modeling_gpt_oss.py``): the scores
``s_j = (q·k_j) · sm_scale`` of the keys a query at position p sees (``j <= p`` and, with a window, ``j > p - W``)
get one learned logit per query head, the sink, as an extra column; the softmax runs over all of them and the sink's
column is dropped, so ``out = Σ_j exp(s_j - m) v_j / (Σ_j exp(s_j - m) + exp(sink - m))``.

Numerics: the softmax runs in fp32 in base 2: scores are scaled by ``qk_scale = sm_scale · log2(e)`` and the sink by
``log2(e)``, so ``exp`` becomes ``exp2`` (one MUFU instruction). ``P`` is rounded to the query dtype for the second
``tl.dot``; fp8 keys/values are converted to the query dtype in registers (e4m3 values are exact in fp16/bf16).
Query head h reads KV head ``h // G`` straight from the cache (no repeated K/V).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
"""log2(e): ``exp(x) = exp2(x · log2(e))``."""

_LOG2E = tl.constexpr(LOG2E)


@triton.jit
def _online_softmax_step(acc, l_i, m_i, qk, v):
    """One key block of the online softmax (FlashAttention-2, Dao 2023, Algorithm 1), in base 2.

    ``qk``: [M, N] fp32 scores already in log2 units (masked ones -inf); ``v``: [N, D] in the dtype of the P·V dot.
    ``m_i`` must be finite after this step for every row (the caller guarantees one visible key or a finite start).
    """
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _merge_sink(acc, l_i, m_i, sink):
    """Normalize a (max, sum, acc) state with the sink column: ``acc / (l + exp2(sink - m))`` rescaled to a common
    max. An empty state (m = -inf, l = 0) gives 0 (the sink alone)."""
    m_f = tl.maximum(m_i, sink)
    scale = tl.math.exp2(m_i - m_f)
    denom = l_i * scale + tl.math.exp2(sink - m_f)
    return acc * (scale / denom)[:, None]


@triton.jit
def _prefill_key_blocks(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, pos, kv_len, lo, hi, qk_scale,
                        WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """Keys ``[lo, hi)`` (multiples of BLOCK_N) for one query tile. MASKED: apply the causal/window/length mask and
    guard the loads; unmasked blocks are visible to every row of the tile (the caller proves it)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + offs_n                                                          # [N]
        k_ptrs = k_base + keys[None, :] * stride_ks + offs_d[:, None]                    # [D, N]
        v_ptrs = v_base + keys[:, None] * stride_vs + offs_d[None, :]                    # [N, D]
        if MASKED:
            in_cache = keys < kv_len
            k = tl.load(k_ptrs, mask=in_cache[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=in_cache[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, k.to(q.dtype)) * qk_scale                                        # [M, N] fp32, log2 units
        if MASKED:
            visible = (keys[None, :] <= pos[:, None]) & (keys[None, :] < kv_len)
            if WINDOW > 0:
                visible = visible & (keys[None, :] > pos[:, None] - WINDOW)
            qk = tl.where(visible, qk, float("-inf"))
        acc, l_i, m_i = _online_softmax_step(acc, l_i, m_i, qk, v.to(q.dtype))
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["start_pos", "num_queries"])
def attention_prefill_kernel(
    Q, K, V, Sinks, Out,
    start_pos, num_queries, qk_scale,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_ot, stride_oh,
    HEADS_Q: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Causal (optionally sliding-window) attention with sinks for T queries at positions start_pos..start_pos+T-1.

    Grid: ``(cdiv(T, BLOCK_M), B · Hq)``; the heaviest query tiles (the last, under the causal mask) start first.
    Each program visits only the key blocks its tile can see, in three ranges: masked blocks at the window's lower
    edge, unmasked blocks that every row of the tile sees in full, masked blocks on the diagonal. A sliding-window
    tile visits about ``(W + BLOCK_M) / BLOCK_N + 1`` blocks, a full-causal one ``(p + BLOCK_M) / BLOCK_N``.

    Q ``[B, T, Hq, D]``, K/V ``[B, S, Hkv, D]`` (act dtype or fp8; positions < start_pos + T filled), Sinks ``[Hq]``,
    Out ``[B, T, Hq, D]`` in Q's dtype. Head dims contiguous.
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HEADS_Q
    h = pid_bh % HEADS_Q
    kvh = h // GROUP

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                                    # [M] query rows
    offs_d = tl.arange(0, HEAD_DIM)
    pos = start_pos + offs_m                                                            # [M] absolute positions
    row_ok = offs_m < num_queries
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)                                # [M, D]

    # The sink starts the running state: m = sink, l = exp2(sink - m) = 1, so every row's max is finite from the
    # start (no exp2(-inf - -inf) = NaN for rows that see nothing in a block).
    sink = tl.load(Sinks + h).to(tl.float32) * _LOG2E
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + sink
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    first = start_pos + pid_m * BLOCK_M                                                 # position of row 0
    kv_len = start_pos + num_queries                                                    # keys in the cache
    hi = tl.cdiv(tl.minimum(first + BLOCK_M, kv_len), BLOCK_N) * BLOCK_N
    if WINDOW > 0:
        lo = tl.maximum(first - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(first + BLOCK_M - WINDOW, 0), BLOCK_N) * BLOCK_N  # seen by the last row
    else:
        lo = first * 0
        full_lo = lo
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum((first + 1) // BLOCK_N * BLOCK_N, hi), full_lo)   # ends at the first row

    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    acc, l_i, m_i = _prefill_key_blocks(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, pos, kv_len,
                                        lo, full_lo, qk_scale, WINDOW, HEAD_DIM, BLOCK_N, True)
    acc, l_i, m_i = _prefill_key_blocks(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, pos, kv_len,
                                        full_lo, full_hi, qk_scale, WINDOW, HEAD_DIM, BLOCK_N, False)
    acc, l_i, m_i = _prefill_key_blocks(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, pos, kv_len,
                                        full_hi, hi, qk_scale, WINDOW, HEAD_DIM, BLOCK_N, True)

    out = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def attention_decode_kernel(
    Q, K, V, Sinks, CacheLens, Out, MPart, LPart, AccPart,
    qk_scale,
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_oh,
    HEADS_Q: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr,
    WINDOW: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_KV: tl.constexpr,
):
    """One query per sequence at position ``len - 1`` over its cached keys ``[max(0, len - W), len)`` (or
    ``[0, len)``), ``len = CacheLens[b]``.

    Grid: ``(B, Hkv, SPLIT_KV)``. A program takes the G query heads of one KV head as the M rows of ``tl.dot``
    (padded to BLOCK_H >= 16 rows), so each K/V block is read once for the whole group, and its slice of the keys:
    the visible range cut into SPLIT_KV parts of whole BLOCK_N blocks, computed here from CacheLens (no host sync; the
    grid depends on shapes and the config only, so the launch is CUDA-graph capturable). SPLIT_KV = 1 writes Out
    directly; otherwise each program writes its (max, sum, acc) to MPart/LPart ``[B, Hq, SPLIT_KV]`` and AccPart
    ``[B, Hq, SPLIT_KV, D]`` (fp32, log2 units) for :func:`attention_combine_kernel`.

    Q ``[B, Hq, D]``, K/V ``[B, S, Hkv, D]``, Sinks ``[Hq]``, CacheLens int32 ``[B]``, Out ``[B, Hq, D]``.
    """
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kvh * GROUP + offs_h                                                        # [H] query heads
    head_ok = offs_h < GROUP
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=head_ok[:, None],
                other=0.0)                                                              # [H, D]

    kv_len = tl.load(CacheLens + b)
    if WINDOW > 0:
        lo = tl.maximum(kv_len - WINDOW, 0)
    else:
        lo = kv_len * 0
    per_split = tl.cdiv(tl.cdiv(kv_len - lo, SPLIT_KV), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, kv_len)

    m_i = tl.zeros([BLOCK_H], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    for start_n in range(start, end, BLOCK_N):  # every block holds >= 1 visible key: m_i turns finite
        keys = start_n + offs_n                                                         # [N]
        valid = keys < end
        k = tl.load(k_base + keys[None, :] * stride_ks + offs_d[:, None], mask=valid[None, :], other=0.0)  # [D, N]
        v = tl.load(v_base + keys[:, None] * stride_vs + offs_d[None, :], mask=valid[:, None], other=0.0)  # [N, D]
        qk = tl.dot(q, k.to(q.dtype)) * qk_scale                                       # [H, N]
        qk = tl.where(valid[None, :], qk, float("-inf"))
        acc, l_i, m_i = _online_softmax_step(acc, l_i, m_i, qk, v.to(q.dtype))

    if SPLIT_KV == 1:
        sink = tl.load(Sinks + heads, mask=head_ok, other=0.0).to(tl.float32) * _LOG2E
        out = _merge_sink(acc, l_i, m_i, sink)
        o_ptrs = Out + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=head_ok[:, None])
    else:
        part = (b * HEADS_Q + heads) * SPLIT_KV + split                                 # [H]
        tl.store(MPart + part, m_i, mask=head_ok)
        tl.store(LPart + part, l_i, mask=head_ok)
        tl.store(AccPart + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=head_ok[:, None])


@triton.jit
def attention_combine_kernel(
    Sinks, Out, MPart, LPart, AccPart,
    stride_ob, stride_oh,
    HEADS_Q: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT_KV: tl.constexpr,
):
    """Merge the SPLIT_KV partial states of one (sequence, query head) with the sink (empty splits have m = -inf,
    l = 0 and drop out). Grid: ``(B, Hq)``."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLIT_KV)
    offs_d = tl.arange(0, HEAD_DIM)
    part = (b * HEADS_Q + h) * SPLIT_KV + offs_s                                        # [SPLIT]
    m_s = tl.load(MPart + part)
    l_s = tl.load(LPart + part)
    acc_s = tl.load(AccPart + part[:, None] * HEAD_DIM + offs_d[None, :])               # [SPLIT, D]
    sink = tl.load(Sinks + h).to(tl.float32) * _LOG2E
    m_f = tl.maximum(tl.max(m_s, 0), sink)
    weight = tl.math.exp2(m_s - m_f)                                                    # [SPLIT]
    denom = tl.sum(l_s * weight, 0) + tl.math.exp2(sink - m_f)
    out = tl.sum(acc_s * weight[:, None], 0) / denom                                    # [D]
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty))
