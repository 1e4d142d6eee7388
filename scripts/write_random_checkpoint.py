"""Write a random-weight gpt-oss checkpoint in the original release layout (config.json + safetensors shards).

    python scripts/write_random_checkpoint.py /tmp/rand20b --size 20b --layers 2 --device cuda
    python scripts/write_random_checkpoint.py /tmp/tiny --config tiny.json --shard-gb 0.001

Weights are generated tensor by tensor (statistics and their reasons: :mod:`autotune.model.random_weights`), moved
to the CPU and gathered into one shard, which ``safetensors.torch.save_file`` then writes: memory holds one shard at
a time (≤ ``--shard-gb``, 4 GB by default, plus the tensor being generated), whatever the model size. Shards are
named ``model--00001-of-0000N.safetensors`` (``model.safetensors`` when there is one) and each file stays under
``--shard-gb`` (a single tensor larger than that gets a shard of its own). Each shard is written under a hidden
``.partial`` name and renamed when complete; ``config.json`` is written last (and removed first by ``--force``), so
an interrupted write never loads as a checkpoint.

Measured (2026-11-21): ``--size 20b --layers 2`` (3.27 GB, one shard) takes 23.2 s on the 2-core CPU dev machine
(torch 2.13 CPU, safetensors 0.8; peak RSS 3.5 GB: the shard). With the earlier hand-written streaming writer (one
tensor held, not one shard) it took 15.9 s there (peak RSS 2.5 GB) and 3.6 s with ``--device cuda`` on the lent H100
(torch 2.11); the full 20b (13.76 GB, 4 shards) 11.3 s on the H100; loading it back onto the GPU took 8.1 s (files
in the page cache) with peak GPU memory equal to the model's size. With save_file, the full 20b with ``--device cuda``
on the lent H100 (torch 2.11, safetensors carried as a wheel) took 17.8, 17.1, 15.1 and 17.3 s in four runs (its
own "wrote ... in N s" line; listed in scripts/results/README.md).

Errors (bad arguments, an unwritable or non-empty directory without ``--force``) print one line on stderr and exit
with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from safetensors import SafetensorError  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from autotune.errors import UserError  # noqa: E402
from autotune.model.config import NAMED_CONFIGS, ModelConfig  # noqa: E402
from autotune.model.random_weights import random_weights  # noqa: E402

DEFAULT_SHARD_BYTES = 4 * 10**9
"""Largest shard file (4 GB), as in the released checkpoints' sharding."""

HEADER_SLACK = 64
"""Header bytes budgeted per file besides the entries (length prefix, metadata, padding)."""


def plan_shards(config: ModelConfig, shard_bytes: int) -> list[list[tuple[str, tuple[int, ...], torch.dtype]]]:
    """Split the tensors, in spec order, into shards whose file size stays ≤ ``shard_bytes``.

    Planned from the specs (so the shard count, which the file names carry, is known before any tensor exists). The
    header ``save_file`` writes is budgeted at ``len(name) + 128`` bytes per tensor (an entry's JSON,
    ``{"dtype":..,"shape":[..],"data_offsets":[b,e]}``, is shorter than that), so the bound holds for the whole file.
    A tensor larger than ``shard_bytes`` alone gets a shard of its own.

    Returns:
        Shards, each a list of (name, shape, dtype) in write order.
    """
    shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
    used = HEADER_SLACK
    for name, (shape, dtype) in config.tensor_specs().items():
        cost = math.prod(shape) * dtype.itemsize + len(name) + 128
        if shards[-1] and used + cost > shard_bytes:
            shards.append([])
            used = HEADER_SLACK
        shards[-1].append((name, shape, dtype))
        used += cost
    return shards


def shard_name(index: int, count: int) -> str:
    """``model.safetensors`` for a single shard, else ``model--0000i-of-0000n.safetensors`` (i from 1)."""
    return "model.safetensors" if count == 1 else f"model--{index + 1:05d}-of-{count:05d}.safetensors"


def prepare_dir(out_dir: Path, *, force: bool) -> None:
    """Create ``out_dir`` or, with ``force``, clear the checkpoint files of an existing one (config.json first).

    Raises:
        UserError: ``out_dir`` is a file, is not empty and ``force`` is off, or cannot be created.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"{out_dir}: directory is not empty (use --force to overwrite its checkpoint)")
        (out_dir / "config.json").unlink(missing_ok=True)
        for old in [*out_dir.glob("*.safetensors"), *out_dir.glob(".*.partial")]:
            old.unlink()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot create the directory: {exc.strerror or exc}") from None


def write_random_checkpoint(
    out_dir: str | Path,
    config: ModelConfig,
    *,
    seed: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    device: torch.device | str = "cpu",
    force: bool = False,
) -> list[Path]:
    """Write ``config.json`` and random safetensors shards for ``config`` into ``out_dir``.

    Args:
        out_dir: destination directory (created; must be empty unless ``force``).
        config: model configuration (any size).
        seed: RNG seed (the same seed and device type give the same weights, whatever the sharding).
        shard_bytes: largest shard file in bytes.
        device: where the weights are generated (``"cuda"`` is much faster for full-size models).
        force: overwrite the ``config.json`` and ``*.safetensors`` of a non-empty ``out_dir`` (other files stay).

    Memory: one shard's tensors (≤ ``shard_bytes``) are held on the CPU while it is written, plus the tensor being
    generated on ``device``.

    Returns:
        The files written: the shards in order, then ``config.json``.

    Raises:
        UserError: the directory is unusable (see :func:`prepare_dir`) or a write failed (one line).
    """
    out_dir = Path(out_dir)
    if shard_bytes <= 0:
        raise UserError(f"shard size must be positive, got {shard_bytes} bytes")
    prepare_dir(out_dir, force=force)
    shards = plan_shards(config, shard_bytes)
    weights = random_weights(config, seed=seed, device=device)
    written: list[Path] = []
    try:
        for index, layout in enumerate(shards):
            path = out_dir / shard_name(index, len(shards))
            _write_shard(path, {name: _next_named(weights, name).to("cpu").contiguous() for name, _, _ in layout})
            written.append(path)
        config_path = out_dir / "config.json"
        partial = out_dir / ".config.json.partial"
        partial.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        os.replace(partial, config_path)
    except OSError as exc:
        raise UserError(f"{out_dir}: write failed: {exc.strerror or exc}") from None
    except SafetensorError as exc:  # save_file's I/O errors
        raise UserError(f"{out_dir}: write failed: {' '.join(str(exc).split())}") from None
    return [*written, config_path]


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``save_file`` the CPU ``tensors`` to ``.NAME.partial`` beside ``path``, then rename it to ``path``.

    An interrupted or failed write leaves neither ``path`` nor the partial file.

    Raises:
        OSError, SafetensorError: the write or the rename failed.
    """
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(partial), metadata={"format": "pt"})
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _next_named(weights, name: str) -> torch.Tensor:
    """The next tensor of the generator, which must be ``name`` (the shard plan follows the spec order)."""
    got, tensor = next(weights)
    if got != name:
        raise AssertionError(f"random weights out of order: {got} where {name} was planned")
    return tensor


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _OneLineParser(prog="write_random_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write (created)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--size", choices=sorted(NAMED_CONFIGS), help="a released size")
    which.add_argument("--config", type=Path, help="a config.json with ModelConfig fields")
    parser.add_argument("--layers", type=int, help="override num_hidden_layers (e.g. 2 for a 20b-width benchmark)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-gb", type=float, default=DEFAULT_SHARD_BYTES / 1e9, help="largest shard, GB (1e9 B)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to generate the weights")
    parser.add_argument("--force", action="store_true", help="overwrite the checkpoint in a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    if args.layers is not None and args.layers <= 0:
        parser.error(f"--layers must be positive, got {args.layers}")
    if not args.shard_gb > 0:
        parser.error(f"--shard-gb must be positive, got {args.shard_gb}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = NAMED_CONFIGS[args.size] if args.size else _config_file(args.config)
        if args.layers is not None:
            config = config.with_layers(args.layers)
        start = time.perf_counter()
        files = write_random_checkpoint(args.out_dir, config, seed=args.seed, shard_bytes=int(args.shard_gb * 1e9),
                                        device=args.device, force=args.force)
    except UserError as exc:
        print(f"write_random_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    size_gb = sum(f.stat().st_size for f in files) / 1e9
    print(f"wrote {args.out_dir}: {len(files) - 1} shard(s), {size_gb:.2f} GB, {config.num_hidden_layers} layers, "
          f"{config.num_experts} experts, in {seconds:.1f} s on {args.device}")
    return 0


def _config_file(path: Path) -> ModelConfig:
    """A ModelConfig from a JSON file of any name.

    Raises:
        CheckpointError: unreadable file or invalid values.
    """
    from autotune.model.config import CheckpointError

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the config: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the config must hold a JSON object")
    return ModelConfig.from_dict(data, source=str(path))


if __name__ == "__main__":
    sys.exit(main())
