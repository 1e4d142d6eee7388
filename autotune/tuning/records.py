"""The typed records that travel between the tuner and its workers: a :class:`Job` in, a :class:`Result` out.

Written by :mod:`autotune.tuning.tuner`, carried over a pipe by :mod:`autotune.tuning.worker`, executed by
:mod:`autotune.tuning.evaluate`, stored on the trial by :mod:`autotune.tuning.study` and read by
:mod:`autotune.table.export`. Both are plain frozen dataclasses (picklable, so they cross process boundaries as they
are). The names of the measurements a table entry keeps are listed once, in :data:`ENTRY_METRICS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from autotune.tuning.outcomes import Kind

TIMING_SEED = 1234
"""Seed of the rotating timing input sets (the same inputs for every config of a shape, so that their timings
compare like with like); correctness checks use a fresh seed per trial instead."""


@dataclass(frozen=True)
class Job:
    """One config to evaluate.

    Attributes:
        kernel: registered kernel name.
        variant: its variant.
        shape: the shape dimensions (e.g. ``{"M": 16, "N": 5760, ...}``).
        config: the complete config (parameter name → value).
        dtype: activation dtype name ("bfloat16", "float16", "float32").
        seed: seed of the fresh correctness-check inputs.
        rep_ms: timed milliseconds (``rep`` of Triton's do_bench*).
        check: run the correctness check first.
        timed: time the config (after a passed check).
        compile_only: only compile into Triton's cache (compile-ahead workers).
    """

    kernel: str
    variant: str
    shape: dict[str, int]
    config: dict[str, Any]
    dtype: str
    seed: int
    rep_ms: float
    check: bool = True
    timed: bool = True
    compile_only: bool = False

    def with_(self, **changes: Any) -> Job:
        """A copy with some fields replaced."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Result:
    """What a worker found out about one config; every measurement in physical units, None where it did not get.

    Attributes:
        kind: how the evaluation ended (:class:`autotune.tuning.outcomes.Kind`).
        phase: what it was doing last ("config", "compile", "run", "check", "time", or "unknown" for a timeout or a
            dead worker).
        error: one-paragraph reason for a failure (bounded).
        traceback: the worker's traceback (bounded; kept off the trial's summary attributes).
        compile_s: seconds spent compiling.
        shared_bytes: shared memory per program the compiler reports, bytes.
        max_rel_err, max_elem_err: the check's row-wise and element-wise errors; tolerance: its row limit.
        median_us, p20_us, p80_us: timing quantiles of one call, microseconds.
        timing_method: "cuda_graph", "cuda_events" or "wall_clock"; timing_sets: rotating input sets.
        flops, bytes: the kernel's cost model for one call.
        tflops, gbps, peak_fraction: achieved rates and the larger fraction of the device's two ceilings.
        nvml: GPU state while timing (clocks, temperature, power, throttle reasons).
        where: where it ran: ``node`` (host name), ``gpu`` (the CUDA device index on that node, None under the
            interpreter) and ``device_key``; stored flat on the trial like ``nvml``.
        lost: True when the infrastructure cut the evaluation, not the config (a Ray actor or its node went away
            mid-trial): the trial fails, uses no budget and its config is queued again. None otherwise.
        output: what the worker process wrote to stdout/stderr during the job (compiler diagnostics, MLIR dumps;
            bounded by :data:`autotune.tuning.capture.MAX_OUTPUT_BYTES`); goes to the log file, and an excerpt of
            it to the trial's ``error`` when the job failed.
    """

    kind: Kind
    phase: str = "unknown"
    error: str | None = None
    traceback: str | None = None
    compile_s: float | None = None
    shared_bytes: int | None = None
    max_rel_err: float | None = None
    max_elem_err: float | None = None
    tolerance: float | None = None
    median_us: float | None = None
    p20_us: float | None = None
    p80_us: float | None = None
    timing_method: str | None = None
    timing_sets: int | None = None
    flops: float | None = None
    bytes: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    peak_fraction: float | None = None
    nvml: dict[str, Any] = field(default_factory=dict)
    where: dict[str, Any] = field(default_factory=dict)
    lost: bool | None = None
    output: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the config was measured."""
        return self.kind is Kind.OK

    def trial_attrs(self) -> dict[str, Any]:
        """The user attributes a trial stores: every field that is set except the traceback and the worker output,
        ``kind`` as its value string, and the NVML readings and the placement flattened (``sm_clock_mhz``,
        ``temperature_c``, ..., ``node``, ``gpu``, ``device_key``). A failed job's ``error`` ends with an excerpt of
        the worker output (first and last lines, bounded)."""
        attrs = {name: value for name, value in asdict(self).items()
                 if value is not None and name not in ("traceback", "nvml", "where", "output")}
        attrs["kind"] = self.kind.value
        if not self.ok and self.output and self.output.strip():
            from autotune.tuning.capture import excerpt

            attrs["error"] = f"{self.error or self.kind.value}\n--- worker output ---\n{excerpt(self.output)}"
        attrs.update(self.nvml)
        attrs.update({name: value for name, value in self.where.items() if value is not None})
        return attrs


ENTRY_METRICS = ("tflops", "gbps", "peak_fraction", "max_rel_err")
"""The measurements a table entry and a re-timed finalist keep besides ``median_us``."""
