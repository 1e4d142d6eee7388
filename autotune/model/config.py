"""gpt-oss model configuration: the fields of the original release's ``config.json`` and the tensors they imply.

Sources: openai/gpt-oss ``gpt_oss/torch/model.py`` (``ModelConfig``; its defaults are the 120b values) and the
model cards; the numbers are restated in ``../shared/FACTS.md``. Legend used across :mod:`autotune.model`:
H hidden size, I expert intermediate size, E experts, k experts per token, Hq query heads, Hkv KV heads,
D head dim, V vocabulary, L layers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from autotune.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing/unreadable files, a missing tensor, a wrong shape or dtype.

    The message is one line and names the file or tensor. The CLI prints it and exits with code 2.
    """


MXFP4_GROUP = 32
"""Weights per shared e8m0 scale (OCP MX spec v1.0); one group is 16 bytes of e2m1 pairs."""


@dataclass(frozen=True)
class ModelConfig:
    """gpt-oss hyper-parameters, named as in the original ``config.json``.

    Attributes follow openai/gpt-oss ``ModelConfig``. ``sliding_window`` applies to even layers (layer % 2 == 0):
    a query at position p sees keys p - sliding_window + 1 .. p. RoPE is YaRN-scaled (see
    :func:`autotune.model.rope.yarn_inv_freq`).
    """

    num_hidden_layers: int = 24
    num_experts: int = 32
    experts_per_token: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    swiglu_limit: float = 7.0
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise CheckpointError(f"invalid model config: {problem}")

    def _problem(self) -> str | None:
        positive = ("num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
                    "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
                    "initial_context_length")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                return f"{name} must be a positive integer, got {value!r}"
        if self.experts_per_token > self.num_experts:
            return f"experts_per_token {self.experts_per_token} > num_experts {self.num_experts}"
        if self.num_attention_heads % self.num_key_value_heads:
            return (f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                    f"{self.num_key_value_heads}")
        if self.hidden_size % MXFP4_GROUP or self.intermediate_size % MXFP4_GROUP:
            return (f"hidden_size {self.hidden_size} and intermediate_size {self.intermediate_size} must be "
                    f"multiples of the MXFP4 group {MXFP4_GROUP}")
        if self.head_dim % 2:
            return f"head_dim {self.head_dim} must be even (RoPE rotates halves)"
        if not isinstance(self.sliding_window, int) or self.sliding_window < 0:
            return f"sliding_window must be an integer >= 0, got {self.sliding_window!r}"
        for name in ("rope_theta", "rope_scaling_factor", "swiglu_limit"):
            if not math.isfinite(float(getattr(self, name))) or float(getattr(self, name)) <= 0:
                return f"{name} must be a positive number, got {getattr(self, name)!r}"
        return None

    # ---------------------------------------------------------------------------------------------------- derived
    @property
    def q_size(self) -> int:
        """Hq·D: query features of the qkv projection."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Hkv·D: key (and value) features of the qkv projection."""
        return self.num_key_value_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        """Output features of the fused qkv projection: q, then k, then v."""
        return self.q_size + 2 * self.kv_size

    @property
    def sm_scale(self) -> float:
        """Softmax scale 1/√D (0.125 at D = 64, as in the reference implementation)."""
        return 1.0 / math.sqrt(self.head_dim)

    def window(self, layer: int) -> int:
        """Sliding window of a layer in tokens, 0 for full causal attention (even layers slide)."""
        return self.sliding_window if layer % 2 == 0 else 0

    # ---------------------------------------------------------------------------------------------------- tensors
    def tensor_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Every tensor of the original release layout (``original/*.safetensors``): name → (shape, dtype).

        MXFP4 experts are kept packed: ``*.blocks`` uint8 ``[E, N, K/32, 16]`` (two e2m1 codes per byte, low nibble
        = even index) and ``*.scales`` uint8 ``[E, N, K/32]`` (e8m0, bias 127). Norm scales are fp32, everything
        else bf16.
        """
        H, I, E, V = self.hidden_size, self.intermediate_size, self.num_experts, self.vocab_size
        bf16, f32, u8 = torch.bfloat16, torch.float32, torch.uint8
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "embedding.weight": ((V, H), bf16),
            "unembedding.weight": ((V, H), bf16),
            "norm.scale": ((H,), f32),
        }
        for n in range(self.num_hidden_layers):
            p = f"block.{n}."
            specs.update({
                p + "attn.norm.scale": ((H,), f32),
                p + "attn.qkv.weight": ((self.qkv_size, H), bf16),
                p + "attn.qkv.bias": ((self.qkv_size,), bf16),
                p + "attn.sinks": ((self.num_attention_heads,), bf16),
                p + "attn.out.weight": ((H, self.q_size), bf16),
                p + "attn.out.bias": ((H,), bf16),
                p + "mlp.norm.scale": ((H,), f32),
                p + "mlp.gate.weight": ((E, H), bf16),
                p + "mlp.gate.bias": ((E,), bf16),
                p + "mlp.mlp1_weight.blocks": ((E, 2 * I, H // MXFP4_GROUP, 16), u8),
                p + "mlp.mlp1_weight.scales": ((E, 2 * I, H // MXFP4_GROUP), u8),
                p + "mlp.mlp1_bias": ((E, 2 * I), bf16),
                p + "mlp.mlp2_weight.blocks": ((E, H, I // MXFP4_GROUP, 16), u8),
                p + "mlp.mlp2_weight.scales": ((E, H, I // MXFP4_GROUP), u8),
                p + "mlp.mlp2_bias": ((E, H), bf16),
            })
        return specs

    # ---------------------------------------------------------------------------------------------------- files
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "ModelConfig":
        """Build from a ``config.json`` mapping; unknown keys are ignored (the release carries extra ones).

        Raises:
            CheckpointError: a field has the wrong type or an impossible value (one line naming ``source``).
        """
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, field in known.items():
            if name not in data:
                continue
            value = data[name]
            want_int = field.type in ("int", int)
            if want_int and not (isinstance(value, int) and not isinstance(value, bool)):
                raise CheckpointError(f"{source}: {name} must be an integer, got {value!r}")
            if not want_int and not isinstance(value, (int, float)) or isinstance(value, bool):
                raise CheckpointError(f"{source}: {name} must be a number, got {value!r}")
            values[name] = value if want_int else float(value)
        try:
            return cls(**values)
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from None

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> "ModelConfig":
        """Read ``config.json`` from a checkpoint directory (or its ``original/`` subfolder).

        Raises:
            CheckpointError: no readable ``config.json``, or invalid values.
        """
        path = checkpoint_dir(directory) / "config.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no config.json in the checkpoint directory") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: cannot read config.json: {exc}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: config.json must hold a JSON object")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` mapping."""
        return asdict(self)

    def with_layers(self, layers: int) -> "ModelConfig":
        """The same widths with another layer count (benchmarks at 20b widths with a few layers)."""
        return replace(self, num_hidden_layers=layers)


GPT_OSS_20B = ModelConfig()
"""gpt-oss-20b (24 layers, 32 experts)."""

GPT_OSS_120B = ModelConfig(num_hidden_layers=36, num_experts=128)
"""gpt-oss-120b (36 layers, 128 experts); other fields as 20b."""

NAMED_CONFIGS = {"20b": GPT_OSS_20B, "120b": GPT_OSS_120B}
"""The released sizes by short name (``--random 20b``)."""


def checkpoint_dir(directory: str | Path) -> Path:
    """The folder holding ``config.json`` and the original-layout safetensors: ``directory`` itself, or its
    ``original/`` subfolder (the layout of the Hugging Face repositories).

    ``original/`` wins whenever it holds a ``config.json``: the top folder of a Hugging Face repository has a
    ``config.json`` of its own, in the HF format, whose keys (``num_local_experts``, ...) are not ours.
    """
    path = Path(directory)
    if (path / "original" / "config.json").is_file():
        return path / "original"
    return path
