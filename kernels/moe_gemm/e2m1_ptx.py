"""MXFP4 (e2m1 + e8m0) → bf16 tile decode in inline PTX, about 2.6 instructions per weight.

:func:`decode_e2m1_tile_ptx` has the same contract as
:func:`kernels.moe_gemm.triton_kernels.decode_e2m1_tile` with ``OUT_DTYPE = tl.bfloat16``. The scalar Triton version
spends about 10 integer/float instructions per weight (mask, shift, cvt, and, and, shl, shl, or, cvt, fmul, cvt),
which limits the 1-token decode GEMM to about 830 GB/s on an H100. This version works on packed 32-bit registers:
one ``tl.inline_asm_elementwise`` call with ``pack=4`` takes one register of 4 packed bytes (8 e2m1 codes) plus the
per-byte scale factors, and returns 4 ``bf16x2`` registers.

The bit trick (derived here; every step is plain PTX ISA: ``and.b32``, ``shr.b32``, ``shl.b32``, ``prmt.b32`` in
its default mode, ``mul.rn.bf16x2`` from PTX ISA 7.8, which needs sm_90 or newer):

An e2m1 code is ``s e1 e0 m`` (bit 3 sign, bits 2..1 exponent, bit 0 mantissa). The 16-bit pattern with the sign at
bit 15 and ``e1 e0 m`` at bits 8..6 is the bf16 with exponent field ``e1e0`` and mantissa MSB ``m``, whose value is
exactly ``code_value * 2**-126``: for ``e > 0`` it is ``2**(e-127) * (1 + m/2)``, and for ``e = 0`` it is the bf16
subnormal ``m * 2**-127`` (code 1, value 0.5, becomes ``2**-127``; code 0 becomes +0, code 8 becomes -0).
Multiplying by ``2**126`` (bf16 ``0x7E80``) gives the e2m1 value exactly, and multiplying by ``2**(scale-127)``
(bf16 bits ``scale << 7``) applies the e8m0 scale exactly: every product is an exact power-of-two scaling of a value
with 2 significant bits, so round-to-nearest never rounds (only ``|value| >= 2**128`` overflows to inf, as in fp32).
Two multiplies are needed because the folded factor ``2**(scale-1)`` does not fit bf16 for ``scale >= 129``
(gpt-oss checkpoints use scales up to ~135). The same "place eem at bits 8..6, multiply by 2**126" recipe is used,
with a pre-shuffled weight layout, by ``_unpack_fp4_to_bf16_triton`` in triton-lang/triton
``python/triton_kernels/triton_kernels/tensor_details/layout_details/hopper_value.py``, which relies on
``mul.bf16x2`` keeping bf16 subnormal inputs (there is no ``.ftz`` form of ``mul.bf16x2``).

Placing the fields takes no lookup table. Per input register ``x`` = bytes ``b0..b3``:

1. ``ml = x & 0x07070707`` (low-nibble magnitudes at byte bits 0..2), ``mh = x & 0x70707070`` (high-nibble
   magnitudes at bits 4..6), ``t = x >> 2``, ``sl = t & 0x02020202`` (low-nibble signs, byte bit 3 → 1),
   ``sh = t & 0x20202020`` (high-nibble signs, byte bit 7 → 5). Shifting the whole word keeps each sign inside its
   own byte.
2. ``prmt.b32 r, ml, sl, 0x5140`` builds bytes ``[ml.b0, sl.b0, ml.b1, sl.b1]``: 16-bit lane ``j`` holds the
   magnitude of byte ``j``'s low nibble at bits 0..2 and its sign at bit 9, all other bits zero. Selector
   ``0x7362`` does the same for bytes 2 and 3; ``(mh, sh)`` give the high nibbles, magnitude at bits 4..6 and sign at
   bit 13.
3. ``shl.b32`` by 6 (low nibbles) or 2 (high nibbles) moves the magnitude to bits 8..6 and the sign to bit 15 of
   each lane, the bf16 pattern above; nothing crosses into the other lane.
4. ``mul.rn.bf16x2`` by ``0x7E807E80`` then by the bf16x2 scale factors.

Cost per 8 weights: 5 + 4 + 4 integer instructions (ptxas issues the 4 left shifts as ``IMAD.SHL`` on the FMA pipe)
and 8 ``bf16x2`` multiplies (ptxas spreads them over ``HMUL2`` and ``HFMA2.MMA``), 21 in all. The scale factors are
converted once per 32 weights (on the ``[BLOCK_N, BLOCK_K // 32]`` scale tile) and broadcast; when a packed
register's 4 bytes share a scale, ptxas reads the factor with a ``.H0_H0`` operand swizzle instead of packing it.
Interleaving the even/odd outputs into K order (:func:`decode_e2m1_tile_ptx`, via ``tl.join``) adds one ``PRMT``
per output register (4 per 8 weights, seen in the SASS of the offline-compiled test kernels);
:func:`decode_e2m1_tile_ptx_split` returns the two halves for callers that can consume even and odd K separately
(e.g. ``dot(a_even, w_even) + dot(a_odd, w_odd)``).

Inline-asm operand mapping (``ElementwiseInlineAsmOpConversion`` in triton-lang/triton
``lib/Conversion/TritonGPUToLLVM/ElementwiseOpToLLVM.cpp``): with ``pack=4``, element ``k`` of a pack is byte ``k``
of the uint8 input register ``$4``; the two bf16 factor inputs are ``$5`` (elements 0, 1) and ``$6`` (elements 2,
3); output 0 (even K) is ``$0`` (elements 0, 1) and ``$1`` (elements 2, 3), output 1 (odd K) is ``$2`` and ``$3``,
element 0 in the low half. Which 4 elements form a pack depends on the layout, so every byte gets its own scale.
"""

from __future__ import annotations

import triton
import triton.language as tl

E2M1_BF16_ASM = r"""
{
.reg .b32 ml, mh, t, sl, sh, r0, r1, r2, r3, c;
and.b32 ml, $4, 0x07070707;
and.b32 mh, $4, 0x70707070;
shr.b32 t, $4, 2;
and.b32 sl, t, 0x02020202;
and.b32 sh, t, 0x20202020;
prmt.b32 r0, ml, sl, 0x5140;
prmt.b32 r1, ml, sl, 0x7362;
prmt.b32 r2, mh, sh, 0x5140;
prmt.b32 r3, mh, sh, 0x7362;
shl.b32 r0, r0, 6;
shl.b32 r1, r1, 6;
shl.b32 r2, r2, 2;
shl.b32 r3, r3, 2;
mov.b32 c, 0x7E807E80;
mul.rn.bf16x2 r0, r0, c;
mul.rn.bf16x2 r1, r1, c;
mul.rn.bf16x2 r2, r2, c;
mul.rn.bf16x2 r3, r3, c;
mul.rn.bf16x2 $0, r0, $5;
mul.rn.bf16x2 $1, r1, $6;
mul.rn.bf16x2 $2, r2, $5;
mul.rn.bf16x2 $3, r3, $6;
}
"""
"""PTX for one pack of 4 bytes: ``$4`` packed codes, ``$5``/``$6`` bf16x2 factors of bytes (0, 1)/(2, 3);
``$0``/``$1`` even-K (low nibble) values of bytes (0, 1)/(2, 3), ``$2``/``$3`` odd-K (high nibble) values."""

E2M1_BF16_CONSTRAINTS = "=r,=r,=r,=r,r,r,r"

_ASM = tl.constexpr(E2M1_BF16_ASM)
_CONSTRAINTS = tl.constexpr(E2M1_BF16_CONSTRAINTS)


@triton.jit
def e8m0_to_bf16(scales):
    """Exact bf16 ``2**(scale - 127)`` of e8m0 bytes (any shape).

    Bits ``scale << 7``; scale 0 becomes the bf16 subnormal ``2**-127`` (bits ``0x0040``); scale 255 (e8m0 NaN)
    becomes +inf.
    """
    s = scales.to(tl.uint16)
    bits = (s << 7) | ((s == 0).to(tl.uint16) << 6)
    return bits.to(tl.bfloat16, bitcast=True)


@triton.jit
def decode_e2m1_groups_ptx(codes, scales):
    """Decode MXFP4 weights grouped by scale to bf16, even and odd K apart (the gemv's tile shape).

    Args:
        codes: ``[R, G, 16]`` uint8: the 16 bytes (32 e2m1 codes, low nibble first along K) of each of G scale
            groups of each of R weight rows.
        scales: ``[R, G]`` uint8 e8m0 (bias 127), one per group.

    Returns:
        ``(even, odd)``, each ``[R, G, 16]`` tl.bfloat16: ``even[r, g, j]`` is weight ``32g + 2j`` of row r (byte j's
        low nibble), ``odd[r, g, j]`` weight ``32g + 2j + 1``; exact as :func:`decode_e2m1_tile_ptx`.
    """
    factor = e8m0_to_bf16(scales)  # [R, G], converted once per 32 weights
    return tl.inline_asm_elementwise(_ASM, _CONSTRAINTS, [codes, factor[:, :, None]],
                                     dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)


@triton.jit
def decode_e2m1_tile_ptx_split(packed, scales, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Decode a tile of MXFP4 weights to bf16, even and odd K apart.

    Args:
        packed: ``[BLOCK_N, BLOCK_K // 2]`` uint8, two e2m1 codes per byte, the low nibble first along K.
        scales: ``[BLOCK_N, BLOCK_K // 32]`` uint8 e8m0 (bias 127).

    Returns:
        ``(even, odd)``, each ``[BLOCK_N, BLOCK_K // 2]`` tl.bfloat16: ``even[n, j]`` is weight ``(n, 2j)`` (byte
        ``j``'s low nibble), ``odd[n, j]`` weight ``(n, 2j + 1)``. Exact for every code and every scale 0..254 (see
        :func:`decode_e2m1_tile_ptx`).
    """
    tl.static_assert(BLOCK_K % 32 == 0, "BLOCK_K must be a multiple of the MXFP4 group size 32")
    even, odd = decode_e2m1_groups_ptx(packed.reshape(BLOCK_N, BLOCK_K // 32, 16), scales)
    return even.reshape(BLOCK_N, BLOCK_K // 2), odd.reshape(BLOCK_N, BLOCK_K // 2)


@triton.jit
def decode_e2m1_tile_ptx(packed, scales, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Decode a tile of MXFP4 weights to bf16 with inline PTX (NVIDIA sm_90 or newer).

    Same contract as ``decode_e2m1_tile(packed, scales, BLOCK_N, BLOCK_K, tl.bfloat16)``.

    Args:
        packed: ``[BLOCK_N, BLOCK_K // 2]`` uint8, two e2m1 codes per byte, the low nibble first along K.
        scales: ``[BLOCK_N, BLOCK_K // 32]`` uint8 e8m0 (bias 127).

    Returns:
        ``[BLOCK_N, BLOCK_K]`` tl.bfloat16, exactly ``code_value * 2**(scale - 127)`` (code 8 gives -0.0).

    Supported scales: 0..254, all exact (scale 0 multiplies by the bf16 subnormal ``2**-127``); values whose
    magnitude reaches ``2**128`` (scale 254 with ``|code_value| >= 2``) become ±inf, as in fp32. Scale 255 (e8m0
    NaN) gives ±inf, and NaN for the zero codes. ``BLOCK_K`` must be a multiple of 32.
    """
    tl.static_assert(BLOCK_K % 32 == 0, "BLOCK_K must be a multiple of the MXFP4 group size 32")
    even, odd = decode_e2m1_groups_ptx(packed.reshape(BLOCK_N, BLOCK_K // 32, 16), scales)
    return tl.join(even, odd).reshape(BLOCK_N, BLOCK_K)  # [BN, BK // 32, 16, 2] → K order
