"""Is a table entry's config one the kernel can launch? The one check used by the runtime read and by export.

A table is data from a file, so its configs are checked before anything launches them:

1. the kernel and the variant are registered, and the shape is one the kernel accepts (``shape_from_dims``);
2. the config has only keys of the kernel's config class (an absent key takes the class's field default, as the
   existing tables and tests rely on), each value of the type of its search-space parameter, and the config class
   accepts it (``config_from_dict``: types and ranges, e.g. ``num_warps`` a power of two up to 32,
   tiles bounded powers of two, ``GROUP_M`` bounded; see ``kernels/<family>/config.py``);
3. with a device profile, the search space's constraints pass (shared memory of that device, registers, tile and
   split sanity; see ``search_spaces/<kernel>.py``).

:func:`config_problem` returns the first problem as one line (or ``None``); it never raises for bad data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotune.errors import ConfigError, UnknownKernelError
from autotune.table.entry import TableEntry
from autotune.table.keys import shape_key


def _type_of(value: Any) -> str:
    return type(value).__name__


def config_problem(kernel: str, variant: str, shape: Mapping[str, int], config: Mapping[str, Any],
                   device=None, *, offered: bool = False) -> str | None:
    """The first reason why ``config`` cannot be launched for ``kernel``/``variant`` at ``shape``, or ``None``.

    Args:
        kernel: Registered kernel name, e.g. ``"moe_gemm"``.
        variant: Its variant, e.g. ``"mlp1"``.
        shape: Dimension name to integer, as stored in the table.
        config: Parameter name to JSON scalar, as stored in the table.
        device: A :class:`autotune.device.DeviceProfile` to check the search space's constraints on; ``None``
            checks the schema only (steps 1-2 of the module docstring).
        offered: also require every active value to be one of the search space's choices at ``shape`` (for a config
            tuned at another shape standing in here: e.g. ``path="gemv"`` is offered only for few rows per expert).

    Returns:
        One line (no trailing period) naming the offending key or value, or ``None`` when the config is valid.
    """
    from autotune import registry

    try:
        spec = registry.get(kernel)
    except UnknownKernelError as exc:
        return str(exc)
    if variant not in spec.variants:
        return f"kernel {kernel!r} has no variant {variant!r} (variants: {', '.join(spec.variants)})"
    try:
        spec.kernel.shape_from_dims(variant, dict(shape))
    except (TypeError, ValueError) as exc:
        return f"invalid shape: {exc}"
    try:
        spec.kernel.config_from_dict(dict(config))
    except (TypeError, ValueError) as exc:
        return f"invalid config: {exc}"
    shape = dict(shape)
    try:
        space = spec.space(variant, shape, device if device is not None else _any_device())
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as exc:
        return f"invalid shape for the search space: {exc}"
    for param in space.params:
        kinds = {type(choice) for choice in param.choices} | (
            {type(param.inactive)} | {type(value) for _, _, value in param.implied} if param.when else set())
        if param.name in config and type(config[param.name]) not in kinds:
            want = " or ".join(sorted(k.__name__ for k in kinds))
            return f"invalid config: {param.name}={config[param.name]!r} is a {_type_of(config[param.name])}, " \
                   f"expected {want}"
    if offered:
        try:
            space.validate({name: value for name, value in config.items() if name in space.default})
        except ConfigError as exc:
            return f"not offered at shape {shape_key(shape)}: {exc}"
    if device is None:
        return None
    try:
        reason = space.check(config, shape, device)
    except (TypeError, ValueError, KeyError, ArithmeticError) as exc:  # a constraint choking on a strange value
        return f"invalid config: a constraint could not evaluate it ({type(exc).__name__}: {exc})"
    return f"not runnable on {device.name}: {reason}" if reason else None


def entry_problem(entry: TableEntry, device=None) -> str | None:
    """:func:`config_problem` of a table entry (see there)."""
    return config_problem(entry.kernel, entry.variant, entry.shape, entry.config, device)


def _any_device():
    """The interpreter profile: only used to build a search space for the type check (no constraint runs)."""
    from autotune.device import INTERPRETER

    return INTERPRETER
