"""Kernel configs of the inference loop: the tuned table (loaded once) or the search spaces' defaults.

The loop asks for a config at every call site with the call's shape; answers are memoized per shape, so a decode
step costs one dict lookup per kernel call after the first step at a shape.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from autotune import registry
from autotune.model.config import ModelConfig
from kernels.attention import AttentionConfig, AttentionShape
from kernels.moe_gemm import MoeGemmConfig, MoeShape


class KernelConfigs:
    """Config provider for :class:`autotune.model.model.GptOss`.

    Args:
        model: the model config (widths, heads, experts).
        device: the :class:`autotune.device.DeviceProfile` the kernels run on.
        table_path: the table to read (``None``: :data:`autotune.defaults.TABLE`); ignored with ``use_table=False``.
        use_table: False serves the search spaces' default configs only (``--no-table``).
        kv_dtype: the KV cache's storage, ``"act"`` or ``"fp8"``; it overrides the ``kv_dtype`` of every attention
            config, since one cache serves every call. ``None`` until :meth:`set_kv_dtype`.

    Raises:
        TableError: the table cannot be loaded (corrupt, foreign, newer schema; the message names the file).
    """

    def __init__(self, model: ModelConfig, device, *, table_path: str | Path | None = None, use_table: bool = True,
                 kv_dtype: str | None = None) -> None:
        from autotune.table.lookup import open_table

        self.model = model
        self.device = device
        self.table = open_table(table_path, device) if use_table else None
        self.kv_dtype = kv_dtype
        self.sources: Counter[tuple[str, str, str]] = Counter()
        self._memo: dict[tuple, Any] = {}

    def set_kv_dtype(self, kv_dtype: str) -> None:
        """Fix the KV cache storage served in attention configs (``"act"`` or ``"fp8"``)."""
        self.kv_dtype = kv_dtype
        self._memo = {key: value for key, value in self._memo.items() if key[0] != "attention"}

    def _resolve(self, kernel: str, variant: str, shape: dict[str, int]) -> dict[str, Any]:
        if self.table is None:
            self.sources[(kernel, variant, "default")] += 1
            return registry.get(kernel).default_config(variant, shape, self.device)
        result = self.table.lookup(kernel, variant, shape)
        self.sources[(kernel, variant, result.source)] += 1
        return dict(result.config)

    def moe(self, variant: str, tokens: int) -> MoeGemmConfig:
        """Config of an MoE GEMM call (``"mlp1"`` or ``"mlp2"``) over ``tokens`` tokens."""
        key = ("moe_gemm", variant, tokens)
        config = self._memo.get(key)
        if config is None:
            m = self.model
            shape = MoeShape.for_variant(variant, M=tokens, hidden=m.hidden_size, intermediate=m.intermediate_size,
                                         E=m.num_experts, top_k=m.experts_per_token).as_dict()
            config = self._memo[key] = MoeGemmConfig.from_dict(self._resolve("moe_gemm", variant, shape))
        return config

    def attention_shape(self, batch: int, seq: int, window: int) -> dict[str, int]:
        """The attention shape key (see :mod:`kernels.attention`) of a call."""
        m = self.model
        return AttentionShape(batch=batch, seq=seq, heads_q=m.num_attention_heads, heads_kv=m.num_key_value_heads,
                              head_dim=m.head_dim, window=window).as_dict()

    def attention(self, variant: str, batch: int, seq: int, window: int) -> AttentionConfig:
        """Config of an attention call: ``"prefill"`` (seq = prompt tokens) or ``"decode"`` (seq = context length).

        The ``kv_dtype`` field is replaced by the cache's (:attr:`kv_dtype`) when that is set.
        """
        key = ("attention", variant, batch, seq, window)
        config = self._memo.get(key)
        if config is None:
            params = self._resolve("attention", variant, self.attention_shape(batch, seq, window))
            config = AttentionConfig.from_dict(params)
            if self.kv_dtype is not None and config.kv_dtype != self.kv_dtype:
                config = replace(config, kv_dtype=self.kv_dtype)
            self._memo[key] = config
        return config

    def preferred_kv_dtype(self, batch: int, context: int) -> str:
        """The KV storage the table picked for decode at ``batch`` × ``context`` on full-attention layers (the
        layers whose cache reads grow with the context), or the default's when there is no table entry."""
        params = self._resolve("attention", "decode", self.attention_shape(batch, context, 0))
        return str(params.get("kv_dtype", "act"))

    def summary(self) -> dict[str, int]:
        """How many distinct shapes were served from each source: ``{"exact": n, "nearest": n, "default": n}``."""
        counts: Counter[str] = Counter()
        for (_, _, source), shapes in self.sources.items():
            counts[source] += shapes
        return dict(counts)
