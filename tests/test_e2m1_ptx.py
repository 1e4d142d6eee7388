"""Tests of the inline-PTX MXFP4 decode (:mod:`kernels.moe_gemm.e2m1_ptx`) that need no GPU.

Two halves:

- **Bit-exact emulation**: :func:`emulate_asm` transliterates ``E2M1_BF16_ASM`` line by line into numpy integer
  operations plus an exact model of ``mul.rn.bf16x2`` (IEEE round-to-nearest-even, subnormals kept), and is checked
  against :func:`kernels.mxfp4.dequantize` for every byte value × every scale 0..254 in every byte position of the
  packed register, and for whole tiles grouped into packs in a random order (the packing order of
  ``tl.inline_asm_elementwise`` is unspecified). A test pins the asm text to the transliterated lines.
- **Offline compile**: ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` (sm_90a) and ``GPUTarget("cuda", 121,
  32)`` (sm_121a) runs the whole pipeline, ptxas included, so the PTX syntax and operand constraints are validated;
  the PTX and SASS are checked for the expected instructions. Skipped when the CUDA toolchain is missing.

What these tests cannot show: that the hardware ``HMUL2.BF16`` keeps the bf16 subnormal ``2**-127`` (code ±0.5
and scale 0) rather than flushing it — that needs a run on an H100 / GB10.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from kernels import mxfp4
from kernels.moe_gemm import e2m1_ptx
from tests.offline_compile import run_offline_compile

# ----------------------------------------------------------------------------------------------------------------
# Emulation of the PTX instructions used
# ----------------------------------------------------------------------------------------------------------------

U32 = np.uint64(0xFFFFFFFF)


def _u(x) -> np.ndarray:
    """Work in uint64 so that shifts cannot wrap before the explicit 32-bit truncation."""
    return np.asarray(x, dtype=np.uint64)


def and_b32(a, b) -> np.ndarray:
    return _u(a) & _u(b)


def shr_b32(a, n: int) -> np.ndarray:
    return (_u(a) & U32) >> np.uint64(n)


def shl_b32(a, n: int) -> np.ndarray:
    return (_u(a) << np.uint64(n)) & U32


def prmt_b32(a, b, c: int) -> np.ndarray:
    """``prmt.b32 d, a, b, c`` in the default mode (PTX ISA, "prmt").

    The 8 source bytes are ``{b, a}`` (bytes 0..3 from ``a``, 4..7 from ``b``). Byte ``i`` of ``d`` is chosen by
    nibble ``i`` of ``c``: its bits 2..0 index the source byte; if its bit 3 is set, the byte's sign (bit 7) is
    replicated into all 8 bits instead.
    """
    table = (_u(a) & U32) | ((_u(b) & U32) << np.uint64(32))
    d = np.zeros(np.broadcast(table).shape, dtype=np.uint64)
    for i in range(4):
        sel = (c >> (4 * i)) & 0xF
        byte = (table >> np.uint64(8 * (sel & 7))) & np.uint64(0xFF)
        if sel & 8:
            byte = np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0))
        d |= byte << np.uint64(8 * i)
    return d


def bf16_bits_to_f64(bits) -> np.ndarray:
    """Exact value of bf16 bit patterns (subnormals included)."""
    f32 = (np.asarray(bits, dtype=np.uint32) << np.uint32(16)).view(np.float32)
    return f32.astype(np.float64)


def f64_to_bf16_bits_rn(x: np.ndarray) -> np.ndarray:
    """Round exact float64 values to bf16 bit patterns, round-to-nearest-even, subnormals kept, overflow → ±inf."""
    x = np.asarray(x, dtype=np.float64)
    sign = np.signbit(x).astype(np.uint32) << np.uint32(15)
    ax = np.abs(x)
    _, e = np.frexp(ax)  # ax = m * 2**e with m in [0.5, 1)
    quantum = np.ldexp(1.0, np.maximum(e - 8, -133))  # 8 significant bits; subnormal step 2**-133
    with np.errstate(invalid="ignore"):
        r = np.round(ax / quantum) * quantum  # np.round rounds half to even; ax / quantum is exact
    r = np.where(r >= 2.0**128, np.inf, r)
    bits = (r.astype(np.float32).view(np.uint32) >> np.uint32(16)) & np.uint32(0x7FFF)
    return bits | sign


def mul_rn_bf16x2(a, b) -> np.ndarray:
    """``mul.rn.bf16x2 d, a, b``: two independent bf16 products (lanes 15..0 and 31..16), each rounded to nearest
    even. Modelled as IEEE with subnormal inputs and outputs kept (there is no ``.ftz`` form for bf16x2)."""
    a = _u(a) & U32
    b = _u(b) & U32
    lanes = []
    for shift in (0, 16):
        la = ((a >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint32)
        lb = ((b >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint32)
        product = bf16_bits_to_f64(la) * bf16_bits_to_f64(lb)  # exact in float64 (8 x 8 significant bits)
        lanes.append(f64_to_bf16_bits_rn(product).astype(np.uint64))
    return lanes[0] | (lanes[1] << np.uint64(16))


# ----------------------------------------------------------------------------------------------------------------
# The asm, transliterated
# ----------------------------------------------------------------------------------------------------------------

ASM_BODY = [
    "and.b32 ml, $4, 0x07070707;",
    "and.b32 mh, $4, 0x70707070;",
    "shr.b32 t, $4, 2;",
    "and.b32 sl, t, 0x02020202;",
    "and.b32 sh, t, 0x20202020;",
    "prmt.b32 r0, ml, sl, 0x5140;",
    "prmt.b32 r1, ml, sl, 0x7362;",
    "prmt.b32 r2, mh, sh, 0x5140;",
    "prmt.b32 r3, mh, sh, 0x7362;",
    "shl.b32 r0, r0, 6;",
    "shl.b32 r1, r1, 6;",
    "shl.b32 r2, r2, 2;",
    "shl.b32 r3, r3, 2;",
    "mov.b32 c, 0x7E807E80;",
    "mul.rn.bf16x2 r0, r0, c;",
    "mul.rn.bf16x2 r1, r1, c;",
    "mul.rn.bf16x2 r2, r2, c;",
    "mul.rn.bf16x2 r3, r3, c;",
    "mul.rn.bf16x2 $0, r0, $5;",
    "mul.rn.bf16x2 $1, r1, $6;",
    "mul.rn.bf16x2 $2, r2, $5;",
    "mul.rn.bf16x2 $3, r3, $6;",
]
"""The instruction lines of ``E2M1_BF16_ASM``, in order; :func:`emulate_asm` mirrors them one to one."""


def emulate_asm(x, f01, f23):
    """Run ``E2M1_BF16_ASM`` on arrays of registers: ``x`` = ``$4`` (4 packed bytes), ``f01``/``f23`` = ``$5``/``$6``
    (bf16x2 factors of bytes 0, 1 / 2, 3). Returns ``($0, $1, $2, $3)`` as uint64 arrays holding 32-bit values."""
    s4, s5, s6 = _u(x), _u(f01), _u(f23)
    ml = and_b32(s4, 0x07070707)  # and.b32 ml, $4, 0x07070707;   low-nibble e1 e0 m at byte bits 2..0
    mh = and_b32(s4, 0x70707070)  # and.b32 mh, $4, 0x70707070;   high-nibble e1 e0 m at byte bits 6..4
    t = shr_b32(s4, 2)  # shr.b32 t, $4, 2;
    sl = and_b32(t, 0x02020202)  # and.b32 sl, t, 0x02020202;     low-nibble sign (byte bit 3) at bit 1
    sh = and_b32(t, 0x20202020)  # and.b32 sh, t, 0x20202020;     high-nibble sign (byte bit 7) at bit 5
    r0 = prmt_b32(ml, sl, 0x5140)  # prmt.b32 r0, ml, sl, 0x5140;  [ml.b0, sl.b0, ml.b1, sl.b1]
    r1 = prmt_b32(ml, sl, 0x7362)  # prmt.b32 r1, ml, sl, 0x7362;  [ml.b2, sl.b2, ml.b3, sl.b3]
    r2 = prmt_b32(mh, sh, 0x5140)  # prmt.b32 r2, mh, sh, 0x5140;
    r3 = prmt_b32(mh, sh, 0x7362)  # prmt.b32 r3, mh, sh, 0x7362;
    r0 = shl_b32(r0, 6)  # shl.b32 r0, r0, 6;   lane: sign at 15, e1 e0 m at 8..6
    r1 = shl_b32(r1, 6)  # shl.b32 r1, r1, 6;
    r2 = shl_b32(r2, 2)  # shl.b32 r2, r2, 2;
    r3 = shl_b32(r3, 2)  # shl.b32 r3, r3, 2;
    c = _u(0x7E807E80)  # mov.b32 c, 0x7E807E80;   bf16x2 {2**126, 2**126}
    r0 = mul_rn_bf16x2(r0, c)  # mul.rn.bf16x2 r0, r0, c;
    r1 = mul_rn_bf16x2(r1, c)  # mul.rn.bf16x2 r1, r1, c;
    r2 = mul_rn_bf16x2(r2, c)  # mul.rn.bf16x2 r2, r2, c;
    r3 = mul_rn_bf16x2(r3, c)  # mul.rn.bf16x2 r3, r3, c;
    d0 = mul_rn_bf16x2(r0, s5)  # mul.rn.bf16x2 $0, r0, $5;
    d1 = mul_rn_bf16x2(r1, s6)  # mul.rn.bf16x2 $1, r1, $6;
    d2 = mul_rn_bf16x2(r2, s5)  # mul.rn.bf16x2 $2, r2, $5;
    d3 = mul_rn_bf16x2(r3, s6)  # mul.rn.bf16x2 $3, r3, $6;
    return d0, d1, d2, d3


def emulate_e8m0_to_bf16(scales) -> np.ndarray:
    """:func:`e2m1_ptx.e8m0_to_bf16` on integers: bits ``(s << 7) | ((s == 0) << 6)``."""
    s = np.asarray(scales, dtype=np.uint32)
    return (s << np.uint32(7)) | ((s == 0).astype(np.uint32) << np.uint32(6))


def reference_bits(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """bf16 bits of :func:`kernels.mxfp4.dequantize`: blocks ``[N, G, 16]``, scales ``[N, G]`` → ``[N, K]``."""
    out = mxfp4.dequantize(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.bfloat16)
    return out.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32)


def test_asm_text_is_the_emulated_one():
    lines = [line.strip() for line in e2m1_ptx.E2M1_BF16_ASM.strip().splitlines()]
    assert lines[0] == "{" and lines[-1] == "}"
    assert lines[1].startswith(".reg .b32 ")
    assert lines[2:-1] == ASM_BODY
    assert e2m1_ptx.E2M1_BF16_CONSTRAINTS == "=r,=r,=r,=r,r,r,r"


def test_prmt_model():
    a, b = 0x33221100, 0x77665544
    assert int(prmt_b32(a, b, 0x3210)) == a
    assert int(prmt_b32(a, b, 0x7654)) == b
    assert int(prmt_b32(a, b, 0x5140)) == 0x55114400  # [a.b0, b.b0, a.b1, b.b1]
    assert int(prmt_b32(0x00008000, 0, 0x0009)) == 0x000000FF  # sign replication of byte 1 (0x80)


def test_bf16_mul_model():
    def mul(a, b):
        return int(mul_rn_bf16x2(a, b))

    assert mul(0x3F80_4000, 0x4000_3F80) == 0x4000_4000  # 1 * 2, 2 * 1
    assert mul(0x0040, 0x7E80) == 0x3F00  # subnormal 2**-127 * 2**126 = 0.5
    assert mul(0x3F00, 0x0040) == 0x0020  # 0.5 * 2**-127 = 2**-128, a subnormal result
    assert mul(0x40C0, 0x7F00) == 0x7F80  # 6 * 2**127 overflows to +inf
    assert mul(0x3F81, 0x3F81) == 0x3F82  # (1 + 2**-7)**2 = 1 + 2**-6 + 2**-14 → 1 + 2**-6
    assert mul(0x3FC1, 0x3F81) == 0x3FC3  # 1.5078125 * 1.0078125 = 194.5078125 / 128 → 195 / 128
    assert mul(0x3FC0, 0x3F81) == 0x3FC2  # 1.5 * (1 + 2**-7) = 193.5 / 128: tie → even 194
    assert mul(0x3FC0, 0x3F83) == 0x3FC4  # 1.5 * (1 + 3 * 2**-7) = 196.5 / 128: tie → even 196
    assert mul(0x8000, 0x3F80) == 0x8000  # -0 * 1 = -0


def test_known_values():
    x = 0x0000_8091 | (0x7F << 16)  # bytes 0x91 (lo 1 = 0.5, hi 9 = -0.5), 0x80 (0, -0), 0x7F (lo 15, hi 7), 0x00
    f = int(emulate_e8m0_to_bf16(127))  # 2**0
    d0, d1, d2, d3 = emulate_asm(x, f | f << 16, f | f << 16)
    assert int(d0) == 0x0000_3F00  # even K of bytes 0, 1: 0.5, +0
    assert int(d2) == 0x8000_BF00  # odd K of bytes 0, 1: -0.5, -0
    assert int(d1) == 0x0000_C0C0  # even K of bytes 2, 3: -6, +0
    assert int(d3) == 0x0000_40C0  # odd K of bytes 2, 3: 6, +0


def test_emulated_asm_matches_dequantize_every_byte_and_scale():
    """Every byte value × every scale 0..254, in each of the 4 byte positions, with a different scale per byte."""
    values = np.arange(256)
    scales = np.arange(255)
    v, s = np.meshgrid(values, scales, indexing="ij")  # [256, 255]
    v, s = v.ravel(), s.ravel()
    # Reference table: row (byte, scale) → even and odd bf16 bits.
    blocks = np.zeros((v.size, 1, 16), dtype=np.uint8)
    blocks[:, 0, 0] = v
    ref = reference_bits(blocks, s.astype(np.uint8).reshape(-1, 1))  # [256 * 255, 32]
    ref_even = ref[:, 0].reshape(256, 255)
    ref_odd = ref[:, 1].reshape(256, 255)
    # Byte k of the register and its scale run over all pairs (bijections of (v, s)).
    byte = [(v + 89 * k) % 256 for k in range(4)]
    scale = [(s + 67 * k) % 255 for k in range(4)]
    x = sum(byte[k].astype(np.uint64) << np.uint64(8 * k) for k in range(4))
    fb = [emulate_e8m0_to_bf16(scale[k]).astype(np.uint64) for k in range(4)]
    f01 = fb[0] | (fb[1] << np.uint64(16))
    f23 = fb[2] | (fb[3] << np.uint64(16))
    d = emulate_asm(x, f01, f23)
    lanes = {  # (output register, lane) for byte k: even → $0/$1, odd → $2/$3
        0: ((d[0], 0), (d[2], 0)),
        1: ((d[0], 16), (d[2], 16)),
        2: ((d[1], 0), (d[3], 0)),
        3: ((d[1], 16), (d[3], 16)),
    }
    for k in range(4):
        (ev, ev_shift), (od, od_shift) = lanes[k]
        got_even = ((ev >> np.uint64(ev_shift)) & np.uint64(0xFFFF)).astype(np.uint32)
        got_odd = ((od >> np.uint64(od_shift)) & np.uint64(0xFFFF)).astype(np.uint32)
        np.testing.assert_array_equal(got_even, ref_even[byte[k], scale[k]], err_msg=f"even K, byte {k}")
        np.testing.assert_array_equal(got_odd, ref_odd[byte[k], scale[k]], err_msg=f"odd K, byte {k}")


@pytest.mark.parametrize("seed", [0, 1])
def test_emulated_tile_decode_matches_dequantize(seed):
    """The Triton wrapper on a tile: factor per scale group, broadcast to bytes, packs of 4 in arbitrary order,
    outputs joined even/odd along K."""
    gen = torch.Generator().manual_seed(seed)
    block_n, block_k = 16, 128
    blocks, scales = mxfp4.random_mxfp4((block_n, block_k), scale_min=0, scale_max=254, generator=gen)
    blocks, scales = blocks.numpy(), scales.numpy()  # [BN, G, 16], [BN, G]
    codes = blocks.reshape(-1).astype(np.uint64)  # packed.reshape(BN, G, 16), flattened
    factor = np.broadcast_to(emulate_e8m0_to_bf16(scales)[:, :, None], blocks.shape).reshape(-1).astype(np.uint64)
    order = np.random.default_rng(seed).permutation(codes.size).reshape(-1, 4)  # which 4 elements form a pack
    x = sum(codes[order[:, k]] << np.uint64(8 * k) for k in range(4))
    f01 = factor[order[:, 0]] | (factor[order[:, 1]] << np.uint64(16))
    f23 = factor[order[:, 2]] | (factor[order[:, 3]] << np.uint64(16))
    d = emulate_asm(x, f01, f23)
    even = np.empty(codes.size, dtype=np.uint32)
    odd = np.empty(codes.size, dtype=np.uint32)
    for k, (reg, shift) in enumerate(((0, 0), (0, 16), (1, 0), (1, 16))):
        even[order[:, k]] = (d[reg] >> np.uint64(shift)) & np.uint64(0xFFFF)
        odd[order[:, k]] = (d[reg + 2] >> np.uint64(shift)) & np.uint64(0xFFFF)
    got = np.stack((even, odd), axis=-1).reshape(block_n, block_k)  # tl.join(even, odd).reshape(BN, BK)
    np.testing.assert_array_equal(got, reference_bits(blocks, scales))


# ----------------------------------------------------------------------------------------------------------------
# Offline compile for sm_90a and sm_121a
# ----------------------------------------------------------------------------------------------------------------
#
# The compiles run in a subprocess (this file run as a script) with TRITON_INTERPRET=0: tests/conftest.py sets
# TRITON_INTERPRET=1 on machines without a GPU before triton is imported, and then every @triton.jit function,
# Triton's own tl.zeros / tl.cdiv / tl.sigmoid included, is an interpreter wrapper that triton.compile cannot take
# (calling one from compiled code even patches triton.language for the rest of the process).


@triton.jit
def _decode_kernel(w_ptr, s_ptr, o_ptr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_K // 2)
    offs_g = tl.arange(0, BLOCK_K // 32)
    offs_k = tl.arange(0, BLOCK_K)
    packed = tl.load(w_ptr + offs_n[:, None] * (BLOCK_K // 2) + offs_b[None, :])
    scales = tl.load(s_ptr + offs_n[:, None] * (BLOCK_K // 32) + offs_g[None, :])
    w = e2m1_ptx.decode_e2m1_tile_ptx(packed, scales, BLOCK_N, BLOCK_K)
    tl.store(o_ptr + offs_n[:, None] * BLOCK_K + offs_k[None, :], w)


@triton.jit
def _gemm_kernel(a_ptr, w_ptr, s_ptr, o_ptr, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, SPLIT: tl.constexpr):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        offs_g = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        packed = tl.load(w_ptr + offs_n[:, None] * (K // 2) + offs_b[None, :])
        scales = tl.load(s_ptr + offs_n[:, None] * (K // 32) + offs_g[None, :])
        if SPLIT:
            offs_e = k0 + 2 * tl.arange(0, BLOCK_K // 2)
            a_even = tl.load(a_ptr + offs_m[:, None] * K + offs_e[None, :])
            a_odd = tl.load(a_ptr + offs_m[:, None] * K + offs_e[None, :] + 1)
            w_even, w_odd = e2m1_ptx.decode_e2m1_tile_ptx_split(packed, scales, BLOCK_N, BLOCK_K)
            acc = tl.dot(a_even, tl.trans(w_even), acc)
            acc = tl.dot(a_odd, tl.trans(w_odd), acc)
        else:
            a = tl.load(a_ptr + offs_m[:, None] * K + k0 + tl.arange(0, BLOCK_K)[None, :])
            w = e2m1_ptx.decode_e2m1_tile_ptx(packed, scales, BLOCK_N, BLOCK_K)
            acc = tl.dot(a, tl.trans(w), acc)
    tl.store(o_ptr + offs_m[:, None] * BLOCK_N + offs_n[None, :], acc)


@triton.jit
def _trivial_kernel(o_ptr, BLOCK: tl.constexpr):
    tl.store(o_ptr + tl.arange(0, BLOCK), tl.arange(0, BLOCK))


_DIV16 = [["tt.divisibility", 16]]

DECODE = {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4}


def compile_for(fn, capability: int, signature: dict, constexprs: dict, num_warps: int = 4, aligned=()):
    """``triton.compile`` for an NVIDIA target without a GPU (the call other offline-compile tests can copy).

    ``fn`` must be a real ``JITFunction`` (TRITON_INTERPRET unset or 0 when triton was imported). ``signature`` maps
    every argument name to a type string (``"*u8"``, ``"*bf16"``, ``"i32"``, ...; ``"constexpr"`` for constexpr
    arguments), ``constexprs`` maps names to values, ``aligned`` lists the indices of arguments to mark 16-divisible
    (pointers: 16-byte aligned, so loads vectorize). The result's ``asm`` holds ``"ttir"``, ``"ttgir"``, ``"llir"``,
    ``"ptx"``, ``"cubin"`` (ptxas ran) and, disassembled on first access, ``"sass"``.
    """
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                    attrs={(i,): _DIV16 for i in aligned})
    target = triton.backends.compiler.GPUTarget("cuda", capability, 32)
    return triton.compile(src, target=target, options={"num_warps": num_warps, "enable_fp_fusion": True})


def _summary(compiled) -> dict:
    try:
        sass = compiled.asm["sass"]  # disassembled lazily with cuobjdump / nvdisasm
    except Exception:
        sass = None
    return {"cubin_bytes": len(compiled.asm["cubin"]), "ptx": compiled.asm["ptx"], "sass": sass}


def compile_report(capability: int) -> dict:
    """Compile the test kernels for ``capability`` (run with TRITON_INTERPRET=0). ``{"skip": reason}`` when the
    toolchain cannot target it at all; a decode kernel that fails to compile raises."""
    try:
        compile_for(_trivial_kernel, capability, {"o_ptr": "*i32", "BLOCK": "constexpr"}, {"BLOCK": 128})
    except Exception as exc:  # no CUDA backend, no ptxas, or a ptxas without this target
        return {"skip": f"triton.compile for cuda:{capability} is not possible here: {type(exc).__name__}: {exc}"}
    report = {}
    decode = compile_for(
        _decode_kernel, capability,
        {"w_ptr": "*u8", "s_ptr": "*u8", "o_ptr": "*bf16", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"},
        {"BLOCK_N": DECODE["BLOCK_N"], "BLOCK_K": DECODE["BLOCK_K"]}, num_warps=DECODE["num_warps"],
        aligned=(0, 1, 2),
    )
    report["decode"] = _summary(decode)
    for split in (False, True):
        gemm = compile_for(
            _gemm_kernel, capability,
            {"a_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": "*u8", "o_ptr": "*fp32", "K": "i32", "BLOCK_M": "constexpr",
             "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "SPLIT": "constexpr"},
            {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "SPLIT": split}, aligned=(0, 1, 2, 3, 4),
        )
        report["gemm_split" if split else "gemm_join"] = _summary(gemm)
    return report




@pytest.fixture(scope="module", params=[90, 121], ids=["sm90", "sm121"])
def compiled(request):
    """``(capability, report)`` from :func:`compile_report` run in a fresh interpreter-free process."""
    return request.param, run_offline_compile(__file__, request.param, TRITON_DEFAULT_FP_FUSION="1")


def test_decode_compiles(compiled):
    cap, report = compiled
    decode = report["decode"]
    assert decode["cubin_bytes"] > 0, "ptxas produced no cubin"
    ptx = decode["ptx"]
    assert re.search(rf"^\.target sm_{cap}a\b", ptx, re.MULTILINE)
    threads = 32 * DECODE["num_warps"]
    calls = DECODE["BLOCK_N"] * DECODE["BLOCK_K"] // 2 // threads // 4  # asm instances per thread: 4 bytes each
    assert ptx.count("mul.rn.bf16x2") == 8 * calls
    for needle in ("0x07070707", "0x70707070", "0x02020202", "0x20202020", "0x5140", "0x7362", "0x7E807E80"):
        assert ptx.count(needle) == calls * sum(line.count(needle) for line in ASM_BODY), needle
    assert ptx.count("prmt.b32") >= 4 * calls
    sass = decode["sass"]
    if sass is not None:  # the disassembler is optional
        assert "PRMT" in sass
        assert len(re.findall(r"\b(?:HMUL2|HFMA2)(?:\.MMA)?\.BF16_V2\b", sass)) == 8 * calls


@pytest.mark.parametrize("variant", ["gemm_join", "gemm_split"])
def test_gemm_with_decode_compiles(compiled, variant):
    _, report = compiled
    gemm = report[variant]
    assert gemm["cubin_bytes"] > 0
    assert "mul.rn.bf16x2" in gemm["ptx"]
    assert re.search(r"\b(?:mma|wgmma)\.", gemm["ptx"]), "the decoded tile should feed a tensor-core dot"


if __name__ == "__main__":  # the offline-compile subprocess of the `compiled` fixture
    print(json.dumps(compile_report(int(sys.argv[1]))))
