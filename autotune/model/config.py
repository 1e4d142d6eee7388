"""gpt-oss model configuration: the fields of the original release's ``config.json`` and the tensors they imply.

Sources: openai/gpt-oss ``gpt_oss/torch/model.py`` (``ModelConfig``; its defaults are the 120b values) and the
model cards; the numbers are restated in ``../shared/FACTS.md``. Legend used across :mod:`autotune.model`:
H hidden size, I expert intermediate size, E experts, k experts per token, Hq query heads, Hkv KV heads,
D head dim, V vocabulary, L layers.
"""

from __future__ import annotations

import json
import math
import warnings
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

REQUIRED_FIELDS = ("num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
                   "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads", "sliding_window")
"""``config.json`` fields without a default: the architecture (both released sizes state all of them). A missing one
is an error naming it; a default would silently run another model (top-4 routing on a top-2 checkpoint, say)."""

DOCUMENTED_DEFAULTS = {"swiglu_limit": 7.0, "initial_context_length": 4096, "rope_theta": 150000.0,
                       "rope_scaling_factor": 32.0, "rope_ntk_alpha": 1.0, "rope_ntk_beta": 32.0}
"""``config.json`` fields that may be absent, with the value used then: openai/gpt-oss ``ModelConfig``'s defaults,
which both released sizes use (``../shared/FACTS.md``). Using one is stated in a warning."""

LIMITS = {"num_hidden_layers": 1024, "num_experts": 4096, "vocab_size": 2**22, "hidden_size": 2**16,
          "intermediate_size": 2**16, "head_dim": 1024, "num_attention_heads": 4096, "sliding_window": 2**24,
          "initial_context_length": 2**24}
"""Upper bounds of the integer fields, checked before anything is allocated (the released sizes: 36 layers, 128
experts, vocabulary 201,088, width 2880, head dim 64, 64 heads, window 128, context 4096). They are about 30 times
the largest released values, so that a typo such as ``num_hidden_layers: 1000000`` is refused in microseconds
instead of allocating per-layer state; ``num_key_value_heads`` is bounded by ``num_attention_heads``."""


@dataclass(frozen=True)
class ModelConfig:
    """gpt-oss hyper-parameters, named as in the original ``config.json``.

    Attributes follow openai/gpt-oss ``ModelConfig``. ``sliding_window`` applies to even layers (layer % 2 == 0):
    a query at position p sees keys p - sliding_window + 1 .. p. RoPE is YaRN-scaled (see
    :func:`autotune.model.rope.yarn_inv_freq`). The field defaults are gpt-oss-20b's; a ``config.json`` read with
    :meth:`from_dict` must state every field of :data:`REQUIRED_FIELDS` and may leave out only those of
    :data:`DOCUMENTED_DEFAULTS` (swiglu_limit 7.0, initial_context_length 4096, rope_theta 150000,
    rope_scaling_factor 32, rope_ntk_alpha 1, rope_ntk_beta 32).

    Raises:
        CheckpointError: on construction, for a value of the wrong type, out of :data:`LIMITS`, or inconsistent
            (experts_per_token > num_experts, heads not a multiple of the KV heads, widths not multiples of the MXFP4
            group, odd head_dim, rope_theta <= 1, rope_ntk_alpha <= 0 or >= rope_ntk_beta).
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
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, int) and value > limit:
                return f"{name} {value} is larger than the limit {limit}"
        if self.num_key_value_heads > self.num_attention_heads:
            return (f"num_key_value_heads {self.num_key_value_heads} > num_attention_heads "
                    f"{self.num_attention_heads}")
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
        for name in ("rope_theta", "rope_scaling_factor", "swiglu_limit", "rope_ntk_alpha", "rope_ntk_beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                return f"{name} must be a finite positive number, got {value!r}"
        if self.rope_theta <= 1:
            return f"rope_theta must be > 1 (the RoPE base; its log divides), got {self.rope_theta!r}"
        if self.rope_ntk_alpha >= self.rope_ntk_beta:
            return (f"rope_ntk_alpha {self.rope_ntk_alpha!r} must be < rope_ntk_beta {self.rope_ntk_beta!r} "
                    "(YaRN interpolates below alpha turns and keeps the frequencies above beta turns)")
        return None

    @property
    def max_context(self) -> int:
        """Longest sequence the RoPE scaling covers: initial_context_length × rope_scaling_factor (131,072 for
        gpt-oss), or initial_context_length without scaling."""
        return int(self.initial_context_length * max(1.0, float(self.rope_scaling_factor)))

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

        Every field of :data:`REQUIRED_FIELDS` must be present; an absent field of :data:`DOCUMENTED_DEFAULTS` takes
        the value listed there, with one ``UserWarning`` naming the fields and values used. The head dim must also be
        one the attention kernel runs (a power of two >= 16, ``kernels.attention.AttentionShape``).

        Raises:
            CheckpointError: a required field is missing, a field has the wrong type or an impossible value (one
                line naming ``source`` and the field).
        """
        known = {f.name: f for f in fields(cls)}
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            raise CheckpointError(f"{source}: missing required field {missing[0]}"
                                  + (f" (and {', '.join(missing[1:])})" if missing[1:] else "")
                                  + "; only " + ", ".join(DOCUMENTED_DEFAULTS) + " have defaults")
        values: dict[str, Any] = {}
        for name, field in known.items():
            if name not in data:
                continue
            value = data[name]
            want_int = field.type in ("int", int)
            if want_int and not (isinstance(value, int) and not isinstance(value, bool)):
                raise CheckpointError(f"{source}: {name} must be an integer, got {_short(value)}")
            if not want_int and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise CheckpointError(f"{source}: {name} must be a number, got {_short(value)}")
            if not want_int:
                try:
                    value = float(value)
                except OverflowError:
                    raise CheckpointError(f"{source}: {name} must be a finite number, got {_short(value)}") from None
            values[name] = value
        defaulted = {name: value for name, value in DOCUMENTED_DEFAULTS.items() if name not in values}
        try:
            config = cls(**values)
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        if config.head_dim < 16 or config.head_dim & (config.head_dim - 1):
            raise CheckpointError(f"{source}: head_dim {config.head_dim} must be a power of two >= 16 (the "
                                  "attention kernel's smallest tl.dot)")
        if defaulted:
            warnings.warn(f"{source}: absent field(s) take the gpt-oss defaults: "
                          + ", ".join(f"{name}={value}" for name, value in defaulted.items()), stacklevel=2)
        return config

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> "ModelConfig":
        """Read ``config.json`` from a checkpoint directory (or its ``original/`` subfolder).

        Raises:
            CheckpointError: no readable ``config.json``, or invalid values.
        """
        path = checkpoint_dir(directory) / "config.json"
        return cls.from_dict(read_config_json(path), source=str(path))

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


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 128 else f"an integer of " \
        f"{value.bit_length()} bits"
    return text if len(text) <= limit else text[:limit] + "..."


def read_config_json(path: str | Path) -> dict[str, Any]:
    """Read a ``config.json`` (at most :data:`autotune.defaults.MAX_CONFIG_JSON_BYTES`, a regular file) as a dict.

    Raises:
        CheckpointError: absent, not a regular file, too large, unreadable, not UTF-8 JSON, or not a JSON object.
    """
    from autotune import defaults
    from autotune.files import read_bounded

    path = Path(path)
    try:
        raw = read_bounded(path, defaults.MAX_CONFIG_JSON_BYTES, what="config.json", error=CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no config.json in the checkpoint directory") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: cannot read config.json: not UTF-8 text ({exc.reason})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: cannot read config.json: JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, or an integer beyond Python's digit limit
        raise CheckpointError(f"{path}: cannot read config.json: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: config.json must hold a JSON object")
    return data


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
