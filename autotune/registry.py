"""Registry of tunable kernels: a name → the kernel module (in ``kernels/``) and its search space module (in
``search_spaces/``).

A kernel module provides the uniform interface the tuner drives (see ``kernels/moe_gemm/__init__.py``):
``VARIANTS``, ``BUCKET_DIM``, ``SOURCE_FILES``, ``shape_from_dims``, ``model_shapes``, ``config_from_dict``,
``default_config(variant, shape, device) -> dict`` (the family's default heuristic),
optionally ``config_problem(variant, config, dtype) -> reason or None`` (a config object the kernel cannot launch on
activations of that dtype; absent: any dtype works), ``make_inputs``, ``make_empty_inputs``,
``make_timing_inputs``, ``launches``, ``reference``, ``cost(variant, inputs, config)``, ``tolerance(variant, dtype,
config)`` (both take the config: an fp8 KV cache moves fewer bytes and has its own limits), optionally
``element_sensitivity(variant, inputs, config) -> tensor or None`` (added to the row RMS in the element check where
a rounded intermediate is amplified; absent: the row RMS alone). A search space module
provides ``space(variant, shape, device) -> SearchSpace``. Extra kernels (tests register a synthetic one that injects
faults) are added with :func:`register` from modules named in the ``AUTOTUNE_PLUGINS`` environment variable
(comma-separated), which worker processes import too.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from autotune.errors import UnknownKernelError
from autotune.tuning.space import SearchSpace

PLUGINS_ENV = "AUTOTUNE_PLUGINS"


@dataclass(frozen=True)
class KernelSpec:
    """A tunable kernel: where its code and its search space live."""

    name: str
    kernel_module: str
    space_module: str

    @property
    def kernel(self) -> ModuleType:
        """The kernel module (imported on first use)."""
        return importlib.import_module(self.kernel_module)

    @property
    def variants(self) -> tuple[str, ...]:
        """Variant names (e.g. mlp1, mlp2)."""
        return tuple(self.kernel.VARIANTS)

    @property
    def bucket_dim(self) -> str:
        """The shape dimension that tables bucket on."""
        return self.kernel.BUCKET_DIM

    def space(self, variant: str, shape: Mapping[str, int], device) -> SearchSpace:
        """The search space of one variant at one shape on one device."""
        return importlib.import_module(self.space_module).space(variant, shape, device)

    def default_config(self, variant: str, shape: Mapping[str, int], device) -> dict[str, Any]:
        """The kernel family's own default heuristic (what a runtime launches without a table entry, and trial 0 of
        a study): ``kernel.default_config``, beside the launcher; no search space is built."""
        return dict(self.kernel.default_config(variant, shape, device))

    def constraint_problem(self, variant: str, config: Mapping[str, Any], shape: Mapping[str, int],
                           device) -> str | None:
        """The first reason of the search space's constraints against ``config`` at ``shape`` on ``device`` (device
        limits such as shared memory, compute capability for fp8 or the inline-PTX decode), or None."""
        return self.space(variant, shape, device).check(config, shape, device)

    def dtype_problem(self, variant: str, config: Any, dtype) -> str | None:
        """Why the kernel cannot launch the config object ``config`` on activations of the torch ``dtype``, or None
        (the kernel module's optional ``config_problem``)."""
        check = getattr(self.kernel, "config_problem", None)
        return check(variant, config, dtype) if check is not None else None

    def check_variant(self, variant: str) -> None:
        """Raise :class:`UnknownKernelError` for a variant this kernel does not have."""
        if variant not in self.variants:
            raise UnknownKernelError(f"kernel {self.name!r} has no variant {variant!r} (variants: "
                                     f"{', '.join(self.variants)})")

    def source_hash(self) -> str:
        """SHA-256 (first 16 hex digits) over the kernel's ``SOURCE_FILES`` (the code that runs on the GPU)."""
        digest = hashlib.sha256()
        for path in sorted(Path(p) for p in self.kernel.SOURCE_FILES):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]


_REGISTRY: dict[str, KernelSpec] = {
    "moe_gemm": KernelSpec("moe_gemm", "kernels.moe_gemm", "search_spaces.moe_gemm"),
    "attention": KernelSpec("attention", "kernels.attention", "search_spaces.attention"),
    "gemv": KernelSpec("gemv", "kernels.gemv", "search_spaces.gemv"),
}
_plugins_loaded: set[str] = set()


def register(spec: KernelSpec) -> None:
    """Add (or replace) a kernel."""
    _REGISTRY[spec.name] = spec


def load_plugins() -> None:
    """Import the modules named in ``$AUTOTUNE_PLUGINS`` (each calls :func:`register`)."""
    for name in filter(None, (part.strip() for part in os.environ.get(PLUGINS_ENV, "").split(","))):
        if name not in _plugins_loaded:
            importlib.import_module(name)
            _plugins_loaded.add(name)


def get(name: str) -> KernelSpec:
    """The registered kernel ``name``.

    Raises:
        UnknownKernelError: naming the registered kernels.
    """
    load_plugins()
    if name not in _REGISTRY:
        raise UnknownKernelError(f"unknown kernel {name!r} (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def names() -> list[str]:
    """Registered kernel names, sorted."""
    load_plugins()
    return sorted(_REGISTRY)
