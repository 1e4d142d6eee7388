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

import tomllib
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
