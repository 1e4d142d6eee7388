"""Test helper: the Hugging Face ``transformers`` gpt-oss model over one of our original-layout checkpoints.

An independent implementation to compare :mod:`autotune.model` against: float32 on the CPU, eager attention and
eager experts, MXFP4 experts dequantized to float32 (exact: every e2m1 × e8m0 product is a float32).

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


def hf_state_dict(config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our original-layout tensors renamed and reshaped into ``GptOssForCausalLM``'s state dict, float32."""
    q, kv = config.q_size, config.kv_size

    def f32(name: str) -> torch.Tensor:
        return weights[name].to(torch.float32)

    def mxfp4(prefix: str) -> torch.Tensor:  # [E, N, K] → [E, K, N]
        dense = dequantize(weights[prefix + ".blocks"], weights[prefix + ".scales"], torch.float32)
        return dense.transpose(1, 2).contiguous()

    state = {
        "model.embed_tokens.weight": f32("embedding.weight"),
        "model.norm.weight": f32("norm.scale"),
        "lm_head.weight": f32("unembedding.weight"),
    }
    for n in range(config.num_hidden_layers):
        src, dst = f"block.{n}.", f"model.layers.{n}."
        qkv_w, qkv_b = f32(src + "attn.qkv.weight"), f32(src + "attn.qkv.bias")
        for part, rows in (("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, q + 2 * kv))):
            state[dst + f"self_attn.{part}_proj.weight"] = qkv_w[rows].contiguous()
            state[dst + f"self_attn.{part}_proj.bias"] = qkv_b[rows].contiguous()
        state.update({
            dst + "self_attn.o_proj.weight": f32(src + "attn.out.weight"),
            dst + "self_attn.o_proj.bias": f32(src + "attn.out.bias"),
            dst + "self_attn.sinks": f32(src + "attn.sinks"),
            dst + "input_layernorm.weight": f32(src + "attn.norm.scale"),
            dst + "post_attention_layernorm.weight": f32(src + "mlp.norm.scale"),
            dst + "mlp.router.weight": f32(src + "mlp.gate.weight"),
            dst + "mlp.router.bias": f32(src + "mlp.gate.bias"),
            dst + "mlp.experts.gate_up_proj": mxfp4(src + "mlp.mlp1_weight"),
            dst + "mlp.experts.gate_up_proj_bias": f32(src + "mlp.mlp1_bias"),
            dst + "mlp.experts.down_proj": mxfp4(src + "mlp.mlp2_weight"),
            dst + "mlp.experts.down_proj_bias": f32(src + "mlp.mlp2_bias"),
        })
    return state


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
    hf_cfg = hf_config(config, sliding_window=sliding_window)
    hf_cfg._attn_implementation = "eager"
    if hasattr(hf_cfg, "_experts_implementation"):
        hf_cfg._experts_implementation = "eager"
    model = transformers.GptOssForCausalLM(hf_cfg).to(torch.float32)
    model.load_state_dict(hf_state_dict(config, weights), strict=True)
    model.config._attn_implementation = "eager"
    return model.eval()
