"""What the tuner knows about devices: their profiles (limits and peaks, the GB10 carried as data), the fingerprint a
measurement is taken under, NVML readings, offline compiles for a GPU this machine lacks, and measured ceilings.

``autotune.device`` itself re-exports the profile API of :mod:`autotune.device.profile`.
"""

from autotune.device.profile import (GB10, INTERPRETER, INTERPRETER_KEY, KNOWN_PEAKS, DeviceProfile, current, detect,
                                     device_key)

__all__ = ["GB10", "INTERPRETER", "INTERPRETER_KEY", "KNOWN_PEAKS", "DeviceProfile", "current", "detect", "device_key"]
