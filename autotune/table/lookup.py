"""The runtime side of the table: one lookup object per process that serves one device's section.

    table = open_table()                       # this device's section of studies/tables/configs.json
    config = table.lookup("moe_gemm", "mlp1", {"M": 3, "N": 5760, "K": 2880, "E": 32, "top_k": 4}).config

:meth:`RuntimeTable.lookup` answers, in order: the exact entry for (kernel, variant, shape); else the entry whose
bucket dimension is nearest in log2 distance with every other dimension equal (ties to the larger bucket) and whose
config the search space at the asked shape accepts (else the next nearest: a decode-only gemv config tuned at M = 1 is
never served to a 2048-token prefill); else the kernel family's own default heuristic, with one ``RuntimeWarning`` per (kernel, variant). Only the section of one
device key is consulted: an interpreter or another GPU's section is never served. Each answer is converted once into
the kernel's config object (``make_config``) and memoized: this is the one memo between the table and a launch.
"""

from __future__ import annotations

import os
import threading
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from autotune.table.entry import TableEntry
from autotune.table.keys import _canonical_shape, _format_shape
from autotune.table.store import ConfigTable


@dataclass(frozen=True)
class LookupResult:
    """The answer of :meth:`RuntimeTable.lookup`.

    Attributes:
        config: The config to launch with: what ``make_config`` made of the entry's (or the default's) parameters;
            by default a read-only mapping, with :func:`open_table` the kernel's config object (e.g.
            :class:`kernels.moe_gemm.MoeGemmConfig`).
        source: ``"exact"`` (tuned for this shape), ``"nearest"`` (tuned for the nearest bucket) or ``"default"``
            (the kernel's default config).
        entry: The table entry that supplied the config; ``None`` for ``"default"``. Shared, treat as read-only.
    """

    config: Any
    source: Literal["exact", "nearest", "default"]
    entry: TableEntry | None


DefaultConfig = Callable[[str, str, Mapping[str, int]], Mapping[str, Any]]
"""Signature of the default-config callback: ``(kernel, variant, shape) -> config``."""

EntryCheck = Callable[[TableEntry], "str | None"]
"""``(entry) -> problem or None``: why an entry cannot be served here (invalid config, unfit for this device or
dtype); such an entry is skipped with one warning naming its key, as if it were absent."""

NearestCheck = Callable[[TableEntry, Mapping[str, int]], "str | None"]
"""``(entry, asked shape) -> problem or None``: why a neighbour's config cannot stand in at the asked shape (a value
the search space there does not offer, a constraint that fails there); such an entry is passed over for the next
nearest one."""

StaleCheck = Callable[[TableEntry], "list[str]"]
"""``(entry) -> changed fingerprint fields``: an entry tuned under other software is still served, with one warning
per kernel that says how to re-tune."""

MakeConfig = Callable[[str, Mapping[str, Any]], Any]
"""Signature of the config-object callback: ``(kernel, params) -> config object``; raises ValueError for params the
kernel's config class rejects."""

_ShapeTuple = tuple[tuple[str, int], ...]


def _read_only(kernel: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(params))


def _bucket_distance(query: int, bucket: int) -> Fraction:
    """Exact stand-in for ``abs(log2(max(query, 1)) - log2(max(bucket, 1)))``: the ratio of the larger value to the
    smaller (log2 is monotonic, so comparing ratios orders buckets the same way, without float rounding in ties)."""
    q, m = max(query, 1), max(bucket, 1)
    return Fraction(max(q, m), min(q, m))


class RuntimeTable:
    """Serves kernel configs at run time from one device's section of a :class:`ConfigTable` (see the module
    docstring for the lookup order). Thread-safe; repeated lookups of a shape return the same object.
    """

    def __init__(
        self,
        table: ConfigTable | None,
        device_key: str,
        default_config: DefaultConfig,
        bucket_dims: Mapping[str, str],
        *,
        make_config: MakeConfig = _read_only,
        warn_defaults: bool = True,
        entry_problem: EntryCheck | None = None,
        stale_fields: StaleCheck | None = None,
        nearest_problem: NearestCheck | None = None,
    ) -> None:
        """Index one device's entries of ``table``.

        Args:
            table: The loaded table, or ``None`` to always serve defaults.
            device_key: The key of the device the kernels run on; only its section is served.
            default_config: ``(kernel, variant, shape) -> config`` for shapes the table cannot answer.
            bucket_dims: Kernel name to the one shape dimension that is bucketed (e.g. ``{"moe_gemm": "M"}``);
                kernels not listed get exact matches only.
            make_config: ``(kernel, params) -> config object`` applied once per answer (default: a read-only
                mapping of the params).
            warn_defaults: warn once per (kernel, variant) when the default config is served (off for a runtime
                that asked for defaults, e.g. ``--no-table``).
            entry_problem: see :data:`EntryCheck`; None serves every entry of the section.
            stale_fields: see :data:`StaleCheck`; None treats every entry as fresh.
            nearest_problem: see :data:`NearestCheck`; None lets the nearest entry stand in at any shape.
        """
        self.table = table
        self.device_key = device_key
        self._default_config = default_config
        self._make_config = make_config
        self._bucket_dims = dict(bucket_dims)
        self._where = f"table {table.path}" if table is not None else "no table"
        self._has_section = table is not None and device_key in table.device_keys()
        self._stale_fields = stale_fields
        self._nearest_problem = nearest_problem
        self.passed_over: dict[tuple[str, str], str] = {}
        """(entry key, asked shape) → why that neighbour's config did not stand in there (see ``nearest_problem``)."""
        self.skipped: dict[str, str] = {}
        """Entry key → why it is not served (see ``entry_problem``)."""
        self._exact: dict[tuple[str, str, _ShapeTuple], TableEntry] = {}
        # (kernel, variant, bucket dim, other dims) -> [(bucket value, entry)]
        self._buckets: dict[tuple[str, str, str, _ShapeTuple], list[tuple[int, TableEntry]]] = {}
        for entry in table.entries(device_key) if table is not None else []:
            problem = entry_problem(entry) if entry_problem is not None else None
            if problem:
                self.skipped[entry.key] = problem
                warnings.warn(f"gpt-oss-autotune: {self._where}: entry {entry.key} is not served: {problem}",
                              RuntimeWarning, stacklevel=2)
                continue
            dims = _canonical_shape(entry.shape)
            self._exact[(entry.kernel, entry.variant, dims)] = entry
            bucket_dim = self._bucket_dims.get(entry.kernel)
            if bucket_dim is not None and bucket_dim in entry.shape:
                fixed = tuple(d for d in dims if d[0] != bucket_dim)
                group = self._buckets.setdefault((entry.kernel, entry.variant, bucket_dim, fixed), [])
                group.append((entry.shape[bucket_dim], entry))
        self._memo: dict[tuple[str, str, _ShapeTuple], LookupResult] = {}
        self._warned: set[tuple[str, str]] = set()
        self._warned_stale: set[str] = set()
        self._warn_defaults = warn_defaults
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
        make_config: MakeConfig = _read_only,
        entry_problem: EntryCheck | None = None,
        stale_fields: StaleCheck | None = None,
        nearest_problem: NearestCheck | None = None,
    ) -> RuntimeTable:
        """Load a table file once and serve one device's section of it.

        Args:
            path: The table file.
            device_key: The key of the device the kernels run on.
            default_config: ``(kernel, variant, shape) -> config`` for shapes the table cannot answer.
            bucket_dims: Kernel name to its bucketed shape dimension.
            missing_ok: When the file does not exist, serve defaults (``True``) or raise (``False``).
            make_config: see :meth:`__init__`.
            entry_problem: see :meth:`__init__`.
            stale_fields: see :meth:`__init__`.
            nearest_problem: see :meth:`__init__`.

        Returns:
            The runtime table.

        Raises:
            TableError: The file cannot be loaded (see :meth:`ConfigTable.load`).
        """
        return cls(ConfigTable.load(path, missing_ok=missing_ok), device_key, default_config, bucket_dims,
                   make_config=make_config, entry_problem=entry_problem, stale_fields=stale_fields,
                   nearest_problem=nearest_problem)

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
            ValueError: ``shape`` is malformed, or the default config is rejected by ``make_config``.
        """
        dims = _canonical_shape(shape)
        key = (kernel, variant, dims)
        result = self._memo.get(key)
        if result is not None:
            return result
        with self._lock:
            result = self._memo.get(key)
            if result is None:
                result = self._memo[key] = self._resolve(kernel, variant, dims)
        return result

    def served(self) -> list[tuple[str, str, dict[str, int], LookupResult]]:
        """Every distinct (kernel, variant, shape) answered so far, with its answer, in answering order."""
        with self._lock:
            return [(kernel, variant, dict(dims), result) for (kernel, variant, dims), result in self._memo.items()]

    def stale(self, entry: TableEntry | None) -> list[str]:
        """The fingerprint fields in which ``entry`` differs from the current software (empty: fresh, or no
        entry, or no staleness check)."""
        return self._stale_fields(entry) if entry is not None and self._stale_fields is not None else []

    def _served(self, kernel: str, entry: TableEntry, source: Literal["exact", "nearest"]) -> LookupResult:
        changed = self.stale(entry)
        if changed and kernel not in self._warned_stale:
            self._warned_stale.add(kernel)
            warnings.warn(
                f"gpt-oss-autotune: {self._where}: {kernel} entries were tuned under another "
                f"{', '.join(changed)} (e.g. {entry.key}); serving them anyway; re-tune with "
                f"`python -m autotune retune {kernel}` (warned once per kernel)",
                RuntimeWarning, stacklevel=5)
        return LookupResult(self._make_config(kernel, entry.config), source, entry)

    def _resolve(self, kernel: str, variant: str, dims: _ShapeTuple) -> LookupResult:
        entry = self._exact.get((kernel, variant, dims))
        if entry is not None:
            return self._served(kernel, entry, "exact")

        bucket_dim = self._bucket_dims.get(kernel)
        if bucket_dim is not None:
            query = dict(dims).get(bucket_dim)
            if query is not None:
                fixed = tuple(d for d in dims if d[0] != bucket_dim)
                group = self._buckets.get((kernel, variant, bucket_dim, fixed))
                for _, entry in sorted(group or (), key=lambda item: (_bucket_distance(query, item[0]), -item[0])):
                    problem = self._nearest_problem(entry, dict(dims)) if self._nearest_problem else None
                    if not problem:
                        return self._served(kernel, entry, "nearest")
                    self.passed_over[(entry.key, _format_shape(dims))] = problem

        config = self._default_config(kernel, variant, dict(dims))
        if not isinstance(config, Mapping):
            raise TypeError(
                f"default_config({kernel!r}, {variant!r}, ...) returned {type(config).__name__}, expected a mapping"
            )
        if self._warn_defaults and (kernel, variant) not in self._warned:
            self._warned.add((kernel, variant))
            if self.table is None:
                why = "no table"
            elif not self._has_section:
                why = f"{self._where} has no section for device {self.device_key!r}"
            elif unusable := [k for k in self.skipped if k.startswith(f"{kernel}/{variant}/")]:
                why = (f"{self._where}'s {len(unusable)} entries for it cannot be served here "
                       f"({self.skipped[unusable[0]]})")
            elif passed := [problem for (k, asked), problem in self.passed_over.items()
                            if k.startswith(f"{kernel}/{variant}/") and asked == _format_shape(dims)]:
                why = f"{self._where}'s nearest entries for it do not fit this shape ({passed[0]})"
            else:
                why = f"{self._where} has no entry for it on device {self.device_key!r}"
            warnings.warn(
                f"gpt-oss-autotune: no tuned config for {kernel}/{variant} (shape {_format_shape(dims)}): {why}; "
                f"using the default config (device {self.device_key!r}; warned once per kernel/variant)",
                RuntimeWarning,
                stacklevel=3,
            )
        return LookupResult(self._make_config(kernel, config), "default", None)


def open_table(path: str | Path | None = None, device=None, *, missing_ok: bool = True,
               use_table: bool = True, act_dtype=None) -> RuntimeTable:
    """Load a table for a device, serving the registered kernels' config objects.

    A neighbour's entry stands in for an untuned shape only if the search space at that shape offers each of its values
    and its constraints pass there (``config_problem(..., offered=True)``). Defaults on a miss come from each kernel
    family's own heuristic (``kernels.<family>.default_config``); no search
    space is built. Every entry of the device's section is checked once, here: one that breaks the kernel's config
    schema or the search space's constraints on ``device`` (:func:`autotune.table.validate.entry_problem`), or that
    does not fit ``act_dtype`` (:func:`autotune.table.fitness.entry_problem`), is skipped with one warning naming its
    key (listed in :attr:`RuntimeTable.skipped`), as if it were absent; one tuned under other software
    (:mod:`autotune.table.freshness`) is served with one warning per kernel naming the fields and ``retune``.

    Args:
        path: the table file (default: :data:`autotune.defaults.TABLE`).
        device: a :class:`autotune.device.DeviceProfile`; default: the current CUDA device, or the interpreter.
        missing_ok: serve defaults when the file does not exist (else TableError).
        use_table: False reads no file and serves every kernel's default config without warnings (``--no-table``).
        act_dtype: the torch dtype of the caller's activations, for the fitness check (None: not checked).

    Returns:
        A :class:`RuntimeTable` whose answers' ``config`` is the kernel's config object.

    Raises:
        TableError: for an unreadable, corrupt, foreign or newer table (the message names the file).
    """
    from autotune import defaults, registry
    from autotune import device as device_mod
    from autotune.table import fitness, freshness, validate

    profile = device if device is not None else device_mod.current()

    def default_config(kernel: str, variant: str, shape: Mapping[str, int]) -> dict:
        return registry.get(kernel).default_config(variant, shape, profile)

    def make_config(kernel: str, params: Mapping[str, Any]) -> Any:
        return registry.get(kernel).kernel.config_from_dict(params)

    bucket_dims = {name: registry.get(name).bucket_dim for name in registry.names()}
    if not use_table:
        return RuntimeTable(None, profile.key, default_config, bucket_dims, make_config=make_config,
                            warn_defaults=False)
    fingerprints = freshness.CurrentFingerprints(profile)
    return RuntimeTable.open(Path(path) if path is not None else defaults.TABLE, profile.key, default_config,
                             bucket_dims, missing_ok=missing_ok, make_config=make_config,
                             entry_problem=lambda entry: (validate.entry_problem(entry, profile)
                                                          or fitness.entry_problem(entry, profile, act_dtype)),
                             stale_fields=lambda entry: freshness.changed_fields(entry, fingerprints),
                             nearest_problem=lambda entry, shape: validate.config_problem(
                                 entry.kernel, entry.variant, shape, entry.config, profile, offered=True))
