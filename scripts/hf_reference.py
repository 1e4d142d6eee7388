"""The Hugging Face ``transformers`` gpt-oss model over our original-layout weights: the reference of the correctness
tests (float32 on the CPU, bf16 at 20b widths on a GPU) and the baseline of ``scripts/bench_hf_baseline.py``.

An independent implementation to compare :mod:`autotune.model` against: eager attention and eager experts, MXFP4
experts dequantized (exact in float32: every e2m1 × e8m0 product is a float32; rounded once in bf16).

Name and shape mapping (ours → ``transformers/models/gpt_oss/modeling_gpt_oss.py``, transformers 5.x):

| original | HF | how |
|---|---|---|
| ``embedding.weight`` [V, H] | ``model.embed_tokens.weight`` | as is |
| ``unembedding.weight`` [V, H] | ``lm_head.weight`` | as is (untied) |
| ``norm.scale`` [H] | ``model.norm.weight`` | as is |
| ``block.N.{attn,mlp}.norm.scale`` [H] | ``...{input,post_attention}_layernorm.weight`` | as is |
| ``block.N.attn.qkv.{weight,bias}`` [Hq·D + 2·Hkv·D, H] | ``self_attn.{q,k,v}_proj`` | rows: q, then k, then v |
| ``block.N.attn.out.{weight,bias}`` | ``self_attn.o_proj`` | as is |
| ``block.N.attn.sinks`` [Hq] | ``self_attn.sinks`` | as is |
| ``block.N.mlp.gate.{weight,bias}`` [E, H] | ``mlp.router.{weight,bias}`` | as is |
| ``block.N.mlp.mlp1_weight`` [E, 2I, H] (MXFP4) | ``mlp.experts.gate_up_proj`` [E, H, 2I] | dequantize, transpose |
| ``block.N.mlp.mlp1_bias`` [E, 2I] | ``mlp.experts.gate_up_proj_bias`` | as is |
| ``block.N.mlp.mlp2_weight`` [E, H, I] (MXFP4) | ``mlp.experts.down_proj`` [E, I, H] | dequantize, transpose |
| ``block.N.mlp.mlp2_bias`` [E, H] | ``mlp.experts.down_proj_bias`` | as is |

Gate and linear halves of mlp1 stay interleaved in both (gate ``::2``, linear ``1::2``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import transformers

from autotune.model.checkpoint import load_checkpoint
from autotune.model.config import ModelConfig
from kernels.mxfp4 import dequantize


def hf_config(config: ModelConfig, *, sliding_window: int | None = None) -> transformers.GptOssConfig:
    """The ``GptOssConfig`` equivalent to ``config`` (even layers sliding, odd full; YaRN RoPE).

    Args:
        config: our model config.
        sliding_window: override of ``config.sliding_window`` (tests make it huge to switch the window off).
    """
    layers = config.num_hidden_layers
    return transformers.GptOssConfig(
        num_hidden_layers=layers,
        num_local_experts=config.num_experts,
        num_experts_per_tok=config.experts_per_token,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        head_dim=config.head_dim,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        sliding_window=config.sliding_window if sliding_window is None else sliding_window,
        layer_types=["sliding_attention" if n % 2 == 0 else "full_attention" for n in range(layers)],
        swiglu_limit=config.swiglu_limit,
        rms_norm_eps=1e-5,
        attention_bias=True,
        tie_word_embeddings=False,
        max_position_embeddings=int(config.initial_context_length * config.rope_scaling_factor),
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": config.rope_theta,
            "factor": config.rope_scaling_factor,
            "beta_fast": config.rope_ntk_beta,
            "beta_slow": config.rope_ntk_alpha,
            "original_max_position_embeddings": config.initial_context_length,
            "truncate": False,
        },
    )


def hf_tensors(config: ModelConfig, weights: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Our original-layout tensors renamed and reshaped into ``GptOssForCausalLM``'s state dict, float32, one at a
    time (a full 20b in float32 would not fit a GPU at once)."""
    q, kv = config.q_size, config.kv_size

    def f32(name: str) -> torch.Tensor:
        return weights[name].to(torch.float32)

    def mxfp4(prefix: str) -> torch.Tensor:  # [E, N, K] → [E, K, N]
        dense = dequantize(weights[prefix + ".blocks"], weights[prefix + ".scales"], torch.float32)
        return dense.transpose(1, 2).contiguous()

    yield "model.embed_tokens.weight", f32("embedding.weight")
    yield "model.norm.weight", f32("norm.scale")
    yield "lm_head.weight", f32("unembedding.weight")
    for n in range(config.num_hidden_layers):
        src, dst = f"block.{n}.", f"model.layers.{n}."
        qkv_w, qkv_b = f32(src + "attn.qkv.weight"), f32(src + "attn.qkv.bias")
        for part, rows in (("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, q + 2 * kv))):
            yield dst + f"self_attn.{part}_proj.weight", qkv_w[rows].contiguous()
            yield dst + f"self_attn.{part}_proj.bias", qkv_b[rows].contiguous()
        for hf_name, ours in (("self_attn.o_proj.weight", "attn.out.weight"), ("self_attn.o_proj.bias", "attn.out.bias"),
                              ("self_attn.sinks", "attn.sinks"), ("input_layernorm.weight", "attn.norm.scale"),
                              ("post_attention_layernorm.weight", "mlp.norm.scale"),
                              ("mlp.router.weight", "mlp.gate.weight"), ("mlp.router.bias", "mlp.gate.bias"),
                              ("mlp.experts.gate_up_proj_bias", "mlp.mlp1_bias"),
                              ("mlp.experts.down_proj_bias", "mlp.mlp2_bias")):
            yield dst + hf_name, f32(src + ours)
        yield dst + "mlp.experts.gate_up_proj", mxfp4(src + "mlp.mlp1_weight")
        yield dst + "mlp.experts.down_proj", mxfp4(src + "mlp.mlp2_weight")


def hf_state_dict(config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All of :func:`hf_tensors` as one float32 state dict (small models)."""
    return dict(hf_tensors(config, weights))


def hf_model(config: ModelConfig, weights: dict[str, torch.Tensor], *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, sliding_window: int | None = None) -> transformers.GptOssForCausalLM:
    """``GptOssForCausalLM`` with eager attention and experts holding ``weights``, built on ``device`` in ``dtype``
    and filled tensor by tensor (peak memory: the model plus one float32 tensor).

    Raises:
        RuntimeError: a parameter is not covered by the mapping, or the mapping names an unknown one.
    """
    hf_cfg = hf_config(config, sliding_window=sliding_window)
    hf_cfg._attn_implementation = "eager"
    if hasattr(hf_cfg, "_experts_implementation"):
        hf_cfg._experts_implementation = "eager"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.GptOssForCausalLM(hf_cfg)
    finally:
        torch.set_default_dtype(previous)
    params = dict(model.named_parameters())
    filled = set()
    with torch.no_grad():
        for name, tensor in hf_tensors(config, weights):
            if name not in params:
                raise RuntimeError(f"mapping names {name!r}, which GptOssForCausalLM does not have")
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise RuntimeError(f"{name}: mapped shape {tuple(tensor.shape)} != HF {tuple(params[name].shape)}")
            params[name].copy_(tensor)
            filled.add(name)
    missing = sorted(set(params) - filled)
    if missing:
        raise RuntimeError(f"HF parameters not filled from our weights: {missing[:5]}")
    model.config._attn_implementation = "eager"
    return model.eval()


def hf_model_from_checkpoint(directory: str | Path, *,
                             sliding_window: int | None = None) -> transformers.GptOssForCausalLM:
    """``GptOssForCausalLM`` in float32 on the CPU, eager attention and experts, with our checkpoint's weights.

    Args:
        directory: an original-layout checkpoint (:func:`autotune.model.checkpoint.load_checkpoint`).
        sliding_window: override of the config's window (e.g. huge to compare against no window).

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: the checkpoint does not load.
        RuntimeError: the mapped state dict has missing or unexpected keys (strict load).
    """
    config, weights = load_checkpoint(directory, device="cpu")
    return hf_model(config, weights, sliding_window=sliding_window)
