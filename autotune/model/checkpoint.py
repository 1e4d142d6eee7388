"""Load a gpt-oss checkpoint in the original release layout (``config.json`` + ``*.safetensors``).

The layout is the ``original/`` folder of the released repositories (``../shared/FACTS.md``, "Checkpoint layout");
the expected tensors are :meth:`ModelConfig.tensor_specs`. Every file's header is checked against them before any
tensor data is read, so a wrong file fails in milliseconds; then tensors are read one at a time and moved to the
target device, so loading never holds more than the model plus one tensor (the 20b is 13.8 GB).

The Hugging Face converted layout (``model.safetensors.index.json``, ``model.layers.N...`` names) is refused with a
message that points at its ``original/`` folder.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from autotune.model.config import CheckpointError, ModelConfig, checkpoint_dir
from autotune.model.safetensors_io import TensorEntry, read_header, read_tensor

HF_HINT = "this looks like the Hugging Face layout; point --checkpoint at its original/ folder"


def load_checkpoint(
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read and validate a checkpoint.

    Args:
        directory: folder with ``config.json`` and one or more ``*.safetensors`` (or a folder whose ``original/``
            subfolder holds them).
        device: where the tensors go (``"cuda"`` on the GPU).
        dtype: float dtype for the float tensors other than the norm scales (e.g. torch.bfloat16); None keeps the
            stored dtype. Norm scales (``*norm.scale``) always become float32. MXFP4 ``*.blocks`` / ``*.scales``
            stay packed uint8.

    Returns:
        ``(config, tensors)``: tensors by name exactly as :meth:`ModelConfig.tensor_specs` lists them.

    Raises:
        CheckpointError: one line naming the file and/or tensor: no or invalid ``config.json``, no safetensors
            file, an unreadable or corrupt file, a tensor missing, in two files, of the wrong shape or dtype, or
            the Hugging Face layout.

    Warns:
        UserWarning: once, listing tensors that the config does not expect (they are not loaded).
    """
    root = checkpoint_dir(directory)
    _refuse_hf_config(root)
    config = ModelConfig.from_checkpoint(root)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{root}: no *.safetensors files in the checkpoint directory")
    where = _index(files)
    specs = config.tensor_specs()
    if any(name.startswith(("model.layers.", "model.embed_tokens.")) for name in where) and not any(
            name in where for name in specs):
        raise CheckpointError(f"{root}: {HF_HINT}")
    _check(root, where, specs)
    extra = sorted(set(where) - set(specs))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        warnings.warn(f"{root}: ignoring {len(extra)} tensor(s) the config does not expect: {shown}", stacklevel=2)
    tensors: dict[str, torch.Tensor] = {}
    for name, (_, want_dtype) in specs.items():
        path, entry = where[name]
        target = want_dtype if want_dtype in (torch.uint8, torch.float32) else dtype
        tensors[name] = read_tensor(path, entry).to(device=device, dtype=target)
    return config, tensors


def _refuse_hf_config(root: Path) -> None:
    """Raise the Hugging Face hint when ``root`` holds an HF-converted checkpoint (index file or HF config)."""
    if (root / "model.safetensors.index.json").is_file():
        raise CheckpointError(f"{root}: {HF_HINT}")
    try:
        data = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return  # ModelConfig.from_checkpoint reports it
    if isinstance(data, dict) and ("model_type" in data or "num_local_experts" in data):
        raise CheckpointError(f"{root}: {HF_HINT}")


def _index(files: list[Path]) -> dict[str, tuple[Path, TensorEntry]]:
    """Every tensor of every file's header: name → (file, entry).

    Raises:
        CheckpointError: a corrupt header, or a tensor present in two files.
    """
    where: dict[str, tuple[Path, TensorEntry]] = {}
    for path in files:
        for name, entry in read_header(path).items():
            if name in where:
                raise CheckpointError(f"{name} is in two files: {where[name][0]} and {path}")
            where[name] = (path, entry)
    return where


def _check(root: Path, where: dict[str, tuple[Path, TensorEntry]],
           specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Compare the headers with the expected tensors (no data read).

    Raises:
        CheckpointError: the first missing tensor (with the count of others), wrong shape or wrong dtype.
    """
    missing = [name for name in specs if name not in where]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{root}: missing tensor {missing[0]}{more}")
    for name, (shape, want) in specs.items():
        path, entry = where[name]
        if entry.shape != shape:
            raise CheckpointError(f"{path}: {name} has shape {entry.shape}, expected {shape}")
        if want == torch.uint8:
            if entry.dtype != torch.uint8:
                raise CheckpointError(f"{path}: {name} has dtype {entry.code}, expected U8 (packed MXFP4)")
        elif entry.dtype is None or not entry.dtype.is_floating_point:
            raise CheckpointError(f"{path}: {name} has dtype {entry.code}, expected a floating-point dtype")
