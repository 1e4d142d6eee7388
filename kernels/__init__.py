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


def config_from_dict(cls, params, family: str):
    """Build the frozen config dataclass ``cls`` of kernel ``family`` from a mapping of its field names.

    Raises:
        ValueError: a key is not a field of ``cls`` (the message names the family and the keys); the dataclass's own
            validation raises for bad values.
    """
    from dataclasses import fields

    unknown = set(params) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {family} config keys {sorted(map(str, unknown))}")
    return cls(**params)
