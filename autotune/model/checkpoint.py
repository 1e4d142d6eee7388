"""Load a gpt-oss checkpoint in the original release layout (``config.json`` + ``*.safetensors``).

The layout is the ``original/`` folder of the released repositories (``../shared/FACTS.md``, "Checkpoint layout");
the expected tensors are :meth:`ModelConfig.tensor_specs`. Files are read with the ``safetensors`` library
(``safe_open``): every file's header (names, shapes, dtypes) is checked against the specs before any tensor data is
read, so a wrong file fails in milliseconds; then tensors are read one at a time (``get_tensor``, straight onto the
target device) and converted to the target dtype, so loading never holds more than the model plus one tensor (the
20b is 13.8 GB). On the CPU, tensors kept in their stored dtype may stay backed by the file's memory map
(safetensors' choice), read on first use: loading a 3.27 GB file to the CPU took < 0.1 s and 0.23 GB peak RSS.

The Hugging Face converted layout (``model.safetensors.index.json``, ``model.layers.N...`` names) is refused with a
message that points at its ``original/`` folder.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from autotune.files import read_bounded
from autotune.model.config import (
    CheckpointError,
    ModelConfig,
    checkpoint_dir,
    read_config_json,
)

HF_HINT = "this looks like the Hugging Face layout; point --checkpoint at its original/ folder"

FLOAT_CODES = frozenset({"F16", "BF16", "F32"})
"""safetensors dtype codes (``get_slice(name).get_dtype()``) accepted for the floating-point tensors. The release
stores bf16 (norm scales fp32); fp16 and fp32 copies (test checkpoints, conversions) are accepted too: into fp32 the
conversion is exact, into bf16 it rounds each value once to nearest (what the release's own bf16 already is)."""

REFUSED_FLOAT_CODES = {"F64": "fp64 would be rounded silently: convert the checkpoint to bf16 or fp32 first",
                       "F8_E4M3": "fp8 without scales is not this layout (only the MoE experts are quantized, as MXFP4)",
                       "F8_E5M2": "fp8 without scales is not this layout (only the MoE experts are quantized, as MXFP4)"}
"""Floating-point codes refused, with the reason named in the message."""

_LAYER = re.compile(r"block\.(\d+)\.")

Header = tuple[Path, tuple[int, ...], str]
"""What a header says of one tensor: (file, shape, safetensors dtype code such as ``"BF16"``)."""


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
        CheckpointError: one line naming the file and/or tensor: no or invalid ``config.json`` (a required field
            missing, a value out of range), no safetensors file, an unreadable, non-regular or corrupt file (a
            header length beyond the file or the limit), a tensor missing, in two files, of a layer the config does
            not have, of the wrong shape or dtype (fp64 and fp8 are refused; bf16, fp16 and fp32 are converted to
            ``dtype`` as :data:`FLOAT_CODES` says), or the Hugging Face layout. Everything is checked from the
            headers before any tensor data is read.

    Warns:
        UserWarning: once, listing tensors that the config does not expect (they are not loaded).
    """
    root = checkpoint_dir(directory)
    if (root / "model.safetensors.index.json").is_file():
        raise CheckpointError(f"{root}: {HF_HINT}")
    path = root / "config.json"
    data = read_config_json(path)
    if "model_type" in data or "num_local_experts" in data:
        raise CheckpointError(f"{root}: {HF_HINT}")
    config = ModelConfig.from_dict(data, source=str(path))
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{root}: no *.safetensors files in the checkpoint directory")
    where = _index(files)
    if any(name.startswith(("model.layers.", "model.embed_tokens.")) for name in where) and not any(
            name.startswith(("embedding.", "block.")) for name in where):
        raise CheckpointError(f"{root}: {HF_HINT}")
    _check_layers(path, where, config)
    specs = config.tensor_specs()
    _check(root, where, specs)
    extra = sorted(set(where) - set(specs))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        warnings.warn(f"{root}: ignoring {len(extra)} tensor(s) the config does not expect: {shown}", stacklevel=2)
    loaded: dict[str, torch.Tensor] = {}
    for path in files:
        names = [name for name in specs if where[name][0] == path]
        if not names:
            continue
        with _open(path, device) as f:
            for name in names:
                spec_dtype = specs[name][1]
                target = spec_dtype if spec_dtype in (torch.uint8, torch.float32) else dtype
                with _errors(path, f"cannot read {name}"):
                    tensor = f.get_tensor(name)
                loaded[name] = tensor.to(dtype=target)  # one tensor at a time: the stored copy is dropped here
                del tensor
    return config, {name: loaded[name] for name in specs}


def _check_layers(config_path: Path, where: dict[str, Header], config: ModelConfig) -> None:
    """The files' layers (``block.N.*``) must be the config's layers 0..L-1: a config with fewer layers than the
    files would run a truncated model, one with more is missing tensors (reported with the first one missing).

    Raises:
        CheckpointError: naming the first tensor of a layer the config does not have.
    """
    layers = config.num_hidden_layers
    beyond = [(int(match.group(1)), name) for name in where
              if (match := _LAYER.match(name)) and int(match.group(1)) >= layers]
    if beyond:
        layer, name = min(beyond)
        raise CheckpointError(f"{where[name][0]}: {name} belongs to layer {layer}, but {config_path} says "
                              f"num_hidden_layers {layers} (layers 0..{layers - 1})")


def _check_header_size(path: Path) -> None:
    """Read a safetensors file's 8-byte header length (bounded, regular files only) and check it against
    :data:`autotune.defaults.MAX_SAFETENSORS_HEADER_BYTES` and the file size before the library reads the header.

    Raises:
        CheckpointError: not a regular file, shorter than its header, or a header length over the limit.
    """
    from autotune import defaults

    prefix = read_bounded(path, 8, what="safetensors file", error=CheckpointError, prefix=True)
    if len(prefix) < 8:
        raise CheckpointError(f"{path}: cannot read the header (corrupt or truncated safetensors file): "
                              f"{len(prefix)} bytes, shorter than the 8-byte header length")
    length = int.from_bytes(prefix, "little")
    if length > defaults.MAX_SAFETENSORS_HEADER_BYTES:
        raise CheckpointError(f"{path}: cannot read the header (corrupt safetensors file): it declares {length} "
                              f"bytes, over the limit of {defaults.MAX_SAFETENSORS_HEADER_BYTES}")
    size = path.stat().st_size
    if 8 + length > size:
        raise CheckpointError(f"{path}: cannot read the header (truncated safetensors file): it declares {length} "
                              f"bytes, the file has {size - 8} after the length")


@contextmanager
def _errors(path: Path, what: str) -> Iterator[None]:
    """Turn the ``safetensors`` library's errors inside the block into a one-line :class:`CheckpointError`.

    ``safe_open`` raises ``SafetensorError`` for a malformed or truncated file ("Error while deserializing header:
    ..."), ``OSError`` for an unreadable one.
    """
    try:
        yield
    except SafetensorError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{path}: {what} (corrupt or truncated safetensors file): {detail}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: {what}: {exc.strerror or ' '.join(str(exc).split())}") from None


@contextmanager
def _open(path: Path, device: torch.device | str = "cpu") -> Iterator:
    """``safe_open(path)`` whose tensors land on ``device``, with the library's errors as :class:`CheckpointError`."""
    with _errors(path, "cannot read"):
        handle = safe_open(str(path), framework="pt", device=str(torch.device(device)))
    with handle as f:
        yield f


def _index(files: list[Path]) -> dict[str, Header]:
    """Every tensor of every file's header: name → (file, shape, dtype code). No tensor data is read.

    Raises:
        CheckpointError: an unreadable or corrupt file, or a tensor present in two files.
    """
    where: dict[str, Header] = {}
    for path in files:
        _check_header_size(path)
        with _open(path) as f, _errors(path, "cannot read the header"):
            for name in f.keys():
                if name in where:
                    raise CheckpointError(f"{name} is in two files: {where[name][0]} and {path}")
                info = f.get_slice(name)
                where[name] = (path, tuple(info.get_shape()), info.get_dtype())
    return where


def _check(root: Path, where: dict[str, Header],
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
        path, got_shape, code = where[name]
        if got_shape != shape:
            raise CheckpointError(f"{path}: {name} has shape {got_shape}, expected {shape}")
        if want == torch.uint8:
            if code != "U8":
                raise CheckpointError(f"{path}: {name} has dtype {code}, expected U8 (packed MXFP4)")
        elif code in REFUSED_FLOAT_CODES:
            raise CheckpointError(f"{path}: {name} has dtype {code}, expected BF16, F16 or F32 "
                                  f"({REFUSED_FLOAT_CODES[code]})")
        elif code not in FLOAT_CODES:
            raise CheckpointError(f"{path}: {name} has dtype {code}, expected a floating-point dtype")
