"""Table keys: the canonical text of a shape and of an entry (``moe_gemm/mlp1/E=32,K=2880,M=16,N=5760,top_k=4``)."""

from __future__ import annotations

import operator
from collections.abc import Mapping

def _canonical_shape(shape: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """Validate a shape and return its dimensions as ``(name, value)`` pairs sorted by name.

    Raises:
        TypeError: ``shape`` is not a mapping, a name is not a string or a value is not an integer.
        ValueError: A name is empty or contains ``,``/``=``/``/``, or a value is negative.
    """
    if not isinstance(shape, Mapping):
        raise TypeError(f"shape must be a mapping of dimension name to int, got {type(shape).__name__}")
    dims: list[tuple[str, int]] = []
    for name, value in shape.items():
        if not isinstance(name, str):
            raise TypeError(f"shape dimension names must be str, got {name!r}")
        if not name or any(ch in name for ch in ",=/"):
            raise ValueError(f"invalid shape dimension name {name!r} (empty, or contains ',', '=' or '/')")
        if isinstance(value, bool):
            raise TypeError(f"shape dimension {name}={value!r} is a bool, expected an int")
        try:
            ivalue = operator.index(value)
        except TypeError:
            raise TypeError(f"shape dimension {name}={value!r} is not an int") from None
        if ivalue < 0:
            raise ValueError(f"shape dimension {name}={ivalue} is negative")
        dims.append((name, ivalue))
    dims.sort()
    return tuple(dims)


def _format_shape(dims: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"{name}={value}" for name, value in dims)


def shape_key(shape: Mapping[str, int]) -> str:
    """Return the canonical text form of a shape: dimensions sorted by name, ``name=value`` joined with ``,``.

    Args:
        shape: Dimension name to non-negative integer, e.g. ``{"M": 16, "N": 5760, "K": 2880}``.

    Returns:
        The canonical shape string, e.g. ``"K=2880,M=16,N=5760"``.

    Raises:
        TypeError: ``shape`` is not a mapping, or a name is not a string, or a value is not an integer.
        ValueError: A dimension name is empty or contains ``,``, ``=`` or ``/``, or a value is negative.
    """
    return _format_shape(_canonical_shape(shape))


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value or "/" in value:
        raise ValueError(f"invalid {what} {value!r} (empty, or contains '/')")


def entry_key(kernel: str, variant: str, shape: Mapping[str, int]) -> str:
    """Return the table key of an entry: ``f"{kernel}/{variant}/{shape_key(shape)}"``.

    Args:
        kernel: Kernel name, e.g. ``"moe_gemm"``.
        variant: Variant name, e.g. ``"mlp1"``.
        shape: Dimension name to non-negative integer.

    Returns:
        The entry key, e.g. ``"moe_gemm/mlp1/E=32,K=2880,M=16,N=5760,top_k=4"``.

    Raises:
        TypeError: ``kernel``/``variant`` is not a string, or ``shape`` is malformed (see :func:`shape_key`).
        ValueError: ``kernel``/``variant`` is empty or contains ``/``, or ``shape`` is malformed.
    """
    _check_name("kernel", kernel)
    _check_name("variant", variant)
    return f"{kernel}/{variant}/{shape_key(shape)}"
