"""Fused per-layer glue of the gpt-oss forward pass: residual add + RMSNorm, and RoPE + KV-cache write.

Why: in torch, one RMSNorm is about 7 kernels (cast, square, mean, add eps, rsqrt, two multiplies, cast back) plus
one for the residual add before it, and applying RoPE to q and k and storing k/v into the cache is about 24 (table
gathers, casts, chunk/multiply/subtract/add/cat for q and for k, two index-put stores, fp8 clamps). A decode step
is latency bound: per layer it launches two norms and one RoPE/KV write, so with these kernels that glue drops from
roughly 40 launches per layer to 3 (CUDA graphs replay every launch, so fewer launches means a shorter replay).

- :func:`add_rms_norm`: ``x_new = round(x + delta)`` (the residual stream) and ``h = rms_norm(x_new) · scale``; one
  program per row.
- :func:`rope_qkv_write`: rotates q and k of a fused qkv projection, writes q to a buffer and k/v into the cache at
  each token's position (read on the device: CUDA-graph capturable); one program per (token, KV head).

Numerics follow the torch code of :mod:`autotune.model` (see each function's "Numerics"): RoPE and the cache
stores bit for bit (GPU and interpreter); the norm bit for bit up to the summation order of the mean square (and,
on GPUs, the hardware rsqrt). Both launch with ``enable_fp_fusion=False`` so that the GPU does not contract a
multiply and an add into one FMA where the torch reference rounds twice.

Legend: N rows (tokens), H hidden size, B sequences, T tokens per sequence (N = B·T), S cache capacity, P RoPE table
length, Hq/Hkv query/KV heads, G = Hq / Hkv, D head dim.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from kernels import interpreter_active
from kernels.attention.config import FP8_MAX
from kernels.launch_plan import KernelLaunch
from kernels.moe_gemm.gemv_dp4a import store_activation_records
from kernels.moe_gemm.launch import check_activation_records

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
"""Activation dtypes (bf16 on GPUs; fp16/fp32 under the interpreter, whose bf16 dot is wrong)."""

POSITION_DTYPES = (torch.int32, torch.int64)
FP8 = torch.float8_e4m3fn
MAX_HIDDEN = 8192
"""Largest H of :func:`add_rms_norm`: one program holds a whole row in registers (gpt-oss: H = 2880)."""


FP8_MAX_VALUE = tl.constexpr(FP8_MAX)


# --------------------------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------------------------

@triton.jit
def add_rms_norm_kernel(x_ptr, delta_ptr, scale_ptr, x_out_ptr, h_ptr, rec_ptr, H, stride_x, stride_delta,
                        stride_x_out, stride_h, stride_rec, eps, HAS_DELTA: tl.constexpr, BLOCK_H: tl.constexpr,
                        RECORDS: tl.constexpr, CONSUME_DELTA: tl.constexpr):
    """One row: ``x_new = (x + delta)`` rounded to x's dtype (stored when HAS_DELTA), ``h = x_new · rsqrt(mean(
    x_new²) + eps) · scale`` in fp32, rounded to h's dtype. The whole row is loaded before anything is stored, so
    x_out may be x (in place). With RECORDS, also the dp4a activation records of the rounded h (``rec`` ``[N, H/32,
    RECORD_WORDS]`` int32; :func:`kernels.moe_gemm.gemv_dp4a.store_activation_records`, H a multiple of 32). With
    CONSUME_DELTA, zeros are written over the row of delta once it is read."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        delta = tl.load(delta_ptr + row * stride_delta + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + delta.to(tl.float32)).to(x_out_ptr.dtype.element_ty)  # residual, rounded once
        tl.store(x_out_ptr + row * stride_x_out + cols, x, mask=mask)
        if CONSUME_DELTA:  # hand the buffer back zeroed to the kernel that accumulates the next delta into it
            tl.store(delta_ptr + row * stride_delta + cols, tl.zeros_like(delta), mask=mask)
    x32 = x.to(tl.float32)
    mean_sq = tl.sum(x32 * x32, axis=0) / H  # masked columns are 0: they add nothing
    inv_rms = tl.math.rsqrt(mean_sq + eps)
    scale = tl.load(scale_ptr + cols, mask=mask, other=0.0)
    h = (x32 * inv_rms * scale).to(h_ptr.dtype.element_ty)
    tl.store(h_ptr + row * stride_h + cols, h, mask=mask)
    if RECORDS:  # the groups of the rounded h, as the dp4a pre-pass would read them back
        GROUPS: tl.constexpr = BLOCK_H // 32
        offs_g = tl.arange(0, GROUPS)
        store_activation_records(rec_ptr + row * stride_rec, tl.reshape(h.to(tl.float32), (GROUPS, 32)), offs_g,
                                 offs_g < H // 32, GROUPS)


@triton.jit
def _fp8_e4m3_rtne(x):
    """float32 → float8_e4m3fn, round to nearest even, by integer operations on the bits.

    ``x`` must already be clamped to ±448 (NaN allowed: it becomes 0x7F with x's sign, as torch's cast does). Used
    under the interpreter, whose float8 cast truncates ties away from zero and mishandles mantissa carries; on GPUs
    the hardware ``cvt.rn.satfinite.e4m3x2.f32`` gives the same bits.
    """
    bits = x.to(tl.uint32, bitcast=True)
    sign = (bits >> 24) & 0x80
    mag = bits & 0x7FFFFFFF
    # Normal e4m3 (|x| >= 2^-6): keep 3 of 23 mantissa bits, rounding to even; a carry moves into the exponent.
    # The exponent bias goes from 127 to 7: subtract 120 << 3 from the 8-bit exponent+mantissa field.
    normal = ((mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20) - (120 << 3)
    # Subnormal e4m3 (|x| < 2^-6): the code is round_even(|x| · 2^9) (0..8; 8 is the smallest normal, 2^-6).
    # |x| = m · 2^(e - 150) with the implicit bit in m, so |x| · 2^9 = m >> (141 - e) plus a remainder.
    exponent = mag >> 23
    mantissa = (mag & 0x7FFFFF) | 0x800000
    shift = tl.minimum(tl.maximum(141 - exponent.to(tl.int32), 1), 31).to(tl.uint32)  # >= 21 where used; 31 → 0
    quotient = mantissa >> shift
    remainder = mantissa & ((tl.full(shift.shape, 1, tl.uint32) << shift) - 1)
    half = tl.full(shift.shape, 1, tl.uint32) << (shift - 1)
    round_up = (remainder > half) | ((remainder == half) & ((quotient & 1) == 1))
    subnormal = quotient + round_up.to(tl.uint32)
    code = tl.where(mag >= (121 << 23), normal, subnormal)
    code = tl.where(mag > 0x7F800000, 0x7F, code)  # NaN
    return (code | sign).to(tl.uint8).to(tl.float8e4nv, bitcast=True)


@triton.jit
def _to_cache(x, cache_ptr, CACHE_FP8: tl.constexpr, FP8_SOFTWARE: tl.constexpr):
    """Keys/values in the activation dtype → the cache's element type (``kernels.attention.to_kv_dtype``): for fp8,
    saturate to ±FP8_MAX (NaN stays NaN) and round to nearest even."""
    if CACHE_FP8:
        clamped = tl.clamp(x.to(tl.float32), -FP8_MAX_VALUE, FP8_MAX_VALUE, propagate_nan=tl.PropagateNan.ALL)
        if FP8_SOFTWARE:
            return _fp8_e4m3_rtne(clamped)
        return clamped.to(tl.float8e4nv)
    return x.to(cache_ptr.dtype.element_ty)


@triton.jit
def rope_qkv_write_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr,
                          stride_qkv, stride_cos, stride_sin, stride_q_n, stride_q_h,
                          stride_k_b, stride_k_s, stride_k_h, stride_v_b, stride_v_s, stride_v_h,
                          tokens_per_seq, first_seq, num_positions, capacity,
                          HEADS_Q: tl.constexpr, HEADS_KV: tl.constexpr, HEAD_DIM: tl.constexpr,
                          GROUP_BLOCK: tl.constexpr, HALF_BLOCK: tl.constexpr,
                          CACHE_FP8: tl.constexpr, FP8_SOFTWARE: tl.constexpr):
    """Program (n, g): token n, KV head g with its G query heads. Rotates the G q heads (→ q_out[n]) and k head g,
    stores rotated k and plain v at cache[first_seq + n // T, positions[n], g]."""
    GROUP: tl.constexpr = HEADS_Q // HEADS_KV
    HALF: tl.constexpr = HEAD_DIM // 2
    n = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    pos = tl.load(pos_ptr + n).to(tl.int64)
    seq = first_seq + n // tokens_per_seq

    cols = tl.arange(0, HALF_BLOCK)
    col_mask = cols < HALF
    # A position outside the table or the cache masks the loads of cos/sin and the cache stores (no OOB access).
    pos_cols = tl.zeros([HALF_BLOCK], dtype=tl.int64) + pos
    table_mask = col_mask & (pos_cols >= 0) & (pos_cols < num_positions)
    kv_mask = (table_mask & (pos_cols < capacity))[None, :]
    cos = tl.load(cos_ptr + pos * stride_cos + cols, mask=table_mask, other=0.0)[None, :]  # [1, HALF_BLOCK]
    sin = tl.load(sin_ptr + pos * stride_sin + cols, mask=table_mask, other=0.0)[None, :]
    row = qkv_ptr + n * stride_qkv

    # q: the G heads of this group, [GROUP_BLOCK, HALF_BLOCK] per half.
    heads = g * GROUP + tl.arange(0, GROUP_BLOCK)
    q_mask = (tl.arange(0, GROUP_BLOCK) < GROUP)[:, None] & col_mask[None, :]
    q_src = row + heads[:, None] * HEAD_DIM + cols[None, :]
    q1 = tl.load(q_src, mask=q_mask, other=0.0).to(tl.float32)
    q2 = tl.load(q_src + HALF, mask=q_mask, other=0.0).to(tl.float32)
    q_dst = q_ptr + n * stride_q_n + heads[:, None] * stride_q_h + cols[None, :]
    tl.store(q_dst, (q1 * cos - q2 * sin).to(q_ptr.dtype.element_ty), mask=q_mask)
    tl.store(q_dst + HALF, (q2 * cos + q1 * sin).to(q_ptr.dtype.element_ty), mask=q_mask)

    # k: head g, [1, HALF_BLOCK] per half; rounded to the activation dtype, then converted for the cache.
    k_src = row + (HEADS_Q + g) * HEAD_DIM + cols[None, :]
    k1 = tl.load(k_src, mask=col_mask[None, :], other=0.0).to(tl.float32)
    k2 = tl.load(k_src + HALF, mask=col_mask[None, :], other=0.0).to(tl.float32)
    act = qkv_ptr.dtype.element_ty
    k_dst = k_ptr + seq * stride_k_b + pos * stride_k_s + g * stride_k_h + cols[None, :]
    tl.store(k_dst, _to_cache((k1 * cos - k2 * sin).to(act), k_ptr, CACHE_FP8, FP8_SOFTWARE), mask=kv_mask)
    tl.store(k_dst + HALF, _to_cache((k2 * cos + k1 * sin).to(act), k_ptr, CACHE_FP8, FP8_SOFTWARE), mask=kv_mask)

    # v: head g, copied (converted for an fp8 cache).
    v_src = row + (HEADS_Q + HEADS_KV + g) * HEAD_DIM + cols[None, :]
    v_dst = v_ptr + seq * stride_v_b + pos * stride_v_s + g * stride_v_h + cols[None, :]
    v1 = tl.load(v_src, mask=col_mask[None, :], other=0.0)
    v2 = tl.load(v_src + HALF, mask=col_mask[None, :], other=0.0)
    tl.store(v_dst, _to_cache(v1, v_ptr, CACHE_FP8, FP8_SOFTWARE), mask=kv_mask)
    tl.store(v_dst + HALF, _to_cache(v2, v_ptr, CACHE_FP8, FP8_SOFTWARE), mask=kv_mask)


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------

def _check_tensor(name: str, x, dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(x.shape)}")


def _check_last_contiguous(name: str, x: torch.Tensor) -> None:
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension, got strides {tuple(x.stride())}")


def _check_device(device: torch.device, **tensors: torch.Tensor) -> None:
    for name, x in tensors.items():
        if x.device != device:
            raise ValueError(f"{name} is on {x.device}, expected {device} (all tensors on one device)")


def _check_int(name: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------------------------
# Residual add + RMSNorm
# --------------------------------------------------------------------------------------------------------------------

def add_rms_norm_launches(x: torch.Tensor, delta: torch.Tensor | None, scale: torch.Tensor, *, eps: float,
                          inplace: bool = False, out: torch.Tensor | None = None,
                          records: torch.Tensor | None = None, consume_delta: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor, list[KernelLaunch]]:
    """Check, allocate and plan :func:`add_rms_norm` without running it. Returns ``(x_new, h, launches)``
    (no launch when N = 0)."""
    _check_tensor("x", x, 2)
    if x.dtype not in ACT_DTYPES:
        raise TypeError(f"x must be one of {ACT_DTYPES}, got {x.dtype}")
    rows, hidden = x.shape
    if not 1 <= hidden <= MAX_HIDDEN:
        raise ValueError(f"hidden size H={hidden} must be in 1..{MAX_HIDDEN} (one row per program)")
    _check_last_contiguous("x", x)
    if delta is not None:
        _check_tensor("delta", delta, 2)
        if delta.dtype not in ACT_DTYPES:
            raise TypeError(f"delta must be one of {ACT_DTYPES}, got {delta.dtype}")
        if delta.shape != x.shape:
            raise ValueError(f"delta {tuple(delta.shape)} must have x's shape {tuple(x.shape)}")
        _check_last_contiguous("delta", delta)
        _check_device(x.device, delta=delta)
    _check_tensor("scale", scale, 1)
    if scale.dtype != torch.float32:
        raise TypeError(f"scale must be float32, got {scale.dtype}")
    if scale.shape[0] != hidden:
        raise ValueError(f"scale must be [H] = [{hidden}], got {tuple(scale.shape)}")
    _check_last_contiguous("scale", scale)
    _check_device(x.device, scale=scale)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= float(eps) < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    else:
        _check_tensor("out", out, 2)
        if out.dtype != x.dtype:
            raise TypeError(f"out must be {x.dtype} (x's dtype), got {out.dtype}")
        if out.shape != x.shape:
            raise ValueError(f"out {tuple(out.shape)} must have x's shape {tuple(x.shape)}")
        _check_last_contiguous("out", out)
        _check_device(x.device, out=out)
        if rows and out.data_ptr() == x.data_ptr():
            raise ValueError("out must not be x: h would overwrite the residual stream")
    if records is not None:
        check_activation_records(records, rows, hidden, x.device)
    if not isinstance(consume_delta, bool):
        raise TypeError(f"consume_delta must be a bool, got {consume_delta!r}")
    if consume_delta:
        if delta is None:
            raise ValueError("consume_delta needs a delta to zero")
        if rows and delta.data_ptr() in (x.data_ptr(), out.data_ptr()):
            raise ValueError("consume_delta: delta must not be x or out (its zeros would overwrite them)")
    if delta is None or inplace:
        x_new = x
    else:
        x_new = torch.empty_like(x, memory_format=torch.contiguous_format)
    if rows == 0:
        return x_new, out, []
    block = triton.next_power_of_2(hidden)
    launch = KernelLaunch(
        kernel=add_rms_norm_kernel, grid=(rows,),
        args=(x, delta if delta is not None else x, scale, x_new, out, records if records is not None else out,
              hidden, x.stride(0), delta.stride(0) if delta is not None else 0, x_new.stride(0), out.stride(0),
              records.stride(0) if records is not None else 0, float(eps)),
        kwargs={"HAS_DELTA": delta is not None, "BLOCK_H": block, "RECORDS": records is not None,
                "CONSUME_DELTA": consume_delta, "num_warps": max(1, min(8, block // 512)),
                "enable_fp_fusion": False})
    return x_new, out, [launch]


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, scale: torch.Tensor, *, eps: float,
                 inplace: bool = False, out: torch.Tensor | None = None,
                 records: torch.Tensor | None = None, consume_delta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm in one launch: ``x_new = x + delta``, ``h = rms_norm(x_new) · scale``.

    In the model, ``delta`` is the attention output projection (bf16) or the MoE output (fp32) and ``h`` feeds the
    next projection; with ``inplace=True`` the residual stream ``x`` is updated where it lies, so a CUDA graph keeps
    one residual buffer (and with ``out`` one norm buffer) across layers and steps.

    Args:
        x: ``[N, H]`` bf16/fp16/fp32, the residual stream; last dim contiguous, any row stride.
        delta: ``[N, H]`` bf16/fp16/fp32 (need not match x's dtype) added to x, or None for a plain RMSNorm.
        scale: float32 ``[H]``, the norm's weight.
        eps: added to the mean square (gpt-oss: 1e-5).
        inplace: write ``x_new`` into ``x`` (then ``x_new is x``). Without it a new tensor holds ``x_new``.
            Ignored when ``delta`` is None (``x_new is x``: nothing changes).
        out: optional ``[N, H]`` tensor of x's dtype (last dim contiguous, not x itself) that receives ``h``.
        records: optional int32 ``[N, H/32, 32]`` tensor that receives the dp4a activation records of ``h``
            (:mod:`kernels.moe_gemm.gemv_dp4a`), bit for bit what the dp4a gemv's own pre-pass would compute, so
            that :func:`kernels.moe_gemm.moe_mlp1` with ``records`` skips that launch.
        consume_delta: after reading ``delta``, overwrite it with zeros, so that the kernel that accumulates the next
            delta into the same buffer (:func:`kernels.moe_gemm.moe_mlp2` with ``out_zeroed=True``) needs no memset
            launch of its own. ``delta`` must then be neither ``x`` nor ``out``.

    Returns:
        ``(x_new, h)``, both ``[N, H]`` in x's dtype.

    Numerics (those of ``autotune.model.model.rms_norm`` after ``(x.float() + delta.float()).to(x.dtype)``):
    ``x_new`` is the fp32 sum rounded once to x's dtype; ``h = (x32 · rsqrt(sum(x32²) / H + eps) · scale)`` in
    fp32 from ``x32 = x_new.float()``, rounded once to x's dtype. The sum of squares is a tree reduction: under the
    interpreter the result equals torch's bit for bit whenever both sums are exact, and differs by float32
    rounding of the sum otherwise; on GPUs ``rsqrt`` and the division are the hardware's approximations (as in
    torch's CUDA kernels), so h can differ from torch by an ulp of float32 before the final rounding.

    Raises:
        TypeError: a non-tensor, a dtype outside the above, or a consume_delta that is not a bool.
        ValueError: wrong shapes, a non-contiguous last dimension, mixed devices, H > :data:`MAX_HIDDEN`, a negative
            or non-finite eps, ``out`` that is ``x``, ``consume_delta`` without a delta or with one that is ``x`` or
            ``out``.
    """
    x_new, h, launches = add_rms_norm_launches(x, delta, scale, eps=eps, inplace=inplace, out=out, records=records,
                                               consume_delta=consume_delta)
    for launch in launches:
        launch.run()
    return x_new, h


# --------------------------------------------------------------------------------------------------------------------
# RoPE + KV-cache write
# --------------------------------------------------------------------------------------------------------------------

def rope_qkv_write_launches(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            q_out: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *, heads_q: int,
                            heads_kv: int, head_dim: int, tokens_per_seq: int, first_seq: int
                            ) -> list[KernelLaunch]:
    """Check and plan :func:`rope_qkv_write` without running it (no launch when N = 0)."""
    heads_q = _check_int("heads_q", heads_q, 1)
    heads_kv = _check_int("heads_kv", heads_kv, 1)
    head_dim = _check_int("head_dim", head_dim, 2)
    tokens_per_seq = _check_int("tokens_per_seq", tokens_per_seq, 1)
    first_seq = _check_int("first_seq", first_seq, 0)
    if heads_q % heads_kv:
        raise ValueError(f"heads_q={heads_q} is not a multiple of heads_kv={heads_kv}")
    if head_dim % 2:
        raise ValueError(f"head_dim={head_dim} must be even (RoPE rotates halves)")
    _check_tensor("qkv", qkv, 2)
    if qkv.dtype not in ACT_DTYPES:
        raise TypeError(f"qkv must be one of {ACT_DTYPES}, got {qkv.dtype}")
    tokens, width = qkv.shape
    if width != (heads_q + 2 * heads_kv) * head_dim:
        raise ValueError(f"qkv has {width} columns, expected (heads_q + 2·heads_kv)·head_dim = "
                         f"({heads_q} + 2·{heads_kv})·{head_dim} = {(heads_q + 2 * heads_kv) * head_dim}")
    _check_last_contiguous("qkv", qkv)
    device = qkv.device
    _check_tensor("positions", positions, 1)
    if positions.dtype not in POSITION_DTYPES:
        raise TypeError(f"positions must be int32 or int64, got {positions.dtype}")
    if positions.shape[0] != tokens:
        raise ValueError(f"positions has {positions.shape[0]} entries for N={tokens} tokens")
    for name, table in (("cos", cos), ("sin", sin)):
        _check_tensor(name, table, 2)
        if table.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {table.dtype}")
        if table.shape[1] != head_dim // 2 or table.shape[0] < 1:
            raise ValueError(f"{name} must be [P, head_dim/2] = [P, {head_dim // 2}] with P >= 1, "
                             f"got {tuple(table.shape)}")
        _check_last_contiguous(name, table)
    if cos.shape != sin.shape:
        raise ValueError(f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} differ in shape")
    _check_tensor("q_out", q_out, 3)
    if q_out.dtype != qkv.dtype:
        raise TypeError(f"q_out must be {qkv.dtype} (qkv's dtype), got {q_out.dtype}")
    if tuple(q_out.shape) != (tokens, heads_q, head_dim):
        raise ValueError(f"q_out must be [N, Hq, D] = {[tokens, heads_q, head_dim]}, got {list(q_out.shape)}")
    _check_last_contiguous("q_out", q_out)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check_tensor(name, cache, 4)
        if cache.dtype not in (qkv.dtype, FP8):
            raise TypeError(f"{name} must be {qkv.dtype} (qkv's dtype) or {FP8}, got {cache.dtype}")
        if tuple(cache.shape[2:]) != (heads_kv, head_dim):
            raise ValueError(f"{name} must be [B, S, Hkv, D] with Hkv={heads_kv}, D={head_dim}, "
                             f"got {tuple(cache.shape)}")
        _check_last_contiguous(name, cache)
    if k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache ({k_cache.dtype} {tuple(k_cache.shape)}) and v_cache ({v_cache.dtype} "
                         f"{tuple(v_cache.shape)}) must match")
    _check_device(device, positions=positions, cos=cos, sin=sin, q_out=q_out, k_cache=k_cache, v_cache=v_cache)
    if tokens % tokens_per_seq:
        raise ValueError(f"N={tokens} tokens is not a multiple of tokens_per_seq={tokens_per_seq}")
    sequences = tokens // tokens_per_seq
    if first_seq + sequences > k_cache.shape[0]:
        raise ValueError(f"sequences {first_seq}..{first_seq + sequences - 1} do not fit a cache of "
                         f"{k_cache.shape[0]} sequences")
    if tokens == 0:
        return []
    group = heads_q // heads_kv
    group_block, half_block = triton.next_power_of_2(group), triton.next_power_of_2(head_dim // 2)
    num_warps = 1 if group_block * half_block <= 128 else 2 if group_block * half_block <= 512 else 4
    args = (qkv, positions, cos, sin, q_out, k_cache, v_cache, qkv.stride(0), cos.stride(0), sin.stride(0),
            q_out.stride(0), q_out.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), tokens_per_seq, first_seq, cos.shape[0],
            k_cache.shape[1])
    kwargs = {"HEADS_Q": heads_q, "HEADS_KV": heads_kv, "HEAD_DIM": head_dim, "GROUP_BLOCK": group_block,
              "HALF_BLOCK": half_block, "CACHE_FP8": k_cache.dtype == FP8, "FP8_SOFTWARE": interpreter_active(),
              "num_warps": num_warps, "enable_fp_fusion": False}
    return [KernelLaunch(kernel=rope_qkv_write_kernel, grid=(tokens, heads_kv), args=args, kwargs=kwargs)]


def rope_qkv_write(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   q_out: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *, heads_q: int,
                   heads_kv: int, head_dim: int, tokens_per_seq: int, first_seq: int) -> torch.Tensor:
    """Apply RoPE to q and k of a fused qkv projection, write q out and k/v into the KV cache, in one launch.

    Token n (row n of qkv) belongs to sequence ``first_seq + n // tokens_per_seq`` of the cache and sits at
    position ``positions[n]``: its rotated q goes to ``q_out[n]``, its rotated k and its v to
    ``k_cache/v_cache[first_seq + n // tokens_per_seq, positions[n]]``. Decode: T = 1, positions = the cache
    lengths (int32 ``cache.lens`` works as is). Prefill of rows b0..b0+B-1: T = prompt length, first_seq = b0,
    positions = ``start + arange(T)`` repeated B times. Positions are read on the device (no host sync): the call
    can be captured in a CUDA graph.

    Args:
        qkv: ``[N, (Hq + 2·Hkv)·D]`` bf16/fp16/fp32 (q heads, then k heads, then v heads), last dim contiguous.
        positions: int32/int64 ``[N]`` on qkv's device; each in ``[0, min(P, S))``.
        cos, sin: float32 ``[P, D/2]`` (:class:`autotune.model.rope.RopeTable`'s, concentration included).
        q_out: ``[N, Hq, D]`` in qkv's dtype, last dim contiguous; receives the rotated queries.
        k_cache, v_cache: ``[B_total, S, Hkv, D]`` in qkv's dtype or float8_e4m3fn (both alike), last dim
            contiguous, any other strides (views such as ``cache[rows]`` are fine).
        heads_q, heads_kv, head_dim: Hq, Hkv (Hq a multiple of Hkv), D (even).
        tokens_per_seq: T; N must be a multiple of it.
        first_seq: the cache sequence of token 0; ``first_seq + N/T <= B_total``.

    Returns:
        ``q_out``.

    Numerics (those of ``RopeTable.apply`` and ``kernels.attention.to_kv_dtype``): with halves ``x1 = x[:D/2]``,
    ``x2 = x[D/2:]`` of a head, ``(x1·cos − x2·sin, x2·cos + x1·sin)`` computed in float32 (each product rounded,
    no FMA) and rounded once to qkv's dtype; an fp8 cache then stores that value clamped to ±448 and rounded to
    nearest even e4m3. v is stored unrotated, converted the same way. Bit-identical to the torch code.

    A position outside ``[0, min(P, S))`` cannot be checked without a host sync: such a token writes nothing to the
    cache and gets undefined q values, with no out-of-bounds access.

    Raises:
        TypeError: a non-tensor or a dtype outside the above.
        ValueError: inconsistent shapes or head counts, a non-contiguous last dimension, mixed devices, N not a
            multiple of T, or sequences beyond the cache.
    """
    for launch in rope_qkv_write_launches(qkv, positions, cos, sin, q_out, k_cache, v_cache, heads_q=heads_q,
                                          heads_kv=heads_kv, head_dim=head_dim, tokens_per_seq=tokens_per_seq,
                                          first_seq=first_seq):
        launch.run()
    return q_out
