"""The machine-readable twin of a ``bench-model --out`` report (``bench.md`` → ``bench.json``), read by ``compare``.

Kept apart from :mod:`autotune.model.bench` so that reading a report imports no Triton kernel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPORT_SCHEMA = "gpt-oss-autotune/bench-model"
"""``"schema"`` of the machine-readable twin of a ``bench-model --out`` report (read by ``compare``)."""

REPORT_SCHEMA_VERSION = 1


def json_path(markdown_path: str | Path) -> Path:
    """Where the JSON twin of a markdown report goes: ``bench.md`` → ``bench.json`` (same folder, same stem)."""
    return Path(markdown_path).with_suffix(".json")


def report_record(results_by_setting: dict[str, dict[str, Any]], *, described: str, device_name: str,
                  act_dtype: str, kv_dtype: str) -> dict:
    """The machine-readable form of a ``bench-model`` report (written beside the markdown by ``--out``).

    Args:
        results_by_setting: setting ("table", "no table") → test name (``pp512``, ``tg128 B=4``) →
            :class:`autotune.model.bench.TestResult`.
        described: the weights' description (checkpoint path or random size).
        device_name: the GPU's name, or the interpreter's.
        act_dtype, kv_dtype: activation dtype and KV-cache storage of the run.

    Returns:
        ``{"schema", "schema_version", "described", "device", "date", "torch", "triton", "act_dtype", "kv_dtype",
        "tests": {test: {setting: {"tokens", "seconds" (per timed run), "tok_s_mean", "tok_s_std"}}}}``; tests in
        the order they ran.
    """
    import datetime

    import torch
    import triton

    tests: dict[str, dict] = {}
    for setting, results in results_by_setting.items():
        for name, result in results.items():
            tests.setdefault(name, {})[setting] = {"tokens": result.tokens, "seconds": list(result.seconds),
                                                   "tok_s_mean": result.mean, "tok_s_std": result.std}
    return {"schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, "described": described,
            "device": device_name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "triton": triton.__version__, "act_dtype": act_dtype, "kv_dtype": kv_dtype, "tests": tests}
