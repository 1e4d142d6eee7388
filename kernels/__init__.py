"""Triton kernels for gpt-oss inference, each beside its fp32 torch reference and cost model.

This package depends on torch and triton only (never on :mod:`autotune`), so a runtime can import a kernel
without the tuner.
"""

import os

_TRUE = ("1", "true", "yes", "on")


def interpreter_active() -> bool:
    """Whether Triton runs kernels on the CPU: ``TRITON_INTERPRET`` read the way Triton reads it
    (``triton.knobs.runtime.interpret``: 1/true/yes/on, any case), without importing triton (the CLI sets the
    variable before the first kernel module loads)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def next_pow2(value: float) -> int:
    """Smallest power of two >= ``value`` (1 for values <= 1): tile sizes from shape quantities such as rows per
    expert (a float) or a feature count. Shared by the kernels' default heuristics and the search spaces."""
    power = 1
    while power < value:
        power *= 2
    return power
