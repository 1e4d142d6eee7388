"""The MLP norm writes the dp4a gemv's activation records (``add_rms_norm(..., records=)``), so mlp1 skips its
pre-pass: the records are bit for bit the pre-pass's, mlp1 gives bit-identical outputs with them, and the model's
decode step (which passes them whenever mlp1 runs the dp4a gemv) gives the same logits as with the pre-pass. CPU cases
run under the interpreter (fp16/fp32); the bf16 cases need a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import triton

from autotune.model import model as model_mod
from kernels.layer_ops import add_rms_norm
from kernels.moe_gemm import MoeGemmConfig, MoeShape, activation_records, make_inputs, mlp1_launches, moe_mlp1
from kernels.moe_gemm.gemv_dp4a import RECORD_WORDS, quantize_activations_kernel
from kernels.moe_gemm.launch import DP4A_QUANTIZE_GROUPS

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
DP4A = MoeGemmConfig(path="gemv", BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, GROUP_M=1, num_warps=2, dequant="dp4a")


def _pre_pass_records(h: torch.Tensor) -> torch.Tensor:
    rows, k = h.shape
    records = torch.zeros((rows, k // 32, RECORD_WORDS.value), dtype=torch.int32, device=h.device)
    quantize_activations_kernel[(rows, triton.cdiv(k // 32, DP4A_QUANTIZE_GROUPS))](
        h, records, rows, k, h.stride(0), records.stride(0), GROUPS=DP4A_QUANTIZE_GROUPS, num_warps=4)
    return records


DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if HAS_CUDA else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, hidden", [(3, 96), (2, 2880)])
def test_norm_records_equal_the_pre_pass(dtype, rows, hidden):
    gen = torch.Generator(device="cpu").manual_seed(hidden + rows)
    x = (torch.randn(rows, hidden, generator=gen) * 3).to(dtype).to(DEVICE)
    delta = torch.randn(rows, hidden, generator=gen).to(DEVICE)
    scale = (torch.rand(hidden, generator=gen) + 0.5).to(DEVICE)
    x[0, :32] = 0  # an all-zero group
    records = torch.full((rows, hidden // 32, RECORD_WORDS.value), -1, dtype=torch.int32, device=DEVICE)
    x_new, h = add_rms_norm(x.clone(), delta, scale, eps=1e-5, records=records)
    expected = _pre_pass_records(h)
    assert torch.equal(records[:, :, :27], expected[:, :, :27])  # the 27 words the gemv reads (5 are padding)
    x_plain, h_plain = add_rms_norm(x.clone(), delta, scale, eps=1e-5)
    assert torch.equal(h, h_plain) and torch.equal(x_new, x_plain)  # the records change nothing else


def test_mlp1_with_records_skips_the_pre_pass_and_gives_the_same_output():
    shape = MoeShape(M=5, N=96, K=96, E=3, top_k=2)
    inputs = make_inputs("mlp1", shape, dtype=torch.float16, device=DEVICE, seed=31)
    records = activation_records(DP4A, inputs.act)
    records.copy_(_pre_pass_records(inputs.act))
    _, plan = mlp1_launches(inputs.act, inputs.routing, inputs.w_blocks, inputs.w_scales, inputs.bias, DP4A,
                            records=records)
    assert [item.kernel.__name__ for item in plan] == ["moe_mxfp4_gemv_dp4a_kernel"]
    with_records = moe_mlp1(inputs.act, inputs.routing, inputs.w_blocks, inputs.w_scales, inputs.bias, DP4A,
                            records=records)
    without = moe_mlp1(inputs.act, inputs.routing, inputs.w_blocks, inputs.w_scales, inputs.bias, DP4A)
    assert torch.equal(with_records, without)


def test_records_are_refused_where_they_do_not_fit():
    shape = MoeShape(M=2, N=64, K=64, E=2, top_k=1)
    inputs = make_inputs("mlp1", shape, dtype=torch.float16, device=DEVICE, seed=0)
    records = activation_records(DP4A, inputs.act)
    args = (inputs.act, inputs.routing, inputs.w_blocks, inputs.w_scales, inputs.bias)
    assert activation_records(dataclasses.replace(DP4A, dequant="upcast"), inputs.act) is None
    with pytest.raises(ValueError, match="dp4a"):
        mlp1_launches(*args, dataclasses.replace(DP4A, dequant="upcast"), records=records)
    with pytest.raises(ValueError, match="records"):
        mlp1_launches(*args, DP4A, records=records[:, :1])
    x = torch.zeros(2, 64, dtype=torch.float16, device=DEVICE)
    scale = torch.ones(64, device=DEVICE)
    with pytest.raises(TypeError, match="int32"):
        add_rms_norm(x, None, scale, eps=1e-5, records=records.float())
    with pytest.raises(ValueError, match="records"):
        add_rms_norm(x, None, scale, eps=1e-5, records=records[:1])
    with pytest.raises(ValueError, match="multiple of 32"):
        add_rms_norm(torch.zeros(2, 48, dtype=torch.float16, device=DEVICE), None, torch.ones(48, device=DEVICE),
                     eps=1e-5, records=torch.zeros(2, 1, 32, dtype=torch.int32, device=DEVICE))


def test_model_decode_with_norm_records_equals_the_pre_pass(tmp_path, monkeypatch):
    from autotune.model.loading import load_model
    from scripts.write_random_checkpoint import write_random_checkpoint
    from tests.test_model_cli import TINY

    write_random_checkpoint(tmp_path, TINY, seed=5)
    model = load_model(tmp_path, device=DEVICE, use_table=False)
    prompt = torch.tensor([[3, 17, 9, 40]], device=DEVICE)

    def decode_logits() -> torch.Tensor:
        cache = model.new_cache(1, 8)
        model.prefill(prompt, cache)
        step = model.decode_step_configs(cache)
        step = dataclasses.replace(step, mlp1=dataclasses.replace(DP4A, BLOCK_K=32))
        return model.decode(torch.tensor([5], device=DEVICE), cache, step)

    with_records = []  # the norms that were handed a records buffer (prefill: mlp1 is not dp4a there)
    real_norm = model_mod.add_rms_norm

    def norm_spy(*args, records=None, **kwargs):
        if records is not None:
            with_records.append(records.data_ptr())
        return real_norm(*args, records=records, **kwargs)

    monkeypatch.setattr(model_mod, "add_rms_norm", norm_spy)
    fused = decode_logits()
    assert len(with_records) == TINY.num_hidden_layers  # every layer's MLP norm of the decode step wrote them
    assert len(set(with_records)) == 1  # into one buffer per pass
    monkeypatch.setattr(model_mod, "activation_records", lambda config, x: None)  # mlp1 runs its own pre-pass
    assert torch.equal(decode_logits(), fused)
