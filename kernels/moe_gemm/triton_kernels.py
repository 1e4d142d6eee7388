"""Triton kernels of the MXFP4 MoE grouped GEMM (gpt-oss mlp1 and mlp2).

Legend: R routed rows sorted by expert (see :mod:`kernels.moe_routing`), E experts, N output features, K input
features, G = K / 32 scale groups.

One kernel serves both calls of the gpt-oss MLP, chosen by constexpr flags:

- mlp1: ``A[r] = x[row_token[r]]`` (gathered), ``h = A W1[e]^T + b1[e]``, then either the fused SwiGLU-OAI epilogue
  (``FUSE_SWIGLU``; gate/linear interleaved along N) or a store of ``h`` for the separate :func:`_swiglu_kernel`.
- mlp2: ``A[r]`` is row r of the mlp1 output, ``out[row_token[r]] += row_gate[r] * (A W2[e]^T + b2[e])`` with
  float32 atomics (``SCATTER_OUT``), which is also the top-k weighted sum.

Each program owns a BLOCK_M × BLOCK_N output tile of one expert; the row blocks of the expert segments are found
in-kernel from ``expert_offsets`` (a cumulative sum over E), so the host never waits on the routing. Two MXFP4
paths: ``tl.dot_scaled`` (Triton's microscaling dot; emulated by an upcast to bf16 on Hopper) and an explicit
upcast (:func:`decode_e2m1_tile`, or the inline-PTX :func:`kernels.moe_gemm.e2m1_ptx.decode_e2m1_tile_ptx` at about a
quarter of the instructions, bf16 on sm_90+ only) followed by ``tl.dot``. With ``SWAP_AB`` (config ``swap_ab``) an
upcast tile multiplies ``W · A^T`` instead of ``A · W^T``: the decoded weights become the MMA's first operand, which
Hopper's wgmma reads from registers (its second operand must be in shared memory), and the routed rows its N side
(16 rows suffice, where the A-side M of a wgmma is 64). In the sm_90 SASS of the table's BLOCK_M = 16 winners (Triton
3.9.0 offline, scripts/results/2026-12-07-offline-sm90-swap-ab-l2-prefetch.md) the unswapped tile compiles to
mma.sync (HMMA) with 126-128 registers, the swapped one to wgmma with 73 (mlp1) / 94 (mlp2).

The gemv kernels' optional L2 prefetch (:func:`prefetch_rows_l2`, config ``l2_prefetch``, dp4a only) issues one
``prefetch.global.L2`` per 128-byte line of a program's weight tile before its K loop.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.moe_gemm.e2m1_ptx import decode_e2m1_groups_ptx, decode_e2m1_tile_ptx

DOT_SCALED = tl.constexpr(0)
UPCAST = tl.constexpr(1)
UPCAST_PTX = tl.constexpr(2)
DEQUANT_CODES = {"dot_scaled": DOT_SCALED.value, "upcast": UPCAST.value, "upcast_ptx": UPCAST_PTX.value}
"""DEQUANT constexpr of each config ``dequant``: tl.dot_scaled; decode_e2m1_tile + tl.dot; the inline-PTX decode +
tl.dot."""


@triton.jit
def decode_e2m1_tile(packed, scales, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """Decode a tile of MXFP4 weights.

    Args:
        packed: ``[BLOCK_N, BLOCK_K // 2]`` uint8, two e2m1 codes per byte, the low nibble first along K.
        scales: ``[BLOCK_N, BLOCK_K // 32]`` uint8 e8m0 (bias 127); supported range 0..240.
        OUT_DTYPE: tl.bfloat16, tl.float16 or tl.float32.

    Returns:
        ``[BLOCK_N, BLOCK_K]`` OUT_DTYPE values, exact for every code.

    The 3 magnitude bits of an e2m1 code placed at fp16 bits 11..9 (sign at bit 15) give an fp16 whose value is the
    e2m1 value times 2**-14, subnormal 0.5 included, so value = fp16 · 2**(scale - 127 + 14).
    """
    codes = tl.join(packed & 0x0F, packed >> 4).reshape(BLOCK_N, BLOCK_K)  # [BN, BK]
    values = decode_e2m1_unscaled(codes)  # [BN, BK]
    factor = e8m0_factor(scales)  # [BN, BK // 32]
    values = values.reshape(BLOCK_N, BLOCK_K // 32, 32) * factor[:, :, None]
    return values.reshape(BLOCK_N, BLOCK_K).to(OUT_DTYPE)


@triton.jit
def decode_e2m1_unscaled(codes):
    """e2m1 codes (integers 0..15, any shape) → float32 ``code_value · 2**-14``, exact for every code.

    The 3 magnitude bits placed at fp16 bits 11..9 (sign at bit 15) give an fp16 whose value is the e2m1 value times
    2**-14 (subnormal 0.5 included); :func:`e8m0_factor` folds the 2**14 back into the scale.
    """
    c = codes.to(tl.uint16)
    bits = ((c & 0x8) << 12) | ((c & 0x7) << 9)
    return bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def e8m0_factor(scales):
    """float32 ``2**(scale - 127 + 14)`` of e8m0 bytes (any shape), the factor of :func:`decode_e2m1_unscaled`
    values; built from its fp32 bit pattern (exponent field scale + 14), so valid for scales 0..240."""
    return ((scales.to(tl.int32) + 14) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _swiglu_oai(gate, lin, ALPHA: tl.constexpr, LIMIT: tl.constexpr):
    """gpt-oss SwiGLU: ``min(g, L) * sigmoid(alpha * min(g, L)) * (clamp(l, -L, L) + 1)`` in float32."""
    gate = tl.minimum(gate, LIMIT)
    lin = tl.minimum(tl.maximum(lin, -LIMIT), LIMIT)
    return gate * tl.sigmoid(ALPHA * gate) * (lin + 1.0)


@triton.jit
def _segment_table(expert_offsets_ptr, NUM_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr,
                   BLOCK_M: tl.constexpr):
    """Row-block schedule of the expert segments, which every program derives from ``expert_offsets`` [E + 1]:
    ``(e_idx, seg_start, seg_end, seg_blocks, blocks_through, real_m_blocks)``, the first five ``[EXPERTS_POW2]``
    int32 (``blocks_through[e]``: row blocks of experts 0..e inclusive), the last the total row-block count."""
    e_idx = tl.arange(0, EXPERTS_POW2)
    e_mask = e_idx < NUM_EXPERTS
    seg_start = tl.load(expert_offsets_ptr + e_idx, mask=e_mask, other=0)
    seg_end = tl.load(expert_offsets_ptr + e_idx + 1, mask=e_mask, other=0)
    seg_blocks = (seg_end - seg_start + BLOCK_M - 1) // BLOCK_M
    blocks_through = tl.cumsum(seg_blocks, axis=0)
    real_m_blocks = tl.sum(seg_blocks, axis=0)
    return e_idx, seg_start, seg_end, seg_blocks, blocks_through, real_m_blocks


@triton.jit
def _row_block(pid_m, e_idx, seg_start, seg_end, seg_blocks, blocks_through, BLOCK_M: tl.constexpr):
    """Expert and sorted-row range ``[row_begin, row_end)`` of row block ``pid_m`` (< the real block count).

    ``seg_start``/``seg_end``/``seg_blocks``/``blocks_through`` are the ``[EXPERTS_POW2]`` segment table every program
    derives from ``expert_offsets``; row block ``pid_m`` belongs to the first expert whose cumulative block count
    exceeds it. ``row_end`` is the expert's segment end (rows past ``row_begin + BLOCK_M`` belong to the next block).
    """
    expert = tl.sum((blocks_through <= pid_m).to(tl.int32), axis=0)
    is_expert = e_idx == expert
    first_block = tl.sum(tl.where(is_expert, blocks_through - seg_blocks, 0), axis=0)
    row_begin = tl.sum(tl.where(is_expert, seg_start, 0), axis=0) + (pid_m - first_block) * BLOCK_M
    row_end = tl.sum(tl.where(is_expert, seg_end, 0), axis=0)
    return expert, row_begin, row_end


@triton.jit
def _gemv_schedule(pid, N, K, expert_offsets_ptr, NUM_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """What gemv program ``pid`` owns: ``(pid_m, pid_n, split, k_first, k_stop, e_idx, seg_start, seg_end,
    seg_blocks, blocks_through, real_m_blocks)``: row block ``pid_m`` (real when below ``real_m_blocks``), N block
    ``pid_n``, K slice ``split`` = K tiles ``[k_first, k_stop)``, then the :func:`_segment_table` values (flat: the
    oldest supported Triton, 3.6, is where this must compile)."""
    num_n_blocks = tl.cdiv(N, BLOCK_N)
    pid_n = pid % num_n_blocks
    split = (pid // num_n_blocks) % SPLIT_K
    pid_m = pid // (num_n_blocks * SPLIT_K)
    e_idx, seg_start, seg_end, seg_blocks, blocks_through, real_m_blocks = _segment_table(
        expert_offsets_ptr, NUM_EXPERTS, EXPERTS_POW2, BLOCK_M)
    k_tiles = tl.cdiv(K, BLOCK_K)
    k_tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_first = split * k_tiles_per_split
    k_stop = tl.minimum(k_first + k_tiles_per_split, k_tiles)
    return (pid_m, pid_n, split, k_first, k_stop, e_idx, seg_start, seg_end, seg_blocks, blocks_through,
            real_m_blocks)


PREFETCH_LINE_BYTES = tl.constexpr(128)
"""Bytes one ``prefetch.global.L2`` brings in: an L2 cache line (128 B on every NVIDIA GPU since Fermi)."""


@triton.jit
def _prefetch_l2(ptrs):
    """``prefetch.global.L2`` of the line holding each address of ``ptrs`` (any shape): asks L2 to fetch it from DRAM
    without waiting and without taking registers (PTX ISA, "prefetch, prefetchu"; sm_20+). No effect on values."""
    # The addresses go in as int64 (a pointer-to-integer cast): older Tritons take only numeric inline-asm operands.
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs.to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_line_offsets(first, row_stride, num_rows, col_begin, col_end, ELEM_BYTES: tl.constexpr,
                          THREADS: tl.constexpr):
    """Element offsets (``[THREADS]`` int64) of pass ``first`` (a multiple of THREADS) of
    :func:`prefetch_rows_l2`: one address per 128-byte line of the elements ``[col_begin, col_end)`` of ``num_rows``
    rows ``row_stride`` elements apart, and the line count. Rows need not be line-aligned, so each gets one line more
    than its span (clamped to its last element); passes past the last line repeat it."""
    ELEMS: tl.constexpr = PREFETCH_LINE_BYTES // ELEM_BYTES
    lines_per_row = tl.cdiv(col_end - col_begin, ELEMS) + 1
    total = num_rows * lines_per_row
    line = tl.minimum(first + tl.arange(0, THREADS), total - 1)
    row = line // lines_per_row
    col = tl.minimum(col_begin + (line % lines_per_row) * ELEMS, col_end - 1)
    return row.to(tl.int64) * row_stride + col, total


@triton.jit
def prefetch_rows_l2(base, row_stride, num_rows, col_begin, col_end, ELEM_BYTES: tl.constexpr, THREADS: tl.constexpr):
    """Prefetch into L2 the elements ``[col_begin, col_end)`` of ``num_rows`` rows at ``base`` (``row_stride``
    elements apart), one 128-byte line per thread and pass (THREADS = the program's threads;
    :func:`prefetch_line_offsets`): a gemv program calls it once for its whole weight tile before its K loop, so
    that each K step's loads find the bytes in L2 (or already on their way) instead of starting a DRAM round trip
    per step, while the program holds only one step of them in registers."""
    first_offsets, total = prefetch_line_offsets(0, row_stride, num_rows, col_begin, col_end, ELEM_BYTES, THREADS)
    _prefetch_l2(base + first_offsets)
    for first in range(THREADS, total, THREADS):
        offsets, lines = prefetch_line_offsets(first, row_stride, num_rows, col_begin, col_end, ELEM_BYTES, THREADS)
        _prefetch_l2(base + offsets)


@triton.jit
def _gemv_rows(pid_m, e_idx, seg_start, seg_end, seg_blocks, blocks_through, row_token_ptr,
               GATHER_A: tl.constexpr, BLOCK_M: tl.constexpr):
    """The rows of a real gemv row block: ``(expert, m_ids, rows, row_mask, a_rows, num_rows)`` (``a_rows``: the
    activation row of each sorted row, its token when GATHER_A; ``num_rows``: the real rows, at most BLOCK_M)."""
    expert, row_begin, row_end = _row_block(pid_m, e_idx, seg_start, seg_end, seg_blocks, blocks_through, BLOCK_M)
    m_ids = tl.arange(0, BLOCK_M)
    rows = row_begin + m_ids  # [BM]
    row_mask = rows < row_end
    if GATHER_A:
        a_rows = tl.load(row_token_ptr + rows, mask=row_mask, other=0)
    else:
        a_rows = rows
    num_rows = tl.minimum(row_end - row_begin, BLOCK_M)
    return expert, m_ids, rows, row_mask, a_rows, num_rows


@triton.jit
def _epilogue(acc, rows, row_mask, offs_n, n_mask, pid_n, split, expert, bias_ptr, out_ptr, row_token_ptr,
              row_gate_ptr, N, stride_be, stride_om,
              SCATTER_OUT: tl.constexpr, FUSE_SWIGLU: tl.constexpr, ATOMIC_OUT: tl.constexpr,
              SWIGLU_ALPHA: tl.constexpr, SWIGLU_LIMIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Bias, then the output of one ``[BLOCK_M, BLOCK_N]`` float32 tile ``acc`` (rows ``rows``, columns ``offs_n``)
    of expert ``expert`` and K slice ``split``: the fused SwiGLU store ``[R, N/2]`` (FUSE_SWIGLU), the gate-weighted
    atomic scatter into ``out[row_token[r]]`` (SCATTER_OUT), or a store / float32 atomic add of ``[R, N]``."""
    # Bias once per output element: only the first K split adds it.
    first_split = (tl.zeros((BLOCK_N,), dtype=tl.int32) + split) == 0
    bias = tl.load(bias_ptr + expert.to(tl.int64) * stride_be + offs_n, mask=n_mask & first_split, other=0.0)
    acc += bias.to(tl.float32)[None, :]
    if FUSE_SWIGLU:
        gate, lin = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))  # even columns gate, odd linear
        y = _swiglu_oai(gate, lin, SWIGLU_ALPHA, SWIGLU_LIMIT)  # [BM, BN // 2]
        offs_c = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + offs_c[None, :]
        tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & (offs_c[None, :] < N // 2))
    elif SCATTER_OUT:
        gate = tl.load(row_gate_ptr + rows, mask=row_mask, other=0.0)
        token = tl.load(row_token_ptr + rows, mask=row_mask, other=0)
        ptrs = out_ptr + token.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.atomic_add(ptrs, acc * gate[:, None], mask=row_mask[:, None] & n_mask[None, :], sem="relaxed")
    else:
        ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        mask = row_mask[:, None] & n_mask[None, :]
        if ATOMIC_OUT:
            tl.atomic_add(ptrs, acc, mask=mask, sem="relaxed")
        else:
            tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _k_step_operands(kt, a_row_ptrs, row_mask, w_base, s_base, offs_n, n_mask, K, stride_wn, stride_sn,
                     DEQUANT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """K step ``kt`` of an upcast MMA tile: the ``[BM, BK]`` activations (``a_row_ptrs`` ``[BM, 1]`` row pointers)
    and the decoded ``[BN, BK]`` weights (``DEQUANT`` UPCAST: activation dtype; UPCAST_PTX: bf16)."""
    offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
    a = tl.load(a_row_ptrs + offs_k[None, :], mask=row_mask[:, None] & (offs_k[None, :] < K), other=0.0)
    offs_g = kt * (BLOCK_K // 32) + tl.arange(0, BLOCK_K // 32)
    scales = tl.load(s_base + offs_n[:, None] * stride_sn + offs_g[None, :],
                     mask=n_mask[:, None] & (offs_g[None, :] < K // 32), other=127)  # [BN, BK // 32]
    offs_b = kt * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(w_base + offs_n[:, None] * stride_wn + offs_b[None, :],
                     mask=n_mask[:, None] & (offs_b[None, :] < K // 2), other=0)  # [BN, BK // 2]
    if DEQUANT == UPCAST_PTX:
        w = decode_e2m1_tile_ptx(packed, scales, BLOCK_N, BLOCK_K)  # [BN, BK] bf16
    else:
        w = decode_e2m1_tile(packed, scales, BLOCK_N, BLOCK_K, a.dtype)  # [BN, BK]
    return a, w


@triton.jit
def _gemm_tile(
    tile, a_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, row_token_ptr, row_gate_ptr,
    N, K, num_m_blocks, stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_om,
    e_idx, seg_start, seg_end, seg_blocks, blocks_through, real_m_blocks,
    GATHER_A: tl.constexpr, SCATTER_OUT: tl.constexpr, FUSE_SWIGLU: tl.constexpr, ATOMIC_OUT: tl.constexpr,
    SWIGLU_ALPHA: tl.constexpr, SWIGLU_LIMIT: tl.constexpr, DEQUANT: tl.constexpr, ACT_FORMAT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, SWAP_AB: tl.constexpr,
):
    num_n_blocks = tl.cdiv(N, BLOCK_N)
    tiles_per_split = num_m_blocks * num_n_blocks
    split = tile // tiles_per_split
    t = tile % tiles_per_split
    # GROUP_M swizzle: GROUP_M consecutive row blocks (mostly one expert) walk the N blocks together, so a weight
    # tile is reused from L2 by the programs running at the same time.
    tiles_per_group = GROUP_M * num_n_blocks
    first_m = (t // tiles_per_group) * GROUP_M
    group_rows = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (t % tiles_per_group) % group_rows
    pid_n = (t % tiles_per_group) // group_rows
    if pid_m < real_m_blocks:
        expert, row_begin, row_end = _row_block(pid_m, e_idx, seg_start, seg_end, seg_blocks, blocks_through,
                                                BLOCK_M)
        rows = row_begin + tl.arange(0, BLOCK_M)  # [BM]
        row_mask = rows < row_end
        if GATHER_A:
            a_rows = tl.load(row_token_ptr + rows, mask=row_mask, other=0)
        else:
            a_rows = rows
        a_row_ptrs = a_ptr + a_rows.to(tl.int64)[:, None] * stride_am  # [BM, 1]
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        n_mask = offs_n < N
        w_base = w_ptr + expert.to(tl.int64) * stride_we
        s_base = s_ptr + expert.to(tl.int64) * stride_se
        k_tiles = tl.cdiv(K, BLOCK_K)
        k_tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
        k_first = split * k_tiles_per_split
        k_stop = tl.minimum(k_first + k_tiles_per_split, k_tiles)
        tl.static_assert(not SWAP_AB or DEQUANT != DOT_SCALED, "swap_ab needs a register decode")
        if SWAP_AB:  # weights as the MMA's M operand: the accumulator is the transposed [BN, BM] tile
            acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for kt in range(k_first, k_stop):
                a, w = _k_step_operands(kt, a_row_ptrs, row_mask, w_base, s_base, offs_n, n_mask, K, stride_wn,
                                        stride_sn, DEQUANT, BLOCK_N, BLOCK_K)
                acc_t = tl.dot(w, tl.trans(a), acc_t)
            acc = tl.trans(acc_t)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(k_first, k_stop):
                if DEQUANT != DOT_SCALED:
                    a, w = _k_step_operands(kt, a_row_ptrs, row_mask, w_base, s_base, offs_n, n_mask, K, stride_wn,
                                            stride_sn, DEQUANT, BLOCK_N, BLOCK_K)
                    acc = tl.dot(a, tl.trans(w), acc)
                else:
                    offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
                    a = tl.load(a_row_ptrs + offs_k[None, :], mask=row_mask[:, None] & (offs_k[None, :] < K),
                                other=0.0)
                    offs_g = kt * (BLOCK_K // 32) + tl.arange(0, BLOCK_K // 32)
                    scales = tl.load(s_base + offs_n[:, None] * stride_sn + offs_g[None, :],
                                     mask=n_mask[:, None] & (offs_g[None, :] < K // 32), other=127)  # [BN, BK // 32]
                    offs_b = kt * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
                    packed = tl.load(w_base + offs_n[None, :] * stride_wn + offs_b[:, None],
                                     mask=n_mask[None, :] & (offs_b[:, None] < K // 2), other=0)  # [BK // 2, BN]
                    acc = tl.dot_scaled(a, None, ACT_FORMAT, packed, scales, "e2m1", acc)
        _epilogue(acc, rows, row_mask, offs_n, n_mask, pid_n, split, expert, bias_ptr, out_ptr, row_token_ptr,
                  row_gate_ptr, N, stride_be, stride_om, SCATTER_OUT, FUSE_SWIGLU, ATOMIC_OUT, SWIGLU_ALPHA,
                  SWIGLU_LIMIT, BLOCK_M, BLOCK_N)


@triton.jit(do_not_specialize=["num_m_blocks", "num_programs"])
def moe_mxfp4_gemm_kernel(
    a_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, expert_offsets_ptr, row_token_ptr, row_gate_ptr,
    N, K, num_m_blocks, num_programs,
    stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_om,
    NUM_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_OUT: tl.constexpr, FUSE_SWIGLU: tl.constexpr, ATOMIC_OUT: tl.constexpr,
    SWIGLU_ALPHA: tl.constexpr, SWIGLU_LIMIT: tl.constexpr, DEQUANT: tl.constexpr, ACT_FORMAT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, PERSISTENT: tl.constexpr, SWAP_AB: tl.constexpr,
):
    """MoE grouped GEMM with MXFP4 weights.

    Pointers: ``a`` [*, K] activations (bf16/fp16/fp32, K contiguous); ``w`` [E, N, K // 2] uint8 packed e2m1 (the
    checkpoint's ``[E, N, G, 16]`` blocks viewed flat); ``s`` [E, N, G] uint8 e8m0; ``bias`` [E, N];
    ``out`` [*, N or N // 2]; ``expert_offsets`` [E + 1] int32; ``row_token`` [R] int32; ``row_gate`` [R] float32.
    The grid is ``num_m_blocks · cdiv(N, BLOCK_N) · SPLIT_K`` programs, or ``num_programs`` looping over those tiles
    when PERSISTENT. ``num_m_blocks`` is an upper bound on the row blocks (:func:`kernels.moe_routing.max_row_blocks`);
    tiles past the real count exit at once. Neither count is specialized on, so one compiled kernel serves every
    token count M.
    """
    pid = tl.program_id(0)
    e_idx, seg_start, seg_end, seg_blocks, blocks_through, real_m_blocks = _segment_table(
        expert_offsets_ptr, NUM_EXPERTS, EXPERTS_POW2, BLOCK_M)
    if PERSISTENT:
        total_tiles = num_m_blocks * tl.cdiv(N, BLOCK_N) * SPLIT_K
        for tile in range(pid, total_tiles, num_programs):
            _gemm_tile(tile, a_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, row_token_ptr, row_gate_ptr,
                       N, K, num_m_blocks, stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_be,
                       stride_om, e_idx, seg_start, seg_end, seg_blocks, blocks_through, real_m_blocks,
                       GATHER_A, SCATTER_OUT, FUSE_SWIGLU, ATOMIC_OUT, SWIGLU_ALPHA, SWIGLU_LIMIT, DEQUANT,
                       ACT_FORMAT, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, SWAP_AB)
    else:
        _gemm_tile(pid, a_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, row_token_ptr, row_gate_ptr,
                   N, K, num_m_blocks, stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_be,
                   stride_om, e_idx, seg_start, seg_end, seg_blocks, blocks_through, real_m_blocks,
                   GATHER_A, SCATTER_OUT, FUSE_SWIGLU, ATOMIC_OUT, SWIGLU_ALPHA, SWIGLU_LIMIT, DEQUANT,
                   ACT_FORMAT, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, SWAP_AB)


@triton.jit(do_not_specialize=["num_m_blocks"])
def moe_mxfp4_gemv_kernel(
    a_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, expert_offsets_ptr, row_token_ptr, row_gate_ptr,
    N, K, num_m_blocks,
    stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_om,
    NUM_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_OUT: tl.constexpr, FUSE_SWIGLU: tl.constexpr, ATOMIC_OUT: tl.constexpr,
    SWIGLU_ALPHA: tl.constexpr, SWIGLU_LIMIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    DEQUANT_PTX: tl.constexpr,
):
    """MoE grouped GEMV with MXFP4 weights for few rows per expert (decode): CUDA-core dot products, no MMA tile.

    Same pointers, flags and output contract as :func:`moe_mxfp4_gemm_kernel`. Program ``pid`` owns BLOCK_N output
    columns (``pid % cdiv(N, BLOCK_N)``), one K slice of ``SPLIT_K`` and one block of at most BLOCK_M sorted rows of
    one expert (``pid // (cdiv(N, BLOCK_N) · SPLIT_K)``, the row-block schedule of the MMA kernel; the loop over the
    rows runs over the block's real rows only, so BLOCK_M = 16 costs one row's work for a 1-row expert); the grid is
    ``num_m_blocks · cdiv(N, BLOCK_N) · SPLIT_K`` programs. Per K step it loads the ``[BLOCK_N, BLOCK_K/32, 16]``
    packed bytes (16 contiguous bytes per scale group, ``BLOCK_K/2`` per weight row: wide loads along K) and their
    ``[BLOCK_N, BLOCK_K/32]`` scales, decodes the low (even K) and high (odd K) nibbles to float32, multiplies them
    with the matching even/odd activations of one row, sums each 32-weight group and applies the group's e8m0 scale
    to that sum (one multiply per group instead of per weight); the rows of the block are taken one after another.
    float32 throughout, so the result matches the fp32 reference to the accumulation order, for any activation
    dtype (fp16/bf16/fp32).

    ``DEQUANT_PTX`` (config ``dequant="upcast_ptx"``, sm_90+) decodes with the packed inline PTX of
    :func:`kernels.moe_gemm.e2m1_ptx.decode_e2m1_groups_ptx` instead: 8 weights per 21 instructions into exact bf16
    with the scale applied, then float32 products (the Triton-op decode spends ~5 integer ops and a cvt per weight
    on byte-wide registers). Both decodes multiply the same exact weight values (a power-of-two scale commutes with
    float32 rounding); the sums can differ in the last bits, as their register layouts order the reduction apart.
    Measured on the H200 (2026-12-02, scripts/results/2026-12-02-h200-moe-variants-run3-gemv-ptx.md): 10-14% faster
    for mlp1 at M = 1..8, 31% slower for mlp2 at M = 1 (SPLIT_K = 2) at the gemv default tiles; left to the tuner.
    """
    (pid_m, pid_n, split, k_first, k_stop, e_idx, seg_start, seg_end, seg_blocks, blocks_through,
     real_m_blocks) = _gemv_schedule(tl.program_id(0), N, K, expert_offsets_ptr, NUM_EXPERTS, EXPERTS_POW2, BLOCK_M,
                                     BLOCK_N, BLOCK_K, SPLIT_K)
    if pid_m < real_m_blocks:
        expert, m_ids, rows, row_mask, a_rows, num_rows = _gemv_rows(
            pid_m, e_idx, seg_start, seg_end, seg_blocks, blocks_through, row_token_ptr, GATHER_A, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        n_mask = offs_n < N
        GROUPS: tl.constexpr = BLOCK_K // 32
        offs_g = tl.arange(0, GROUPS)
        offs_j = tl.arange(0, 16)
        w_ptrs = (w_ptr + expert.to(tl.int64) * stride_we + offs_n.to(tl.int64)[:, None, None] * stride_wn
                  + offs_g[None, :, None] * 16 + offs_j[None, None, :])  # [BN, G, 16]
        s_ptrs = (s_ptr + expert.to(tl.int64) * stride_se + offs_n.to(tl.int64)[:, None] * stride_sn
                  + offs_g[None, :])  # [BN, G]
        a_offs = offs_g[:, None, None] * 32 + offs_j[None, :, None] * 2 + tl.arange(0, 2)[None, None, :]  # [G,16,2]
        num_groups = K // 32
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # Rows outside, K inside: the K loop keeps its partial sums in the layout of the decoded weights (no
        # cross-thread reduction or layout change per step) and runs over the real rows only; a second row decodes
        # the weights again, from L1/L2 (H200 run 1, 2026-12-02: the K-outside order, with a reduction and an
        # accumulator update per row and step, ran at 0.15 of the copy bandwidth at M = 1).
        for m in range(num_rows):
            a_row = tl.sum(tl.where(m_ids == m, a_rows, 0), axis=0)
            a_base = a_ptr + a_row.to(tl.int64) * stride_am
            part = tl.zeros((BLOCK_N, GROUPS), dtype=tl.float32)
            for kt in range(k_first, k_stop):
                g0 = kt * GROUPS
                g_mask = (g0 + offs_g) < num_groups  # [G]
                packed = tl.load(w_ptrs + g0 * 16, mask=n_mask[:, None, None] & g_mask[None, :, None], other=0)
                scales = tl.load(s_ptrs + g0, mask=n_mask[:, None] & g_mask[None, :], other=127)  # [BN, G]
                a = tl.load(a_base + g0 * 32 + a_offs, mask=g_mask[:, None, None], other=0.0).to(tl.float32)
                a_even, a_odd = tl.split(a)  # [G, 16] each
                if DEQUANT_PTX:  # scaled bf16 weights, exact: the group's scale is already in them
                    w_even, w_odd = decode_e2m1_groups_ptx(packed, scales)  # [BN, G, 16] each
                    part += tl.sum(w_even.to(tl.float32) * a_even[None, :, :]
                                   + w_odd.to(tl.float32) * a_odd[None, :, :], axis=2)
                else:
                    w_even = decode_e2m1_unscaled(packed & 0x0F)  # [BN, G, 16]: weights k = 32g + 2j
                    w_odd = decode_e2m1_unscaled(packed >> 4)  # [BN, G, 16]: weights k = 32g + 2j + 1
                    group_sums = tl.sum(w_even * a_even[None, :, :] + w_odd * a_odd[None, :, :], axis=2)  # [BN, G]
                    part += group_sums * e8m0_factor(scales)
            dot = tl.sum(part, axis=1)  # [BN]
            acc = tl.where(m_ids[:, None] == m, acc + dot[None, :], acc)
        _epilogue(acc, rows, row_mask, offs_n, n_mask, pid_n, split, expert, bias_ptr, out_ptr, row_token_ptr,
                  row_gate_ptr, N, stride_be, stride_om, SCATTER_OUT, FUSE_SWIGLU, ATOMIC_OUT, SWIGLU_ALPHA,
                  SWIGLU_LIMIT, BLOCK_M, BLOCK_N)


@triton.jit
def swiglu_kernel(h_ptr, out_ptr, R, C, stride_h, stride_o,
                  ALPHA: tl.constexpr, LIMIT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Unfused SwiGLU-OAI: ``out[r, c] = swiglu(h[r, 2c], h[r, 2c + 1])``; h [R, 2C] (any float), out [R, C]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < R)[:, None] & (cols < C)[None, :]
    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_h + 2 * cols[None, :]
    gate = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)
    lin = tl.load(h_ptrs + 1, mask=mask, other=0.0).to(tl.float32)
    y = _swiglu_oai(gate, lin, ALPHA, LIMIT)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_o + cols[None, :], y.to(out_ptr.dtype.element_ty),
             mask=mask)
