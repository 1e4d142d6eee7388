"""``compare A B``: what changed between two lookup tables, or between two ``bench-model`` reports.

Two tables (:mod:`autotune.table.store` files): one row per (device key, entry key) — the config change, median µs
in A and in B, the speedup ``A µs ÷ B µs`` (above 1: B is faster) and the fingerprint fields that differ; entries in
one table only are listed with their side. Two ``bench-model`` reports: one row per test and setting (with / without
the table) — tok/s in A and in B and the ratio ``B ÷ A`` (above 1: B is faster).

A bench report is read from its JSON twin (``bench.json`` beside ``bench.md``, written by ``bench-model --out``), or,
for reports written before that existed, from the llama-bench table of the markdown (rows ``| tg128 | 381.86 ±
0.25 | 316.21 ± 0.10 | 1.21× |``). The kind of each input is detected from its content; inputs of different kinds,
an unreadable file or one of neither kind is a :class:`autotune.errors.UserError` (one line naming the file).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from autotune.errors import UserError
from autotune.model.bench_record import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, json_path
from autotune.table.store import SCHEMA_NAME, ConfigTable

TABLE = "table"
BENCH = "bench-model report"

BENCH_SETTINGS = ("table", "no table")
"""Settings of a bench-model report, as its JSON names them (markdown columns "with table" / "without table")."""

_TEST_NAME = re.compile(r"^(pp|tg)\d+( B=\d+)?$")
_RATE = re.compile(r"^\s*([0-9.]+(?:[eE][+-]?\d+)?)\s*±\s*([0-9.]+(?:[eE][+-]?\d+)?)\s*$")
_BENCH_HEADER = "| test | with table, tok/s | without table, tok/s |"

MAX_INPUT_BYTES = 256 * 2**20
"""Largest input read (a table of every kernel, shape and device is well under 1 MiB; a report a few KiB): a bigger
file is refused instead of being read into memory."""


class CompareError(UserError):
    """An input of ``compare`` that cannot be read, is of neither kind, or does not match the other input's kind."""


@dataclass(frozen=True)
class Loaded:
    """One input of ``compare``.

    Attributes:
        path: the file named on the command line.
        kind: :data:`TABLE` or :data:`BENCH`.
        table: the table (kind TABLE).
        rates: (test, setting) → mean tok/s (kind BENCH), in report order.
    """

    path: Path
    kind: str
    table: ConfigTable | None = None
    rates: dict[tuple[str, str], float] | None = None


def _read_text(path: Path) -> str:
    try:
        if path.is_file() and path.stat().st_size > MAX_INPUT_BYTES:
            raise CompareError(f"{path}: {path.stat().st_size} bytes, larger than any table or report "
                               f"({MAX_INPUT_BYTES} at most)")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CompareError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CompareError(f"{path}: is a folder, not a table or bench-model report") from None
    except OSError as err:
        raise CompareError(f"{path}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError:
        raise CompareError(f"{path}: not UTF-8 text: neither a table nor a bench-model report") from None


def _bench_rates_from_json(doc: dict, path: Path) -> dict[tuple[str, str], float]:
    version = doc.get("schema_version")
    if not isinstance(version, int) or version < 1 or version > REPORT_SCHEMA_VERSION:
        raise CompareError(f"{path}: bench-model report of schema_version {version!r}; this version reads 1.."
                           f"{REPORT_SCHEMA_VERSION}")
    tests = doc.get("tests")
    if not isinstance(tests, dict):
        raise CompareError(f"{path}: corrupt bench-model report: 'tests' must be an object")
    rates: dict[tuple[str, str], float] = {}
    for test, by_setting in tests.items():
        if not isinstance(by_setting, dict):
            raise CompareError(f"{path}: corrupt bench-model report: test {test!r} must be an object")
        for setting, result in by_setting.items():
            rate = result.get("tok_s_mean") if isinstance(result, dict) else None
            if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not math.isfinite(rate) or rate <= 0:
                raise CompareError(f"{path}: corrupt bench-model report: {test} [{setting}] has no positive "
                                   f"tok_s_mean")
            rates[(test, setting)] = float(rate)
    if not rates:
        raise CompareError(f"{path}: bench-model report without tests")
    return rates


def _bench_rates_from_markdown(text: str, path: Path) -> dict[tuple[str, str], float] | None:
    """The llama-bench rows of a markdown report, or None when the text has no such table."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith(_BENCH_HEADER))
    except StopIteration:
        return None
    rates: dict[tuple[str, str], float] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not _TEST_NAME.match(cells[0]):
            continue  # TTFT, TPOT, memory and bound rows
        for setting, cell in zip(BENCH_SETTINGS, cells[1:3]):
            match = _RATE.match(cell)
            if match is None:
                raise CompareError(f"{path}: corrupt bench-model report: test {cells[0]}: {cell!r} is not "
                                   f"'mean ± std'")
            rates[(cells[0], setting)] = float(match.group(1))
    if not rates:
        raise CompareError(f"{path}: bench-model report without test rows")
    return rates


def load(path: str | Path) -> Loaded:
    """Read one input and detect its kind.

    A JSON file is a table (``"schema": "gpt-oss-autotune/config-table"``) or a bench-model report
    (``"schema": "gpt-oss-autotune/bench-model"``); any other text is a bench-model markdown report, read from its
    JSON twin when one lies beside it, else from its llama-bench table.

    Args:
        path: the file.

    Returns:
        The loaded input.

    Raises:
        CompareError: missing, unreadable, corrupt, or neither a table nor a bench-model report.
        TableError: a table that :meth:`ConfigTable.load` refuses (corrupt, newer schema).
    """
    path = Path(path)
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        doc = None
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA_NAME:
        return Loaded(path, TABLE, table=ConfigTable.load(path, missing_ok=False))
    if isinstance(doc, dict) and doc.get("schema") == REPORT_SCHEMA:
        return Loaded(path, BENCH, rates=_bench_rates_from_json(doc, path))
    if doc is not None or path.suffix == ".json":
        raise CompareError(f"{path}: neither a gpt-oss-autotune table nor a bench-model report (no known 'schema')")
    twin = json_path(path)
    if twin != path and twin.is_file():
        loaded = load(twin)
        if loaded.kind != BENCH:
            raise CompareError(f"{twin}: expected the JSON twin of bench-model report {path}, found a {loaded.kind}")
        return Loaded(path, BENCH, rates=loaded.rates)
    rates = _bench_rates_from_markdown(text, path)
    if rates is None:
        raise CompareError(f"{path}: neither a gpt-oss-autotune table nor a bench-model report (no llama-bench "
                           f"table, no {twin.name} beside it)")
    return Loaded(path, BENCH, rates=rates)


def _natural(key: str) -> tuple:
    """Sort key that orders the numbers inside a text by value (``M=2`` before ``M=16``)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"BLOCK_M 16→32, num_warps 4→8"``; a field on one side only shows ``-`` on the other."""
    parts = [f"{name} {old.get(name, '-')}→{new.get(name, '-')}" for name in sorted(set(old) | set(new))
             if old.get(name, "-") != new.get(name, "-")]
    return ", ".join(parts)


def compare_tables(a: ConfigTable, b: ConfigTable) -> pd.DataFrame:
    """One row per (device, entry key) of either table.

    Args:
        a, b: the old and the new table.

    Returns:
        Columns ``device``, ``key``, ``status`` ("both", "only in A", "only in B"), ``config_change`` (changed
        config fields, "" when equal; for one-sided rows the config), ``median_us_A``, ``median_us_B``,
        ``speedup`` (A µs ÷ B µs: above 1, B is faster; shared keys only), ``fingerprint_change`` (differing fields,
        ``field A→B``). Sorted by device, status and key (numbers in a key compare as numbers: M=2 before M=16).
    """
    rows = []
    for device in sorted(set(a.device_keys()) | set(b.device_keys())):
        old = {e.key: e for e in a.entries(device)}
        new = {e.key: e for e in b.entries(device)}
        for key in sorted(set(old) | set(new), key=_natural):
            ea, eb = old.get(key), new.get(key)
            row = {"device": device, "key": key, "median_us_A": ea.median_us if ea else None,
                   "median_us_B": eb.median_us if eb else None}
            if ea and eb:
                row.update(status="both", config_change=_changes(ea.config, eb.config),
                           speedup=ea.median_us / eb.median_us,
                           fingerprint_change=_changes(ea.fingerprint, eb.fingerprint))
            else:
                only = ea or eb
                row.update(status="only in A" if ea else "only in B",
                           config_change=json.dumps(only.config, sort_keys=True), speedup=None,
                           fingerprint_change="")
            rows.append(row)
    columns = ["device", "key", "status", "config_change", "median_us_A", "median_us_B", "speedup",
               "fingerprint_change"]
    frame = pd.DataFrame(rows, columns=columns)
    order = {"both": 0, "only in A": 1, "only in B": 2}
    return frame.sort_values(["device", "status"], key=lambda s: s.map(order) if s.name == "status" else s,
                             kind="stable").reset_index(drop=True)


def compare_bench(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float]) -> pd.DataFrame:
    """One row per (test, setting) of either report.

    Args:
        a, b: (test, setting) → mean tok/s of the old and the new report.

    Returns:
        Columns ``test``, ``setting``, ``status`` ("both", "only in A", "only in B"), ``tok_s_A``, ``tok_s_B``,
        ``ratio`` (B ÷ A: above 1, B is faster; shared rows only); in A's order, then B's new rows.
    """
    rows = []
    for test, setting in list(a) + [k for k in b if k not in a]:
        ra, rb = a.get((test, setting)), b.get((test, setting))
        status = "both" if ra is not None and rb is not None else ("only in A" if rb is None else "only in B")
        rows.append({"test": test, "setting": setting, "status": status, "tok_s_A": ra, "tok_s_B": rb,
                     "ratio": rb / ra if status == "both" else None})
    return pd.DataFrame(rows, columns=["test", "setting", "status", "tok_s_A", "tok_s_B", "ratio"])


def compare(path_a: str | Path, path_b: str | Path) -> tuple[str, pd.DataFrame]:
    """Load both inputs and compare them.

    Returns:
        (the kind, :data:`TABLE` or :data:`BENCH`; the comparison frame of :func:`compare_tables` or
        :func:`compare_bench`).

    Raises:
        CompareError: an input cannot be read or is of neither kind, or the two are of different kinds.
        TableError: a table is corrupt.
    """
    a, b = load(path_a), load(path_b)
    if a.kind != b.kind:
        raise CompareError(f"cannot compare a {a.kind} ({a.path}) with a {b.kind} ({b.path})")
    if a.kind == TABLE:
        return TABLE, compare_tables(a.table, b.table)
    return BENCH, compare_bench(a.rates, b.rates)


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown(frame: pd.DataFrame, digits: dict[str, int] | None = None) -> str:
    """A DataFrame as a GitHub markdown table (floats to ``digits[column]`` places, default 2; NaN/None empty)."""
    digits = digits or {}
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits.get(c, 2)) for c, v in zip(frame.columns, row)) + " |")
    return "\n".join(lines)


def _geomean(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(math.exp(values.map(math.log).mean())) if len(values) else None


def report(kind: str, frame: pd.DataFrame, path_a: str, path_b: str) -> str:
    """The markdown report of a comparison: the shared rows, a geometric-mean line, the one-sided rows."""
    shared = frame[frame.status == "both"].drop(columns="status")
    lines = [f"### compare: A = {path_a}, B = {path_b} ({kind}s)", ""]
    if kind == TABLE:
        mean = _geomean(shared.speedup)
        lines += [f"{len(shared)} shared entries; speedup = A µs ÷ B µs (above 1: B is faster)"
                  + (f", geometric mean {mean:.3f}×" if mean else ""), ""]
        if len(shared):
            lines += [markdown(shared, {"speedup": 3}), ""]
    else:
        mean = _geomean(shared.ratio)
        lines += [f"{len(shared)} shared tests; ratio = B tok/s ÷ A tok/s (above 1: B is faster)"
                  + (f", geometric mean {mean:.3f}×" if mean else ""), ""]
        if len(shared):
            lines += [markdown(shared, {"ratio": 3}), ""]
    for side in ("only in A", "only in B"):
        rows = frame[frame.status == side]
        if len(rows):
            name = "key" if kind == TABLE else "test"
            keep = [c for c in ("device", name, "setting", "config_change") if c in rows.columns]
            lines += [f"{len(rows)} {side}:", "", markdown(rows[keep]), ""]
    return "\n".join(lines).rstrip() + "\n"


def cmd_compare(*, a: str, b: str, csv: str | None) -> int:
    """``compare A B [--csv FILE]``: the markdown report on stdout; with ``--csv`` also every row as CSV
    (``-``: CSV on stdout instead of the markdown)."""
    from autotune import atomic

    kind, frame = compare(a, b)
    if csv == "-":
        print(frame.to_csv(index=False), end="")
        return 0
    print(report(kind, frame, a, b), end="")
    if csv:
        atomic.write_text(csv, frame.to_csv(index=False))
    return 0
