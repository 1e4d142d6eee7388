"""Config lookup table: the best kernel configs found by tuning, keyed by device, and the runtime API that serves them.

File format
-----------
One JSON file holds the tuned configs of any number of devices::

    {
      "schema": "gpt-oss-autotune/config-table",
      "schema_version": 1,
      "devices": {
        "<device_key>": {
          "device": {... free-form device info ...},
          "entries": {
            "moe_gemm/mlp1/E=32,K=2880,M=16,N=5760,top_k=4": {
              "kernel": "moe_gemm", "variant": "mlp1",
              "shape": {"E": 32, "K": 2880, "M": 16, "N": 5760, "top_k": 4},
              "config": {"BLOCK_M": 16, ...},
              "median_us": 12.3, "default_median_us": 20.1,
              "fingerprint": {"gpu_name": "...", "triton": "3.4.0", ...},
              "study": "...", "trial": 17, "tuned_at": "2026-11-21T15:00:00+00:00",
              "metrics": {...}
            }
          }
        }
      }
    }

An entry's key is ``f"{kernel}/{variant}/{shape_key(shape)}"`` where :func:`shape_key` sorts the dimensions by name
(``E=32,K=2880,M=16,N=5760,top_k=4``); the loader checks every stored key against its recomputed value. Files are
written with ``json.dumps(..., indent=1, sort_keys=True)`` plus a trailing newline, so diffs stay small and stable,
and always atomically (temp file + ``fsync`` + ``os.replace``): a reader never sees a partial table.

Merge rule
----------
:meth:`ConfigTable.merge` (and :func:`update_table`, which does it under an exclusive file lock) treats each new
entry by key: an absent key is *added*; a present key whose stored entry has a different ``fingerprint`` (tuned
under another driver, Triton, torch or kernel source) is *replaced*, even if the stored numbers are faster, because
they are stale; with the same fingerprint the entry with the lower ``median_us`` is *kept* (ties keep the stored
one).

Runtime
-------
:class:`RuntimeTable` answers ``lookup(kernel, variant, shape)`` from the section of one device only: an exact
entry, else the entry of the nearest bucket (one bucketed dimension per kernel, nearest in log2 distance, ties to the
larger bucket, every other dimension equal), else the kernel's default config with one ``RuntimeWarning`` per
(kernel, variant). Entries tuned on another device are never served. Results are memoized.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import operator
import os
import tempfile
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from autotune.errors import TableError

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "ConfigTable",
    "LookupResult",
    "MergeReport",
    "RuntimeTable",
    "TableEntry",
    "entry_key",
    "shape_key",
    "update_table",
]

SCHEMA_NAME = "gpt-oss-autotune/config-table"
"""Value of the top-level ``"schema"`` field that marks a file as one of our tables."""

SCHEMA_VERSION = 1
"""Schema version this module writes; files with a greater version are refused."""

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
_TOP_LEVEL_FIELDS = {"schema", "schema_version", "devices"}
_SECTION_FIELDS = {"device", "entries"}


# --------------------------------------------------------------------------------------------------------------
# keys


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


# --------------------------------------------------------------------------------------------------------------
# value checks (return a problem description, or None)


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


@dataclass
class MergeReport:
    """What :meth:`ConfigTable.merge` did, by entry key (each list sorted; a key appears in one list only).

    Attributes:
        added: Keys that were absent from the table and were added.
        replaced: Keys whose stored entry was replaced (different fingerprint, or same fingerprint and faster).
        kept: Keys whose stored entry was kept (same fingerprint and at least as fast).
    """

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# the table file


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename in it is durable; best effort (not every platform/filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ConfigTable:
    """A config lookup table file in memory: device info and tuned entries per device key.

    Create one with :meth:`load` (or ``ConfigTable(path)`` for an empty table), change it with :meth:`merge`, write
    it with :meth:`save`. Processes that may update the same file concurrently should use :func:`update_table`.

    Attributes:
        path: The table file.
        devices: Device key to free-form device info.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Create an empty table bound to ``path`` (nothing is read or written).

        Args:
            path: The table file.
        """
        self.path: Path = Path(path)
        self.devices: dict[str, dict[str, Any]] = {}
        self._entries: dict[str, dict[str, TableEntry]] = {}

    def __repr__(self) -> str:
        counts = {dk: len(self._entries.get(dk, {})) for dk in self.device_keys()}
        return f"ConfigTable(path={str(self.path)!r}, entries={counts})"

    # ---------------------------------------------------------------------------------------------------- reading

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, missing_ok: bool = True) -> ConfigTable:
        """Read and validate a table file.

        Args:
            path: The table file.
            missing_ok: When the file does not exist, return an empty table (``True``) or raise (``False``).

        Returns:
            The table, bound to ``path``.

        Raises:
            TableError: The file is missing (and ``missing_ok`` is false) or unreadable, is not valid JSON, is not a
                config table (foreign format), was written by a newer schema version, or has a malformed device
                section or entry (including an entry stored under a key that does not match its contents). The
                message starts with the path.
        """
        table = cls(path)
        path = table.path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return table
            raise TableError(f"{path}: table file not found") from None
        except OSError as err:
            raise TableError(f"{path}: cannot read table: {err.strerror or err}") from err
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TableError(f"{path}: corrupt table: not UTF-8 text ({err})") from err
        try:
            doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as err:
            raise TableError(f"{path}: corrupt table: invalid JSON at line {err.lineno} ({err})") from err
        except _DuplicateKeyError as err:
            raise TableError(f"{path}: corrupt table: duplicate key {err.key!r} in a JSON object") from err
        except RecursionError as err:
            raise TableError(f"{path}: corrupt table: JSON nested too deeply") from err
        table._read_document(doc)
        return table

    def _read_document(self, doc: object) -> None:
        path = self.path
        foreign = f"{path}: not a gpt-oss-autotune config table (foreign format)"
        if not isinstance(doc, dict):
            raise TableError(f"{foreign}: the top level is a JSON {_json_kind(doc)}, not an object")
        if "schema" not in doc:
            raise TableError(f"{foreign}: no {'schema'!r} field")
        if doc["schema"] != SCHEMA_NAME:
            raise TableError(f"{foreign}: schema is {doc['schema']!r}, expected {SCHEMA_NAME!r}")
        corrupt = f"{path}: corrupt table"
        version = doc.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise TableError(f"{corrupt}: schema_version must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise TableError(
                f"{path}: table written by a newer version of gpt-oss-autotune (schema_version {version}, this "
                f"version reads up to {SCHEMA_VERSION}); upgrade gpt-oss-autotune or use another table file"
            )
        unknown = sorted(k for k in doc if k not in _TOP_LEVEL_FIELDS)
        if unknown:
            raise TableError(f"{corrupt}: unknown top-level field(s) {', '.join(map(repr, unknown))}")
        devices = doc.get("devices")
        if not isinstance(devices, dict):
            raise TableError(f"{corrupt}: 'devices' must be an object, got {_type_name(devices)}")
        for device_key, section in devices.items():
            if not device_key:
                raise TableError(f"{corrupt}: empty device key")
            if not isinstance(section, dict):
                raise TableError(f"{corrupt}: device {device_key!r}: expected an object, got {_type_name(section)}")
            bad = sorted(set(section) ^ _SECTION_FIELDS)
            if bad:
                raise TableError(
                    f"{corrupt}: device {device_key!r}: expected exactly the fields 'device' and 'entries', "
                    f"missing or unknown: {', '.join(map(repr, bad))}"
                )
            info, entries = section["device"], section["entries"]
            if not isinstance(info, dict):
                raise TableError(
                    f"{corrupt}: device {device_key!r}: 'device' must be an object, got {_type_name(info)}"
                )
            if not isinstance(entries, dict):
                raise TableError(
                    f"{corrupt}: device {device_key!r}: 'entries' must be an object, got {_type_name(entries)}"
                )
            loaded: dict[str, TableEntry] = {}
            for key, value in entries.items():
                entry = TableEntry.from_json(value, path=path, key=key, device_key=device_key)
                if entry.key != key:
                    raise TableError(
                        f"{corrupt}: device {device_key!r}: entry stored under key {key!r} does not match its "
                        f"contents (expected key {entry.key!r})"
                    )
                loaded[key] = entry
            self.devices[device_key] = info
            self._entries[device_key] = loaded

    def device_keys(self) -> list[str]:
        """List the device keys that have a section in the table.

        Returns:
            The device keys, sorted.
        """
        return sorted(set(self.devices) | set(self._entries))

    def device_info(self, device_key: str) -> dict[str, Any] | None:
        """Return the stored device info of a device.

        Args:
            device_key: The device key.

        Returns:
            A copy of the device info, or ``None`` when the table has no section for ``device_key``.
        """
        info = self.devices.get(device_key)
        return copy.deepcopy(info) if info is not None else None

    def entries(self, device_key: str) -> list[TableEntry]:
        """Return the entries of one device.

        Args:
            device_key: The device key.

        Returns:
            The device's entries sorted by key; empty when the table has no section for ``device_key``.
        """
        section = self._entries.get(device_key, {})
        return [section[key] for key in sorted(section)]

    def get(self, device_key: str, key: str) -> TableEntry | None:
        """Return one entry by device and entry key.

        Args:
            device_key: The device key.
            key: The entry key (see :func:`entry_key`).

        Returns:
            The entry, or ``None`` when absent.
        """
        return self._entries.get(device_key, {}).get(key)

    # ---------------------------------------------------------------------------------------------------- changing

    def merge(
        self, device_key: str, device_info: Mapping[str, Any], new_entries: Iterable[TableEntry]
    ) -> MergeReport:
        """Merge freshly tuned entries into one device's section (in memory; call :meth:`save` to write).

        Per key: absent → added; present with a different fingerprint → replaced (stale, even if faster); same
        fingerprint → the entry with the lower ``median_us`` wins (ties keep the stored one). Several new entries
        with one key are merged one after another; the report classifies each key once, against the table as it
        was before the call. ``device_info`` replaces the stored device info.

        Args:
            device_key: The device the entries were tuned on.
            device_info: Free-form device info (plain JSON data) stored in the section.
            new_entries: The new entries.

        Returns:
            The keys added, replaced and kept.

        Raises:
            TypeError: ``device_key`` is not a string, ``device_info`` not a mapping or an item of ``new_entries``
                not a :class:`TableEntry`.
            ValueError: ``device_key`` is empty or ``device_info`` is not plain JSON data.
        """
        if not isinstance(device_key, str):
            raise TypeError(f"device_key must be a str, got {type(device_key).__name__}")
        if not device_key:
            raise ValueError("device_key must not be empty")
        if not isinstance(device_info, Mapping):
            raise TypeError(f"device_info must be a mapping, got {type(device_info).__name__}")
        problem = _json_value_problem("device_info", device_info)
        if problem:
            raise ValueError(problem)
        new_entries = list(new_entries)
        for entry in new_entries:
            if not isinstance(entry, TableEntry):
                raise TypeError(f"new_entries must hold TableEntry objects, got {type(entry).__name__}")

        section = self._entries.setdefault(device_key, {})
        before = dict(section)
        for entry in new_entries:
            key = entry.key
            old = section.get(key)
            if old is None or old.fingerprint != entry.fingerprint or entry.median_us < old.median_us:
                section[key] = entry
        self.devices[device_key] = copy.deepcopy(dict(device_info))

        report = MergeReport()
        for key in sorted({entry.key for entry in new_entries}):
            if key not in before:
                report.added.append(key)
            elif section[key] is before[key]:
                report.kept.append(key)
            else:
                report.replaced.append(key)
        return report

    # ---------------------------------------------------------------------------------------------------- writing

    def to_json(self) -> dict[str, Any]:
        """Return the whole table as a JSON-ready document (fresh copies).

        Returns:
            The document written by :meth:`save`.
        """
        return {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "devices": {
                device_key: {
                    "device": copy.deepcopy(self.devices.get(device_key, {})),
                    "entries": {e.key: e.to_json() for e in self.entries(device_key)},
                }
                for device_key in self.device_keys()
            },
        }

    def dumps(self) -> str:
        """Serialize the table the way :meth:`save` writes it.

        Returns:
            ``json.dumps(doc, indent=1, sort_keys=True)`` plus a trailing newline.
        """
        return json.dumps(self.to_json(), indent=1, sort_keys=True, allow_nan=False) + "\n"

    def save(self) -> None:
        """Write the table to :attr:`path` atomically, creating parent directories.

        The text goes to a temp file in the same directory, which is flushed, fsynced and renamed onto the path
        with ``os.replace``; the directory is then fsynced (best effort). Whatever fails, :attr:`path` holds either
        the old content or the new one, never a partial file, and the temp file is removed. The file keeps the mode
        of the file it replaces (new files get ``0o666`` minus the umask).

        Raises:
            TableError: The directory or file cannot be written (the message starts with the path).
        """
        path = self.path
        text = self.dumps()
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TableError(f"{path}: cannot create directory {directory}: {err.strerror or err}") from err
        try:
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_current_umask()
        tmp_name: str | None = None
        try:
            with tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", newline="\n", dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False
            ) as tmp:
                tmp_name = tmp.name
                tmp.write(text)
                tmp.flush()
                os.fchmod(tmp.fileno(), mode)
                os.fsync(tmp.fileno())
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as err:
            raise TableError(f"{path}: cannot write table: {err.strerror or err}") from err
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
        _fsync_dir(directory)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def update_table(
    path: str | os.PathLike[str],
    device_key: str,
    device_info: Mapping[str, Any],
    new_entries: Iterable[TableEntry],
) -> MergeReport:
    """Merge new entries into a table file under an exclusive lock: load, :meth:`ConfigTable.merge`, save.

    The lock is an ``fcntl.flock`` on ``<path>.lock`` (the lock file is left in place), so concurrent tuning
    processes never lose each other's entries. A missing file starts an empty table; a corrupt, foreign or newer
    file raises and is not overwritten.

    Args:
        path: The table file.
        device_key: The device the entries were tuned on.
        device_info: Free-form device info stored in the device's section (replaces the stored one).
        new_entries: The new entries.

    Returns:
        The keys added, replaced and kept.

    Raises:
        TableError: The lock file cannot be opened or locked, or the table cannot be read (see
            :meth:`ConfigTable.load`) or written (see :meth:`ConfigTable.save`).
        TypeError: Bad argument types (see :meth:`ConfigTable.merge`).
        ValueError: Bad argument values (see :meth:`ConfigTable.merge`).
    """
    path = Path(path)
    new_entries = list(new_entries)
    lock_path = path.with_suffix(path.suffix + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(lock_path, "a")  # noqa: SIM115 - closed below, after the unlock
    except OSError as err:
        raise TableError(f"{path}: cannot open lock file {lock_path}: {err.strerror or err}") from err
    with lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        except OSError as err:
            raise TableError(f"{path}: cannot lock {lock_path}: {err.strerror or err}") from err
        try:
            table = ConfigTable.load(path, missing_ok=True)
            report = table.merge(device_key, device_info, new_entries)
            table.save()
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    return report


# --------------------------------------------------------------------------------------------------------------
# runtime


@dataclass(frozen=True)
class LookupResult:
    """The answer of :meth:`RuntimeTable.lookup`.

    Attributes:
        config: The config to launch with (read-only mapping).
        source: ``"exact"`` (tuned for this shape), ``"nearest"`` (tuned for the nearest bucket) or ``"default"``
            (the kernel's default config).
        entry: The table entry that supplied the config; ``None`` for ``"default"``. Shared, treat as read-only.
    """

    config: Mapping[str, Any]
    source: Literal["exact", "nearest", "default"]
    entry: TableEntry | None


DefaultConfig = Callable[[str, str, Mapping[str, int]], Mapping[str, Any]]
"""Signature of the default-config callback: ``(kernel, variant, shape) -> config``."""

_ShapeTuple = tuple[tuple[str, int], ...]


def _bucket_distance(query: int, bucket: int) -> Fraction:
    """Exact stand-in for ``abs(log2(max(query, 1)) - log2(max(bucket, 1)))``: the ratio of the larger value to the
    smaller (log2 is monotonic, so comparing ratios orders buckets the same way, without float rounding in ties)."""
    q, m = max(query, 1), max(bucket, 1)
    return Fraction(max(q, m), min(q, m))


class RuntimeTable:
    """Serves kernel configs at run time from one device's section of a :class:`ConfigTable`.

    :meth:`lookup` answers, in order: the exact entry for (kernel, variant, shape); else the entry whose bucket
    dimension (``bucket_dims[kernel]``) is nearest in log2 distance with every other dimension equal (ties go to
    the larger bucket); else ``default_config(kernel, variant, shape)``, warning once per (kernel, variant). Only
    the section of ``device_key`` is ever consulted. Results are memoized, so repeated lookups are a dict hit.
    """

    def __init__(
        self,
        table: ConfigTable | None,
        device_key: str,
        default_config: DefaultConfig,
        bucket_dims: Mapping[str, str],
    ) -> None:
        """Index one device's entries of ``table``.

        Args:
            table: The loaded table, or ``None`` to always serve defaults.
            device_key: The key of the device the kernels run on; only its section is served.
            default_config: ``(kernel, variant, shape) -> config`` for shapes the table cannot answer.
            bucket_dims: Kernel name to the one shape dimension that is bucketed (e.g. ``{"moe_gemm": "M"}``);
                kernels not listed get exact matches only.
        """
        self.table = table
        self.device_key = device_key
        self._default_config = default_config
        self._bucket_dims = dict(bucket_dims)
        self._where = f"table {table.path}" if table is not None else "no table"
        self._has_section = table is not None and device_key in table.device_keys()
        self._exact: dict[tuple[str, str, _ShapeTuple], TableEntry] = {}
        # (kernel, variant, bucket dim, other dims) -> [(bucket value, entry)]
        self._buckets: dict[tuple[str, str, str, _ShapeTuple], list[tuple[int, TableEntry]]] = {}
        for entry in table.entries(device_key) if table is not None else []:
            dims = _canonical_shape(entry.shape)
            self._exact[(entry.kernel, entry.variant, dims)] = entry
            bucket_dim = self._bucket_dims.get(entry.kernel)
            if bucket_dim is not None and bucket_dim in entry.shape:
                fixed = tuple(d for d in dims if d[0] != bucket_dim)
                group = self._buckets.setdefault((entry.kernel, entry.variant, bucket_dim, fixed), [])
                group.append((entry.shape[bucket_dim], entry))
        self._cache: dict[tuple[str, str, _ShapeTuple], LookupResult] = {}
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        device_key: str,
        default_config: DefaultConfig,
        bucket_dims: Mapping[str, str],
        *,
        missing_ok: bool = True,
    ) -> RuntimeTable:
        """Load a table file once and serve one device's section of it.

        Args:
            path: The table file.
            device_key: The key of the device the kernels run on.
            default_config: ``(kernel, variant, shape) -> config`` for shapes the table cannot answer.
            bucket_dims: Kernel name to its bucketed shape dimension.
            missing_ok: When the file does not exist, serve defaults (``True``) or raise (``False``).

        Returns:
            The runtime table.

        Raises:
            TableError: The file cannot be loaded (see :meth:`ConfigTable.load`).
        """
        return cls(ConfigTable.load(path, missing_ok=missing_ok), device_key, default_config, bucket_dims)

    def lookup(self, kernel: str, variant: str, shape: Mapping[str, int]) -> LookupResult:
        """Return the config to launch ``kernel``/``variant`` with on ``shape``.

        Args:
            kernel: Kernel name.
            variant: Variant name.
            shape: Dimension name to non-negative integer.

        Returns:
            The config, where it came from (``"exact"``, ``"nearest"`` or ``"default"``) and the entry behind it.
            The same object is returned for repeated lookups of the same (kernel, variant, shape).

        Raises:
            TypeError: ``shape`` is malformed, or ``default_config`` returned something other than a mapping.
            ValueError: ``shape`` is malformed.
        """
        dims = _canonical_shape(shape)
        cache_key = (kernel, variant, dims)
        result = self._cache.get(cache_key)
        if result is not None:
            return result
        with self._lock:
            result = self._cache.get(cache_key)
            if result is None:
                result = self._resolve(kernel, variant, dims)
                self._cache[cache_key] = result
        return result

    def _resolve(self, kernel: str, variant: str, dims: _ShapeTuple) -> LookupResult:
        entry = self._exact.get((kernel, variant, dims))
        if entry is not None:
            return LookupResult(types.MappingProxyType(dict(entry.config)), "exact", entry)

        bucket_dim = self._bucket_dims.get(kernel)
        if bucket_dim is not None:
            query = dict(dims).get(bucket_dim)
            if query is not None:
                fixed = tuple(d for d in dims if d[0] != bucket_dim)
                group = self._buckets.get((kernel, variant, bucket_dim, fixed))
                if group:
                    _, entry = min(group, key=lambda item: (_bucket_distance(query, item[0]), -item[0]))
                    return LookupResult(types.MappingProxyType(dict(entry.config)), "nearest", entry)

        shape = dict(dims)
        config = self._default_config(kernel, variant, dict(shape))
        if not isinstance(config, Mapping):
            raise TypeError(
                f"default_config({kernel!r}, {variant!r}, ...) returned {type(config).__name__}, expected a mapping"
            )
        if (kernel, variant) not in self._warned:
            self._warned.add((kernel, variant))
            if self.table is None:
                why = "no table"
            elif not self._has_section:
                why = f"{self._where} has no section for device {self.device_key!r}"
            else:
                why = f"{self._where} has no entry for it on device {self.device_key!r}"
            warnings.warn(
                f"gpt-oss-autotune: no tuned config for {kernel}/{variant} (shape {_format_shape(dims)}): {why}; "
                f"using the default config (device {self.device_key!r}; warned once per kernel/variant)",
                RuntimeWarning,
                stacklevel=3,
            )
        return LookupResult(types.MappingProxyType(dict(config)), "default", None)

    def clear_cache(self) -> None:
        """Forget memoized lookups (the once-per-(kernel, variant) warnings stay silenced)."""
        with self._lock:
            self._cache.clear()

