"""Tests of the MXFP4 decoding (:mod:`kernels.mxfp4`) against the format as ../shared/FACTS.md states it.

Every expected value here is written out by hand from FACTS.md (e2m1 table, e8m0 bias 127, low nibble = even K
index), not recomputed with the module's own table, so a wrong table or a swapped nibble order fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels import mxfp4
from kernels.mxfp4 import dequantize, random_mxfp4, unpack_codes

# FACTS.md: e2m1 code → value.
FACTS_E2M1 = [+0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def _one_group(bytes16: list[int], scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A single N=1 row with one scale group: blocks [1, 1, 16], scales [1, 1]."""
    assert len(bytes16) == 16
    blocks = torch.tensor(bytes16, dtype=torch.uint8).reshape(1, 1, 16)
    scales = torch.tensor([[scale]], dtype=torch.uint8)
    return blocks, scales


def test_constants_match_facts():
    assert mxfp4.GROUP_SIZE == 32
    assert mxfp4.BYTES_PER_GROUP == 16
    assert mxfp4.E8M0_BIAS == 127
    assert list(mxfp4.E2M1_VALUES) == FACTS_E2M1
    assert mxfp4.e2m1_lut().tolist() == FACTS_E2M1


@pytest.mark.parametrize("code", range(16))
@pytest.mark.parametrize("nibble", ["low", "high"])
def test_every_code_in_both_nibbles(code: int, nibble: str):
    # Byte j holds K index 2j in its low nibble and 2j+1 in its high nibble. Put the code at byte 5 (K 10 or 11),
    # everything else code 0 (+0).
    raw = [0] * 16
    raw[5] = code if nibble == "low" else code << 4
    blocks, scales = _one_group(raw, 127)
    out = dequantize(blocks, scales)  # [1, 32]
    assert out.shape == (1, 32)
    k = 10 if nibble == "low" else 11
    expected = torch.zeros(32)
    expected[k] = FACTS_E2M1[code]
    assert torch.equal(out[0], expected)  # exact: e2m1 × 2**0 is exact in fp32
    # -0 keeps its sign bit (code 8).
    if code == 8:
        assert math.copysign(1.0, out[0, k].item()) == -1.0


def test_all_codes_in_one_group_in_k_order():
    # 16 bytes (lo, hi) = (c, 15 - c): K order is c0, 15-c0, c1, 15-c1, ...
    raw = [c | ((15 - c) << 4) for c in range(16)]
    blocks, scales = _one_group(raw, 127)
    out = dequantize(blocks, scales)[0]
    expected = []
    for c in range(16):
        expected += [FACTS_E2M1[c], FACTS_E2M1[15 - c]]
    assert out.tolist() == expected
    codes = unpack_codes(blocks)[0].tolist()
    assert codes == [v for c in range(16) for v in (c, 15 - c)]


def test_hand_built_byte_0x2f():
    # 0x2F: low nibble 0xF (code 15 = -6) is K index 0, high nibble 0x2 (code 2 = 1.0) is K index 1.
    blocks, scales = _one_group([0x2F] + [0] * 15, 127)
    out = dequantize(blocks, scales)[0]
    assert out[0].item() == -6.0
    assert out[1].item() == 1.0
    assert torch.count_nonzero(out[2:]) == 0


@pytest.mark.parametrize(
    "scale, factor",
    [(127, 1.0), (128, 2.0), (120, 2.0**-7), (126, 0.5), (0, 2.0**-127), (254, 2.0**127), (117, 2.0**-10)],
)
def test_scale_bias_127(scale: int, factor: float):
    raw = [c | (c << 4) for c in range(16)]  # every code twice
    blocks, scales = _one_group(raw, scale)
    out = dequantize(blocks, scales)[0]
    expected = torch.tensor([FACTS_E2M1[c] * factor for c in range(16) for _ in range(2)], dtype=torch.float32)
    # Exact: a power-of-two factor times an e2m1 value is representable in fp32 over this range
    # (0.5 · 2**-127 = 2**-128 is an fp32 subnormal, 6 · 2**127 < fp32 max).
    assert torch.equal(out, expected)


def test_scales_apply_per_group_and_per_row():
    # Two rows, two groups each, every code 2 (= 1.0): the value is the group's factor.
    blocks = torch.full((2, 2, 16), 0x22, dtype=torch.uint8)
    scales = torch.tensor([[127, 128], [120, 126]], dtype=torch.uint8)
    out = dequantize(blocks, scales)
    assert out.shape == (2, 64)
    assert torch.equal(out[0, :32], torch.full((32,), 1.0))
    assert torch.equal(out[0, 32:], torch.full((32,), 2.0))
    assert torch.equal(out[1, :32], torch.full((32,), 2.0**-7))
    assert torch.equal(out[1, 32:], torch.full((32,), 0.5))


def test_leading_expert_dim_and_dtype():
    gen = torch.Generator().manual_seed(0)
    blocks, scales = random_mxfp4((3, 5, 64), generator=gen)
    out = dequantize(blocks, scales, dtype=torch.float16)
    assert out.shape == (3, 5, 64) and out.dtype == torch.float16
    # Per-expert decode agrees with the batched one (the leading dim is just carried along).
    for e in range(3):
        assert torch.equal(dequantize(blocks[e], scales[e], dtype=torch.float16), out[e])


@pytest.mark.parametrize(
    "blocks_shape, scales_shape",
    [
        ((4, 2, 16), (4, 3)),  # group count differs
        ((4, 2, 16), (5, 2)),  # N differs
        ((4, 2, 8), (4, 2)),  # not 16 bytes per group
        ((2, 4, 2, 16), (4, 2)),  # missing the expert dim in scales
    ],
)
def test_shape_mismatch_raises(blocks_shape, scales_shape):
    with pytest.raises(ValueError):
        dequantize(torch.zeros(blocks_shape, dtype=torch.uint8), torch.zeros(scales_shape, dtype=torch.uint8))


def test_non_uint8_blocks_raise():
    with pytest.raises(TypeError):
        unpack_codes(torch.zeros((1, 1, 16), dtype=torch.int32))


def test_random_mxfp4_shapes_dtypes_range():
    gen = torch.Generator().manual_seed(1234)
    blocks, scales = random_mxfp4((4, 48, 2880), generator=gen)
    assert blocks.shape == (4, 48, 90, 16) and blocks.dtype == torch.uint8
    assert scales.shape == (4, 48, 90) and scales.dtype == torch.uint8
    assert int(scales.min()) >= 118 and int(scales.max()) <= 124  # default range, inclusive
    # 276,480 uniform bytes: all 256 values appear (P(one missing) < 256 · e^-1080).
    assert torch.unique(blocks).numel() == 256
    assert set(torch.unique(scales).tolist()) == set(range(118, 125))
    values = dequantize(blocks, scales)
    assert values.abs().max().item() <= 6.0 * 2.0 ** (124 - 127)


def test_random_mxfp4_custom_range_and_reproducible():
    b1, s1 = random_mxfp4((2, 32), scale_min=127, scale_max=127, generator=torch.Generator().manual_seed(7))
    b2, s2 = random_mxfp4((2, 32), scale_min=127, scale_max=127, generator=torch.Generator().manual_seed(7))
    assert torch.equal(b1, b2) and torch.equal(s1, s2)
    assert b1.shape == (2, 1, 16) and s1.shape == (2, 1)
    assert torch.all(s1 == 127)


def test_random_mxfp4_rejects_k_not_multiple_of_32():
    with pytest.raises(ValueError):
        random_mxfp4((4, 48))
