"""MoE grouped GEMV with MXFP4 weights on integer dot products (``dequant="dp4a"`` of the gemv path).

Why: the float gemv (:func:`kernels.moe_gemm.triton_kernels.moe_mxfp4_gemv_kernel`) is issue-bound at decode. ncu on
the H200 (2026-12-02, scripts/results/2026-12-02-h200-ncu-mlp1-M1-gemv.txt): 50% issue slots busy, the ALU pipe the
busiest, DRAM 19%; it spends 5-10 instructions per weight (decode, convert, FMA), while streaming mlp1 at M = 1 at the
copy bandwidth leaves about 4 lane-instructions per weight (132 SMs x 128 lanes x 1.98 GHz over 66 M weights in
8.3 us). Here a weight costs about 2: 8 e2m1 codes become 8 int8 values with 4 ``prmt`` table lookups, and ``dp4a``
multiplies 4 of them with 4 int8 activation bytes and accumulates in int32 in one instruction.

Numerics: exact to float32 level, unlike the int8 activations of llama.cpp's ``mmvq`` (which this borrows the
table-lookup + dp4a idea from): each group of 32 activations becomes 23-bit signed integers
``q = round(a · 2**(21 - E))`` (``E`` the exponent of the group's largest magnitude, so ``|q| < 2**22``), which is
exact for every bf16/fp16 activation within 2**-13 of the group maximum and otherwise off by at most
``max|a| · 2**-23``; ``q`` is split into three byte planes (hi signed, mid and lo unsigned) and each plane gets its own
dp4a, so the integer sums are exact and only their conversion to float32 rounds.

The lookup (per 32-bit register ``x`` of 8 codes, the low nibble of byte 0 first): ``prmt`` selects bytes with the
low 3 bits of each selector nibble and, when the nibble's bit 3 is set, returns the sign of the selected byte
replicated instead (PTX ISA, ``prmt`` default mode). bit 3 of an e2m1 code is its sign, bits 0..2 the magnitude
index. With tables holding ``16 + 2·|v|`` and ``16 - 2·|v|`` (all below 128, sign bit 0), ``prmt(TP, x)`` gives
``16 + 2v`` for the positive codes and 0 for the negative ones, ``prmt(TN, x ^ 0x8888)`` the reverse, and their OR is
``16 + 2v`` (4..28, an unsigned byte) for every code: 2 prmt, 1 xor, 1 or per 4 codes, no masking. The bias 16 comes
back out through ``16 · Σ q`` per group (computed once per activation group), the factor 2 through the scale.
Per 8 weights: 9 lookup instructions, 6 dp4a (3 planes x 2), 1 mad.

Measured on the H200 (2026-12-03, scripts/results/2026-12-03-h200-moe-variants-dp4a.md and the ncu record beside it):
exact as designed (mlp2 row error 1.2e-7) but not faster than the float gemv: mlp1 M = 1 29.9 us at best (the
inline-PTX float decode 31.2), mlp2 M = 1 19.6 (19.1). With the instructions gone, ncu shows the loads as the limit
(62% of the stall cycles on long scoreboard, DRAM 26%): each thread loads a 24-word activation record per (row,
group) pair it owns, 6x the bytes of the 4 code words it multiplies, which fills registers and L1 instead of
keeping weight bytes in flight. Offered to the tuner (gemv path, sm_61+), not a default.

L2 prefetch (``L2_PREFETCH``, config ``l2_prefetch``; built 2026-12-07, not yet timed: no GPU was lent that session).
Why: after the rows-in-thread change the kernel is still latency-bound (ncu on the H200, 2026-12-04: 25% occupancy,
DRAM 22%), and its timing fits a program that waits one DRAM round trip per K step: at the mlp1 M = 1 default
(BLOCK_N 16, BLOCK_K 512, 8 warps) a program makes 6 steps with 16 bytes of codes per thread in flight, and its
1440 programs at 3 per SM (71 registers in the sm_90 SASS of Triton 3.9.0 offline) take ~3.6 waves of 6 round
trips each. Before its K loop each program now asks L2 for its whole tile (codes and scales of its rows and K slice:
16 rows x 1440 B + 1440 B of scales at that default, one ``prefetch.global.L2`` per 128-byte line, spread over the
program's threads), which takes no registers and no scoreboard; the loads of each K step then wait on L2, or merge with the prefetch already on its way. The values are
unchanged (a prefetch moves no data into registers), so the tuner may toggle it freely.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.moe_gemm.triton_kernels import (_epilogue, _gemv_rows, _gemv_schedule, _row_block, e8m0_factor,
                                             prefetch_rows_l2)

LOOKUP_DOT_ASM = r"""
{
.reg .b32 tp0, tp1, tn0, tn1, xf, h, hf, p, n, w0, w1, z, sm, sl;
mov.b32 tp0, 0x13121110;
mov.b32 tp1, 0x1C181614;
mov.b32 tn0, 0x0D0E0F10;
mov.b32 tn1, 0x04080A0C;
mov.b32 z, 0;
xor.b32 xf, $2, 0x88888888;
shr.u32 h, $2, 16;
shr.u32 hf, xf, 16;
prmt.b32 p, tp0, tp1, $2;
prmt.b32 n, tn0, tn1, xf;
or.b32 w0, p, n;
prmt.b32 p, tp0, tp1, h;
prmt.b32 n, tn0, tn1, hf;
or.b32 w1, p, n;
dp4a.u32.s32 $0, w0, $3, z;
dp4a.u32.s32 $0, w1, $4, $0;
dp4a.u32.u32 sm, w0, $5, z;
dp4a.u32.u32 sm, w1, $6, sm;
dp4a.u32.u32 sl, w0, $7, z;
dp4a.u32.u32 sl, w1, $8, sl;
mad.lo.u32 $1, sm, 256, sl;
}
"""
"""One 32-bit register ``$2`` of 8 e2m1 codes against the activation words of its 8 K positions: ``$3``/``$4`` the
hi plane (signed bytes) of positions 0..3/4..7, ``$5``/``$6`` the mid plane, ``$7``/``$8`` the lo plane (unsigned).
``$0`` = Σ (16 + 2v)·hi, ``$1`` = Σ (16 + 2v)·(256·mid + lo). Tables: ``tp`` bytes 16 + {0, 1, 2, 3, 4, 6, 8, 12}
(twice the e2m1 magnitudes of index 0..7), ``tn`` bytes 16 - the same."""

LOOKUP_DOT_CONSTRAINTS = "=r,=r,r,r,r,r,r,r,r"

_ASM = tl.constexpr(LOOKUP_DOT_ASM)
_CONSTRAINTS = tl.constexpr(LOOKUP_DOT_CONSTRAINTS)

WEIGHT_BIAS = tl.constexpr(16)
"""Added to twice every e2m1 value by the lookup so that every byte is a non-negative int8 (4..28)."""


@triton.jit
def _plane_bytes(word0, word1, SIGNED: tl.constexpr):
    """The 8 bytes of two activation words (``[..., 4]`` int32 bit patterns) as ``[..., 4, 8]`` int32, K position
    order (word0's bytes first, the lowest byte first), sign-extended when SIGNED."""
    words = tl.join(word0, word1).to(tl.uint32, bitcast=True)  # [..., 4, 2]
    b = (words[:, :, :, :, None] >> (tl.arange(0, 4) * 8).to(tl.uint32)) & 0xFF  # [..., 4, 2, 4]
    b = b.to(tl.int32).reshape(words.shape[0], words.shape[1], words.shape[2], 8)
    if SIGNED:
        b = tl.where(b >= 128, b - 256, b)
    return b


@triton.jit
def _lookup_dot_emulated(codes, hi0, hi1, mid0, mid1, lo0, lo1):
    """Triton-op twin of :data:`LOOKUP_DOT_ASM` for the interpreter: ``codes`` and the activation words
    ``[N', G, 4]`` int32; the same int32 results (both compute the same exact integer sums)."""
    x = codes.to(tl.uint32, bitcast=True)
    c = ((x[:, :, :, None] >> (tl.arange(0, 8) * 4).to(tl.uint32)) & 0xF).to(tl.int32)  # [N', G, 4, 8] codes
    idx = c & 7
    e = idx >> 1
    m = idx & 1
    mag = tl.where(e == 0, m, (2 + m) << tl.maximum(e - 1, 0))  # twice the e2m1 magnitude
    w = tl.where(c >= 8, WEIGHT_BIAS - mag, WEIGHT_BIAS + mag)
    s_hi = tl.sum(w * _plane_bytes(hi0, hi1, True), axis=3)
    s_mid = tl.sum(w * _plane_bytes(mid0, mid1, False), axis=3)
    s_lo = tl.sum(w * _plane_bytes(lo0, lo1, False), axis=3)
    return s_hi, s_mid * 256 + s_lo


@triton.jit
def _pack_words(q, GROUPS: tl.constexpr):
    """``[G, 32]`` int32 byte values (0..255) → the ``[G, 4]`` words of K positions ``8j..8j+3`` and of
    ``8j+4..8j+7`` (4 bytes per word, the lowest K position in the lowest byte), as int32 bit patterns."""
    shifts = tl.arange(0, 4) * 8
    b = q.to(tl.uint32).reshape(GROUPS, 8, 4) << shifts[None, None, :].to(tl.uint32)
    words = tl.sum(b, axis=2)  # disjoint bits: the sum is an OR
    first, second = tl.split(words.reshape(GROUPS, 4, 2))
    return first.to(tl.int32, bitcast=True), second.to(tl.int32, bitcast=True)


@triton.jit
def quantize_activation_groups(a, GROUPS: tl.constexpr):
    """Split ``[G, 32]`` float32 activations into exact byte planes for :data:`LOOKUP_DOT_ASM`.

    Returns ``(hi0, hi1, mid0, mid1, lo0, lo1, corr_hi, corr_lm, factor)``: the six ``[G, 4]`` int32 word tensors
    (see :func:`_pack_words`) of ``q = 65536·hi + 256·mid + lo``, ``q = round(a · 2**(21 - E))`` with ``E`` the
    exponent of the group's largest ``|a|`` (so ``|q| < 2**22``; round to nearest even through the 1.5·2**23
    trick), the ``[G]`` int32 bias corrections ``16·Σ hi`` and ``16·Σ (q & 0xFFFF)``, and the ``[G]`` float32 factor
    ``2**(E - 21) / 2 · 2**-14`` that turns a group's integer sum into its dot product together with
    :func:`kernels.moe_gemm.triton_kernels.e8m0_factor` (``/2``: the lookup doubles the e2m1 values; ``2**-14``: the
    e8m0 factor carries ``2**14``). Group maxima below 2**-90 are treated as 2**-90 (``q`` stays exact).
    """
    amax = tl.max(tl.abs(a), axis=1)  # [G]
    e = tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, 37)  # biased exponent of max|a|
    mult = ((275 - e) << 23).to(tl.float32, bitcast=True)  # 2**(148 - e) = 2**(21 - E)
    x = a * mult[:, None]  # |x| < 2**22, exact (a power-of-two scaling)
    q = (x + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000  # round(x): 1.5·2**23 has an ulp of 1
    hi = q >> 16  # -64..63
    lm = q & 0xFFFF
    hi0, hi1 = _pack_words(hi & 0xFF, GROUPS)
    mid0, mid1 = _pack_words(lm >> 8, GROUPS)
    lo0, lo1 = _pack_words(lm & 0xFF, GROUPS)
    corr_hi = WEIGHT_BIAS * tl.sum(hi, axis=1)
    corr_lm = WEIGHT_BIAS * tl.sum(lm, axis=1)
    factor = ((e - 36) << 23).to(tl.float32, bitcast=True)  # 2**(e - 163) = 2**(E - 21) · 2**-1 · 2**-14
    return hi0, hi1, mid0, mid1, lo0, lo1, corr_hi, corr_lm, factor


RECORD_WORDS = tl.constexpr(32)
"""int32 words of one activation group's record (128 bytes): the six plane word tensors of
:func:`quantize_activation_groups` (4 words each, ``hi0 hi1 mid0 mid1 lo0 lo1``), then ``corr_hi``, ``corr_lm`` and the
float32 bits of ``factor``, then 5 words of padding (16-byte aligned fields, one 128-byte line per group)."""


@triton.jit
def store_activation_records(rec_row_ptr, a, offs_g, g_mask, GROUPS: tl.constexpr):
    """Quantize ``a`` ``[G, 32]`` float32 (:func:`quantize_activation_groups`) and store group ``offs_g[i]``'s
    :data:`RECORD_WORDS` record at ``rec_row_ptr + offs_g[i] · RECORD_WORDS`` (int32 words) where ``g_mask``."""
    hi0, hi1, mid0, mid1, lo0, lo1, corr_hi, corr_lm, factor = quantize_activation_groups(a, GROUPS)
    rec = rec_row_ptr + offs_g * RECORD_WORDS  # [G]
    offs4 = tl.arange(0, 4)[None, :]
    m4 = g_mask[:, None]
    tl.store(rec[:, None] + offs4, hi0, mask=m4)
    tl.store(rec[:, None] + 4 + offs4, hi1, mask=m4)
    tl.store(rec[:, None] + 8 + offs4, mid0, mask=m4)
    tl.store(rec[:, None] + 12 + offs4, mid1, mask=m4)
    tl.store(rec[:, None] + 16 + offs4, lo0, mask=m4)
    tl.store(rec[:, None] + 20 + offs4, lo1, mask=m4)
    tl.store(rec + 24, corr_hi, mask=g_mask)
    tl.store(rec + 25, corr_lm, mask=g_mask)
    tl.store(rec + 26, factor.to(tl.int32, bitcast=True), mask=g_mask)


@triton.jit
def quantize_activations_kernel(a_ptr, q_ptr, rows, K, stride_am, stride_qm, GROUPS: tl.constexpr):
    """Split every 32-group of ``a`` ``[rows, K]`` (any float dtype) into its :data:`RECORD_WORDS` record of
    ``q`` ``[rows, K/32, 32]`` int32 (:func:`quantize_activation_groups`); program ``(r, b)`` does row r, groups
    ``b·GROUPS ..``. Run once per call before :func:`moe_mxfp4_gemv_dp4a_kernel`, so that the work is not repeated
    by each of its N-block programs (or not at all where the kernel that wrote ``a`` also wrote its records, e.g.
    :func:`kernels.layer_ops.add_rms_norm` with ``records``)."""
    row = tl.program_id(0)
    offs_g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    g_mask = offs_g < K // 32
    a = tl.load(a_ptr + row.to(tl.int64) * stride_am + offs_g[:, None] * 32 + tl.arange(0, 32)[None, :],
                mask=g_mask[:, None], other=0.0).to(tl.float32)  # [G, 32]
    store_activation_records(q_ptr + row.to(tl.int64) * stride_qm, a, offs_g, g_mask, GROUPS)


@triton.jit
def group_dots(codes, scales, rec, mask, EMULATE: tl.constexpr):
    """Dot products of weight groups with the activation groups of their K positions.

    Args:
        codes: ``[R, SUB_N, G, 4]`` int32: the 16 bytes (32 e2m1 codes) of each group as 4 words, for
            ``R · SUB_N`` weight rows.
        scales: ``[R, SUB_N, G]`` uint8 e8m0.
        rec: ``[1, SUB_N, G]`` pointers to each group's activation record (:data:`RECORD_WORDS`), the same record
            along SUB_N. The loads take the ``[1, SUB_N, G, 4]`` shape of one R-slice of the codes, so they get the
            codes' register layout (no shuffles or shared-memory round trips: the sm_90 SASS of a ``[G]``-shaped
            load broadcast afterwards had 81 SHFL and 168 registers), and every thread loads each record it needs
            once and uses it for its R rows (dim 0 of the codes, held in one thread when SUB_N rows x G groups
            cover the program's threads).
        mask: ``[1, SUB_N, G]`` which groups exist.
        EMULATE: Triton ops instead of the inline PTX (interpreter).

    Returns:
        ``[R, SUB_N, G]`` float32 ``Σ_k w[n, 32g + k] · a[g, k]``.
    """
    words = rec[:, :, :, None] + tl.arange(0, 4)[None, None, None, :]  # [1, SUB_N, G, 4]
    m4 = mask[:, :, :, None]
    hi0 = tl.broadcast_to(tl.load(words, mask=m4, other=0), codes.shape)
    hi1 = tl.broadcast_to(tl.load(words + 4, mask=m4, other=0), codes.shape)
    mid0 = tl.broadcast_to(tl.load(words + 8, mask=m4, other=0), codes.shape)
    mid1 = tl.broadcast_to(tl.load(words + 12, mask=m4, other=0), codes.shape)
    lo0 = tl.broadcast_to(tl.load(words + 16, mask=m4, other=0), codes.shape)
    lo1 = tl.broadcast_to(tl.load(words + 20, mask=m4, other=0), codes.shape)
    corr_hi = tl.load(rec + 24, mask=mask, other=0)  # [1, SUB_N, G]
    corr_lm = tl.load(rec + 25, mask=mask, other=0)
    factor = tl.load(rec + 26, mask=mask, other=0).to(tl.float32, bitcast=True)
    if EMULATE:
        R: tl.constexpr = codes.shape[0]
        SUB_N: tl.constexpr = codes.shape[1]
        G: tl.constexpr = codes.shape[2]
        s_hi, s_lm = _lookup_dot_emulated(codes.reshape(R * SUB_N, G, 4), hi0.reshape(R * SUB_N, G, 4),
                                          hi1.reshape(R * SUB_N, G, 4), mid0.reshape(R * SUB_N, G, 4),
                                          mid1.reshape(R * SUB_N, G, 4), lo0.reshape(R * SUB_N, G, 4),
                                          lo1.reshape(R * SUB_N, G, 4))
        s_hi = s_hi.reshape(R, SUB_N, G, 4)
        s_lm = s_lm.reshape(R, SUB_N, G, 4)
    else:
        s_hi, s_lm = tl.inline_asm_elementwise(_ASM, _CONSTRAINTS, [codes, hi0, hi1, mid0, mid1, lo0, lo1],
                                               dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
    s_hi = tl.sum(s_hi, axis=3) - corr_hi  # [R, SUB_N, G]: Σ 2v·hi
    s_lm = tl.sum(s_lm, axis=3) - corr_lm  # Σ 2v·(q & 0xFFFF)
    total = s_hi.to(tl.float32) * 65536.0 + s_lm.to(tl.float32)  # Σ 2v·q
    return total * e8m0_factor(scales) * factor


@triton.jit(do_not_specialize=["num_m_blocks", "num_programs", "stride_sg"])
def moe_mxfp4_gemv_dp4a_kernel(
    q_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, expert_offsets_ptr, row_token_ptr, row_gate_ptr,
    N, K, num_m_blocks, num_programs,
    stride_qm, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_be, stride_om,
    NUM_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_OUT: tl.constexpr, FUSE_SWIGLU: tl.constexpr, ATOMIC_OUT: tl.constexpr,
    SWIGLU_ALPHA: tl.constexpr, SWIGLU_LIMIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    SUB_N: tl.constexpr, EMULATE: tl.constexpr, L2_PREFETCH: tl.constexpr, THREADS: tl.constexpr,
    PERSISTENT: tl.constexpr,
):
    """MoE grouped GEMV with MXFP4 weights through ``dp4a`` (see the module docstring).

    Same grid, flags and output contract as :func:`kernels.moe_gemm.triton_kernels.moe_mxfp4_gemv_kernel`, except
    that the activations come as the ``[*, K/32, 32]`` int32 group records ``q`` of
    :func:`quantize_activations_kernel` (``stride_qm`` words per row) and ``w`` is the ``[E, N, K/8]`` int32 view of
    the packed codes (4 words per 32-weight group; ``stride_we`` and ``stride_wn`` in words, multiples of 4).
    ``stride_sg`` is the scales' group stride (1; a runtime value so that the compiler sees no contiguity along G
    and gives the scale loads the codes' layout instead of vectorizing them and converting afterwards).

    Program ``pid`` owns BLOCK_N columns, one K slice and one row block of one expert. Its BLOCK_N rows are
    ``R = BLOCK_N / SUB_N`` slices of SUB_N rows: ``SUB_N · BLOCK_K/32`` (rows x groups) is what the program's threads
    cover once (the launcher's choice), so each thread holds one group of R rows, loads that group's activation
    record once per K step and reuses it R times (measured on the H200, 2026-12-03: with one (row, group) per
    thread the record loads were 6x the code bytes and the kernel was load-bound, 62% long-scoreboard stalls).
    Per real row and K step it multiplies the ``[R, SUB_N, BLOCK_K/32, 4]`` code words with the row's planes in
    int32 (:func:`group_dots`) and scales each group's sum in float32.

    ``L2_PREFETCH`` (GPU only; the launcher turns it off under the interpreter): before its row loop a tile's codes
    and scales of its K slice are prefetched into L2 (:func:`kernels.moe_gemm.triton_kernels.prefetch_rows_l2`,
    THREADS = 32 · num_warps lines per pass); see the module docstring. ``PERSISTENT``: ``num_programs`` programs
    loop over the ``num_m_blocks · cdiv(N, BLOCK_N) · SPLIT_K`` tiles (tile ``pid + i · num_programs``), and with
    L2_PREFETCH each asks L2 for its *next* tile before multiplying the current one, so that the DRAM stream does not
    stop between tiles.
    """
    pid = tl.program_id(0)
    if PERSISTENT:
        total_tiles = num_m_blocks * tl.cdiv(N, BLOCK_N) * SPLIT_K
        if L2_PREFETCH:
            _prefetch_tile(pid, w_ptr, s_ptr, expert_offsets_ptr, N, K, stride_we, stride_wn, stride_se, stride_sn,
                           stride_sg, NUM_EXPERTS, EXPERTS_POW2, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, THREADS)
        for tile in range(pid, total_tiles, num_programs):
            if L2_PREFETCH:  # the next tile's bytes, while this one's loads are on their way
                _prefetch_tile(tile + num_programs, w_ptr, s_ptr, expert_offsets_ptr, N, K, stride_we, stride_wn,
                               stride_se, stride_sn, stride_sg, NUM_EXPERTS, EXPERTS_POW2, BLOCK_M, BLOCK_N, BLOCK_K,
                               SPLIT_K, THREADS)
            _dp4a_tile(tile, q_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, expert_offsets_ptr, row_token_ptr, row_gate_ptr,
                       N, K, stride_qm, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_be, stride_om,
                       NUM_EXPERTS, EXPERTS_POW2, GATHER_A, SCATTER_OUT, FUSE_SWIGLU, ATOMIC_OUT, SWIGLU_ALPHA,
                       SWIGLU_LIMIT, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, SUB_N, EMULATE, False, THREADS)
    else:
        _dp4a_tile(pid, q_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, expert_offsets_ptr, row_token_ptr, row_gate_ptr,
                   N, K, stride_qm, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_be, stride_om,
                   NUM_EXPERTS, EXPERTS_POW2, GATHER_A, SCATTER_OUT, FUSE_SWIGLU, ATOMIC_OUT, SWIGLU_ALPHA,
                   SWIGLU_LIMIT, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, SUB_N, EMULATE, L2_PREFETCH, THREADS)


@triton.jit
def _prefetch_tile(tile, w_ptr, s_ptr, expert_offsets_ptr, N, K, stride_we, stride_wn, stride_se, stride_sn, stride_sg,
                   NUM_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, THREADS: tl.constexpr):
    """L2 prefetch of the codes and scales of gemv tile ``tile`` (nothing for a tile past the real row blocks)."""
    (pid_m, pid_n, split, k_first, k_stop, e_idx, seg_start, seg_end, seg_blocks, blocks_through,
     real_m_blocks) = _gemv_schedule(tile, N, K, expert_offsets_ptr, NUM_EXPERTS, EXPERTS_POW2, BLOCK_M, BLOCK_N,
                                     BLOCK_K, SPLIT_K)
    if pid_m < real_m_blocks:
        expert, row_begin, row_end = _row_block(pid_m, e_idx, seg_start, seg_end, seg_blocks, blocks_through,
                                                BLOCK_M)
        _prefetch_codes_and_scales(w_ptr, s_ptr, expert, pid_n, k_first, k_stop, N, K, stride_we, stride_wn,
                                   stride_se, stride_sn, stride_sg, BLOCK_N, BLOCK_K, THREADS)


@triton.jit
def _prefetch_codes_and_scales(w_ptr, s_ptr, expert, pid_n, k_first, k_stop, N, K, stride_we, stride_wn, stride_se,
                               stride_sn, stride_sg, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               THREADS: tl.constexpr):
    """L2 prefetch of expert ``expert``: the code words and scales of rows ``pid_n·BLOCK_N ..`` over the K tiles
    ``[k_first, k_stop)``."""
    GROUPS: tl.constexpr = BLOCK_K // 32
    first_row = pid_n * BLOCK_N
    tile_rows = tl.minimum(N - first_row, BLOCK_N)
    g_begin = k_first * GROUPS
    g_end = tl.minimum(k_stop * GROUPS, K // 32)
    prefetch_rows_l2(w_ptr + expert.to(tl.int64) * stride_we + first_row.to(tl.int64) * stride_wn,
                     stride_wn, tile_rows, g_begin * 4, g_end * 4, 4, THREADS)
    prefetch_rows_l2(s_ptr + expert.to(tl.int64) * stride_se + first_row.to(tl.int64) * stride_sn,
                     stride_sn, tile_rows, g_begin * stride_sg, g_end * stride_sg, 1, THREADS)


@triton.jit
def _dp4a_tile(
    tile, q_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, expert_offsets_ptr, row_token_ptr, row_gate_ptr, N, K,
    stride_qm, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_be, stride_om,
    NUM_EXPERTS: tl.constexpr, EXPERTS_POW2: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_OUT: tl.constexpr, FUSE_SWIGLU: tl.constexpr, ATOMIC_OUT: tl.constexpr,
    SWIGLU_ALPHA: tl.constexpr, SWIGLU_LIMIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    SUB_N: tl.constexpr, EMULATE: tl.constexpr, PREFETCH: tl.constexpr, THREADS: tl.constexpr,
):
    """One tile of :func:`moe_mxfp4_gemv_dp4a_kernel` (its arguments; PREFETCH: this tile's own L2 prefetch)."""
    (pid_m, pid_n, split, k_first, k_stop, e_idx, seg_start, seg_end, seg_blocks, blocks_through,
     real_m_blocks) = _gemv_schedule(tile, N, K, expert_offsets_ptr, NUM_EXPERTS, EXPERTS_POW2, BLOCK_M,
                                     BLOCK_N, BLOCK_K, SPLIT_K)
    if pid_m < real_m_blocks:
        expert, m_ids, rows, row_mask, a_rows, num_rows = _gemv_rows(
            pid_m, e_idx, seg_start, seg_end, seg_blocks, blocks_through, row_token_ptr, GATHER_A, BLOCK_M)
        R: tl.constexpr = BLOCK_N // SUB_N
        GROUPS: tl.constexpr = BLOCK_K // 32
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        n_mask = offs_n < N
        offs_n4 = (pid_n * BLOCK_N + tl.arange(0, R)[:, None] * SUB_N + tl.arange(0, SUB_N)[None, :])[:, :, None]
        n_mask4 = offs_n4 < N  # [R, SUB_N, 1], row r·SUB_N + s of the block
        offs_g = tl.arange(0, GROUPS)[None, None, :]  # [1, 1, G]
        # Strides in whole 16-byte groups times 4 words: the alignment analysis sees every code pointer as a
        # multiple of 16 bytes, so each group is one 128-bit load (tl.multiple_of on a scalar argument is dropped,
        # and the JIT only specializes strides divisible by 16: mlp1's 360 words per row is not).
        w_ptrs = (w_ptr + expert.to(tl.int64) * (stride_we // 4) * 4
                  + (offs_n4.to(tl.int64) * (stride_wn // 4) * 4 + offs_g * 4)[:, :, :, None]
                  + tl.arange(0, 4)[None, None, None, :])  # [R, SUB_N, G, 4]
        s_ptrs = (s_ptr + expert.to(tl.int64) * stride_se + offs_n4.to(tl.int64) * stride_sn
                  + offs_g * stride_sg)  # [R, SUB_N, G]
        num_groups = K // 32
        if PREFETCH:  # the tile's codes and scales, K slice [k_first, k_stop) of its rows
            _prefetch_codes_and_scales(w_ptr, s_ptr, expert, pid_n, k_first, k_stop, N, K, stride_we, stride_wn,
                                       stride_se, stride_sn, stride_sg, BLOCK_N, BLOCK_K, THREADS)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for m in range(num_rows):  # rows outside, K inside, as the float gemv
            a_row = tl.sum(tl.where(m_ids == m, a_rows, 0), axis=0)
            rec_base = (q_ptr + a_row.to(tl.int64) * stride_qm + offs_g * RECORD_WORDS
                        + 0 * tl.arange(0, SUB_N)[None, :, None])  # [1, SUB_N, G]: one record per group
            part = tl.zeros((R, SUB_N, GROUPS), dtype=tl.float32)
            for kt in range(k_first, k_stop):
                g0 = kt * GROUPS
                g_mask = (g0 + offs_g) < num_groups  # [1, 1, G]
                codes = tl.load(w_ptrs + g0 * 4, mask=(n_mask4 & g_mask)[:, :, :, None], other=0)
                scales = tl.load(s_ptrs + g0 * stride_sg, mask=n_mask4 & g_mask, other=127)  # [R, SUB_N, G]
                rec_mask = g_mask & (tl.arange(0, SUB_N)[None, :, None] >= 0)  # [1, SUB_N, G]
                part += group_dots(codes, scales, rec_base + g0 * RECORD_WORDS, rec_mask, EMULATE)
            dot = tl.reshape(tl.sum(part, axis=2), (BLOCK_N,))  # [BN]: row r·SUB_N + s
            acc = tl.where(m_ids[:, None] == m, acc + dot[None, :], acc)
        _epilogue(acc, rows, row_mask, offs_n, n_mask, pid_n, split, expert, bias_ptr, out_ptr, row_token_ptr,
                  row_gate_ptr, N, stride_be, stride_om, SCATTER_OUT, FUSE_SWIGLU, ATOMIC_OUT, SWIGLU_ALPHA,
                  SWIGLU_LIMIT, BLOCK_M, BLOCK_N)
