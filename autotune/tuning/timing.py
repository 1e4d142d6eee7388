"""Timing of GPU work: median over repetitions, warm-up, CUDA-graph replay, cache-defeating rotation.

Every timing goes through :func:`median_us`. On a GPU it uses ``triton.testing.do_bench_cudagraph`` over one call of
each rotating input set (see ``make_timing_inputs`` of a kernel: sets route to different experts so consecutive
calls miss the L2), and divides by the number of sets: graph replay removes the host launch overhead that would
otherwise dominate microsecond decode kernels. If a call cannot be captured in a graph, it falls back to
``triton.testing.do_bench`` (CUDA events around each call, L2 flushed before each). Under the CPU interpreter it
takes wall-clock medians of a few calls (meaningless as GPU numbers, useful to exercise the flow).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Result of :func:`median_us`.

    Attributes:
        median_us: median time of one call, microseconds.
        p20_us: 20th percentile, microseconds.
        p80_us: 80th percentile, microseconds.
        method: "cuda_graph", "cuda_events" or "wall_clock".
        sets: rotating input sets per measured cycle.
    """

    median_us: float
    p20_us: float
    p80_us: float
    method: str
    sets: int


def _quantiles_us(samples_ms: Sequence[float], per: int) -> tuple[float, float, float]:
    ordered = sorted(samples_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return tuple(1e3 * pick(q) / per for q in (0.5, 0.2, 0.8))  # type: ignore[return-value]


def median_us(calls: Sequence[Callable[[], object]], *, on_gpu: bool, rep_ms: float = 50.0,
              wall_repeats: int = 3) -> Timing:
    """Median time of one call, cycling through ``calls`` (one per rotating input set).

    Args:
        calls: zero-argument callables, each running the kernel once on its own input set.
        on_gpu: time with CUDA (graph replay, else events); False: wall clock (interpreter).
        rep_ms: target milliseconds of timed work per repetition batch (``rep`` of Triton's do_bench*).
        wall_repeats: calls per set timed by the wall clock (interpreter only).

    Returns:
        The :class:`Timing`.
    """
    def cycle() -> None:
        for call in calls:
            call()

    if not on_gpu:
        cycle()  # compile / first-call costs stay out
        samples = []
        for _ in range(wall_repeats):
            start = time.perf_counter()
            cycle()
            samples.append((time.perf_counter() - start) * 1e3)
        median, p20, p80 = _quantiles_us(samples, len(calls))
        return Timing(median, p20, p80, "wall_clock", len(calls))

    import torch
    import triton.testing

    try:
        samples = triton.testing.do_bench_cudagraph(cycle, rep=rep_ms, return_mode="all")
        method = "cuda_graph"
    except (RuntimeError, torch.cuda.CudaError) as err:  # capture refused (e.g. a host sync inside the call)
        if "captur" not in str(err).lower():
            raise
        torch.cuda.synchronize()
        samples = triton.testing.do_bench(cycle, warmup=max(1, int(rep_ms / 4)), rep=rep_ms, return_mode="all")
        method = "cuda_events"
    median, p20, p80 = _quantiles_us(samples, len(calls))
    return Timing(median, p20, p80, method, len(calls))

