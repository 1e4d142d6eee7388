"""The built-in gpt-oss inference loop: checkpoint loading, the model on this project's Triton kernels, a KV cache,
generation (CUDA graphs on GPUs) and the end-to-end benchmark. Kernel configs come from the tuned table.

    model = load_model("gpt-oss-20b/original")                 # table of this device, loaded once
    out = generate(model, [[200006, 17360]], max_new_tokens=32)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": "autotune.model.config", "ModelConfig": "autotune.model.config",
    "Generation": "autotune.model.generation", "generate": "autotune.model.generation",
    "KernelConfigs": "autotune.model.kernel_configs", "GptOss": "autotune.model.model",
    "DEFAULT_MAX_POSITIONS": "autotune.model.loading", "activation_dtype": "autotune.model.loading",
    "build_model": "autotune.model.loading", "load_model": "autotune.model.loading",
}
"""Public names, imported on first use: importing this package must not import the Triton kernels, because
``triton.jit`` fixes interpreter-or-GPU when a kernel module is imported and the CLI decides that first."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autotune.model' has no attribute {name!r}")
