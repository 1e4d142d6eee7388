"""kernels.gemv: the few-token projection against torch's linear (CPU under the interpreter; bf16 on a GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.gemv import MAX_ROWS, block_sizes, gemv

CASES = [(1, 37, 100, True), (3, 5, 64, False), (4, 1030, 2049, True), (2, 32, 2880, True)]
"""(M, N, K, bias): N and K off the block sizes (masks), the router's shape, a K longer than one 1024 block."""


@pytest.mark.parametrize("rows, n, k, bias", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_linear(rows, n, k, bias, dtype):
    generator = torch.Generator().manual_seed(rows * n + k)
    x = torch.randn(rows, k, generator=generator).to(dtype)
    w = (torch.randn(n, k, generator=generator) / k**0.5).to(dtype)
    b = torch.randn(n, generator=generator).to(dtype) if bias else None
    ref = F.linear(x.double(), w.double(), b.double() if bias else None)     # exact up to float64 rounding
    got = gemv(x, w, b)
    assert got.dtype == dtype and got.shape == (rows, n)
    # float32: partial sums in a different order (~K·2^-24 relative); float16: one rounding of the output (2^-11).
    rtol = 1e-5 if dtype == torch.float32 else 2.0**-10
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


def test_detects_a_dropped_bias_and_a_wrong_row():
    x, w, b = torch.randn(2, 64), torch.randn(8, 64), torch.randn(8)
    ref = F.linear(x, w, b)
    assert not torch.allclose(gemv(x, w, None), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gemv(x.flip(0), w, b), ref, rtol=1e-5, atol=1e-5)


def test_strided_rows_and_out():
    x = torch.randn(3, 2, 96)[:, 1]                  # row stride 192
    w, out = torch.randn(40, 96), torch.full((3, 40), float("nan"))
    assert gemv(x, w, out=out) is out
    torch.testing.assert_close(out, F.linear(x, w), rtol=1e-5, atol=1e-4)


def test_empty_and_errors():
    assert gemv(torch.randn(0, 8), torch.randn(4, 8)).shape == (0, 4)
    with pytest.raises(ValueError, match="at most"):
        gemv(torch.randn(MAX_ROWS + 1, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="do not match"):
        gemv(torch.randn(1, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="contiguous"):
        gemv(torch.randn(1, 8), torch.randn(8, 4).t())
    with pytest.raises(ValueError, match="bias"):
        gemv(torch.randn(1, 8), torch.randn(4, 8), torch.randn(5))
    with pytest.raises(TypeError):
        gemv(torch.ones(1, 8, dtype=torch.int32), torch.randn(4, 8))


def test_block_sizes():
    assert block_sizes(5120, 2880) == (2, 1024, 4) and block_sizes(32, 2880) == (1, 1024, 8)
    assert block_sizes(64, 48)[1] == 64


@pytest.mark.gpu
@pytest.mark.parametrize("n, k", [(5120, 2880), (2880, 4096), (32, 2880)])
def test_gpu_bf16_gpt_oss_projections(n, k):
    generator = torch.Generator(device="cuda").manual_seed(n + k)
    x = torch.randn(1, k, device="cuda", generator=generator).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=generator) / k**0.5).bfloat16()
    b = torch.randn(n, device="cuda", generator=generator).bfloat16()
    ref = F.linear(x.double(), w.double(), b.double())
    torch.testing.assert_close(gemv(x, w, b).double(), ref, rtol=2.0**-8, atol=2.0**-8 * float(ref.abs().max()))
