"""MXFP4 (OCP microscaling, e2m1 elements with e8m0 scales) as stored in the gpt-oss checkpoint.

Layout (openai/gpt-oss release, ``original/`` folder, see ../shared/FACTS.md):

- ``blocks``: ``[..., N, K // 32, 16]`` uint8. 32 e2m1 codes of one scale group occupy 16 bytes along K; in each
  byte the **low nibble holds the even K index** and the high nibble the odd one.
- ``scales``: ``[..., N, K // 32]`` uint8, e8m0 with bias 127: a group's values are ``code_value * 2**(scale - 127)``.

e2m1 code → value (OCP Microscaling Formats v1.0, table 5): ``[+0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, -1, -1.5, -2,
-3, -4, -6]``. With the scales this is 4.25 bits per weight.
"""

from __future__ import annotations

import torch

GROUP_SIZE = 32
"""Elements sharing one e8m0 scale (OCP MX v1.0)."""

BYTES_PER_GROUP = GROUP_SIZE // 2
"""Bytes of packed e2m1 codes per scale group (two codes per byte)."""

E8M0_BIAS = 127

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
"""Value of each 4-bit e2m1 code, indexed by the code (sign bit 3, exponent bits 2..1, mantissa bit 0)."""


def e2m1_lut(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 16-entry e2m1 decode table.

    Returns:
        ``[16]`` float32 tensor: ``lut[code]`` is the value of the 4-bit code.
    """
    return torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)


def unpack_codes(blocks: torch.Tensor) -> torch.Tensor:
    """Split packed bytes into e2m1 codes in K order.

    Args:
        blocks: ``[..., G, 16]`` uint8 (G scale groups along K).

    Returns:
        ``[..., G * 32]`` uint8 codes (0..15); element ``2j`` is byte ``j``'s low nibble, ``2j + 1`` its high nibble.
    """
    if blocks.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks must be uint8, got {blocks.dtype}")
    low = blocks & 0x0F
    high = blocks >> 4
    codes = torch.stack((low, high), dim=-1)  # [..., G, 16, 2]
    return codes.reshape(*blocks.shape[:-2], blocks.shape[-2] * GROUP_SIZE)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode MXFP4 weights to a dense tensor.

    Args:
        blocks: ``[..., N, K // 32, 16]`` uint8 packed e2m1 codes.
        scales: ``[..., N, K // 32]`` uint8 e8m0 exponents (bias 127).
        dtype: result dtype; float32 is exact for every finite e2m1 × e8m0 product in [2**-127, 2**127].

    Returns:
        ``[..., N, K]`` tensor of ``dtype``.

    Raises:
        ValueError: if the shapes of ``blocks`` and ``scales`` disagree.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BYTES_PER_GROUP:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    values = e2m1_lut(blocks.device)[unpack_codes(blocks).long()]  # [..., N, K]
    values = values.reshape(*scales.shape, GROUP_SIZE)  # [..., N, G, 32]
    factor = torch.exp2(scales.to(torch.float32) - E8M0_BIAS).unsqueeze(-1)  # [..., N, G, 1]
    return (values * factor).reshape(*scales.shape[:-1], scales.shape[-1] * GROUP_SIZE).to(dtype)


def random_mxfp4(
    shape_nk: tuple[int, ...],
    *,
    scale_min: int = 118,
    scale_max: int = 124,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MXFP4 weights in the checkpoint layout (uniform codes, uniform scales in a range).

    The default scale range 2**-9 .. 2**-3 keeps dequantized values (|v| ≤ 6 · 2**-3) and dot products with
    unit-variance activations at K = 2880 well inside fp16's range, so the same inputs work for the fp16 CPU path.

    Args:
        shape_nk: ``(..., N, K)``; K must be a multiple of 32.
        scale_min: smallest e8m0 scale byte drawn (inclusive).
        scale_max: largest e8m0 scale byte drawn (inclusive).
        generator: torch RNG for reproducible draws (must live on ``device``).
        device: where the tensors are created.

    Returns:
        ``(blocks [..., N, K//32, 16] uint8, scales [..., N, K//32] uint8)``.

    Raises:
        ValueError: if K is not a multiple of 32.
    """
    *lead, k = shape_nk
    if k % GROUP_SIZE:
        raise ValueError(f"K={k} is not a multiple of the MXFP4 group size {GROUP_SIZE}")
    groups = k // GROUP_SIZE
    blocks = torch.randint(0, 256, (*lead, groups, BYTES_PER_GROUP), dtype=torch.uint8, generator=generator,
                           device=device)
    scales = torch.randint(scale_min, scale_max + 1, (*lead, groups), dtype=torch.uint8, generator=generator,
                           device=device)
    return blocks, scales
