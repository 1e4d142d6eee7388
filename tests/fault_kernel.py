"""A synthetic kernel that injects every kind of trial failure, for end-to-end tests of the tuning framework.

Importing this module registers the kernel ``fault_injection`` (its own kernel module *and* search space module).
Tests put ``AUTOTUNE_PLUGINS=tests.fault_kernel`` in the environment so that the spawned worker processes import it
too (:func:`autotune.registry.load_plugins`).

The kernel is a real (tiny) Triton kernel, ``y = x * 2 + 1`` over a vector of ``M`` elements, run under the
interpreter on the CPU. Its config has a ``mode`` that decides how a trial ends:

============== ======================================================================================== ============
mode           what happens                                                                             trial ends
============== ======================================================================================== ============
ok             correct                                                                                  COMPLETE
ok2            correct, but each launch sleeps 20 ms first (so ``ok`` always wins)                      COMPLETE
compile_error  the kernel's ``MODE == COMPILE_ERROR`` branch calls an undefined function. On a GPU the   FAIL
               launch fails to compile by itself. Under ``TRITON_INTERPRET=1`` Triton compiles nothing
               (the interpreter would raise ``InterpreterError(NameError)`` when it reaches the line), so
               the launch runs Triton's real front end on the same source instead
               (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``): code generation
               fails before any backend tool runs and raises a genuine
               ``triton.compiler.errors.CompilationError``
hang           the launch sleeps forever (a hung kernel): the trial timeout kills the worker            FAIL
wrong          the kernel adds 1 to every output element (relative error ~0.5 > tolerance)              FAIL
nan            the kernel writes NaN into element 0                                                     FAIL
crash          the launch calls ``os._exit(9)``: the worker process dies                                FAIL
cuda_error     the launch raises ``RuntimeError("CUDA error: an illegal memory access ...")``            FAIL
infeasible     rejected by a constraint of the search space, with a reason (never compiled)             PRUNED
============== ======================================================================================== ============

Besides ``mode`` the config has ``BLOCK`` (16, 32, 64) and ``UNROLL`` (1, 2), a *conditional* parameter that is
only active for the ``ok`` modes (inactive value 1).

Shape dimensions (all integers, so a preset can set them): ``M`` (vector length, the bucketed dimension),
``faults`` (1: every mode above is a choice; 0: only ``ok``/``ok2``, for tests where the sampler must not pick
failures) and ``delay_ms`` (every launch sleeps this long first, to make trials take a while).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

from autotune.registry import KernelSpec, register
from autotune.tuning.space import Param, SearchSpace

NAME = "fault_injection"
VARIANTS = ("only",)
BUCKET_DIM = "M"
EXAMPLE_DIMS = {"M": 64, "faults": 1, "delay_ms": 0}
SOURCE_FILES = (Path(__file__),)

MODES = ("ok", "ok2", "compile_error", "hang", "wrong", "nan", "crash", "cuda_error", "infeasible")
SAFE_MODES = ("ok", "ok2")
OK2_SLEEP_S = 0.02
CUDA_ERROR_TEXT = "CUDA error: an illegal memory access was encountered"
INFEASIBLE_REASON = "mode 'infeasible' is rejected by the fault_injection constraint"

# constexpr codes of the modes the Triton kernel itself acts on
_OK, _WRONG, _NAN, _COMPILE_ERROR = 0, 1, 2, 3
_KERNEL_MODE = {"wrong": _WRONG, "nan": _NAN, "compile_error": _COMPILE_ERROR}


# --------------------------------------------------------------------------------------------------------------
# shapes and configs


@dataclass(frozen=True)
class FaultShape:
    """Problem size: ``M`` elements; ``faults`` and ``delay_ms`` steer the tests (see the module docstring)."""

    M: int
    faults: int = 1
    delay_ms: int = 0

    def __post_init__(self) -> None:
        if self.M < 1 or self.faults not in (0, 1) or self.delay_ms < 0:
            raise ValueError(f"invalid fault_injection shape {self}")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class FaultConfig:
    """Launch config of the fault-injection kernel."""

    mode: str = "ok"
    BLOCK: int = 16
    UNROLL: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {MODES}")
        if self.BLOCK not in (16, 32, 64):
            raise ValueError(f"BLOCK={self.BLOCK!r} must be 16, 32 or 64")
        if self.UNROLL not in (1, 2):
            raise ValueError(f"UNROLL={self.UNROLL!r} must be 1 or 2")


@dataclass(frozen=True)
class Inputs:
    shape: FaultShape
    x: torch.Tensor


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float


@dataclass(frozen=True)
class Tolerance:
    max_rel_err: float
    reason: str


def shape_from_dims(variant: str, dims: Mapping[str, int]) -> FaultShape:
    if variant not in VARIANTS:
        raise ValueError(f"unknown fault_injection variant {variant!r}")
    unknown = set(dims) - {f.name for f in fields(FaultShape)}
    if unknown or "M" not in dims:
        raise ValueError(f"fault_injection shape needs M (and optionally faults, delay_ms), got {sorted(dims)}")
    return FaultShape(**{k: int(v) for k, v in dims.items()})


def model_shapes(variant: str, M: Sequence[int], **dims: int) -> list[FaultShape]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown fault_injection variant {variant!r}")
    return [FaultShape(M=int(m), **dims) for m in M]


def config_from_dict(params: Mapping[str, Any]) -> FaultConfig:
    known = {f.name for f in fields(FaultConfig)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unknown fault_injection config keys {sorted(unknown)}")
    return FaultConfig(**params)


# --------------------------------------------------------------------------------------------------------------
# the Triton kernel


def _affine_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr, UNROLL: tl.constexpr, MODE: tl.constexpr):
    """y = 2 x + 1 in fp32; MODE injects a wrong result, a NaN or a compile error."""
    for u in tl.static_range(UNROLL):
        offs = (tl.program_id(0) * UNROLL + u) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = x * 2.0 + 1.0
        if MODE == 1:
            y = y + 1.0
        if MODE == 2:
            y = tl.where(offs == 0, float("nan"), y)
        if MODE == 3:
            y = this_function_does_not_exist(y)  # noqa: F821 - the injected compile error
        tl.store(y_ptr + offs, y, mask=mask)


affine_kernel = triton.jit(_affine_kernel)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _frontend_compile(constexprs: dict[str, Any]) -> None:
    """Run Triton's real compiler front end on the kernel (raises ``CompilationError`` for a broken kernel).

    Only used under the interpreter, where ``triton.jit`` gives an ``InterpretedFunction`` that compiles nothing.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    import warnings

    source = ASTSource(fn=JITFunction(_affine_kernel),
                       signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr",
                                  "UNROLL": "constexpr", "MODE": "constexpr"},
                       constexprs=constexprs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION")
        triton.compile(source, target=GPUTarget("cuda", 90, 32))


NOISE_ENV = "FAULT_KERNEL_NOISE_LINES"
"""With this variable set to N, every launch (and compile-only launch) first writes N lines that look like an MLIR
dump straight to file descriptor 2, as Triton's C++ compiler does, bypassing ``sys.stderr``."""
NOISE_MARK = "fault-kernel-mlir-noise"


def _compiler_noise() -> None:
    lines = int(os.environ.get(NOISE_ENV, "0") or 0)
    if lines:
        text = "".join(f"// {NOISE_MARK} line {i}: %{i} = tt.load %arg0 : tensor<64x!tt.ptr<f32>>\n"
                       for i in range(lines))
        os.write(2, text.encode())


@dataclass(frozen=True)
class FaultLaunch:
    """One launch of the kernel, with the host-side faults (sleep, hang, crash, CUDA error) around it."""

    config: FaultConfig
    grid: tuple[int, ...]
    args: tuple
    delay_s: float

    def _constexprs(self) -> dict[str, Any]:
        return {"BLOCK": self.config.BLOCK, "UNROLL": self.config.UNROLL,
                "MODE": _KERNEL_MODE.get(self.config.mode, _OK)}

    def run(self, *, compile_only: bool = False) -> Any:
        mode = self.config.mode
        _compiler_noise()
        if compile_only:
            if _interpreting():
                if mode == "compile_error":
                    _frontend_compile(self._constexprs())
                return None
            return affine_kernel.warmup(*self.args, grid=self.grid, **self._constexprs())
        if self.delay_s:
            time.sleep(self.delay_s)
        if mode == "ok2":
            time.sleep(OK2_SLEEP_S)
        elif mode == "hang":
            while True:  # a kernel that never finishes
                time.sleep(1.0)
        elif mode == "crash":
            os._exit(9)
        elif mode == "cuda_error":
            raise RuntimeError(CUDA_ERROR_TEXT)
        elif mode == "compile_error" and _interpreting():
            _frontend_compile(self._constexprs())
        return affine_kernel[self.grid](*self.args, **self._constexprs())


# --------------------------------------------------------------------------------------------------------------
# the uniform kernel interface


def make_inputs(variant: str, shape: FaultShape, *, dtype: torch.dtype, device, seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.randn(shape.M, generator=generator).to(dtype=torch.float32)
    return Inputs(shape, x.to(device))


def make_timing_inputs(variant: str, shape: FaultShape, *, dtype: torch.dtype, device, seed: int,
                       cache_bytes: int) -> list[Inputs]:
    return [make_inputs(variant, shape, dtype=dtype, device=device, seed=seed + i) for i in range(2)]


def launches(variant: str, inputs: Inputs, config: FaultConfig,
             out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[FaultLaunch]]:
    if out is None:
        out = torch.empty_like(inputs.x, dtype=torch.float32)
    n = inputs.shape.M
    grid = (triton.cdiv(n, config.BLOCK * config.UNROLL),)
    return out, [FaultLaunch(config, grid, (inputs.x, out, n), inputs.shape.delay_ms / 1000.0)]


def launch(variant: str, inputs: Inputs, config: FaultConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    result, plan = launches(variant, inputs, config, out)
    for item in plan:
        item.run()
    return result


def reference(variant: str, inputs: Inputs) -> torch.Tensor:
    return inputs.x.float() * 2.0 + 1.0


def cost(variant: str, inputs: Sequence[Inputs], config=None) -> Cost:
    n = inputs[0].shape.M
    return Cost(flops=2.0 * n, bytes=8.0 * n)


def tolerance(variant: str, dtype: torch.dtype, config=None) -> Tolerance:
    return Tolerance(1e-5, "fp32 arithmetic, exact up to rounding")


# --------------------------------------------------------------------------------------------------------------
# the search space


def infeasible_mode(config, shape, device) -> str | None:
    return INFEASIBLE_REASON if config["mode"] == "infeasible" else None


def default_config(variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
    return {"mode": "ok", "BLOCK": 16, "UNROLL": 1}


def space(variant: str, shape: Mapping[str, int], device) -> SearchSpace:
    modes = MODES if shape.get("faults", 1) else SAFE_MODES
    params = (
        Param("mode", modes, doc="how the trial ends"),
        Param("BLOCK", (16, 32, 64), doc="elements per program"),
        Param("UNROLL", (1, 2), when=lambda c: c["mode"] in SAFE_MODES, inactive=1, doc="ok modes only"),
    )
    return SearchSpace(params=params, constraints=(infeasible_mode,), default=default_config(variant, shape, device))


register(KernelSpec(NAME, __name__, __name__))


# --------------------------------------------------------------------------------------------------------------
# helpers for the tests (kept here: tests may only add this module and test_framework_*.py files)

PLUGIN_ENV = {"AUTOTUNE_PLUGINS": __name__}
"""Environment that makes the CLI and its spawned workers register this kernel."""


def write_preset(path: Path, *, M: Sequence[int] = (64,), faults: int = 1, delay_ms: int = 0, trials: int = 4,
                 timeout_s: float | None = 600) -> Path:
    """Write a preset TOML with one [fault_injection] table; returns the path."""
    lines = ["description = \"fault injection (tests)\"", "", f"[{NAME}]", 'variants = ["only"]',
             f"M = [{', '.join(str(m) for m in M)}]", f"faults = {faults}", f"delay_ms = {delay_ms}",
             f"trials = {trials}"]
    if timeout_s:
        lines.append(f"timeout_s = {timeout_s}")
    path.write_text("\n".join(lines) + "\n")
    return path


CLI_WITH_PRESET = ("import runpy, sys; import autotune.defaults as d; d.CPU_PRESET = sys.argv.pop(1); "
                   "sys.argv[0] = 'autotune'; runpy.run_module('autotune', run_name='__main__', alter_sys=True)")
"""``python -c CLI_WITH_PRESET PRESET ARGS...`` is ``python -m autotune ARGS...`` with ``PRESET`` as the CPU preset.

Without a GPU, ``autotune.cli.cmd_run`` replaces any ``--preset`` by ``defaults.CPU_PRESET`` (see the bug report in
test_framework_cli.py), so a test preset for a plugin kernel can only be used by pointing that default at it."""


def mode_of(trial) -> str:
    """The ``mode`` of a trial's config (from its ``config`` user attribute)."""
    import json

    return json.loads(trial.user_attrs["config"])["mode"]
