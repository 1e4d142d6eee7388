"""Is a table entry still current? Its fingerprint against the one a measurement here would carry now.

An entry is *stale* when one of :data:`autotune.device.fingerprint.STALE_FIELDS` differs between the fingerprint it
was tuned under and the current one of its kernel on this device (GPU, compute capability, driver, CUDA, Triton,
torch, the kernel's source hash). Stale entries still run (the config is valid), but their timings no longer say
which config is fastest: ``show`` flags them, the runtime serves them with one warning per kernel, and
``python -m autotune retune`` re-tunes exactly them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autotune.device import fingerprint as fingerprint_mod
from autotune.table.entry import TableEntry

UNKNOWN_KERNEL = "kernel"
"""The changed field named for an entry whose kernel is not registered here (it cannot be compared nor served)."""


@dataclass(frozen=True)
class Staleness:
    """How one entry compares with the current software.

    Attributes:
        entry: the table entry.
        changed: the fingerprint fields that differ (empty: fresh); ``("kernel",)`` for an unregistered kernel.
        current: the current fingerprint of the entry's kernel, or None for an unregistered kernel.
    """

    entry: TableEntry
    changed: tuple[str, ...]
    current: dict[str, Any] | None

    @property
    def fresh(self) -> bool:
        """True when no field changed."""
        return not self.changed

    def describe(self) -> str:
        """``"fresh"``, or the changes as ``"stale: triton 3.8.0 → 3.9.0, driver 550.1 → 580.2"``."""
        if self.fresh:
            return "fresh"
        if self.current is None:
            return f"unknown kernel {self.entry.kernel!r}"
        return "stale: " + describe_changes(self.entry.fingerprint, self.current, self.changed)


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], fields: Iterable[str]) -> str:
    """``"field old → new"`` per field, comma-separated (a missing value reads ``?``)."""
    return ", ".join(f"{name} {old.get(name, '?')} → {new.get(name, '?')}" for name in fields)


class CurrentFingerprints:
    """The fingerprint each registered kernel's measurements would carry now on ``device``, computed once per kernel
    (it hashes the kernel's source files and asks NVML for the driver). Thread-safe.

    Args:
        device: the :class:`autotune.device.DeviceProfile` the entries would be served on.
    """

    def __init__(self, device) -> None:
        self.device = device
        self._by_kernel: dict[str, dict[str, Any] | None] = {}
        self._lock = threading.Lock()

    def __call__(self, kernel: str) -> dict[str, Any] | None:
        """The current fingerprint of ``kernel`` (see :func:`autotune.device.fingerprint.fingerprint`), or None when
        the kernel is not registered."""
        with self._lock:
            if kernel not in self._by_kernel:
                from autotune import registry
                from autotune.errors import UnknownKernelError

                try:
                    source_hash = registry.get(kernel).source_hash()
                except UnknownKernelError:
                    self._by_kernel[kernel] = None
                else:
                    self._by_kernel[kernel] = fingerprint_mod.fingerprint(self.device, source_hash)
            return self._by_kernel[kernel]


def check(entry: TableEntry, fingerprints: CurrentFingerprints) -> Staleness:
    """Compare one entry's fingerprint with the current one of its kernel.

    Returns:
        The :class:`Staleness`; its ``changed`` lists the fields in :data:`~autotune.device.fingerprint.STALE_FIELDS`
        order.
    """
    current = fingerprints(entry.kernel)
    if current is None:
        return Staleness(entry, (UNKNOWN_KERNEL,), None)
    return Staleness(entry, tuple(fingerprint_mod.stale_fields(entry.fingerprint, current)), current)


def changed_fields(entry: TableEntry, fingerprints: CurrentFingerprints) -> list[str]:
    """The fields in which ``entry`` differs from the current software (the runtime's ``stale_fields`` hook)."""
    return list(check(entry, fingerprints).changed)


def survey(table, device_key: str, fingerprints: CurrentFingerprints,
           kernels: Iterable[str] | None = None) -> list[Staleness]:
    """Every entry of one device's section of a :class:`autotune.table.ConfigTable`, compared with now.

    Args:
        table: the loaded table.
        device_key: the section (the device ``fingerprints`` describes).
        fingerprints: the current fingerprints on that device.
        kernels: only these kernels (None: all).

    Returns:
        One :class:`Staleness` per entry, in key order.
    """
    wanted = set(kernels) if kernels is not None else None
    return [check(entry, fingerprints) for entry in table.entries(device_key)
            if wanted is None or entry.kernel in wanted]
