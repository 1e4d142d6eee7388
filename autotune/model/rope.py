"""Rotary position embedding of gpt-oss: half-split rotation with YaRN-scaled frequencies.

Source of the formula: YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models",
arXiv:2309.00071, sections 3.2-3.4: NTK-by-parts interpolation and the attention "concentration" 0.1·ln(s) + 1), in
the form openai/gpt-oss ``gpt_oss/torch/model.py`` applies it (rope_theta 150000, factor 32, original context 4096,
ntk_alpha 1, ntk_beta 32; FACTS.md).
"""

from __future__ import annotations

import math

import torch

from autotune.model.config import ModelConfig


def yarn_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the cos/sin multiplier ("concentration") of YaRN.

    Dimension pair i rotates at θ^(-2i/D). Pairs that turn fewer than ``ntk_alpha`` times over the original context
    are interpolated (divided by the factor), pairs that turn more than ``ntk_beta`` times are kept (extrapolated),
    and a linear ramp blends the pairs in between.

    Args:
        config: the model config (head_dim D, rope_* fields, initial_context_length).

    Returns:
        ``inv_freq`` float32 ``[D/2]`` in radians per position, and the concentration (1.0 without scaling).
    """
    half = config.head_dim // 2
    base = float(config.rope_theta)
    freq = base ** (torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim)  # [D/2]
    factor = float(config.rope_scaling_factor)
    if factor <= 1.0:
        return (1.0 / freq).float(), 1.0
    concentration = 0.1 * math.log(factor) + 1.0
    context = float(config.initial_context_length)
    # Pair index at which the wavelength fits `turns` times into the original context (YaRN eq. 17 solved for d).
    low = half * math.log(context / (config.rope_ntk_beta * 2 * math.pi)) / math.log(base)
    high = half * math.log(context / (config.rope_ntk_alpha * 2 * math.pi)) / math.log(base)
    # Clamped to the pair range as in the YaRN authors' code and HF transformers (``find_correction_range``). At
    # gpt-oss's values (low 2.02, high 9.1 of 32 pairs) the clamp does nothing; it matters for small test contexts.
    low, high = max(low, 0.0), min(high, half - 1.0)
    if high <= low:  # a ramp of no width (tiny contexts): a step at `low`, as HF's ``linear_ramp_factor`` does it
        high = low + 0.001
    ramp = ((torch.arange(half, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)  # 0: keep, 1: interpolate
    inv_freq = (1.0 / freq) * (1.0 - ramp) + (1.0 / (factor * freq)) * ramp
    return inv_freq.float(), concentration


class RopeTable:
    """cos/sin of every position up to ``max_positions``, precomputed once (float32, on ``device``).

    Attributes:
        cos, sin: ``[P, D/2]`` float32, already multiplied by the YaRN concentration.
    """

    def __init__(self, config: ModelConfig, max_positions: int, device: torch.device | str) -> None:
        inv_freq, concentration = yarn_inv_freq(config)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq.double()[None, :]  # [P, D/2]
        self.cos = (angles.cos() * concentration).float().to(device)
        self.sin = (angles.sin() * concentration).float().to(device)
        self.max_positions = max_positions

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` by its positions: ``x1' = x1·cos − x2·sin``, ``x2' = x2·cos + x1·sin`` for the halves.

        The torch statement of RoPE; the forward pass runs :func:`kernels.layer_ops.rope_qkv_write` on these tables,
        which tests/test_layer_ops.py checks against this bit for bit.

        Args:
            x: ``[..., N, heads, D]``, any float dtype.
            positions: int64 ``[..., N]`` (broadcast against x's leading dims), each < ``max_positions``.

        Returns:
            A new tensor like ``x`` (computed in float32, rounded once to x's dtype).
        """
        cos = self.cos[positions].unsqueeze(-2)  # [..., N, 1, D/2]
        sin = self.sin[positions].unsqueeze(-2)
        first, second = x.float().chunk(2, dim=-1)
        return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1).to(x.dtype)
