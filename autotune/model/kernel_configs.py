"""Kernel configs of the inference loop: per forward pass, one immutable :class:`StepConfigs` holding the config of
every tuned kernel the pass launches.

The way of a config: table entry (or the kernel family's default heuristic on a miss) → the one runtime lookup
object (:class:`autotune.table.lookup.RuntimeTable`, which converts it once into the kernel's config object and
memoizes it per shape) → a :class:`StepConfigs` built once per distinct shape set → the launches. A decode step's
:class:`StepConfigs` is also its CUDA-graph key, so the graph and the launched configs cannot disagree.

The KV cache's storage (``kv_dtype``: "act" or "fp8") is decided once, when the provider is made: the caller's
choice, else the table's choice for batch-1 decode at the longest context on full-attention layers. Attention
configs are then served for that storage (an entry tuned with the other storage keeps its tiles and takes this one's
``kv_dtype``: one cache serves every attention call).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from autotune.model.config import ModelConfig
from kernels.attention import AttentionConfig, AttentionShape
from kernels.attention.config import KV_CONFIG_DTYPES
from kernels.gemv import MAX_ROWS as GEMV_MAX_ROWS
from kernels.gemv import GemvConfig, GemvShape
from kernels.moe_gemm import MoeGemmConfig, MoeShape


@dataclass(frozen=True)
class StepConfigs:
    """The configs of one forward pass (hashable: decode captures one CUDA graph per distinct value).

    Attributes:
        attention_full: attention on full-causal layers (window 0).
        attention_sliding: attention on sliding-window layers.
        mlp1, mlp2: the two MoE GEMMs.
        qkv, attn_out, router: the gemv projections (:mod:`kernels.gemv`); None when the pass has more than
            :data:`kernels.gemv.MAX_ROWS` tokens, which cuBLAS projects.
    """

    attention_full: AttentionConfig
    attention_sliding: AttentionConfig
    mlp1: MoeGemmConfig
    mlp2: MoeGemmConfig
    qkv: GemvConfig | None
    attn_out: GemvConfig | None
    router: GemvConfig | None

    def attention(self, window: int) -> AttentionConfig:
        """The attention config of a layer with sliding window ``window`` (0: full causal)."""
        return self.attention_sliding if window else self.attention_full


class KernelConfigs:
    """Config provider for :class:`autotune.model.model.GptOss`.

    Args:
        model: the model config (widths, heads, experts).
        device: the :class:`autotune.device.DeviceProfile` the kernels run on.
        table_path: the table to read (``None``: :data:`autotune.defaults.TABLE`); ignored with ``use_table=False``.
        use_table: False serves the kernels' default configs only (``--no-table``).
        kv_dtype: the KV cache's storage, "act" or "fp8"; ``None`` takes the table's choice (see the module
            docstring) for contexts up to ``max_context``.
        max_context: the longest context served (the RoPE table length), for the table's KV choice.
        act_dtype: the activation dtype (torch), so that entries the kernels cannot launch on it are not served.

    Raises:
        TableError: the table cannot be loaded (corrupt, foreign, newer schema; the message names the file).
        ValueError: ``kv_dtype`` is not "act" or "fp8".
    """

    def __init__(self, model: ModelConfig, device, *, table_path: str | Path | None = None, use_table: bool = True,
                 kv_dtype: str | None = None, max_context: int = 4096, act_dtype=None) -> None:
        from autotune.table.lookup import open_table

        self.model = model
        self.device = device
        self.lookup = open_table(table_path, device, use_table=use_table, act_dtype=act_dtype)
        self._steps: dict[tuple, StepConfigs] = {}
        if kv_dtype is None:
            kv_dtype = self._attention("decode", 1, max(1, max_context), 0, None).kv_dtype
        if kv_dtype not in KV_CONFIG_DTYPES:
            raise ValueError(f"kv_dtype must be one of {KV_CONFIG_DTYPES}, got {kv_dtype!r}")
        self.kv_dtype = kv_dtype

    def _moe(self, variant: str, tokens: int) -> MoeGemmConfig:
        m = self.model
        shape = MoeShape.for_variant(variant, M=tokens, hidden=m.hidden_size, intermediate=m.intermediate_size,
                                     E=m.num_experts, top_k=m.experts_per_token)
        return self.lookup.lookup("moe_gemm", variant, shape.as_dict()).config

    def _gemv(self, variant: str, tokens: int) -> GemvConfig | None:
        if tokens > GEMV_MAX_ROWS:
            return None
        m = self.model
        shape = GemvShape.for_variant(variant, M=tokens, hidden=m.hidden_size, heads_q=m.num_attention_heads,
                                      heads_kv=m.num_key_value_heads, head_dim=m.head_dim, E=m.num_experts)
        return self.lookup.lookup("gemv", variant, shape.as_dict()).config

    def attention_shape(self, batch: int, seq: int, window: int) -> dict[str, int]:
        """The attention shape key (see :mod:`kernels.attention`) of a call."""
        m = self.model
        return AttentionShape(batch=batch, seq=seq, heads_q=m.num_attention_heads, heads_kv=m.num_key_value_heads,
                              head_dim=m.head_dim, window=window).as_dict()

    def _attention(self, variant: str, batch: int, seq: int, window: int, kv_dtype: str | None) -> AttentionConfig:
        config = self.lookup.lookup("attention", variant, self.attention_shape(batch, seq, window)).config
        return config if kv_dtype is None or config.kv_dtype == kv_dtype else replace(config, kv_dtype=kv_dtype)

    def step(self, variant: str, *, batch: int, tokens: int, context: int) -> StepConfigs:
        """The configs of one forward pass, built once per distinct (variant, batch, tokens, context).

        Args:
            variant: "prefill" or "decode" (the attention variant).
            batch: sequences in the pass.
            tokens: N, tokens in the pass (the MoE GEMMs' M).
            context: prefill: the keys after the pass (start + prompt length); decode: the context after the step.

        Returns:
            The :class:`StepConfigs`.
        """
        key = (variant, batch, tokens, context)
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = StepConfigs(
                attention_full=self._attention(variant, batch, context, 0, self.kv_dtype),
                attention_sliding=self._attention(variant, batch, context, self.model.sliding_window, self.kv_dtype),
                mlp1=self._moe("mlp1", tokens), mlp2=self._moe("mlp2", tokens),
                qkv=self._gemv("qkv", tokens), attn_out=self._gemv("attn_out", tokens),
                router=self._gemv("router", tokens))
        return step

    def summary(self) -> dict[str, int]:
        """How many distinct shapes were served from each source: ``{"exact": n, "nearest": n, "default": n}``."""
        return dict(Counter(result.source for *_, result in self.lookup.served()))

    def stale_count(self) -> tuple[int, int]:
        """(served from a stale table entry, served in all): distinct shapes, see :mod:`autotune.table.freshness`."""
        served = self.lookup.served()
        return sum(1 for *_, result in served if self.lookup.stale(result.entry)), len(served)
