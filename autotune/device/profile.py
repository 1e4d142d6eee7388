"""Device profiles: the limits and peaks the tuner prunes with and measures against.

A profile is read from the device itself where possible (``triton.runtime.driver`` device properties: shared
memory per block opt-in, SM count; torch: name, compute capability, L2). Peaks that a device cannot report (copy
bandwidth, bf16 matmul rate) come from :data:`KNOWN_PEAKS`, each with its source; ``scripts/bench_moe_gemm.py``
re-measures them for its own report. The GB10 (DGX Spark) profile is carried as data because this project cannot run
one: constraints and offline compiles for sm_121 use it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

INTERPRETER_KEY = "triton-interpreter"


@dataclass(frozen=True)
class DeviceProfile:
    """What the tuner needs to know about a device.

    Attributes:
        key: stable identifier used in study names and table sections (e.g. ``nvidia-h100-80gb-hbm3``).
        name: marketing name as the driver reports it.
        backend: "cuda" or "interpreter" (Triton's CPU interpreter).
        compute_capability: ``(major, minor)``; (0, 0) for the interpreter.
        sm_count: streaming multiprocessors.
        max_shared_mem_per_block: bytes of shared memory one program may use (opt-in limit).
        l2_bytes: last-level cache size, bytes.
        peak_gbps: device-memory bandwidth ceiling in GB/s (bytes read + written per second / 1e9).
        peak_bf16_tflops: bf16 tensor-core matmul ceiling in TFLOP/s.
        peaks_source: where the two peaks come from.
    """

    key: str
    name: str
    backend: str
    compute_capability: tuple[int, int]
    sm_count: int
    max_shared_mem_per_block: int
    l2_bytes: int
    peak_gbps: float
    peak_bf16_tflops: float
    peaks_source: str

    @property
    def is_gpu(self) -> bool:
        """True for a CUDA device."""
        return self.backend == "cuda"

    def as_dict(self) -> dict:
        """JSON-ready dict (compute capability as "major.minor")."""
        info = asdict(self)
        info["compute_capability"] = "{}.{}".format(*self.compute_capability)
        return info

    @classmethod
    def from_dict(cls, info: dict) -> DeviceProfile:
        """The profile back from :meth:`as_dict` (as stored on studies and in table sections).

        Raises:
            ValueError: a field is missing, unknown or of the wrong type.
        """
        names = set(cls.__dataclass_fields__)
        if not isinstance(info, dict) or set(info) != names:
            raise ValueError(f"a device profile needs exactly the fields {sorted(names)}")
        values = dict(info)
        parts = str(values["compute_capability"]).split(".")
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            raise ValueError(f"invalid device profile: compute_capability {values['compute_capability']!r}")
        values["compute_capability"] = (int(parts[0]), int(parts[1]))
        for name in ("sm_count", "max_shared_mem_per_block", "l2_bytes"):
            if not isinstance(values[name], int) or isinstance(values[name], bool):
                raise ValueError(f"invalid device profile: {name} must be an integer, got {values[name]!r}")
        return cls(**values)


GB10 = DeviceProfile(
    key="nvidia-gb10",
    name="NVIDIA GB10",
    backend="cuda",
    compute_capability=(12, 1),
    sm_count=48,
    max_shared_mem_per_block=101_376,
    l2_bytes=24 * 2**20,
    peak_gbps=218.0,
    peak_bf16_tflops=92.0,
    peaks_source="../shared/FACTS.md: DGX Spark measured copy ~218 GB/s (273 GB/s spec), bf16 matmul ~92 TFLOP/s",
)
"""DGX Spark (GB10, sm_121a): carried as data; used for pruning and offline sm_121 compiles."""

KNOWN_PEAKS: dict[str, tuple[float, float, str]] = {
    # name regex → (copy GB/s, bf16 TFLOP/s, source)
    r"H100.*(HBM3|SXM)": (3000.0, 721.0, "measured on the lent H100 2026-11-21 (FACTS.md): copy 3.00 TB/s, "
                                         "bf16 8192^3 matmul 721 TFLOP/s"),
    r"H200": (4300.0, 788.0, "device KINDS.md, H200 2026-10-28: copy ~4.3 TB/s, bf16 8192^3 matmul 788 TFLOP/s"),
    r"GB10": (GB10.peak_gbps, GB10.peak_bf16_tflops, GB10.peaks_source),
}

INTERPRETER = DeviceProfile(
    key=INTERPRETER_KEY,
    name="Triton CPU interpreter",
    backend="interpreter",
    compute_capability=(0, 0),
    sm_count=4,
    max_shared_mem_per_block=GB10.max_shared_mem_per_block,
    l2_bytes=0,
    peak_gbps=0.0,
    peak_bf16_tflops=0.0,
    peaks_source="none: interpreter timings measure numpy, not a GPU",
)
"""The CPU fallback. It prunes with GB10's shared-memory limit (the smallest target) so that CPU runs exercise the
same constraints; its timings are meaningless and its table section is never served to a GPU."""


def device_key(name: str, compute_capability: tuple[int, int]) -> str:
    """Stable key from the device name and compute capability, e.g. ``nvidia-h100-80gb-hbm3-sm90``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-sm{compute_capability[0]}{compute_capability[1]}"


def _peaks_for(name: str, props: dict) -> tuple[float, float, str]:
    for pattern, peaks in KNOWN_PEAKS.items():
        if re.search(pattern, name):
            return peaks
    # Unknown GPU: the DRAM interface rate from the device attributes (kHz × bus bits × 2 for DDR); no matmul peak.
    mem_khz, bus_bits = props.get("mem_clock_rate", 0), props.get("mem_bus_width", 0)
    return mem_khz * 1e3 * bus_bits / 8 * 2 / 1e9, 0.0, "spec from memory clock × bus width; bf16 peak unknown"


def detect(device_index: int = 0) -> DeviceProfile:
    """Profile of the CUDA device ``device_index`` (reads the device; needs torch with CUDA).

    Raises:
        RuntimeError: if no CUDA device is available.
    """
    import torch
    import triton

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is available")
    props = torch.cuda.get_device_properties(device_index)
    tri_props = triton.runtime.driver.active.utils.get_device_properties(device_index)
    capability = (props.major, props.minor)
    peak_gbps, peak_tflops, source = _peaks_for(props.name, tri_props)
    return DeviceProfile(
        key=device_key(props.name, capability),
        name=props.name,
        backend="cuda",
        compute_capability=capability,
        sm_count=props.multi_processor_count,
        max_shared_mem_per_block=int(tri_props["max_shared_mem"]),
        l2_bytes=int(getattr(props, "L2_cache_size", 0)),
        peak_gbps=peak_gbps,
        peak_bf16_tflops=peak_tflops,
        peaks_source=source,
    )


def current(device_index: int = 0) -> DeviceProfile:
    """The CUDA device when there is one, else :data:`INTERPRETER`."""
    import torch

    return detect(device_index) if torch.cuda.is_available() else INTERPRETER
