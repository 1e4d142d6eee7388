"""kernels.gemv: the few-token projection against float64 linear at odd shapes, every split-K path, the uniform
kernel interface, the default heuristic (CPU under the interpreter; bf16 on a GPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kernels import gemv as gemv_mod
from kernels.gemv import MAX_ROWS, GemvConfig, GemvShape, default_config, gemv

CASES = [(1, 37, 100, True, 1), (3, 5, 64, False, 1), (4, 1030, 2049, True, 1), (2, 32, 2880, True, 1),
         (1, 1, 17, True, 1), (1, 37, 100, True, 4), (3, 5, 64, False, 2), (2, 32, 2880, True, 4)]
"""(M, N, K, bias, SPLIT_K): N and K off the block sizes (masks), the router's shape, a K longer than one 1024
block, one output feature; split-K on the cheaper ones (the interpreter runs every program in numpy)."""


def _config(n: int, k: int, **overrides) -> GemvConfig:
    return GemvConfig(**{**default_config("qkv", {"M": 1, "N": n, "K": k}, None), **overrides})


def _inputs(rows, n, k, bias, dtype):
    generator = torch.Generator().manual_seed(rows * n + k)
    x = torch.randn(rows, k, generator=generator).to(dtype)
    w = (torch.randn(n, k, generator=generator) / k**0.5).to(dtype)
    b = torch.randn(n, generator=generator).to(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("rows, n, k, bias, split", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_linear(rows, n, k, bias, split, dtype):
    x, w, b = _inputs(rows, n, k, bias, dtype)
    ref = F.linear(x.double(), w.double(), b.double() if bias else None)     # exact up to float64 rounding
    got = gemv(x, w, b, _config(n, k, SPLIT_K=split))
    assert got.dtype == dtype and got.shape == (rows, n)
    # float32: partial sums in a different order (~K·2^-24 relative); float16: one rounding of the output (2^-11).
    rtol = 1e-5 if dtype == torch.float32 else 2.0**-10
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


@pytest.mark.parametrize("overrides", [{"BLOCK_N": 4, "BLOCK_K": 16, "num_warps": 1}, {"BLOCK_N": 8, "BLOCK_K": 64},
                                       {"BLOCK_N": 4, "BLOCK_K": 32, "SPLIT_K": 8},
                                       {"BLOCK_N": 16, "BLOCK_K": 16, "SPLIT_K": 16}])
def test_other_tiles_and_splits(overrides):
    # tiles narrower than K, more slices than K blocks (empty slices add zeros), N not a multiple of BLOCK_N
    x, w, b = _inputs(3, 45, 200, True, torch.float32)
    got = gemv(x, w, b, _config(45, 200, **overrides))
    torch.testing.assert_close(got.double(), F.linear(x.double(), w.double(), b.double()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [1, 2])
def test_detects_a_dropped_bias_and_a_wrong_row(split):
    x, w, b = torch.randn(2, 64), torch.randn(8, 64), torch.randn(8)
    ref = F.linear(x, w, b)
    config = _config(8, 64, SPLIT_K=split)
    assert not torch.allclose(gemv(x, w, None, config), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gemv(x.flip(0), w, b, config), ref, rtol=1e-5, atol=1e-5)


def test_strided_rows_and_out():
    x = torch.randn(3, 2, 96)[:, 1]                  # row stride 192
    w, out = torch.randn(40, 96), torch.full((3, 40), float("nan"))
    for split in (1, 2):
        assert gemv(x, w, None, _config(40, 96, SPLIT_K=split), out=out) is out
        torch.testing.assert_close(out, F.linear(x, w), rtol=1e-5, atol=1e-4)


def test_empty_and_errors():
    config = _config(4, 8)
    assert gemv(torch.randn(0, 8), torch.randn(4, 8), None, config).shape == (0, 4)
    with pytest.raises(ValueError, match="at most"):
        gemv(torch.randn(MAX_ROWS + 1, 8), torch.randn(4, 8), None, config)
    with pytest.raises(ValueError, match="do not match"):
        gemv(torch.randn(1, 8), torch.randn(4, 9), None, config)
    with pytest.raises(ValueError, match="contiguous"):
        gemv(torch.randn(1, 8), torch.randn(8, 4).t(), None, config)
    with pytest.raises(ValueError, match="bias"):
        gemv(torch.randn(1, 8), torch.randn(4, 8), torch.randn(5), config)
    with pytest.raises(TypeError):
        gemv(torch.ones(1, 8, dtype=torch.int32), torch.randn(4, 8), None, config)
    with pytest.raises(TypeError, match="GemvConfig"):
        gemv(torch.randn(1, 8), torch.randn(4, 8), None, config.as_dict())


def test_default_config_is_the_sweep_choice():
    # scripts/results/2026-11-21-h100-gemv-sweep.md: 2 x 1024 x 4 warps for qkv/out, 1 x 1024 x 8 for the router
    qkv = default_config("qkv", {"M": 1, "N": 5120, "K": 2880}, None)
    assert qkv == {"BLOCK_N": 2, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 3, "SPLIT_K": 1}
    assert default_config("attn_out", {"M": 4, "N": 2880, "K": 4096}, None) == qkv
    router = default_config("router", {"M": 1, "N": 32, "K": 2880}, None)
    assert (router["BLOCK_N"], router["BLOCK_K"], router["num_warps"]) == (1, 1024, 8)
    tiny = default_config("router", {"M": 1, "N": 4, "K": 48}, None)
    assert tiny["BLOCK_K"] == 64 and tiny["num_warps"] == 2   # 64 accumulator elements: 2 warps, one each


@pytest.mark.parametrize("params, needle", [({"BLOCK_N": 3}, "power of two"), ({"BLOCK_K": 8}, ">= 16"),
                                            ({"SPLIT_K": 128}, "<= 64"), ({"num_stages": 0}, "1..8"),
                                            ({"num_warps": 64}, "<= 32"), ({"BLOCK_N": True}, "integer"),
                                            ({"block_n": 2}, "unknown gemv config keys")])
def test_config_validation(params, needle):
    with pytest.raises(ValueError, match=needle):
        gemv_mod.config_from_dict(params)


def test_shapes():
    dims = {"hidden": 2880, "heads_q": 64, "heads_kv": 8, "head_dim": 64, "E": 32}
    assert [s.as_dict() for s in gemv_mod.model_shapes("qkv", [1, 4], **dims)] == [
        {"M": 1, "N": 5120, "K": 2880}, {"M": 4, "N": 5120, "K": 2880}]
    assert gemv_mod.model_shapes("attn_out", [2], **dims)[0] == GemvShape(2, 2880, 4096)
    assert gemv_mod.model_shapes("router", [1], **{**dims, "E": 128})[0] == GemvShape(1, 128, 2880)
    with pytest.raises(ValueError, match="at most"):
        gemv_mod.model_shapes("qkv", [MAX_ROWS + 1], **dims)
    with pytest.raises(ValueError, match="unknown gemv variant"):
        gemv_mod.shape_from_dims("mlp1", {"M": 1, "N": 2, "K": 3})
    with pytest.raises(ValueError, match="exactly"):
        gemv_mod.shape_from_dims("qkv", {"M": 1, "N": 2})


def test_interface_roundtrip_and_tolerance_catches_a_bad_tile():
    from autotune.tuning.evaluate import element_error, row_relative_error

    shape = gemv_mod.shape_from_dims("qkv", {"M": 2, "N": 96, "K": 80})
    inputs = gemv_mod.make_inputs("qkv", shape, dtype=torch.float16, device="cpu", seed=3)
    config = gemv_mod.config_from_dict(gemv_mod.default_config("qkv", shape.as_dict(), None))
    out = gemv_mod.launch("qkv", inputs, config)
    ref = gemv_mod.reference("qkv", inputs)
    tol = gemv_mod.tolerance("qkv", torch.float16, config)
    assert row_relative_error(out, ref) <= tol.max_rel_err and element_error(out, ref) <= tol.max_elem_err
    bad = out.clone()
    bad[:, 8:9] += inputs.bias[8:9]                 # one feature's bias counted twice
    assert element_error(bad, ref) > tol.max_elem_err
    plan = gemv_mod.launches("qkv", gemv_mod.make_empty_inputs("qkv", shape, dtype=torch.float16), config)[1]
    assert len(plan) == 1 and plan[0].kwargs["BLOCK_K"] == config.BLOCK_K
    split = dataclasses.replace(config, SPLIT_K=2)
    assert len(gemv_mod.launches("qkv", inputs, split)[1]) == 2            # the partial sums and their reduction


def test_cost_and_timing_inputs():
    shape = GemvShape(1, 32, 2880)
    inputs = gemv_mod.make_inputs("router", shape, dtype=torch.float16, device="cpu", seed=0)
    cost = gemv_mod.cost("router", [inputs])
    assert cost.flops == 2 * 32 * 2880
    assert cost.bytes == 2 * (32 * 2880 + 2880 + 32 + 32)
    sets = gemv_mod.make_timing_inputs("router", shape, dtype=torch.float16, device="cpu", seed=0,
                                       cache_bytes=2 * 2**20)
    assert len(sets) == -(-3 * 2 * 2**20 // cost.bytes)          # 3x the cache moved per cycle
    assert not torch.equal(sets[0].weight, sets[1].weight)
    assert len(gemv_mod.make_timing_inputs("router", shape, dtype=torch.float16, device="cpu", seed=0,
                                           cache_bytes=0)) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("n, k", [(5120, 2880), (2880, 4096), (32, 2880)])
@pytest.mark.parametrize("split", [1, 8])
def test_gpu_bf16_gpt_oss_projections(n, k, split):
    generator = torch.Generator(device="cuda").manual_seed(n + k)
    x = torch.randn(1, k, device="cuda", generator=generator).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=generator) / k**0.5).bfloat16()
    b = torch.randn(n, device="cuda", generator=generator).bfloat16()
    ref = F.linear(x.double(), w.double(), b.double())
    got = gemv(x, w, b, _config(n, k, SPLIT_K=split))
    torch.testing.assert_close(got.double(), ref, rtol=2.0**-8, atol=2.0**-8 * float(ref.abs().max()))
