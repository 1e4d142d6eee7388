"""Sweep of kernels.gemv block sizes against cuBLAS (``F.linear``) for gpt-oss-20b's batch-1 projections.

    python scripts/sweep_gemv.py

Each call runs inside one CUDA graph that cycles through enough weight copies (>= 200 MB) that the weights come
from DRAM, not L2; median of ``triton.testing.do_bench`` per call. Prints the cuBLAS time, the 6 fastest
(BLOCK_N, BLOCK_K, num_warps) and the time of :func:`kernels.gemv.block_sizes`' choice per shape. It chose
``block_sizes`` (scripts/results/2026-11-21-h100-gemv-sweep.md). Needs a CUDA GPU.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

from kernels.gemv import gemv, gemv_kernel  # noqa: E402

SHAPES = {"qkv": (5120, 2880), "out": (2880, 4096), "router": (32, 2880)}
"""name → (N, K) of the weight (gpt-oss-20b and -120b alike)."""


def per_call_us(fn, weights) -> float:
    """µs per call of ``fn(W)`` over the rotating weights, replayed as one CUDA graph."""
    def body():
        for w in weights:
            fn(w)
    body()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median") * 1e3 / len(weights)


def main() -> int:
    if not torch.cuda.is_available():
        print("sweep_gemv: needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
    for name, (n, k) in SHAPES.items():
        copies = max(2, int(200e6 // (n * k * 2)))
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
        base = per_call_us(lambda w: F.linear(x, w, bias), weights)
        results = []
        for block_n, block_k, warps in itertools.product((1, 2, 4, 8, 16, 32), (128, 256, 512, 1024), (1, 2, 4, 8)):
            if not 1 <= block_n * block_k // (32 * warps) <= 128:
                continue
            grid = (triton.cdiv(n, block_n), 1)
            results.append((per_call_us(
                lambda w: gemv_kernel[grid](x, w, bias, out, n, k, x.stride(0), w.stride(0), out.stride(0),
                                            HAS_BIAS=True, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps),
                weights), block_n, block_k, warps))
        results.sort()
        err = (F.linear(x, weights[0], bias).float() - gemv(x, weights[0], bias).float()).abs().max().item()
        print(f"{name} [{n}, {k}]: cuBLAS {base:.2f} us ({n * k * 2 / base / 1e3:.0f} GB/s); max |gemv - cuBLAS| "
              f"{err:.3g}")
        for us, block_n, block_k, warps in results[:6]:
            print(f"   BLOCK_N={block_n} BLOCK_K={block_k} warps={warps}: {us:.2f} us "
                  f"({n * k * 2 / us / 1e3:.0f} GB/s)")
        print(f"   block_sizes() choice: {per_call_us(lambda w: gemv(x, w, bias, out=out), weights):.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
