"""The config table file: the best kernel configs found by tuning, keyed by device; reading, atomic writes, merging.

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
one), except that a newer entry of the same study replaces (the study decided again, over more trials or re-timed
finalists: the table then says what ``show`` says).

The runtime lookup that serves a table is :mod:`autotune.table.lookup`.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune import atomic, defaults
from autotune.errors import TableError
from autotune.files import check_output_file, read_bounded, remove_stale_temp_files
from autotune.table.entry import TableEntry, _json_value_problem, _type_name

SCHEMA_NAME = "gpt-oss-autotune/config-table"
"""Value of the top-level ``"schema"`` field that marks a file as one of our tables."""

SCHEMA_VERSION = 1
"""Schema version this module writes; files with a greater version are refused."""
_TOP_LEVEL_FIELDS = {"schema", "schema_version", "devices"}
_SECTION_FIELDS = {"device", "entries"}



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
            TableError: The file is missing (and ``missing_ok`` is false) or unreadable, is not a regular file (a
                FIFO or device is refused without blocking), is larger than :data:`autotune.defaults.MAX_TABLE_BYTES`
                (nothing is read then), is not valid JSON, is not a
                config table (foreign format), was written by a newer schema version, or has a malformed device
                section or entry (including an entry stored under a key that does not match its contents). The
                message starts with the path.
        """
        table = cls(path)
        path = table.path
        try:
            raw = read_bounded(path, defaults.MAX_TABLE_BYTES, what="table", error=TableError)
        except FileNotFoundError:
            if missing_ok:
                return table
            raise TableError(f"{path}: table file not found") from None
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
        except ValueError as err:  # e.g. an integer longer than Python's int-string conversion limit
            raise TableError(f"{path}: corrupt table: {err}") from err
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
        fingerprint → the entry with the lower ``median_us`` wins (ties keep the stored one), unless the new entry
        comes from the same study with a later ``tuned_at`` (then it replaces: the study's current winner). Several new entries
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
            if (old is None or old.fingerprint != entry.fingerprint or entry.median_us < old.median_us
                    or (old.study == entry.study and entry.tuned_at > old.tuned_at)):
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
        atomic.write_text(self.path, self.dumps(), error=TableError, what="cannot write table")


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


EntryCheck = Callable[[TableEntry], "str | None"]
"""``(entry) -> problem or None``: why an entry must not be written to (or kept in) a table."""


def _refuse_invalid(table: ConfigTable, device_key: str, check: EntryCheck | None) -> None:
    for entry in table.entries(device_key) if check is not None else []:
        problem = check(entry)
        if problem:
            raise TableError(f"{table.path}: stored entry {entry.key} of device {device_key!r} is invalid: {problem}; "
                             "fix or remove it (the file was not changed)")


def check_table_file(path: str | os.PathLike[str], device_key: str | None = None,
                     check: EntryCheck | None = None) -> None:
    """Check, before any work starts, that a table file can be read and then updated.

    The path must be absent or a regular file of at most :data:`autotune.defaults.MAX_TABLE_BYTES` that this user may
    read and write, under a folder this user may write into (see :func:`autotune.files.check_output_file`); an
    existing file must also load (see :meth:`ConfigTable.load`) and, with ``check``, the stored entries of
    ``device_key``'s section must pass it. Nothing is written.

    Raises:
        TableError: one line naming the path and the problem.
    """
    check_output_file(path, defaults.MAX_TABLE_BYTES, what="table", error=TableError)
    table = ConfigTable.load(path, missing_ok=True)
    if device_key is not None:
        _refuse_invalid(table, device_key, check)


def update_table(
    path: str | os.PathLike[str],
    device_key: str,
    device_info: Mapping[str, Any],
    new_entries: Iterable[TableEntry],
    *,
    check: EntryCheck | None = None,
) -> MergeReport:
    """Merge new entries into a table file under an exclusive lock: load, :meth:`ConfigTable.merge`, save.

    Temp files of killed writes (``.<name>.*.tmp`` older than :data:`autotune.defaults.STALE_TMP_AGE_S`) are removed
    first. With ``check``, a new entry or a stored entry of the device's section that fails it is refused: nothing is
    written.

    The lock is an ``fcntl.flock`` on ``<path>.lock`` (the lock file is left in place), so concurrent tuning
    processes never lose each other's entries. A missing file starts an empty table; a corrupt, foreign or newer
    file raises and is not overwritten.

    Args:
        path: The table file.
        device_key: The device the entries were tuned on.
        device_info: Free-form device info stored in the device's section (replaces the stored one).
        new_entries: The new entries.
        check: see :data:`EntryCheck`; ``None`` checks nothing beyond the entries' own validation.

    Returns:
        The keys added, replaced and kept.

    Raises:
        TableError: An entry fails ``check`` (named with its problem); the lock file cannot be opened or locked, or
            the table cannot be read (see
            :meth:`ConfigTable.load`) or written (see :meth:`ConfigTable.save`).
        TypeError: Bad argument types (see :meth:`ConfigTable.merge`).
        ValueError: Bad argument values (see :meth:`ConfigTable.merge`).
    """
    path = Path(path)
    new_entries = list(new_entries)
    for entry in new_entries if check is not None else []:
        problem = check(entry) if isinstance(entry, TableEntry) else None
        if problem:
            raise TableError(f"{path}: refusing to write entry {entry.key} (study {entry.study}, trial "
                             f"{entry.trial}): {problem}; the file was not changed")
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
            remove_stale_temp_files(path, older_than_s=defaults.STALE_TMP_AGE_S)
            table = ConfigTable.load(path, missing_ok=True)
            _refuse_invalid(table, device_key, check)
            report = table.merge(device_key, device_info, new_entries)
            table.save()
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    return report
