"""Random gpt-oss weights, generated tensor by tensor, whose statistics keep a forward pass well scaled.

The aim is activations of unit-ish RMS everywhere, so a random model neither explodes nor vanishes through 24-36
layers and every branch of the network visibly changes the result (a bug cannot hide behind a tiny term):

- ``embedding``: N(0, 1), so the residual stream starts at RMS 1 and each token's row is distinct.
- norm scales: 1 + N(0, 0.02) in float32 (RMSNorm then outputs RMS ≈ 1).
- ``attn.qkv.weight``: N(0, 1/√H): q, k, v get RMS ≈ 1, so q·k/√D ≈ N(0, 1) and softmax spreads over many keys
  (the sliding window then matters). ``attn.out.weight``: N(0, 1/√(Hq·D)): output RMS ≤ 1 (it mixes values).
- ``attn.sinks``: N(0, 1), comparable with the attention logits.
- ``mlp.gate.weight`` (router): N(0, 1/√H): router logits ≈ N(0, 1), independent across experts, so top-k picks
  differ from token to token and the load spreads over all experts.
- MXFP4 ``mlp1`` / ``mlp2``: uniform random e2m1 codes (RMS √(68.5/8) ≈ 2.93) with e8m0 scales drawn from two
  neighbouring exponents, mixed so the dequantized weights have std exactly 1/√K in expectation (K = H for mlp1,
  I for mlp2): pre-activations ≈ N(0, 1), SwiGLU output RMS ≈ 0.9, expert output RMS ≈ 0.9.
- biases: N(0, 0.02), small against the unit-RMS signals. ``unembedding``: N(0, 1/√H): logits ≈ N(0, 1).

Each branch adds RMS ≲ 1 to the residual, so after L layers its RMS grows like √(1 + c·L) (about 5-8 at 36
layers), and each RMSNorm rescales it to 1: nothing overflows bf16 and no layer's contribution vanishes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from autotune.model.config import MXFP4_GROUP, ModelConfig
from kernels.mxfp4 import E2M1_VALUES, E8M0_BIAS

E2M1_RMS = math.sqrt(sum(v * v for v in E2M1_VALUES) / len(E2M1_VALUES))
"""RMS of the value of a uniformly random e2m1 code: √(68.5 / 8) ≈ 2.926."""

BIAS_STD = 0.02
NORM_SCALE_STD = 0.02
CHUNK_ELEMENTS = 2**24
"""Float tensors are drawn in float32 chunks of this many elements (64 MiB) and cast into the target."""


def weight_std(name: str, config: ModelConfig) -> tuple[float, float]:
    """(mean, std) of a float tensor of the checkpoint, by its name (see the module docstring for the reasons).

    Args:
        name: a tensor name from :meth:`ModelConfig.tensor_specs` (not an MXFP4 blocks/scales tensor).
        config: the model.

    Raises:
        KeyError: a name this module has no rule for.
    """
    H = config.hidden_size
    rules = {
        "embedding.weight": (0.0, 1.0),
        "unembedding.weight": (0.0, 1 / math.sqrt(H)),
        "norm.scale": (1.0, NORM_SCALE_STD),
        "attn.qkv.weight": (0.0, 1 / math.sqrt(H)),
        "attn.out.weight": (0.0, 1 / math.sqrt(config.q_size)),
        "attn.sinks": (0.0, 1.0),
        "mlp.gate.weight": (0.0, 1 / math.sqrt(H)),
    }
    for suffix, rule in rules.items():
        if name == suffix or name.endswith("." + suffix):
            return rule
    if name.endswith("bias"):
        return 0.0, BIAS_STD
    raise KeyError(f"no random-weight rule for tensor {name}")


def random_bytes(shape: tuple[int, ...], *, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Uniform random uint8 tensor (drawn as int64 words: ~4× faster than ``randint`` on uint8 on the CPU)."""
    count = math.prod(shape)
    words = torch.empty((count + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-2**63, None, generator=generator)
    return words.view(torch.uint8)[:count].reshape(shape)


def random_mxfp4_std(
    shape_nk: tuple[int, ...],
    std: float,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MXFP4 weights whose dequantized values have standard deviation ``std`` (in expectation).

    Codes are uniform (value RMS :data:`E2M1_RMS`); each group's scale is 2**e or 2**(e+1), with e = ⌊log2(s)⌋ for
    s = std / E2M1_RMS and the larger one drawn with probability p = ((s / 2**e)² − 1) / 3, so the mean square
    is E2M1_RMS² · 2**(2e) · (1 + 3p) = std².

    Args:
        shape_nk: ``(..., N, K)``, K a multiple of 32.
        std: target standard deviation of the dequantized weights.
        generator: torch RNG on ``device``.
        device: where to generate.

    Returns:
        ``(blocks [..., N, K/32, 16] uint8, scales [..., N, K/32] uint8)`` in the checkpoint layout.
    """
    *lead, k = shape_nk
    if k % MXFP4_GROUP:
        raise ValueError(f"K={k} is not a multiple of the MXFP4 group size {MXFP4_GROUP}")
    scale = std / E2M1_RMS
    exponent = math.floor(math.log2(scale))
    p_up = ((scale / 2.0**exponent) ** 2 - 1) / 3
    blocks = random_bytes((*lead, k // MXFP4_GROUP, MXFP4_GROUP // 2), generator=generator, device=device)
    up = torch.rand((*lead, k // MXFP4_GROUP), generator=generator, device=device) < p_up
    scales = (up.to(torch.uint8) + (exponent + E8M0_BIAS))
    return blocks, scales


def random_float(shape: tuple[int, ...], dtype: torch.dtype, mean: float, std: float, *,
                 generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """N(mean, std²) tensor of ``dtype``, drawn in float32 chunks so no float32 copy of a large tensor exists."""
    out = torch.empty(shape, dtype=dtype, device=device)
    flat = out.view(-1)
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        chunk = flat[start:start + CHUNK_ELEMENTS]
        chunk.copy_(torch.empty(chunk.numel(), dtype=torch.float32, device=device).normal_(mean, std,
                                                                                         generator=generator))
    return out


def random_weights(config: ModelConfig, *, seed: int = 0,
                   device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of :meth:`ModelConfig.tensor_specs`, in its order, generated one at a time.

    Deterministic for a given (config, seed, device type); CPU and CUDA draws differ.

    Args:
        config: the model.
        seed: RNG seed.
        device: where tensors are generated (and returned).

    Yields:
        ``(name, tensor)`` with the spec's shape and dtype; MXFP4 scales are yielded right after their blocks.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    pending: dict[str, torch.Tensor] = {}
    for name, (shape, dtype) in config.tensor_specs().items():
        if name in pending:
            yield name, pending.pop(name)
        elif name.endswith(".blocks"):
            groups, group_bytes = shape[-2:]
            k = groups * group_bytes * 2
            blocks, scales = random_mxfp4_std((*shape[:-2], k), 1 / math.sqrt(k), generator=generator,
                                              device=device)
            pending[name.removesuffix(".blocks") + ".scales"] = scales
            yield name, blocks
            del blocks, scales
        else:
            mean, std = weight_std(name, config)
            yield name, random_float(shape, dtype, mean, std, generator=generator, device=device)
