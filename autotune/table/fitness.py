"""Can a table entry's config run here? The dtype/device fitness check the runtime applies before serving an entry.

A table section belongs to one device key, but what runs there can still differ from what was tuned: the CPU loop
computes in fp32 while the interpreter tunes in fp16 (``dequant='dot_scaled'`` needs bf16 or fp16 operands), and a
table may be edited or copied by hand. The kernel's own rules decide: its config class (does it accept the
parameters), its launcher's dtype rule (``config_problem`` of the kernel module) and its search space's constraints
at the entry's shape on the current device (shared memory, compute capability). Schema checks of the entry itself
live in :mod:`autotune.table.entry` (and its validation module); this module only asks "does it fit here".
"""

from __future__ import annotations

from autotune.table.entry import TableEntry


def entry_problem(entry: TableEntry, device, act_dtype=None) -> str | None:
    """Why ``entry`` cannot be served on ``device`` with activations of ``act_dtype``, or None when it can.

    Args:
        entry: the table entry.
        device: the :class:`autotune.device.DeviceProfile` the kernels run on.
        act_dtype: the torch activation dtype of the caller (None: not checked).

    Returns:
        A one-line reason, or None.
    """
    from autotune import registry
    from autotune.errors import UnknownKernelError

    try:
        spec = registry.get(entry.kernel)
        spec.check_variant(entry.variant)
    except UnknownKernelError as exc:
        return str(exc)
    try:
        config = spec.kernel.config_from_dict(entry.config)
    except (TypeError, ValueError) as exc:
        return f"the kernel rejects its config: {exc}"
    if act_dtype is not None:
        problem = spec.dtype_problem(entry.variant, config, act_dtype)
        if problem:
            return problem
    try:
        return spec.constraint_problem(entry.variant, entry.config, entry.shape, device)
    except (KeyError, TypeError, ValueError) as exc:
        return f"its config cannot be checked against the search space's constraints: {exc!r}"
