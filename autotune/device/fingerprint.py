"""The software and hardware a measurement was taken under.

A table entry tuned under one fingerprint is stale under another (new driver, Triton, torch or kernel source):
``export`` replaces it and ``show`` flags it. Configs going stale after a Triton upgrade without anyone noticing is a
known failure of other tuners (sglang#5716; vLLM records triton_version and never reads it).
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

from autotune.device import nvml_readings
from autotune.device import DeviceProfile

STALE_FIELDS = ("gpu_name", "compute_capability", "driver", "cuda", "triton", "torch", "kernel_source")
"""Fields whose change makes a tuned config stale."""


def fingerprint(device: DeviceProfile, kernel_source_hash: str) -> dict[str, Any]:
    """The fingerprint of measurements on ``device`` of a kernel whose sources hash to ``kernel_source_hash``.

    Returns:
        ``gpu_name, compute_capability ("9.0"), sm_count, driver, cuda, triton, torch, python, kernel_source``.
    """
    import torch
    import triton

    return {
        "gpu_name": device.name,
        "compute_capability": "{}.{}".format(*device.compute_capability),
        "sm_count": device.sm_count,
        "driver": nvml_readings.driver_version() if device.is_gpu else "none",
        "cuda": torch.version.cuda or "none",
        "triton": triton.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "kernel_source": kernel_source_hash,
    }


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A short stable id of a fingerprint's :data:`STALE_FIELDS` (8 hex digits of their SHA-256): two fingerprints
    get the same id exactly when neither is stale under the other. Re-tunes put it in their study names so that a
    study tuned under older software is never resumed."""
    text = json.dumps({key: fp.get(key) for key in STALE_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def stale_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Which :data:`STALE_FIELDS` differ between two fingerprints."""
    return [key for key in STALE_FIELDS if old.get(key) != new.get(key)]
