"""The gpt-oss transformer, run with this project's Triton kernels: MXFP4 MoE GEMMs (``kernels.moe_gemm``) and
flash attention with sinks (``kernels.attention``); embeddings, norms, RoPE, projections and the router stay in
torch. Each kernel call takes its config from :class:`autotune.model.kernel_configs.KernelConfigs`.

Follows openai/gpt-oss ``gpt_oss/torch/model.py`` (the architecture is summarized in FACTS.md). Legend: B sequences,
T new tokens per sequence, N = B·T tokens, H hidden, V vocabulary, Hq/Hkv query/KV heads, D head dim, E experts,
k experts per token, R = N·k routed rows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autotune.model.config import ModelConfig
from autotune.model.kernel_configs import KernelConfigs
from autotune.model.kv_cache import KVCache
from autotune.model.rope import RopeTable
from kernels.attention import KV_DTYPES, AttentionConfig, attention_decode, attention_prefill, to_kv_dtype
from kernels.moe_gemm import MoeGemmConfig, moe_mlp1, moe_mlp2
from kernels.moe_routing import route

STAGES = ("embed", "attn_norm_qkv", "rope_kv_write", "attention", "attn_out", "mlp_norm_router", "routing",
          "moe_mlp1", "moe_mlp2", "unembed")
"""Labels of a forward pass's stages (``torch.profiler.record_function`` ranges when :attr:`GptOss.annotate` is on;
``bench-model --profile`` attributes kernel time to them)."""

RMS_EPS = 1e-5
"""RMSNorm epsilon of gpt-oss (reference implementation and HF config ``rms_norm_eps``)."""


def rms_norm(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) · scale`` in float32, rounded once to x's dtype. x ``[N, H]``, scale fp32 ``[H]``."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + RMS_EPS) * scale).to(x.dtype)


@dataclass(frozen=True)
class LayerWeights:
    """One transformer block's tensors (names of the original checkpoint in the comments)."""

    attn_norm: torch.Tensor  # attn.norm.scale           fp32 [H]
    qkv_w: torch.Tensor      # attn.qkv.weight           [Hq·D + 2·Hkv·D, H]
    qkv_b: torch.Tensor      # attn.qkv.bias             [Hq·D + 2·Hkv·D]
    sinks: torch.Tensor      # attn.sinks                fp32 [Hq]
    out_w: torch.Tensor      # attn.out.weight           [H, Hq·D]
    out_b: torch.Tensor      # attn.out.bias             [H]
    mlp_norm: torch.Tensor   # mlp.norm.scale            fp32 [H]
    gate_w: torch.Tensor     # mlp.gate.weight           [E, H]
    gate_b: torch.Tensor     # mlp.gate.bias             [E]
    mlp1_blocks: torch.Tensor  # mlp.mlp1_weight.blocks  uint8 [E, 2I, H/32, 16]
    mlp1_scales: torch.Tensor  # mlp.mlp1_weight.scales  uint8 [E, 2I, H/32]
    mlp1_bias: torch.Tensor    # mlp.mlp1_bias           [E, 2I]
    mlp2_blocks: torch.Tensor  # mlp.mlp2_weight.blocks  uint8 [E, H, I/32, 16]
    mlp2_scales: torch.Tensor  # mlp.mlp2_weight.scales  uint8 [E, H, I/32]
    mlp2_bias: torch.Tensor    # mlp.mlp2_bias           [E, H]
    window: int                # sliding window in tokens, 0 = full causal


@dataclass(frozen=True)
class DecodeKey:
    """The configs one decode step launches with; a CUDA graph is captured per distinct key."""

    attention_full: AttentionConfig
    attention_sliding: AttentionConfig
    mlp1: MoeGemmConfig
    mlp2: MoeGemmConfig


class GptOss:
    """gpt-oss forward passes over a :class:`KVCache`: :meth:`prefill` for prompts, :meth:`decode` for one token per
    sequence (CUDA-graph capturable).

    Args:
        config: the model config.
        weights: the original-layout tensors (:func:`autotune.model.checkpoint.load_checkpoint`), on the device,
            float tensors in ``act_dtype`` (norm scales float32), MXFP4 blocks/scales uint8.
        configs: where each kernel call gets its config.
        act_dtype: activation dtype: bfloat16 on GPUs; float32 or float16 under the Triton interpreter.
        max_positions: RoPE table length (the longest sequence served).

    Raises:
        KeyError: a tensor is missing from ``weights`` (the loader checks this first).
    """

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], *, configs: KernelConfigs,
                 act_dtype: torch.dtype, max_positions: int) -> None:
        self.config = config
        self.configs = configs
        self.act_dtype = act_dtype
        self.device = weights["embedding.weight"].device
        self.embedding = weights["embedding.weight"]      # [V, H]
        self.unembedding = weights["unembedding.weight"]  # [V, H]
        self.final_norm = weights["norm.scale"].float()   # [H]
        self.layers = [self._layer(weights, n) for n in range(config.num_hidden_layers)]
        self.rope = RopeTable(config, max_positions, self.device)
        self.annotate = False

    def _stage(self, name: str):
        """A profiler range named ``name`` (one of :data:`STAGES`) when :attr:`annotate` is set, else nothing."""
        return torch.profiler.record_function(name) if self.annotate else contextlib.nullcontext()

    def _layer(self, weights: dict[str, torch.Tensor], n: int) -> LayerWeights:
        p = f"block.{n}."
        return LayerWeights(
            attn_norm=weights[p + "attn.norm.scale"].float(), qkv_w=weights[p + "attn.qkv.weight"],
            qkv_b=weights[p + "attn.qkv.bias"], sinks=weights[p + "attn.sinks"].float(),
            out_w=weights[p + "attn.out.weight"], out_b=weights[p + "attn.out.bias"],
            mlp_norm=weights[p + "mlp.norm.scale"].float(), gate_w=weights[p + "mlp.gate.weight"],
            gate_b=weights[p + "mlp.gate.bias"], mlp1_blocks=weights[p + "mlp.mlp1_weight.blocks"],
            mlp1_scales=weights[p + "mlp.mlp1_weight.scales"], mlp1_bias=weights[p + "mlp.mlp1_bias"],
            mlp2_blocks=weights[p + "mlp.mlp2_weight.blocks"], mlp2_scales=weights[p + "mlp.mlp2_weight.scales"],
            mlp2_bias=weights[p + "mlp.mlp2_bias"], window=self.config.window(n))

    # ------------------------------------------------------------------------------------------------ caches
    def kv_storage(self, kv_dtype: str) -> torch.dtype:
        """The cache tensor dtype of an attention ``kv_dtype`` ("act": the activation dtype, "fp8": e4m3)."""
        return self.act_dtype if kv_dtype == "act" else KV_DTYPES[kv_dtype]

    def new_cache(self, batch: int, capacity: int, kv_dtype: str = "act") -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``capacity`` tokens (also fixes the attention
        configs' ``kv_dtype``)."""
        if capacity > self.rope.max_positions:
            raise ValueError(f"KV cache capacity {capacity} exceeds the RoPE table ({self.rope.max_positions})")
        self.configs.set_kv_dtype(kv_dtype)
        return KVCache(self.config, batch, capacity, self.kv_storage(kv_dtype), self.device)

    # ------------------------------------------------------------------------------------------------ blocks
    def _mlp(self, x: torch.Tensor, layer: LayerWeights) -> torch.Tensor:
        """MoE MLP with its residual: ``x + Σ_k gate_k · (mlp2(swiglu(mlp1(norm(x)) + b1)) + b2)``. x ``[N, H]``."""
        tokens = x.shape[0]
        with self._stage("mlp_norm_router"):
            h = rms_norm(x, layer.mlp_norm)                              # [N, H]
            router_logits = F.linear(h, layer.gate_w, layer.gate_b)      # [N, E]
        with self._stage("routing"):
            routing = route(router_logits, self.config.experts_per_token)
        with self._stage("moe_mlp1"):
            a = moe_mlp1(h, routing, layer.mlp1_blocks, layer.mlp1_scales, layer.mlp1_bias,
                         self.configs.moe("mlp1", tokens))                # [R, I]
        with self._stage("moe_mlp2"):
            y = moe_mlp2(a, routing, layer.mlp2_blocks, layer.mlp2_scales, layer.mlp2_bias,
                         self.configs.moe("mlp2", tokens))                # [N, H] fp32, gate-weighted sum over k
            return (x.float() + y).to(x.dtype)

    def _qkv(self, x: torch.Tensor, layer: LayerWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized input → q ``[N, Hq, D]``, k and v ``[N, Hkv, D]`` (views of one projection)."""
        c = self.config
        with self._stage("attn_norm_qkv"):
            qkv = F.linear(rms_norm(x, layer.attn_norm), layer.qkv_w, layer.qkv_b)  # [N, Hq·D + 2·Hkv·D]
        q = qkv[:, :c.q_size].view(-1, c.num_attention_heads, c.head_dim)
        k = qkv[:, c.q_size:c.q_size + c.kv_size].view(-1, c.num_key_value_heads, c.head_dim)
        v = qkv[:, c.q_size + c.kv_size:].view(-1, c.num_key_value_heads, c.head_dim)
        return q, k, v

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and unembedding: ``[..., H]`` → float32 ``[..., V]``."""
        with self._stage("unembed"):
            return F.linear(rms_norm(x, self.final_norm), self.unembedding).float()

    # ------------------------------------------------------------------------------------------------ passes
    def prefill(self, tokens: torch.Tensor, cache: KVCache, *, rows: slice | None = None,
                all_logits: bool = False) -> torch.Tensor:
        """Run prompt tokens through the model, appending their K/V to the cache.

        Args:
            tokens: int64 ``[B', T]``: T new tokens for each sequence of ``rows``.
            cache: the KV cache; the sequences of ``rows`` must all hold the same number of tokens.
            rows: which cache rows the B' sequences are (default: all).
            all_logits: return the logits of every position instead of the last one.

        Returns:
            float32 logits ``[B', V]`` (last position) or ``[B', T, V]``.

        Raises:
            ValueError: mismatched batch, unequal fill levels, or a cache without room for T tokens.
        """
        c = self.config
        rows = rows if rows is not None else slice(0, cache.batch)
        indices = range(cache.batch)[rows]
        batch, length = tokens.shape
        if batch != len(indices) or length < 1:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not match cache rows {rows} (batch {len(indices)})")
        starts = {cache.host_lens[i] for i in indices}
        if len(starts) != 1:
            raise ValueError(f"prefill rows must hold the same number of tokens, got {sorted(starts)}")
        start = starts.pop()
        for i in indices:
            cache.check_room(i, length)
        positions = torch.arange(start, start + length, device=self.device)  # [T]
        with self._stage("embed"):
            x = self.embedding[tokens.reshape(-1)]                             # [N, H]
        for n, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer)
            with self._stage("rope_kv_write"):
                q = self.rope.apply(q.view(batch, length, c.num_attention_heads, c.head_dim), positions)
                k = self.rope.apply(k.view(batch, length, c.num_key_value_heads, c.head_dim), positions)
                cache.k[n][rows, start:start + length] = to_kv_dtype(k, cache.dtype)
                cache.v[n][rows, start:start + length] = to_kv_dtype(
                    v.view(batch, length, c.num_key_value_heads, c.head_dim), cache.dtype)
            with self._stage("attention"):
                config = self.configs.attention("prefill", batch, start + length, layer.window)
                attn = attention_prefill(q, cache.k[n][rows], cache.v[n][rows], layer.sinks, start_pos=start,
                                         window=layer.window, sm_scale=c.sm_scale, config=config)  # [B',T,Hq,D]
            with self._stage("attn_out"):
                x = x + F.linear(attn.reshape(batch * length, c.q_size), layer.out_w, layer.out_b)
            x = self._mlp(x, layer)
        for i in indices:
            cache.host_lens[i] += length
        cache.lens[rows] += length
        x = x.view(batch, length, c.hidden_size)
        return self._logits(x if all_logits else x[:, -1])

    def decode_key(self, cache: KVCache) -> DecodeKey:
        """The configs of the next decode step (the context length is the longest sequence's, after the step)."""
        context = max(cache.host_lens) + 1
        batch = cache.batch
        return DecodeKey(self.configs.attention("decode", batch, context, 0),
                         self.configs.attention("decode", batch, context, self.config.sliding_window),
                         self.configs.moe("mlp1", batch), self.configs.moe("mlp2", batch))

    def decode(self, tokens: torch.Tensor, cache: KVCache, key: DecodeKey) -> torch.Tensor:
        """One token per sequence: append its K/V at position ``cache.lens`` and advance ``cache.lens`` by one.

        Graph-capturable: reads positions from ``cache.lens`` on the device, no host sync. The caller advances
        ``cache.host_lens`` (see :class:`autotune.model.generation.DecodeRunner`) and checks room beforehand.

        Args:
            tokens: int64 ``[B]``.
            cache: the KV cache (every sequence gets one token).
            key: the step's configs (:meth:`decode_key`).

        Returns:
            float32 logits ``[B, V]``.
        """
        c = self.config
        batch = tokens.shape[0]
        positions = cache.lens.long()                  # [B]: where the new token goes
        new_lens = cache.lens + 1                      # [B] int32
        rows = torch.arange(batch, device=self.device)
        with self._stage("embed"):
            x = self.embedding[tokens]                 # [B, H]
        for n, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer)
            with self._stage("rope_kv_write"):
                q = self.rope.apply(q, positions)      # [B, Hq, D]
                k = self.rope.apply(k, positions)      # [B, Hkv, D]
                cache.k[n][rows, positions] = to_kv_dtype(k, cache.dtype)
                cache.v[n][rows, positions] = to_kv_dtype(v, cache.dtype)
            with self._stage("attention"):
                config = key.attention_sliding if layer.window else key.attention_full
                attn = attention_decode(q, cache.k[n], cache.v[n], layer.sinks, new_lens, window=layer.window,
                                        sm_scale=c.sm_scale, config=config)  # [B, Hq, D]
            with self._stage("attn_out"):
                x = x + F.linear(attn.reshape(batch, c.q_size), layer.out_w, layer.out_b)
            x = self._mlp(x, layer)
        cache.lens.copy_(new_lens)
        return self._logits(x)
