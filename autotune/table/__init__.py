"""The config table: keys, validated entries, the file store and its merge rule, the runtime lookup, and the export
from studies. ``autotune.table`` re-exports the public names."""

from autotune.table.store import (SCHEMA_NAME, SCHEMA_VERSION, ConfigTable, LookupResult, MergeReport, RuntimeTable,
                                  TableEntry, entry_key, shape_key, update_table)

__all__ = ["SCHEMA_NAME", "SCHEMA_VERSION", "ConfigTable", "LookupResult", "MergeReport", "RuntimeTable", "TableEntry",
           "entry_key", "shape_key", "update_table"]
