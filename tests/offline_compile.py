"""Shared by the offline-compile tests: run a test module as a script in a fresh process with the Triton interpreter
off, so that it compiles kernels for a real GPU target (sm_90, sm_121) on a machine without one, and read the JSON
report the script prints on its last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_offline_compile(script: str, capability: int, **extra_env: str) -> dict:
    """Run ``python script capability`` with ``TRITON_INTERPRET=0`` (plus ``extra_env``) from the repository root.

    Returns:
        The JSON object of the script's last output line.

    Raises:
        pytest.fail.Exception: the script exited non-zero (its stderr tail is shown).
        pytest.skip.Exception: the report is ``{"skip": reason}`` (this Triton cannot target the capability).
    """
    env = {**os.environ, "TRITON_INTERPRET": "0", **extra_env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), str(capability)], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"offline compile for cuda:{capability} failed:\n{proc.stderr[-6000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    return report
