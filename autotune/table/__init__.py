"""The config table, one module per job: :mod:`~autotune.table.keys` (canonical shape and entry keys),
:mod:`~autotune.table.entry` (a validated entry), :mod:`~autotune.table.store` (the file, its atomic writes and the
merge rule), :mod:`~autotune.table.lookup` (the runtime lookup), :mod:`~autotune.table.export` (studies → table).
``autotune.table`` re-exports the public names."""

from autotune.table.entry import TableEntry
from autotune.table.keys import entry_key, shape_key
from autotune.table.lookup import LookupResult, RuntimeTable, open_table
from autotune.table.store import SCHEMA_NAME, SCHEMA_VERSION, ConfigTable, MergeReport, update_table

__all__ = ["SCHEMA_NAME", "SCHEMA_VERSION", "ConfigTable", "LookupResult", "MergeReport", "RuntimeTable", "TableEntry",
           "entry_key", "shape_key", "update_table", "open_table"]
