"""Presets: which kernels, variants and shapes to tune, with what budget. TOML files in ``studies/presets/``.

A preset has one table per kernel::

    [moe_gemm]
    variants = ["mlp1", "mlp2"]
    M = [1, 2, 4, ...]          # the bucketed dimension: one study per value
    hidden = 2880               # model dimensions, passed to the kernel's model_shapes()
    intermediate = 2880
    E = 32
    top_k = 4
    trials = 24                 # measured trials per study
    timeout_s = 45              # per study

``--shapes "M=1,16,256"`` replaces the listed values of any dimension (several: ``"M=1,2 E=32"``).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.defaults import PRESETS_DIR
from autotune.errors import PresetError, ShapeSpecError

_BUDGET_KEYS = ("variants", "trials", "timeout_s")


@dataclass(frozen=True)
class KernelPreset:
    """One kernel's part of a preset.

    Attributes:
        kernel: registered kernel name.
        variants: variants to tune.
        dims: model dimensions (ints) and lists of values (the bucketed dimension).
        trials: measured trials per study.
        timeout_s: per-study time limit for new trials, or None.
    """

    kernel: str
    variants: tuple[str, ...]
    dims: dict[str, Any]
    trials: int
    timeout_s: float | None


@dataclass(frozen=True)
class Preset:
    """A named preset file."""

    name: str
    path: Path
    description: str
    kernels: dict[str, KernelPreset]


def available() -> list[str]:
    """Names of the presets in ``studies/presets/``."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    return PRESETS_DIR / f"{name_or_path}.toml"


def load(name_or_path: str) -> Preset:
    """Load a preset by name (``gpt_oss_20b``) or path.

    Raises:
        PresetError: missing file, invalid TOML or malformed fields (one line naming the file).
    """
    path = _resolve(name_or_path)
    if not path.is_file():
        raise PresetError(f"unknown preset {name_or_path!r} (available: {', '.join(available())})")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PresetError(f"{path}: cannot read preset: {exc}") from exc
    kernels = {}
    for kernel, section in data.items():
        if not isinstance(section, dict):
            continue
        if not isinstance(section.get("variants"), list) or not all(isinstance(v, str) for v in section["variants"]):
            raise PresetError(f"{path}: [{kernel}] variants must be a list of names, e.g. [\"mlp1\", \"mlp2\"]")
        try:
            variants = tuple(section["variants"])
            trials = int(section["trials"])
            timeout = section.get("timeout_s")
            dims = {k: v for k, v in section.items() if k not in _BUDGET_KEYS}
        except (KeyError, TypeError, ValueError) as exc:
            raise PresetError(f"{path}: [{kernel}] needs variants and trials ({exc})") from exc
        for dim, value in dims.items():
            ok = isinstance(value, int) or (isinstance(value, list) and value and all(isinstance(v, int) for v in value))
            if not ok:
                raise PresetError(f"{path}: [{kernel}] {dim} must be an integer or a non-empty list of integers")
        kernels[kernel] = KernelPreset(kernel, variants, dims, trials, float(timeout) if timeout else None)
    if not kernels:
        raise PresetError(f"{path}: no kernel tables")
    return Preset(path.stem, path, str(data.get("description", "")), kernels)


def parse_shapes(text: str) -> dict[str, list[int]]:
    """Parse ``--shapes``: ``"M=1,16,256"`` or several ``DIM=v,v`` separated by spaces or semicolons.

    Raises:
        ShapeSpecError: on anything else, quoting the offending part.
    """
    dims: dict[str, list[int]] = {}
    parts = [p for p in text.replace(";", " ").split() if p]
    if not parts:
        raise ShapeSpecError(f"malformed --shapes {text!r}: expected e.g. \"M=1,16,256\"")
    for part in parts:
        name, sep, values = part.partition("=")
        if not sep or not name.isidentifier() or not values:
            raise ShapeSpecError(f"malformed --shapes part {part!r}: expected DIM=v1,v2,...")
        try:
            numbers = [int(v) for v in values.split(",")]
        except ValueError as exc:
            raise ShapeSpecError(f"malformed --shapes part {part!r}: values must be integers") from exc
        if any(n < 0 for n in numbers):
            raise ShapeSpecError(f"malformed --shapes part {part!r}: values must be >= 0")
        dims[name] = numbers
    return dims


def with_shapes(kernel_preset: KernelPreset, overrides: dict[str, list[int]]) -> KernelPreset:
    """The preset with some dimensions replaced.

    Raises:
        ShapeSpecError: for a dimension the preset does not have.
    """
    unknown = sorted(set(overrides) - set(kernel_preset.dims))
    if unknown:
        raise ShapeSpecError(f"--shapes names {unknown}, but {kernel_preset.kernel} shapes have "
                             f"{sorted(kernel_preset.dims)}")
    dims = dict(kernel_preset.dims)
    for name, values in overrides.items():
        dims[name] = values if isinstance(kernel_preset.dims[name], list) or len(values) > 1 else values[0]
    return KernelPreset(kernel_preset.kernel, kernel_preset.variants, dims, kernel_preset.trials,
                        kernel_preset.timeout_s)


def expand(kernel_preset: KernelPreset, spec) -> list[tuple[str, dict[str, int]]]:
    """(variant, shape dict) of every study of a kernel preset, through the kernel's ``model_shapes``.

    Raises:
        ShapeSpecError: when the kernel rejects the dimensions.
    """
    studies = []
    list_dims = {k: v for k, v in kernel_preset.dims.items() if isinstance(v, list)}
    fixed = {k: v for k, v in kernel_preset.dims.items() if not isinstance(v, list)}
    for variant in kernel_preset.variants:
        spec.check_variant(variant)
        try:
            shapes = spec.kernel.model_shapes(variant, **list_dims, **fixed)
        except (TypeError, ValueError) as exc:
            raise ShapeSpecError(f"{kernel_preset.kernel}: invalid shape dimensions {kernel_preset.dims}: {exc}") from exc
        studies.extend((variant, shape.as_dict()) for shape in shapes)
    return studies


PRESET_TARGET = 0.98
"""A preset's budget must reach this fraction of the ground truth on every benchmarked shape and seed. Issue 8 asks
>= 0.95 of what a 300-trial study finds; on the H200 record (2026-12-02) every default config was already within
0.95 of its reduced space's exhaustive best, so 0.95 chose a budget of 1 trial; the benchmark's own goal, 0.98, is
the figure that tells samplers and budgets apart."""


def trials_to_reach(fractions: Sequence[float], target: float) -> int | None:
    """Measured trials after which a best-so-far curve (fractions of the ground truth, one per trial) first reaches
    ``target``; None if it never does."""
    for index, fraction in enumerate(fractions):
        if fraction >= target - 1e-12:
            return index + 1
    return None


@dataclass(frozen=True)
class BudgetChoice:
    """A sampler and a per-study trial budget chosen from a search-efficiency benchmark.

    Attributes:
        kernel: the kernel the benchmark shapes belong to.
        sampler: the sampler (``tpe+warm``: TPE with the cross-shape warm start, the tuner's default behaviour).
        trials: measured trials per study that reached ``target`` on every shape and seed; None if no sampler did.
        target: fraction of the ground truth required.
        per_case: shape label → trials that sampler needed there (worst seed).
        device: the device name the benchmark was measured on.
    """

    kernel: str
    sampler: str | None
    trials: int | None
    target: float
    per_case: dict[str, int | None]
    device: str

    def describe(self) -> str:
        """One line for a report or a preset comment."""
        if self.trials is None:
            return (f"no sampler reached {self.target} of the ground truth on every shape and seed within the "
                    f"replayed trials ({self.device}); raise --max-trials")
        cases = ", ".join(f"{label}: {n}" for label, n in self.per_case.items())
        return (f"sampler {self.sampler}, trials = {self.trials} reach {self.target} of the ground truth on every "
                f"benchmarked shape and seed ({cases}; {self.device})")


def budget_from_benchmark(result: Mapping[str, Any] | str | Path, kernel: str,
                          target: float = PRESET_TARGET) -> BudgetChoice:
    """Choose a preset's sampler and ``trials`` from ``scripts/bench_search.py``'s ``replay.json``.

    For each sampler, the budget it needs is the largest, over the kernel's benchmarked shapes, of the worst seed's
    trials to reach ``target``; the sampler needing the fewest wins (ties: the order of the benchmark).

    Args:
        result: the replay document, or the path of ``replay.json``.
        kernel: e.g. "moe_gemm".
        target: fraction of the ground truth.

    Raises:
        PresetError: unreadable file or no case of ``kernel`` in it.
    """
    if not isinstance(result, Mapping):
        try:
            result = json.loads(Path(result).read_text())
        except (OSError, ValueError) as exc:
            raise PresetError(f"cannot read benchmark result {result}: {exc}") from exc
    cases = [c for c in result.get("cases", []) if c.get("kernel") == kernel]
    if not cases:
        raise PresetError(f"the benchmark result has no {kernel} shapes")
    device = str(result.get("device", {}).get("name", "unknown device"))
    best: BudgetChoice | None = None
    for sampler in cases[0]["samplers"]:
        per_case: dict[str, int | None] = {}
        for case in cases:
            runs = case["samplers"].get(sampler, {}).get("runs", [])
            needs = [trials_to_reach(run["trials"], target) for run in runs]
            per_case[case["label"]] = None if not needs or None in needs else max(needs)
        if None in per_case.values():
            continue
        trials = max(per_case.values())
        if best is None or trials < best.trials:
            best = BudgetChoice(kernel, sampler, trials, target, per_case, device)
    return best or BudgetChoice(kernel, None, None, target, {}, device)
