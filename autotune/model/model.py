"""The gpt-oss transformer, run with this project's Triton kernels: MXFP4 MoE GEMMs (``kernels.moe_gemm``), flash
attention with sinks (``kernels.attention``), residual add + RMSNorm and RoPE + KV-cache store
(``kernels.layer_ops``), routing (``kernels.moe_routing``), the qkv/out/router projections of a few tokens
(``kernels.gemv``); the embedding lookup, the unembedding and the projections of longer prompts are torch (cuBLAS). Every pass takes the configs of its kernels as one :class:`autotune.model.kernel_configs.StepConfigs` from
:class:`autotune.model.kernel_configs.KernelConfigs`.

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
from autotune.model.kernel_configs import KernelConfigs, StepConfigs
from autotune.model.kv_cache import KVCache
from autotune.model.rope import RopeTable
from kernels.attention import attention_decode, attention_prefill, kv_storage_dtype
from kernels.gemv import GemvConfig, gemv
from kernels.layer_ops import add_rms_norm, rope_qkv_write
from kernels.moe_gemm import activation_records, moe_mlp1, moe_mlp2
from kernels.moe_routing import route

STAGES = ("embed", "attn_norm_qkv", "rope_kv_write", "attention", "attn_out", "mlp_norm_router", "routing",
          "moe_mlp1", "moe_mlp2", "unembed")
"""Labels of a forward pass's stages (``torch.profiler.record_function`` ranges when :attr:`GptOss.annotate` is on;
``bench-model --profile`` attributes kernel time to them)."""

RMS_EPS = 1e-5
"""RMSNorm epsilon of gpt-oss (reference implementation and HF config ``rms_norm_eps``)."""


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            config: GemvConfig | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: :func:`kernels.gemv.gemv` with the pass's config for up to a few tokens
    (decode), where cuBLAS's split-K kernels stream the weights slower; cuBLAS when the pass has no gemv config
    (:class:`autotune.model.kernel_configs.StepConfigs` leaves it None above :data:`kernels.gemv.MAX_ROWS` tokens).
    x ``[N, K]`` → ``[N, out]`` in x's dtype."""
    if config is not None:
        return gemv(x, weight, bias, config)
    return F.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) · scale`` in float32, rounded once to x's dtype. x ``[N, H]``, scale fp32 ``[H]``.

    The torch statement of the norm; the forward pass runs :func:`kernels.layer_ops.add_rms_norm`, which
    tests/test_layer_ops.py checks against this."""
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
    @property
    def kv_dtype(self) -> str:
        """The KV cache's storage ("act" or "fp8"), decided once by :class:`KernelConfigs`."""
        return self.configs.kv_dtype

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``capacity`` tokens, in :attr:`kv_dtype` storage."""
        if capacity > self.rope.max_positions:
            raise ValueError(f"KV cache capacity {capacity} exceeds the RoPE table ({self.rope.max_positions})")
        return KVCache(self.config, batch, capacity, kv_storage_dtype(self.kv_dtype, self.act_dtype), self.device)

    # ------------------------------------------------------------------------------------------------ layers
    def _layers(self, x: torch.Tensor, cache: KVCache, positions: torch.Tensor, *, tokens_per_seq: int,
                first_seq: int, attend, step: StepConfigs) -> torch.Tensor:
        """Every transformer block over the residual stream ``x`` (updated in place), then the final RMSNorm.

        Each block's two residual adds are fused into the RMSNorm that follows them (the MoE output of block n is
        added by block n + 1's attention norm, the last one by the final norm); RoPE and the KV-cache store are one
        launch; when mlp1 runs the dp4a gemv, the MLP norm also writes its activation records (no pre-pass
        launch); the MoE output buffer is zeroed once per pass, then by the norm that consumes it (no memset per
        layer). Numerically the same as ``x = x + attn(norm(x)); x = (x.float() + moe(norm(x))).to(x.dtype)``.

        Args:
            x: ``[N, H]`` activation dtype, N = B'·T tokens, owned by this call.
            cache: the KV cache.
            positions: int32/int64 ``[N]`` on the device: each token's position (= its cache slot).
            tokens_per_seq: T.
            first_seq: the cache row of the first sequence.
            attend: ``attend(n, layer, q) -> [N, Hq·D]`` the attention of block n over the cache.
            step: the pass's kernel configs.

        Returns:
            ``[N, H]``: the final RMSNorm of the residual stream, activation dtype.
        """
        c = self.config
        tokens = x.shape[0]
        # The MoE output, float32 [N, H]: mlp2 accumulates into it atomically, the next block's attention norm adds
        # it to the residual stream and zeroes it again, so one memset serves the whole pass.
        moe_out = torch.zeros(tokens, c.hidden_size, dtype=torch.float32, device=x.device)
        records = activation_records(step.mlp1, x)  # the dp4a gemv's input, rewritten by each block's MLP norm
        for n, layer in enumerate(self.layers):
            with self._stage("attn_norm_qkv"):
                x, h = add_rms_norm(x, moe_out if n else None, layer.attn_norm, eps=RMS_EPS, inplace=True,
                                    consume_delta=n > 0)
                qkv = project(h, layer.qkv_w, layer.qkv_b, step.qkv)        # [N, Hq·D + 2·Hkv·D]
            with self._stage("rope_kv_write"):
                q = torch.empty(tokens, c.num_attention_heads, c.head_dim, dtype=x.dtype, device=x.device)
                rope_qkv_write(qkv, positions, self.rope.cos, self.rope.sin, q, cache.k[n], cache.v[n],
                               heads_q=c.num_attention_heads, heads_kv=c.num_key_value_heads, head_dim=c.head_dim,
                               tokens_per_seq=tokens_per_seq, first_seq=first_seq)
            with self._stage("attention"):
                attn = attend(n, layer, q)                                  # [N, Hq·D]
            with self._stage("attn_out"):
                delta = project(attn, layer.out_w, layer.out_b, step.attn_out)  # [N, H]
            with self._stage("mlp_norm_router"):
                x, h = add_rms_norm(x, delta, layer.mlp_norm, eps=RMS_EPS, inplace=True, records=records)
                router_logits = project(h, layer.gate_w, layer.gate_b, step.router)  # [N, E]
            with self._stage("routing"):
                routing = route(router_logits, c.experts_per_token)
            with self._stage("moe_mlp1"):
                a = moe_mlp1(h, routing, layer.mlp1_blocks, layer.mlp1_scales, layer.mlp1_bias,
                             step.mlp1, records=records)                     # [R, I]
            with self._stage("moe_mlp2"):
                moe_mlp2(a, routing, layer.mlp2_blocks, layer.mlp2_scales, layer.mlp2_bias, step.mlp2,
                         out=moe_out, out_zeroed=True)                       # [N, H] fp32, gate-weighted sum over k
        with self._stage("unembed"):
            _, h = add_rms_norm(x, moe_out if self.layers else None, self.final_norm, eps=RMS_EPS, inplace=True)
        return h

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Unembedding of final-normed rows: ``[..., H]`` → float32 ``[..., V]``."""
        with self._stage("unembed"):
            return F.linear(h, self.unembedding).float()

    # ------------------------------------------------------------------------------------------------ passes
    def prefill(self, tokens: torch.Tensor, cache: KVCache, *, rows: slice | None = None,
                all_logits: bool = False) -> torch.Tensor:
        """Run prompt tokens through the model, appending their K/V to the cache.

        Args:
            tokens: int64 ``[B', T]``: T new tokens for each sequence of ``rows``.
            cache: the KV cache; the sequences of ``rows`` must all hold the same number of tokens.
            rows: which cache rows the B' sequences are (default: all), a slice with step 1.
            all_logits: return the logits of every position instead of the last one.

        Returns:
            float32 logits ``[B', V]`` (last position) or ``[B', T, V]``.

        Raises:
            ValueError: mismatched batch, a slice with a step, unequal fill levels, or a cache without room for T
                tokens.
        """
        c = self.config
        rows = rows if rows is not None else slice(0, cache.batch)
        if rows.step not in (None, 1):
            raise ValueError(f"prefill rows must be a slice with step 1, got {rows}")
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
        positions = torch.arange(start, start + length, device=self.device).repeat(batch)  # [N]
        with self._stage("embed"):
            x = self.embedding[tokens.reshape(-1)]                             # [N, H]

        step = self.configs.step("prefill", batch=batch, tokens=batch * length, context=start + length)

        def attend(n: int, layer: LayerWeights, q: torch.Tensor) -> torch.Tensor:
            return attention_prefill(q.view(batch, length, c.num_attention_heads, c.head_dim), cache.k[n][rows],
                                     cache.v[n][rows], layer.sinks, start_pos=start, window=layer.window,
                                     sm_scale=c.sm_scale, config=step.attention(layer.window)
                                     ).view(batch * length, c.q_size)

        h = self._layers(x, cache, positions, tokens_per_seq=length, first_seq=indices.start, attend=attend,
                         step=step)
        for i in indices:
            cache.host_lens[i] += length
        cache.lens[rows] += length
        h = h.view(batch, length, c.hidden_size)
        return self._logits(h if all_logits else h[:, -1])

    def decode_step_configs(self, cache: KVCache) -> StepConfigs:
        """The configs of the next decode step (the context is the longest sequence's, after the step): also the
        step's CUDA-graph key."""
        return self.configs.step("decode", batch=cache.batch, tokens=cache.batch, context=max(cache.host_lens) + 1)

    def decode(self, tokens: torch.Tensor, cache: KVCache, step: StepConfigs) -> torch.Tensor:
        """One token per sequence: append its K/V at position ``cache.lens`` and advance ``cache.lens`` by one.

        Graph-capturable: reads positions from ``cache.lens`` on the device, no host sync. The caller advances
        ``cache.host_lens`` (see :class:`autotune.model.generation.DecodeRunner`) and checks room beforehand.

        Args:
            tokens: int64 ``[B]``.
            cache: the KV cache (every sequence gets one token).
            step: the step's configs (:meth:`decode_step_configs`).

        Returns:
            float32 logits ``[B, V]``.
        """
        c = self.config
        batch = tokens.shape[0]
        new_lens = cache.lens + 1                      # [B] int32: the lengths once this token is in
        with self._stage("embed"):
            x = self.embedding[tokens]                 # [B, H]

        def attend(n: int, layer: LayerWeights, q: torch.Tensor) -> torch.Tensor:
            return attention_decode(q, cache.k[n], cache.v[n], layer.sinks, new_lens, window=layer.window,
                                    sm_scale=c.sm_scale, config=step.attention(layer.window)).view(batch, c.q_size)

        h = self._layers(x, cache, cache.lens, tokens_per_seq=1, first_seq=0, attend=attend, step=step)
        cache.lens.copy_(new_lens)
        return self._logits(h)
