"""One table entry (:class:`TableEntry`): the best config of a (kernel, variant, shape) on one device, with every field
validated on construction and on reading."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import TableError
from autotune.table.keys import entry_key

_ENTRY_FIELDS = (
    "kernel",
    "variant",
    "shape",
    "config",
    "median_us",
    "default_median_us",
    "fingerprint",
    "study",
    "trial",
    "tuned_at",
    "metrics",
)
_OPTIONAL_ENTRY_FIELDS = {"default_median_us": None, "metrics": {}}


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_time_problem(what: str, value: object) -> str | None:
    if not _is_number(value):
        return f"{what} must be a number, got {_type_name(value)} {value!r}"
    if not math.isfinite(value) or value <= 0:
        return f"{what} must be a finite positive number, got {value!r}"
    return None


def _scalar_problem(what: str, value: object) -> str | None:
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{what} is not finite ({value!r})"
    return f"{what} must be a JSON scalar (str, int, float, bool or null), got {_type_name(value)}"


def _json_value_problem(what: str, value: object) -> str | None:
    """Check that ``value`` is plain JSON data (dicts with str keys, lists, finite numbers, str, bool, null)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{what} has a non-string key {key!r}"
            problem = _json_value_problem(f"{what}[{key!r}]", item)
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = _json_value_problem(f"{what}[{index}]", item)
            if problem:
                return problem
        return None
    return _scalar_problem(what, value)


def _scalar_dict_problem(what: str, value: object) -> str | None:
    if not isinstance(value, Mapping):
        return f"{what} must be an object, got {_type_name(value)}"
    for key, item in value.items():
        if not isinstance(key, str):
            return f"{what} has a non-string key {key!r}"
        problem = _scalar_problem(f"{what}[{key!r}]", item)
        if problem:
            return problem
    return None


def _entry_problem(values: Mapping[str, Any]) -> str | None:
    """Return the first problem of an entry's field values, or ``None`` when they are all valid."""
    for name in ("kernel", "variant"):
        value = values[name]
        if not isinstance(value, str):
            return f"{name} must be a string, got {_type_name(value)} {value!r}"
        if not value or "/" in value:
            return f"{name} {value!r} is empty or contains '/'"
    shape = values["shape"]
    if not isinstance(shape, Mapping):
        return f"shape must be an object, got {_type_name(shape)}"
    if not shape:
        return "shape is empty"
    for name, dim in shape.items():
        if not isinstance(name, str) or not name or any(ch in name for ch in ",=/"):
            return f"shape has an invalid dimension name {name!r}"
        if not isinstance(dim, int) or isinstance(dim, bool):
            return f"shape dimension {name} must be an integer, got {_type_name(dim)} {dim!r}"
        if dim < 0:
            return f"shape dimension {name}={dim} is negative"
    problem = _scalar_dict_problem("config", values["config"])
    if problem:
        return problem
    problem = _positive_time_problem("median_us", values["median_us"])
    if problem:
        return problem
    if values["default_median_us"] is not None:
        problem = _positive_time_problem("default_median_us", values["default_median_us"])
        if problem:
            return f"{problem} (or null)"
    problem = _scalar_dict_problem("fingerprint", values["fingerprint"])
    if problem:
        return problem
    for name in ("study", "tuned_at"):
        if not isinstance(values[name], str):
            return f"{name} must be a string, got {_type_name(values[name])} {values[name]!r}"
    trial = values["trial"]
    if not isinstance(trial, int) or isinstance(trial, bool):
        return f"trial must be an integer, got {_type_name(trial)} {trial!r}"
    if trial < 0:
        return f"trial must be >= 0, got {trial}"
    metrics = values["metrics"]
    if not isinstance(metrics, Mapping):
        return f"metrics must be an object, got {_type_name(metrics)}"
    return _json_value_problem("metrics", metrics)


def _guess_key(values: Mapping[str, Any]) -> str:
    """Best-effort entry key for error messages about an entry that may be malformed."""
    try:
        return entry_key(values.get("kernel"), values.get("variant"), values.get("shape"))  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        return "<unknown key>"


# --------------------------------------------------------------------------------------------------------------
# entries


@dataclass(frozen=True)
class TableEntry:
    """One tuned config: the best config found for a (kernel, variant, shape) on one device.

    The constructor validates every field and stores private copies of the dicts (``shape``, ``config`` and
    ``fingerprint`` shallowly, ``metrics`` deeply); timings are stored as ``float``. Treat the dicts as read-only.

    Attributes:
        kernel: Kernel name, e.g. ``"moe_gemm"``.
        variant: Variant name, e.g. ``"mlp1"``.
        shape: Dimension name to non-negative integer.
        config: Kernel config (meta-parameters), name to JSON scalar.
        median_us: Median run time of ``config`` in microseconds (finite, positive).
        default_median_us: Median run time of the kernel's default config on the same shape, or ``None``.
        fingerprint: What the timing depends on besides the device (driver, Triton, torch, kernel source hash...),
            name to JSON scalar. Entries with different fingerprints are not comparable.
        study: Name of the Optuna study that found the config.
        trial: Number of the Optuna trial that found the config.
        tuned_at: ISO 8601 timestamp of the measurement.
        metrics: Free-form extra measurements (TFLOP/s, GB/s, dtype...), plain JSON data.
    """

    kernel: str
    variant: str
    shape: dict[str, int]
    config: dict[str, Any]
    median_us: float
    default_median_us: float | None
    fingerprint: dict[str, Any]
    study: str
    trial: int
    tuned_at: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Validate the fields and take private copies of the dicts.

        Raises:
            ValueError: A field has the wrong type or an invalid value.
        """
        values = {name: getattr(self, name) for name in _ENTRY_FIELDS}
        problem = _entry_problem(values)
        if problem:
            raise ValueError(f"invalid table entry {_guess_key(values)}: {problem}")
        object.__setattr__(self, "shape", {name: int(dim) for name, dim in sorted(self.shape.items())})
        object.__setattr__(self, "config", dict(self.config))
        object.__setattr__(self, "fingerprint", dict(self.fingerprint))
        object.__setattr__(self, "metrics", copy.deepcopy(dict(self.metrics)))
        object.__setattr__(self, "median_us", float(self.median_us))
        if self.default_median_us is not None:
            object.__setattr__(self, "default_median_us", float(self.default_median_us))

    @property
    def key(self) -> str:
        """The entry's table key, ``f"{kernel}/{variant}/{shape_key(shape)}"``.

        Returns:
            The key under which the entry is stored.
        """
        return entry_key(self.kernel, self.variant, self.shape)

    @property
    def speedup(self) -> float | None:
        """Speedup of the tuned config over the default config.

        Returns:
            ``default_median_us / median_us``, or ``None`` when the default was not measured.
        """
        if self.default_median_us is None:
            return None
        return self.default_median_us / self.median_us

    def to_json(self) -> dict[str, Any]:
        """Return the entry as a JSON-ready dict (fresh copies; mutating it does not affect the entry).

        Returns:
            A dict with every field of the entry, as stored in the table file.
        """
        return {
            "kernel": self.kernel,
            "variant": self.variant,
            "shape": dict(self.shape),
            "config": dict(self.config),
            "median_us": self.median_us,
            "default_median_us": self.default_median_us,
            "fingerprint": dict(self.fingerprint),
            "study": self.study,
            "trial": self.trial,
            "tuned_at": self.tuned_at,
            "metrics": copy.deepcopy(self.metrics),
        }

    @classmethod
    def from_json(
        cls,
        d: object,
        *,
        path: str | os.PathLike[str] | None,
        key: str | None = None,
        device_key: str | None = None,
    ) -> TableEntry:
        """Build an entry from its JSON form, validating every field.

        ``default_median_us`` (→ ``None``) and ``metrics`` (→ ``{}``) may be absent; any other missing field, and
        any unknown field, is an error.

        Args:
            d: The decoded JSON value of the entry.
            path: The table file the entry comes from, named in error messages (``None``: "<memory>").
            key: The key the entry is stored under, named in error messages (default: recomputed from ``d``).
            device_key: The device section the entry is in, named in error messages.

        Returns:
            The validated entry.

        Raises:
            TableError: ``d`` is not an object, a field is missing, unknown or of the wrong type or value. The
                message starts with the path and names the entry key.
        """
        where = f"{path if path is not None else '<memory>'}: corrupt table: "
        if device_key is not None:
            where += f"device {device_key!r}: "
        if not isinstance(d, dict):
            name = key if key is not None else "<unknown key>"
            raise TableError(f"{where}entry {name!r}: expected an object, got {_type_name(d)}")
        name = key if key is not None else _guess_key(d)
        missing = [f for f in _ENTRY_FIELDS if f not in d and f not in _OPTIONAL_ENTRY_FIELDS]
        if missing:
            raise TableError(f"{where}entry {name!r}: missing field(s) {', '.join(missing)}")
        unknown = sorted(str(f) for f in d if f not in _ENTRY_FIELDS)
        if unknown:
            raise TableError(f"{where}entry {name!r}: unknown field(s) {', '.join(unknown)}")
        values = {f: d.get(f, copy.deepcopy(_OPTIONAL_ENTRY_FIELDS.get(f))) for f in _ENTRY_FIELDS}
        problem = _entry_problem(values)
        if problem:
            raise TableError(f"{where}entry {name!r}: {problem}")
        return cls(**values)
