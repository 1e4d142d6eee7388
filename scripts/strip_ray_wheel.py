"""Repack a Ray wheel without the parts ``autotune run --ray`` never uses, so that it fits a 64 MiB device carry.

``run --ray`` needs Ray Core only: the GCS server, the raylet, ``_raylet.so`` and the Python package around them
(actors, scheduling strategies, ``ray.cluster_utils``). Dropped (uncompressed sizes in the ray 2.60.0 cp312 x86-64
wheel; the wheel goes from 75.6 MiB to 37.5 MiB):

========================== ========= =========================================================================
path in the wheel          size      why it can go
========================== ========= =========================================================================
``ray/jars/``              34.5 MB   Java workers (``ray_dist.jar``); the project's workers are Python
``ray/dashboard/client/``  9.1 MB    the dashboard's web front end; ``--ray local`` starts no dashboard
``ray/rllib/``             6.4 MB    RLlib
``ray/data/``              5.3 MB    Ray Data
``ray/serve/``             2.6 MB    Ray Serve
``ray/train/``             1.2 MB    Ray Train
``ray/tune/``              1.3 MB    Ray Tune (the project tunes with Optuna)
``ray/llm/``               1.0 MB    Ray LLM
========================== ========= =========================================================================

The ``RECORD`` keeps the hashes of the files kept (they are copied byte for byte) and loses the lines of the
dropped ones, so pip installs the result as the same distribution (same name, version and tags). The console
scripts (``ray``, ``serve``, ...) stay declared; ``serve``/``tune`` entry points then fail if called, which nothing
here does.

Usage::

    pip download "ray==2.60.0" --no-deps --only-binary=:all: --python-version 3.12 \\
        --platform manylinux2014_x86_64 -d wheels/
    python scripts/strip_ray_wheel.py wheels/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl -o wheels/stripped/
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import sys
import zipfile
from pathlib import Path

DROPPED = ("ray/jars/", "ray/dashboard/client/", "ray/rllib/", "ray/data/", "ray/serve/", "ray/train/", "ray/tune/",
           "ray/llm/")
"""Path prefixes left out (see the module docstring for why each can go)."""


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def strip(wheel: Path, out_dir: Path) -> tuple[Path, dict[str, int]]:
    """Write ``out_dir/<same file name>`` without the :data:`DROPPED` members.

    Args:
        wheel: a ``ray-*.whl``.
        out_dir: folder for the result (created); must not be the wheel's own folder.

    Returns:
        The new wheel's path and the uncompressed bytes dropped per prefix.

    Raises:
        SystemExit: not a wheel of ray, or the output would overwrite the input.
    """
    if not wheel.name.startswith("ray-") or wheel.suffix != ".whl":
        raise SystemExit(f"strip_ray_wheel: error: {wheel} is not a ray-*.whl")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    if target.resolve() == wheel.resolve():
        raise SystemExit("strip_ray_wheel: error: the output folder must differ from the wheel's folder")
    dropped = dict.fromkeys(DROPPED, 0)
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED,
                                                           compresslevel=9) as dest:
        # the wheel's own RECORD (vendored packages under ray/ carry RECORDs of their own)
        record_name = next(n for n in source.namelist() if "/" not in n.removesuffix("/RECORD")
                           and n.endswith(".dist-info/RECORD"))
        kept_rows = []
        for info in source.infolist():
            prefix = next((p for p in DROPPED if info.filename.startswith(p)), None)
            if prefix is not None:
                dropped[prefix] += info.file_size
                continue
            if info.filename == record_name:
                continue
            member = zipfile.ZipInfo(info.filename, info.date_time)  # writestr fills in the ZipInfo it gets:
            member.external_attr = info.external_attr             # never hand it the source's own
            dest.writestr(member, source.read(info), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            kept_rows.append(info.filename)
        rows = {row[0]: row for row in csv.reader(io.StringIO(source.read(record_name).decode()))}
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        missing = [name for name in kept_rows if name not in rows]
        for name in kept_rows:
            writer.writerow(rows[name] if name in rows else _record_line(name, source.read(name)))
        writer.writerow([record_name, "", ""])
        dest.writestr(record_name, text.getvalue())
    if missing:
        print(f"strip_ray_wheel: {len(missing)} member(s) had no RECORD line; hashed now: {missing[:5]}")
    partial.replace(target)  # atomic: a half-written wheel never carries the real name
    return target, dropped


def main(argv: list[str] | None = None) -> int:
    """Command line: ``strip_ray_wheel.py WHEEL -o DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("-o", "--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        print(f"strip_ray_wheel: error: no such file {args.wheel}", file=sys.stderr)
        return 2
    target, dropped = strip(args.wheel, args.out_dir)
    for prefix, size in dropped.items():
        print(f"dropped {prefix:<24} {size / 1e6:7.1f} MB uncompressed")
    print(f"{args.wheel} {args.wheel.stat().st_size / 2**20:.1f} MiB -> {target} {target.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
