"""The same small tuning run twice on one GPU, without and with ``--ray local``, and their results side by side.

Proof for ``run --ray`` on a real GPU: the Ray path (one actor holding the GPU, compile-ahead actors on the CPUs)
must find the same winners, within timing noise, as the local worker pool. Each run gets its own storage and table
under ``--out`` (nothing else is touched); the script then prints, per study, the re-timed median µs of the
winner and of the default config in both runs, their ratio, whether the winning configs are the same, the wall
time of each run, and where the Ray run's trials ran (node, GPU index, device key).

    python scripts/ray_gpu_check.py --out /tmp/raycheck                 # defaults: 20b mlp1 at M=1 and 256
    python scripts/ray_gpu_check.py --out $OUT --shapes "M=1,16,256" --trials 12

Needs a CUDA GPU and Ray (``pip install ray`` or the wheel repacked by ``scripts/strip_ray_wheel.py``).
Exit code 0 when both runs succeeded (the comparison is printed for a person to judge: timing noise on a shared
GPU is not a failure), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(label: str, out: Path, common: list[str], extra: list[str]) -> tuple[int, float, Path, Path]:
    storage, table = out / f"{label}.db", out / f"{label}.json"
    argv = [sys.executable, "-m", "autotune", "run", *common, "--storage", f"sqlite:///{storage}", "--table",
            str(table), *extra]
    print(f"== {label}: {' '.join(argv[1:])}", flush=True)
    start = time.monotonic()
    with open(out / f"{label}.log", "w") as log:
        code = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    elapsed = time.monotonic() - start
    print((out / f"{label}.log").read_text()[-2500:], flush=True)
    return code, elapsed, storage, table


def _entries(table: Path) -> dict[str, dict]:
    if not table.is_file():
        return {}
    devices = json.loads(table.read_text())["devices"]
    return {f"{key} [{device}]": entry for device, section in devices.items()
            for key, entry in section["entries"].items()}


def _placements(storage: Path) -> dict[tuple, int]:
    import optuna

    counts: dict[tuple, int] = {}
    url = f"sqlite:///{storage}"
    for name in optuna.get_all_study_names(storage=url):
        for trial in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False):
            attrs = trial.user_attrs
            if "median_us" in attrs and "duplicate_of" not in attrs:
                place = (attrs.get("node"), attrs.get("gpu"), attrs.get("device_key"))
                counts[place] = counts.get(place, 0) + 1
    return counts


def main() -> int:
    """Both runs, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the two storages, tables and logs")
    parser.add_argument("--kernel", default="moe_gemm")
    parser.add_argument("--preset", default="gpt_oss_20b")
    parser.add_argument("--variants", default="mlp1")
    parser.add_argument("--shapes", default="M=1,256")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = [args.kernel, "--preset", args.preset, "--variants", args.variants, "--shapes", args.shapes,
              "--trials", str(args.trials), "--seed", str(args.seed)]
    local = _run("local", args.out, common, ["--gpus", "0"])
    ray = _run("ray", args.out, common, ["--ray", "local", "--ray-actors", "1"])

    left, right = _entries(local[3]), _entries(ray[3])
    print(f"\nwall time: local {local[1]:.0f} s, ray {ray[1]:.0f} s (ray includes starting the cluster)")
    print(f"{'study':<60} {'best local':>11} {'best ray':>11} {'ray/local':>9} {'default local':>14} "
          f"{'default ray':>12} {'same config':>11}")
    for name in sorted(set(left) | set(right)):
        a, b = left.get(name), right.get(name)
        if a is None or b is None:
            print(f"{name:<60} {'missing in ' + ('local' if a is None else 'ray'):>11}")
            continue
        print(f"{name:<60} {a['median_us']:>11.2f} {b['median_us']:>11.2f} {b['median_us'] / a['median_us']:>9.3f} "
              f"{a['default_median_us']:>14.2f} {b['default_median_us']:>12.2f} {a['config'] == b['config']!s:>11}")
    if ray[2].is_file():
        print("\nray run: measured trials per (node, GPU index, device key):")
        for place, count in sorted(_placements(ray[2]).items(), key=str):
            print(f"  {place}: {count}")
    return 0 if local[0] == 0 and ray[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
