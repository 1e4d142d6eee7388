"""Helpers shared by the kernel benchmarks (``scripts/bench_*.py``): timed calls over rotating input sets and a
correctness check before timing, for any kernel module with the uniform interface (``kernels/<name>/__init__.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

import torch

from autotune.tuning.evaluate import row_relative_error


def kernel_calls(kernel: ModuleType, variant: str, sets: Sequence, config) -> list[Callable[[], object]]:
    """One zero-argument call per input set, each writing into its own preallocated output."""
    outs = [kernel.launches(variant, s, config)[0] for s in sets]

    def call_for(item, out):
        return lambda: kernel.launch(variant, item, config, out)

    return [call_for(s, o) for s, o in zip(sets, outs)]


def checked_error(kernel: ModuleType, variant: str, shape, config, seed: int) -> float:
    """Row-wise relative error of one bf16 call on fresh inputs against the fp32 reference.

    Raises:
        RuntimeError: when it exceeds the kernel's tolerance for the config.
    """
    inputs = kernel.make_inputs(variant, shape, dtype=torch.bfloat16, device="cuda", seed=seed)
    err = row_relative_error(kernel.launch(variant, inputs, config), kernel.reference(variant, inputs))
    tol = kernel.tolerance(variant, torch.bfloat16, config).max_rel_err
    if not err <= tol:
        raise RuntimeError(f"{variant} {shape} {config}: error {err:.2e} > {tol:.1e}")
    return err


def open_gpu_bench(table_path: str | None):
    """What every GPU benchmark starts with: the device profile, the table opened for it, the measured peaks.

    Returns:
        ``(device, table, copy GB/s, bf16 matmul TFLOP/s)``, or None without a CUDA GPU.
    """
    if not torch.cuda.is_available():
        return None
    from autotune import device as device_mod
    from autotune.device.peaks import measure_peaks
    from autotune.table.lookup import open_table

    device = device_mod.detect(0)
    return (device, open_table(table_path, device), *measure_peaks())


def environment_lines(device, table, copy_gbps: float, mm_tflops: float) -> list[str]:
    """The report lines that say what was measured where: date, device, driver and versions, table, peaks."""
    import datetime
    import platform

    import triton

    from autotune.device import nvml_readings

    return [
        f"date {datetime.date.today()}; device {device.name} ({device.key}, {device.sm_count} SMs); driver "
        f"{nvml_readings.driver_version()}; torch {torch.__version__}; triton {triton.__version__}; "
        f"python {platform.python_version()}; table {table.table.path if table.table else 'none (defaults)'}",
        f"measured copy {copy_gbps:.0f} GB/s (read+write), bf16 8192^3 matmul {mm_tflops:.0f} TFLOP/s",
    ]


def emit_report(lines: list[str], out: str | None) -> None:
    """Print the markdown report and, with ``out``, also write it there (parent folders created)."""
    from pathlib import Path

    report = "\n".join(lines) + "\n"
    print(report)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(report)
