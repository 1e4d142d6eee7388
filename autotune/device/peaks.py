"""Measured ceilings of the current GPU, the denominators of every "fraction of the limit" this project reports."""

from __future__ import annotations


def measure_peaks() -> tuple[float, float]:
    """Copy bandwidth and bf16 matmul rate of the current CUDA device, measured now.

    Returns:
        (copy GB/s counting bytes read + written over a 1 GiB buffer, bf16 8192³ matmul TFLOP/s on random data),
        medians of ``triton.testing.do_bench``. On the lent H100 (2026-11-21): 3.00 TB/s and 687-731 TFLOP/s.
    """
    import torch
    import triton.testing

    src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    return 2 * 2**30 / copy_ms / 1e6, 2 * 8192**3 / mm_ms / 1e9
