"""Streaming reader and writer of the safetensors format, one tensor at a time.

Format (huggingface/safetensors ``README.md``, "Format"): 8 bytes little-endian unsigned header length N, then N
bytes of UTF-8 JSON ``{name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`` (offsets relative to the byte after the header), then the raw little-endian tensor bytes.

Why not ``safetensors.torch``: the header is read and checked on its own, so a checkpoint's shapes are validated for
all files before one data byte is read; tensors are read straight into their destination buffer (no second copy) and
written as they are produced (no whole shard in memory); and the GPU machines need no extra wheel. The result is
readable by ``safetensors.safe_open`` (tests/test_checkpoint.py checks it).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from autotune.model.config import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
"""safetensors dtype code → torch dtype (the codes this module reads and writes)."""

DTYPE_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}
"""torch dtype → safetensors dtype code."""

MAX_HEADER_BYTES = 100 * 2**20
"""Largest header accepted (the safetensors library's own limit is 100 MB)."""

HEADER_ALIGN = 8
"""The header is padded with spaces so tensor data starts 8-byte aligned (as the safetensors library writes it)."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a safetensors file.

    Attributes:
        name: tensor name.
        code: safetensors dtype code as stored (``"BF16"``); may be one this module cannot read.
        shape: tensor shape.
        offset: absolute file offset of the first data byte.
        nbytes: data bytes.
    """

    name: str
    code: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def dtype(self) -> torch.dtype | None:
        """The torch dtype, or None for a code this module does not know."""
        return DTYPES.get(self.code)


def read_header(path: str | Path) -> dict[str, TensorEntry]:
    """Parse and check a safetensors header without reading tensor data.

    Checks: the header length fits the file and the limit, the header is a JSON object of well-formed entries,
    every entry's byte range matches its shape and dtype (for known dtypes), lies inside the file and overlaps no
    other entry. A file cut short by an interrupted copy fails here.

    Args:
        path: a ``.safetensors`` file.

    Returns:
        name → :class:`TensorEntry`, in file order.

    Raises:
        CheckpointError: unreadable or malformed file (one line naming it).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: corrupt safetensors header (length {header_len}, file {size} bytes)")
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    data_start, data_len = 8 + header_len, size - 8 - header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(path, name, info, data_start, data_len)
    spans = sorted((e.offset, e.offset + e.nbytes, e.name) for e in entries.values() if e.nbytes)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: corrupt safetensors header: {first} and {second} overlap")
    return entries


def _entry(path: Path, name: str, info: object, data_start: int, data_len: int) -> TensorEntry:
    """One header entry, checked against the file's data length."""
    bad = f"{path}: corrupt safetensors header entry {name}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{bad}: not an object")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str):
        raise CheckpointError(f"{bad}: dtype {code!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise CheckpointError(f"{bad}: shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{bad}: data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_len:
        raise CheckpointError(f"{path}: truncated: {name} ends at data byte {end}, the file holds {data_len}")
    dtype = DTYPES.get(code)
    if dtype is not None:
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(f"{bad}: {end - begin} bytes for shape {tuple(shape)} {code} "
                                  f"({expected} expected)")
    return TensorEntry(name, code, tuple(shape), data_start + begin, end - begin)


def read_tensor(path: str | Path, entry: TensorEntry) -> torch.Tensor:
    """Read one tensor into a new CPU tensor (one copy: file → the tensor's own buffer).

    Args:
        path: the file ``entry`` came from (:func:`read_header`).
        entry: which tensor.

    Returns:
        CPU tensor of ``entry.shape`` and ``entry.dtype``.

    Raises:
        CheckpointError: unknown dtype, or the file is shorter than its header says (changed since read_header).
    """
    if entry.dtype is None:
        raise CheckpointError(f"{path}: {entry.name} has dtype {entry.code}, which cannot be read")
    tensor = torch.empty(entry.shape, dtype=entry.dtype)
    if entry.nbytes:
        buffer = tensor.reshape(-1).view(torch.uint8).numpy()
        try:
            with open(path, "rb") as f:
                f.seek(entry.offset)
                got = f.readinto(memoryview(buffer))
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read {entry.name}: {exc.strerror or exc}") from None
        if got != entry.nbytes:
            raise CheckpointError(f"{path}: truncated: read {got} of {entry.nbytes} bytes of {entry.name}")
    return tensor


def header_bytes(layout: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and padded JSON header for tensors written back to back in ``layout`` order.

    Args:
        layout: (name, shape, dtype) per tensor, in file order.
        metadata: optional ``__metadata__`` string map.

    Returns:
        The bytes that precede the tensor data (8-byte length + header padded to :data:`HEADER_ALIGN`).
    """
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in layout:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text


def write_streaming(path: str | Path, layout: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
                    tensors: Iterable[torch.Tensor], *, metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file tensor by tensor: only the tensor being written is held.

    The file is written under ``.NAME.partial`` beside ``path`` and renamed when complete, so an interrupted write
    never leaves a file named ``*.safetensors``.

    Args:
        path: destination file.
        layout: (name, shape, dtype) per tensor, in the order ``tensors`` yields them.
        tensors: the tensors (any device), each matching its layout entry.
        metadata: optional ``__metadata__``.

    Returns:
        Bytes written.

    Raises:
        ValueError: a tensor does not match its layout entry, or the counts differ.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    written = 0
    try:
        with open(partial, "wb") as f:
            written += f.write(header_bytes(layout, metadata))
            for (name, shape, dtype), tensor in zip(layout, tensors, strict=True):
                if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                    raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, layout says {shape} {dtype}")
                data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
                written += f.write(memoryview(data))
                del tensor, data  # before the next tensor is produced: hold one at a time
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return written
