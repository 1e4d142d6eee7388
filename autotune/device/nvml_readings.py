"""GPU state read through NVML (nvidia-ml-py) beside each measurement: clocks, temperature, power, throttling.

Timings taken while a GPU throttles are not comparable with others; the readings are stored with every trial so that
such trials can be spotted (``optuna-dashboard`` shows them as user attributes). Every reading is best effort: a
field NVML cannot give is left out, and without NVML the readings are empty.
"""

from __future__ import annotations

import functools
from typing import Any

# Bits of nvmlDeviceGetCurrentClocksEventReasons (nvml.h, "ClocksEventReason"); GPU idle is not a throttle.
_REASONS = {
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


@functools.lru_cache(maxsize=None)
def _handle(uuid: str | None, index: int):
    import pynvml

    pynvml.nvmlInit()
    if uuid:
        return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _torch_uuid(index: int) -> str | None:
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # noqa: BLE001 - older torch builds have no uuid property
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def driver_version() -> str:
    """The NVIDIA driver version, or "unknown"."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - no NVML (CPU machine, container without the library)
        return "unknown"
    return version.decode() if isinstance(version, bytes) else str(version)


def read(index: int = 0) -> dict[str, Any]:
    """Current state of CUDA device ``index`` (as torch numbers it).

    Returns:
        Any of ``sm_clock_mhz``, ``mem_clock_mhz``, ``temperature_c``, ``power_w``, ``throttle_reasons`` (list of
        names, empty when none); ``{}`` when NVML is unavailable.
    """
    try:
        import pynvml

        handle = _handle(_torch_uuid(index), index)
    except Exception:  # noqa: BLE001 - no NVML
        return {}
    readings: dict[str, Any] = {}
    probes = {
        "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
    }
    for key, probe in probes.items():
        try:
            readings[key] = probe()
        except Exception:  # noqa: BLE001 - field not supported on this GPU
            pass
    reasons_fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
    if reasons_fn is not None:
        try:
            mask = reasons_fn(handle)
            readings["throttle_reasons"] = [name for bit, name in _REASONS.items() if mask & bit]
        except Exception:  # noqa: BLE001
            pass
    return readings
