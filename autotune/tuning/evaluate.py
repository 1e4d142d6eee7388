"""Evaluation of one config, run inside a worker process: compile, check against the reference, time.

Correctness comes first and uses fresh random inputs every time (a new seed per trial), an output pre-filled with
NaN (so unwritten elements show), the fp32 reference and the kernel's per-dtype tolerance; NaN/Inf fail. Timing
then uses rotating input sets cached per shape (:mod:`autotune.timing`). The result is a plain dict in physical
units that the study stores as trial user attributes.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from autotune.tuning.outcomes import Kind, classify
from autotune.tuning.records import TIMING_SEED, Job, Result

DTYPES = ("bfloat16", "float16", "float32")


def _dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r} (expected one of {DTYPES})")
    return getattr(torch, name)


def _max_ratio(error, scale) -> float:
    """Largest ``error / scale`` (broadcast), where a zero scale counts as inf if its error is not 0; 0 if empty."""
    import torch

    rel = torch.where(scale > 0, error / scale.clamp_min(torch.finfo(torch.float32).tiny),
                      torch.where(error > 0, torch.inf, 0.0))
    return float(rel.max()) if rel.numel() else 0.0


def row_relative_error(out, ref) -> float:
    """Largest row-wise relative error ``max_r ‖out_r − ref_r‖₂ / ‖ref_r‖₂`` (inf if a row of ref is 0 but out is
    not). Rows are the last dimension's vectors: one token or one routed row."""
    diff = (out.float() - ref).reshape(-1, ref.shape[-1]).norm(dim=-1)
    return _max_ratio(diff, ref.reshape(-1, ref.shape[-1]).norm(dim=-1))


def element_error(out, ref, sensitivity=None) -> float:
    """Largest element error relative to the RMS of its row of ``ref`` (inf where a row of ref is all zero and out
    differs). Localized errors (one wrong tile) show here much more than in the row norm.

    Args:
        out, ref: same shape; ref float32.
        sensitivity: None, or a float32 tensor of ref's shape added to the row RMS element by element (a kernel's
            ``element_sensitivity``: where a rounded intermediate is amplified, e.g. mlp1's stored h).
    """
    diff = (out.float() - ref).reshape(-1, ref.shape[-1]).abs()
    scale = ref.reshape(-1, ref.shape[-1]).pow(2).mean(dim=-1, keepdim=True).sqrt()
    if sensitivity is not None:
        scale = scale + sensitivity.reshape(-1, ref.shape[-1])
    return _max_ratio(diff, scale)


class Evaluator:
    """Compiles, checks and times configs of registered kernels on one device; caches timing inputs per shape.

    Args:
        device: a :class:`autotune.device.DeviceProfile` of the device this process runs on.
        torch_device: "cuda" or "cpu".
    """

    def __init__(self, device, torch_device: str) -> None:
        self.device = device
        self.torch_device = torch_device
        self._timing_key: tuple | None = None
        self._timing_sets: list = []

    def _timing_inputs(self, kernel, variant, shape, dtype, seed_base: int):
        key = (kernel.NAME, variant, repr(shape), str(dtype))
        if key != self._timing_key:
            self._timing_sets = []  # free the previous shape's sets before allocating new ones
            self._timing_key = None
            self._timing_sets = kernel.make_timing_inputs(variant, shape, dtype=dtype, device=self.torch_device,
                                                          seed=seed_base, cache_bytes=self.device.l2_bytes)
            self._timing_key = key
        return self._timing_sets

    def evaluate(self, job: Job) -> Result:
        """Evaluate one config: check it on fresh inputs (``job.check``), then time it (``job.timed``).

        Args:
            job: the :class:`autotune.tuning.records.Job`.

        Returns:
            The :class:`autotune.tuning.records.Result`: its kind, the phase it got to, the error and, as far as it
            got, the compile, check and timing figures. Never raises for a failure of the candidate.
        """
        from autotune import registry

        info: dict[str, Any] = {"kind": Kind.OK}
        phase = "config"
        try:
            spec = registry.get(job.kernel)
            kernel = spec.kernel
            variant = job.variant
            shape = kernel.shape_from_dims(variant, job.shape)
            config = kernel.config_from_dict(job.config)
            dtype = _dtype(job.dtype)
            if job.check:
                phase = "compile"
                inputs = kernel.make_inputs(variant, shape, dtype=dtype, device=self.torch_device, seed=job.seed)
                out, plan = kernel.launches(variant, inputs, config)
                info.update(self._compile(plan))
                phase = "run"
                out.fill_(float("nan"))
                out, plan = kernel.launches(variant, inputs, config, out)  # re-plan: planning may zero-fill out
                for launch in plan:
                    launch.run()
                self._synchronize()
                phase = "check"
                info.update(self._check(kernel, variant, inputs, out, dtype, config))
            if job.timed and info["kind"] is Kind.OK:
                phase = "time"
                info.update(self._time(kernel, variant, shape, config, dtype, job.rep_ms))
        except Exception as exc:  # noqa: BLE001 - every failure of a candidate becomes a trial outcome
            info["kind"] = classify(exc, phase)
            info["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            info["traceback"] = traceback.format_exc()[-4000:]
        return Result(phase=phase, **info)

    def precompile(self, job: Job) -> Result:
        """Compile a config into Triton's on-disk cache without running it (uninitialized inputs of the job's shape,
        so the specialization matches the evaluating worker's). Lets several processes compile while one GPU times.

        Returns:
            A :class:`Result` of kind OK with ``compile_s``, or the failure kind with ``error``.
        """
        from autotune import registry

        try:
            kernel = registry.get(job.kernel).kernel
            shape = kernel.shape_from_dims(job.variant, job.shape)
            inputs = kernel.make_empty_inputs(job.variant, shape, dtype=_dtype(job.dtype), device=self.torch_device)
            _, plan = kernel.launches(job.variant, inputs, kernel.config_from_dict(job.config))
            return Result(kind=Kind.OK, phase="compile", **self._compile(plan))
        except Exception as exc:  # noqa: BLE001 - the evaluating worker compiles again and classifies the error
            return Result(kind=classify(exc, "compile"), phase="compile", error=f"{type(exc).__name__}: {exc}"[:500])

    def _synchronize(self) -> None:
        if self.torch_device == "cuda":
            import torch

            torch.cuda.synchronize()

    def _compile(self, plan) -> dict[str, Any]:
        """Compile every launch (GPU: into Triton's cache without running) and read the compiler's figures."""
        start = time.perf_counter()
        shared = 0
        for launch in plan:
            if self.torch_device != "cuda":
                continue  # the interpreter compiles nothing
            compiled = launch.run(compile_only=True)
            shared = max(shared, int(getattr(getattr(compiled, "metadata", None), "shared", 0) or 0))
        info: dict[str, Any] = {"compile_s": time.perf_counter() - start}
        if shared:
            info["shared_bytes"] = shared
        return info

    def _check(self, kernel, variant, inputs, out, dtype, config) -> dict[str, Any]:
        import torch

        tol = kernel.tolerance(variant, dtype, config)  # e.g. an fp8 KV cache has its own limits
        info: dict[str, Any] = {"tolerance": tol.max_rel_err}
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            info.update(kind=Kind.NAN, error=f"{bad} of {out.numel()} output elements are NaN/Inf or unwritten")
            return info
        ref = kernel.reference(variant, inputs)
        err = row_relative_error(out, ref)
        info["max_rel_err"] = err
        if not err <= tol.max_rel_err:
            info.update(kind=Kind.WRONG_RESULT,
                        error=f"max row relative error {err:.3e} > tolerance {tol.max_rel_err:.1e} ({tol.reason})")
            return info
        elem_limit = getattr(tol, "max_elem_err", None)
        if elem_limit is not None:
            sensitivity_of = getattr(kernel, "element_sensitivity", None)  # optional part of the kernel interface
            sensitivity = sensitivity_of(variant, inputs, config) if sensitivity_of is not None else None
            elem = element_error(out, ref, sensitivity)
            info["max_elem_err"] = elem
            if not elem <= elem_limit:
                scale = "the row RMS" if sensitivity is None else "the row RMS + the element's sensitivity"
                info.update(kind=Kind.WRONG_RESULT,
                            error=f"max element error {elem:.3e} of {scale} > tolerance {elem_limit:.1e} "
                                  f"({tol.reason})")
        return info

    def _time(self, kernel, variant, shape, config, dtype, rep_ms: float) -> dict[str, Any]:
        from autotune.device import nvml_readings
        from autotune.tuning.timing import median_us

        sets = self._timing_inputs(kernel, variant, shape, dtype, seed_base=TIMING_SEED)
        outs = [kernel.launches(variant, item, config)[0] for item in sets]

        def call_for(item, out):
            def call():
                for launch in kernel.launches(variant, item, config, out)[1]:
                    launch.run()
            return call

        timing = median_us([call_for(item, out) for item, out in zip(sets, outs)],
                           on_gpu=self.torch_device == "cuda", rep_ms=rep_ms)
        cost = kernel.cost(variant, sets, config)  # e.g. an fp8 KV cache moves fewer bytes
        seconds = timing.median_us * 1e-6
        info: dict[str, Any] = {
            "median_us": timing.median_us, "p20_us": timing.p20_us, "p80_us": timing.p80_us,
            "timing_method": timing.method, "timing_sets": timing.sets,
            "flops": cost.flops, "bytes": cost.bytes,
            "tflops": cost.flops / seconds / 1e12, "gbps": cost.bytes / seconds / 1e9,
        }
        fractions = []
        if self.device.peak_gbps:
            fractions.append(info["gbps"] / self.device.peak_gbps)
        if self.device.peak_bf16_tflops:
            fractions.append(info["tflops"] / self.device.peak_bf16_tflops)
        if fractions:
            info["peak_fraction"] = max(fractions)
        if self.torch_device == "cuda":
            info["nvml"] = nvml_readings.read(0)
        return info
