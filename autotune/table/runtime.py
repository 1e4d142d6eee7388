"""The runtime side of the table: load it once, answer ``lookup(kernel, variant, shape)`` with the tuned config
(exact entry, else nearest tuned bucket, else the search space's default with one warning).

    table = open_table()                       # this device's section of studies/tables/configs.json
    config = table.lookup("moe_gemm", "mlp1", {"M": 3, "N": 5760, "K": 2880, "E": 32, "top_k": 4}).config

Only entries tuned on this device (same device key) are served: an interpreter or another GPU's section never is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from autotune import defaults, registry
from autotune.table import RuntimeTable


def open_table(path: str | Path | None = None, device=None, *, missing_ok: bool = True) -> RuntimeTable:
    """Load a table for a device.

    Args:
        path: the table file (default: :data:`autotune.defaults.TABLE`).
        device: a :class:`autotune.device.DeviceProfile`; default: the current CUDA device, or the interpreter.
        missing_ok: serve defaults when the file does not exist (else TableError).

    Returns:
        A :class:`autotune.table.RuntimeTable` whose defaults come from the registered search spaces.

    Raises:
        TableError: for an unreadable, corrupt, foreign or newer table (the message names the file).
    """
    from autotune import device as device_mod

    profile = device if device is not None else device_mod.current()

    def default_config(kernel: str, variant: str, shape: Mapping[str, int]) -> dict:
        return registry.get(kernel).default_config(variant, shape, profile)

    bucket_dims = {name: registry.get(name).bucket_dim for name in registry.names()}
    return RuntimeTable.open(Path(path) if path is not None else defaults.TABLE, profile.key, default_config,
                             bucket_dims, missing_ok=missing_ok)
