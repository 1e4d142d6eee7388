"""One MoE output buffer per pass: the attention norm that adds block n's MoE output to the residual stream zeroes it
(``add_rms_norm(..., consume_delta=True)``) and block n + 1's mlp2 accumulates into it without a memset
(``moe_mlp2(..., out=, out_zeroed=True)``): one launch fewer per layer. CPU cases run under the interpreter."""

from __future__ import annotations

import pytest
import torch

from autotune.model import model as model_mod
from kernels.layer_ops import add_rms_norm
from kernels.moe_gemm import MoeGemmConfig, MoeShape, make_inputs, moe_mlp2

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if HAS_CUDA else [])
MLP2 = MoeGemmConfig(path="gemv", BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=1, num_warps=2, dequant="upcast")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, hidden", [(1, 96), (3, 64)])
def test_consumed_delta_is_zeroed_and_nothing_else_changes(dtype, rows, hidden):
    gen = torch.Generator().manual_seed(rows * hidden)
    x = torch.randn(rows, hidden, generator=gen).to(dtype).to(DEVICE)
    delta = torch.randn(rows, hidden, generator=gen).to(DEVICE)  # float32, as mlp2 writes it
    scale = torch.rand(hidden, generator=gen).to(DEVICE) + 0.5
    x_plain, h_plain = add_rms_norm(x.clone(), delta, scale, eps=1e-5)
    consumed = delta.clone()
    x_new, h = add_rms_norm(x.clone(), consumed, scale, eps=1e-5, inplace=True, consume_delta=True)
    assert torch.equal(x_new, x_plain) and torch.equal(h, h_plain)
    assert torch.equal(consumed, torch.zeros_like(delta))


def test_consume_delta_refusals():
    x = torch.zeros(2, 32, dtype=torch.float16, device=DEVICE)
    scale = torch.ones(32, device=DEVICE)
    with pytest.raises(ValueError, match="consume_delta needs a delta"):
        add_rms_norm(x, None, scale, eps=1e-5, consume_delta=True)
    with pytest.raises(ValueError, match="must not be x or out"):
        add_rms_norm(x, x, scale, eps=1e-5, consume_delta=True)
    with pytest.raises(TypeError, match="consume_delta must be a bool"):
        add_rms_norm(x, x.float(), scale, eps=1e-5, consume_delta=1)


def test_mlp2_into_a_zeroed_buffer_runs_no_memset():
    inputs = make_inputs("mlp2", MoeShape(M=3, N=64, K=64, E=4, top_k=2), dtype=torch.float16, device=DEVICE, seed=8)
    args = (inputs.act, inputs.routing, inputs.w_blocks, inputs.w_scales, inputs.bias, MLP2)
    plain = moe_mlp2(*args)
    zeroed = torch.zeros_like(plain)
    assert moe_mlp2(*args, out=zeroed, out_zeroed=True) is zeroed
    assert torch.equal(zeroed, plain)
    # The contract is the caller's: a buffer that is not zero is accumulated onto (no memset ran), and without
    # out_zeroed it is zeroed first.
    ones = torch.ones_like(plain)
    moe_mlp2(*args, out=ones, out_zeroed=True)
    torch.testing.assert_close(ones, plain + 1, rtol=1e-6, atol=1e-6)
    moe_mlp2(*args, out=ones)
    assert torch.equal(ones, plain)
    with pytest.raises(ValueError, match="needs the zeroed out tensor"):
        moe_mlp2(*args, out_zeroed=True)
    with pytest.raises(TypeError, match="out_zeroed must be a bool"):
        moe_mlp2(*args, out=zeroed, out_zeroed=None)


@pytest.mark.parametrize("tokens", [1, 3], ids=["decode", "prefill"])
def test_model_pass_hands_mlp2_one_zeroed_buffer(tmp_path, monkeypatch, tokens):
    from autotune.model.loading import load_model
    from scripts.write_random_checkpoint import write_random_checkpoint
    from tests.test_model_cli import TINY

    write_random_checkpoint(tmp_path, TINY, seed=6)
    model = load_model(tmp_path, device=DEVICE, use_table=False)
    buffers = []
    real_mlp2 = model_mod.moe_mlp2

    def mlp2_spy(*args, out=None, out_zeroed=False):
        assert out_zeroed and out is not None
        assert torch.equal(out, torch.zeros_like(out))  # the norm before this block zeroed it (or the pass did)
        buffers.append(out.data_ptr())
        return real_mlp2(*args, out=out, out_zeroed=out_zeroed)

    monkeypatch.setattr(model_mod, "moe_mlp2", mlp2_spy)
    cache = model.new_cache(1, 8)
    logits = model.prefill(torch.tensor([[3, 17, 9, 40][:tokens]], device=DEVICE), cache)
    assert len(buffers) == TINY.num_hidden_layers and len(set(buffers)) == 1
    assert torch.isfinite(logits).all()
