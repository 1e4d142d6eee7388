"""Benchmark of the MoE GEMM kernel paths: the default config of each path ("mma", "gemv") per variant and M.

The gemv default is also timed with its other decodes where the device has them: the inline-PTX decode on sm_90+
(row "gemv+ptx", ``dequant="upcast_ptx"``) and the int8-lookup dp4a products (row "gemv+dp4a", ``dequant="dp4a"``);
the gemv sweep covers the decodes named by ``--sweep-dequant`` (default: all of them).

For mlp1 and mlp2 at gpt-oss widths and each token count M it times the default config of every path
(:func:`kernels.moe_gemm.heuristics.path_default`), after checking it against the fp32 reference, and prints the
median µs, GB/s and its fraction of the copy bandwidth measured in the same run (:mod:`autotune.device.peaks`),
TFLOP/s and its fraction of the measured bf16 matmul rate, and which path the default heuristic picks. The gemv path
is timed where the search space offers it (at most 8 rows per expert; beyond it a 16-row MMA tile does the same
work). Timing is the tuner's (:func:`autotune.tuning.timing.median_us`: CUDA-graph replay over input sets that
rotate experts, so the weights come from DRAM).

``--gemv-sweep`` also times a small grid of gemv configs (BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K) at each
decode M and prints the fastest: evidence for the gemv defaults, not a substitute for ``autotune run``.
``--mma-sweep`` times a grid of MMA configs (``--mma-grid``) at the ``--mma-M`` token counts, each with and without
``swap_ab`` (the decoded weights as the MMA's first operand), plus the table's config at each shape both ways, and
prints the best of each side: the evidence for where swap-AB pays.

    python scripts/bench_moe_variants.py --out scripts/results/<date>-<device>-moe-variants.md   # H200: ~1-2 min
    python scripts/bench_moe_variants.py --cpu-smoke    # tiny shapes under TRITON_INTERPRET=1 (tests run this)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

M_VALUES = (1, 2, 4, 8, 16, 64, 256, 2048)
MODELS = {"20b": 32, "120b": 128}
SMOKE = {"hidden": 64, "intermediate": 64, "E": 4, "top_k": 2, "M": (1, 3, 16)}
"""--cpu-smoke shapes: small enough for the interpreter (a few seconds per launch), M = 16 beyond the gemv range (the
only M of --mma-sweep there; --M '' skips the default rows)."""

GEMV_SWEEP = {"BLOCK_N": (16, 32, 64), "BLOCK_K": (256, 512), "num_warps": (4, 8), "num_stages": (1, 2),
              "l2_prefetch": (False,), "persistent": (0,)}
"""``l2_prefetch`` and ``persistent`` (programs per SM of the persistent schedule, 0: the grid) apply to dp4a only."""
GEMV_SWEEP_SPLIT_K = (1, 2, 4)
"""The --gemv-sweep grid (SPLIT_K for mlp2 only: mlp1's fused SwiGLU needs the whole K sum); small enough to
compile and time in about a minute on an H200."""


MMA_SWEEP = {"BLOCK_M": (64, 128), "BLOCK_N": (128, 256), "BLOCK_K": (64, 128), "num_warps": (8,),
             "num_stages": (3,), "GROUP_M": (8,), "dequant": ("upcast_ptx",)}
"""The default --mma-grid (prefill-sized tiles); every config is timed with swap_ab False and True."""


GEMV_DECODE_ROWS = {"upcast": "gemv", "upcast_ptx": "gemv+ptx", "dp4a": "gemv+dp4a"}
"""Row label of the gemv default with each decode."""


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="20b")
    parser.add_argument("--M", default=",".join(map(str, M_VALUES)), help="token counts, comma-separated")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="timed milliseconds per measurement")
    parser.add_argument("--gemv-sweep", action="store_true", help="also sweep gemv configs at the --sweep-M values")
    parser.add_argument("--sweep-M", default="1,8",
                        help="token counts of --gemv-sweep, comma-separated (each also in --M)")
    parser.add_argument("--sweep-dequant", default="", help="gemv decodes of --gemv-sweep, comma-separated "
                        "(upcast, upcast_ptx, dp4a; default: every one the device has)")
    parser.add_argument("--sweep-block-n", default="16,32,64", help="BLOCK_N values of --gemv-sweep")
    parser.add_argument("--sweep-grid", default="{}", help='JSON replacing other --gemv-sweep values, e.g. '
                        '\'{"num_warps": [4], "num_stages": [1]}\'')
    parser.add_argument("--sweep-mlp1-split-k", default="1", help="SPLIT_K values of --gemv-sweep for mlp1 (above "
                        "1 with the unfused SwiGLU, whose split sums accumulate in float32)")
    parser.add_argument("--mma-sweep", action="store_true", help="time MMA configs with and without swap_ab")
    parser.add_argument("--mma-M", default="2048,8192", help="token counts of --mma-sweep, comma-separated")
    parser.add_argument("--mma-grid", default="{}", help="JSON replacing --mma-sweep grid values (keys of "
                        "BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M, dequant)")
    parser.add_argument("--table", help="table whose config at each --mma-M shape is also timed both ways "
                        "(default: studies/tables/configs.json)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes under the Triton interpreter")
    parser.add_argument("--out", help="also write the markdown report here")
    args = parser.parse_args(argv)
    try:
        args.M = [int(v) for v in args.M.split(",") if v]
        args.sweep_M = [int(v) for v in args.sweep_M.split(",")]
        args.sweep_block_n = tuple(int(v) for v in args.sweep_block_n.split(","))
        args.sweep_mlp1_split_k = tuple(int(v) for v in args.sweep_mlp1_split_k.split(","))
        args.sweep_grid = {key: tuple((bool if key == "l2_prefetch" else int)(v) for v in values)
                           for key, values in json.loads(args.sweep_grid).items()}
        args.mma_M = [int(v) for v in args.mma_M.split(",")]
        mma_grid = json.loads(args.mma_grid)
        args.mma_grid = {key: tuple(values) for key, values in mma_grid.items()}
    except (ValueError, TypeError, AttributeError):
        parser.error(f"--M, --sweep-M, --sweep-block-n and --sweep-mlp1-split-k must be comma-separated integers and "
                     f"--sweep-grid a JSON object of integer lists, got {args.M!r} / {args.sweep_M!r} / "
                     f"{args.sweep_block_n!r} / {args.sweep_mlp1_split_k!r} / {args.sweep_grid!r}; --mma-M "
                     f"comma-separated integers and --mma-grid a JSON object of lists, got {args.mma_M!r} / "
                     f"{args.mma_grid!r}")
    unknown = sorted(set(args.mma_grid) - set(MMA_SWEEP))
    if unknown:
        parser.error(f"--mma-grid: unknown keys {unknown} (known: {', '.join(MMA_SWEEP)})")
    args.mma_grid = {**MMA_SWEEP, **args.mma_grid}
    unknown = sorted(set(args.sweep_grid) - set(GEMV_SWEEP))
    if unknown:
        parser.error(f"--sweep-grid: unknown keys {unknown} (known: {', '.join(GEMV_SWEEP)})")
    args.sweep_grid = {**GEMV_SWEEP, "BLOCK_N": args.sweep_block_n, **args.sweep_grid}  # the --gemv-sweep grid
    args.sweep_dequant = tuple(filter(None, args.sweep_dequant.split(",")))
    unknown = sorted(set(args.sweep_dequant) - set(GEMV_DECODE_ROWS))
    if unknown:
        parser.error(f"--sweep-dequant: unknown decodes {unknown} (known: {', '.join(GEMV_DECODE_ROWS)})")
    if (not args.M and not args.mma_sweep) or min(args.M, default=1) < 1:
        parser.error("--M values must be >= 1 (--M '' with --mma-sweep times the sweep only)")
    missing = sorted(set(args.sweep_M) - set(args.M))
    if args.gemv_sweep and not args.cpu_smoke and missing:
        parser.error(f"--sweep-M {','.join(map(str, missing))} not in --M: the gemv sweep runs beside each --M "
                     "value's default rows")
    return args


class _Bench:
    """Where and how to run: the GPU (bf16, CUDA-graph timing, measured peaks) or the interpreter (fp16, wall clock,
    no peaks)."""

    def __init__(self, cpu_smoke: bool):
        import torch

        self.cpu = cpu_smoke
        self.device_name = "cpu" if cpu_smoke else "cuda"
        self.dtype = torch.float16 if cpu_smoke else torch.bfloat16
        if cpu_smoke:
            from autotune.device import INTERPRETER

            self.profile, self.copy_gbps, self.mm_tflops = INTERPRETER, math.nan, math.nan
        else:
            from autotune import device as device_mod
            from autotune.device.peaks import measure_peaks

            self.profile = device_mod.detect(0)
            self.copy_gbps, self.mm_tflops = measure_peaks()

    def header(self) -> list[str]:
        import datetime
        import platform

        import torch
        import triton

        if self.cpu:
            where = "Triton interpreter on the CPU (timings are not GPU numbers)"
            driver = "n/a"
        else:
            from autotune.device import nvml_readings

            where = f"{self.profile.name} ({self.profile.key}, {self.profile.sm_count} SMs)"
            driver = nvml_readings.driver_version()
        return [
            (f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; device {where}; driver {driver}; "
             f"torch {torch.__version__}; triton {triton.__version__}; python {platform.python_version()}"),
            (f"measured copy {self.copy_gbps:.0f} GB/s (read+write), bf16 8192^3 matmul {self.mm_tflops:.0f} "
             f"TFLOP/s; activations {str(self.dtype).removeprefix('torch.')}"),
        ]

    def check(self, moe, variant, shape, config, seed) -> float:
        """Row-wise error against the fp32 reference; raises RuntimeError over the tolerance."""
        from autotune.tuning.evaluate import row_relative_error

        inputs = moe.make_inputs(variant, shape, dtype=self.dtype, device=self.device_name, seed=seed)
        err = row_relative_error(moe.launch(variant, inputs, config), moe.reference(variant, inputs))
        tol = moe.tolerance(variant, self.dtype, config).max_rel_err
        if not err <= tol:
            raise RuntimeError(f"{variant} {shape} {config}: error {err:.2e} > {tol:.1e}")
        return err

    def time_us(self, moe, variant, sets, config, rep_ms) -> float:
        from autotune.tuning.timing import median_us
        from scripts.bench_common import kernel_calls

        return median_us(kernel_calls(moe, variant, sets, config), on_gpu=not self.cpu, rep_ms=rep_ms).median_us


def _timing_sets(moe, bench, variant, shape):
    cache = 0 if bench.cpu else bench.profile.l2_bytes
    return moe.make_timing_inputs(variant, shape, dtype=bench.dtype, device=bench.device_name, seed=7,
                                  cache_bytes=cache)


def _gemv_dequants(bench) -> tuple[str, ...]:
    """The gemv's decodes on this device: the Triton ops, the inline PTX on sm_90+ GPUs, dp4a on sm_61+ (and its
    Triton-op twin under the interpreter)."""
    from search_spaces.moe_gemm import dequant_supported

    return tuple(d for d in GEMV_DECODE_ROWS if dequant_supported({"dequant": d}, None, bench.profile) is None)


def _sweep_gemv(moe, bench, variant, shape, sets, rep_ms, dequants, grid,
                mlp1_splits=(1,)) -> tuple[float, dict] | None:
    """Fastest of ``grid`` (:data:`GEMV_SWEEP`'s keys; mlp1 split ``mlp1_splits``, unfused above 1) with each of
    ``dequants`` at one shape (configs the search space would prune are skipped)."""
    from search_spaces import moe_gemm as space_mod

    space = space_mod.space(variant, shape.as_dict(), bench.profile)
    best = None
    splits = GEMV_SWEEP_SPLIT_K if variant == "mlp2" else mlp1_splits
    for values in itertools.product(*grid.values(), splits, dequants):
        params = dict(zip((*grid, "SPLIT_K", "dequant"), values))
        per_sm = params.pop("persistent")
        config = {**moe.default_config(variant, shape.as_dict(), bench.profile), "path": "gemv", "GROUP_M": 1,
                  "schedule": "persistent" if per_sm else "grid", "programs_per_sm": per_sm or 1, "BLOCK_M": 16,
                  **params}
        if variant == "mlp1" and params["SPLIT_K"] > 1:
            config["fuse_swiglu"] = params["fuse_swiglu"] = False
        if (config["l2_prefetch"] or per_sm) and config["dequant"] != "dp4a":
            continue  # (the prefetch and the persistent schedule exist on the dp4a gemv only)
        if per_sm:
            params["persistent"] = per_sm
        if space.check(config, shape.as_dict(), bench.profile) is not None:
            continue
        cfg = moe.config_from_dict(config)
        us = bench.time_us(moe, variant, sets, cfg, rep_ms)
        print(f"  sweep {variant} M={shape.M}: {us:.1f} us {params}", flush=True)
        if best is None or us < best[0]:
            best = (us, params)
    return best


def _sweep_mma(moe, bench, variant, shape, sets, rep_ms, grid, table) -> tuple[list[str], str] | None:
    """Time every config of ``grid`` (:data:`MMA_SWEEP`'s keys, on the MMA default) and the table's config at
    ``shape`` with ``swap_ab`` False and True (each checked against the fp32 reference first; configs the search
    space prunes are skipped). Returns the per-config lines and the summary row (best of each side), or None."""
    from search_spaces import moe_gemm as space_mod

    space = space_mod.space(variant, shape.as_dict(), bench.profile)
    base = moe.heuristics.path_default(variant, shape.as_dict(), bench.profile, "mma")
    candidates = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if table is not None:
        served = table.lookup("moe_gemm", variant, shape.as_dict()).config.as_dict()
        if served["path"] == "mma" and served["dequant"] in ("upcast", "upcast_ptx"):
            served.pop("swap_ab")  # each side sets its own (the line's swap_ab=...)
            candidates.insert(0, {**served, "table": True})
    lines, best = [], {False: None, True: None}
    for params in candidates:
        from_table = params.pop("table", False)
        for swap in (False, True):
            config = {**base, **params, "swap_ab": swap}
            reason = space.check(config, shape.as_dict(), bench.profile)
            if reason is not None:
                lines.append(f"  mma {variant} M={shape.M} swap_ab={swap}: pruned ({reason}) {params}")
                continue
            cfg = moe.config_from_dict(config)
            bench.check(moe, variant, shape, cfg, seed=11)
            us = bench.time_us(moe, variant, sets, cfg, rep_ms)
            label = "table " if from_table else ""
            lines.append(f"  mma {variant} M={shape.M} swap_ab={swap}: {us:.1f} us {label}{params}")
            print(lines[-1], flush=True)
            if best[swap] is None or us < best[swap][0]:
                best[swap] = (us, label + str(params))
    if best[False] is None or best[True] is None:
        return None
    cost = moe.cost(variant, sets)
    (us0, cfg0), (us1, cfg1) = best[False], best[True]
    return lines, (f"| {variant} | {shape.M} | {us0:.1f} | {us1:.1f} | {us0 / us1:.2f} | "
                   f"{cost.flops / us1 / 1e6 / bench.mm_tflops:.2f} | {cost.bytes / us1 / 1e3 / bench.copy_gbps:.2f} "
                   f"| {cfg0} | {cfg1} |")


def run(args) -> list[str]:
    """Measure and return the report lines."""
    import kernels.moe_gemm as moe
    from kernels.moe_gemm.heuristics import path_default
    from search_spaces.moe_gemm import gemv_offered

    bench = _Bench(args.cpu_smoke)
    if args.cpu_smoke:
        dims = {k: SMOKE[k] for k in ("hidden", "intermediate", "E", "top_k")}
        m_values, title = (SMOKE["M"] if args.M else ()), "CPU smoke (tiny shapes)"
    else:
        dims = {"hidden": 2880, "intermediate": 2880, "E": MODELS[args.model], "top_k": 4}
        m_values, title = args.M, f"gpt-oss-{args.model} shapes"
    lines = [f"# MoE GEMM paths: default config of each path, {title}", "", *bench.header(), "",
             ("| variant | M | rows/expert | path | default picks | us | GB/s | GB/s / copy | TFLOP/s | "
              "TFLOP/s / bf16 mm | max err | config |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)  # (the header first: a run cut by a time limit still says where it ran)
    sweeps = []
    sweep_dequants = tuple(d for d in _gemv_dequants(bench) if not args.sweep_dequant or d in args.sweep_dequant)
    for variant in moe.VARIANTS:
        for m in m_values:
            shape = moe.MoeShape.for_variant(variant, M=m, **dims)
            picks = moe.default_config(variant, shape.as_dict(), bench.profile)["path"]
            sets = _timing_sets(moe, bench, variant, shape)
            cost = moe.cost(variant, sets)
            rpe = moe.heuristics.rows_per_expert(shape.as_dict())
            rows = [("mma", "mma", None)] + [(GEMV_DECODE_ROWS[d], "gemv", d) for d in _gemv_dequants(bench)]
            for label, path, dequant in rows:
                if path == "gemv" and not gemv_offered(shape.as_dict()):
                    lines.append(f"| {variant} | {m} | {rpe:.1f} | {label} | {picks} | n/a (> 8 rows per expert) "
                                 "| | | | | | |")
                    continue
                params = path_default(variant, shape.as_dict(), bench.profile, path)
                config = moe.config_from_dict({**params, **({"dequant": dequant} if dequant else {})})
                err = bench.check(moe, variant, shape, config, seed=11)
                us = bench.time_us(moe, variant, sets, config, args.rep_ms)
                gbps, tflops = cost.bytes / us / 1e3, cost.flops / us / 1e6
                changed = {k: v for k, v in config.as_dict().items()
                           if k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages", "dequant")}
                lines.append(f"| {variant} | {m} | {rpe:.1f} | {label} | {picks} | {us:.1f} | {gbps:.0f} | "
                             f"{gbps / bench.copy_gbps:.2f} | {tflops:.1f} | {tflops / bench.mm_tflops:.2f} | "
                             f"{err:.1e} | {changed} |")
                print(lines[-1], flush=True)
            if args.gemv_sweep and gemv_offered(shape.as_dict()) and m in args.sweep_M:
                best = _sweep_gemv(moe, bench, variant, shape, sets, min(args.rep_ms, 30.0), sweep_dequants,
                                   args.sweep_grid, args.sweep_mlp1_split_k)
                if best is not None:
                    us, params = best
                    sweeps.append(f"| {variant} | {m} | {us:.1f} | {cost.bytes / us / 1e3:.0f} | "
                                  f"{cost.bytes / us / 1e3 / bench.copy_gbps:.2f} | {params} |")
                    print(sweeps[-1], flush=True)
    if sweeps:
        lines += ["", "## Fastest gemv config of the sweep (BLOCK_M=16)", "",
                  "| variant | M | us | GB/s | GB/s / copy | config |", "|---|---|---|---|---|---|", *sweeps]
    if args.mma_sweep:
        lines += _mma_sweep_report(moe, bench, dims, SMOKE["M"][-1:] if args.cpu_smoke else args.mma_M, args)
    return lines


def _mma_sweep_report(moe, bench, dims, m_values, args) -> list[str]:
    """The --mma-sweep section: best MMA config without and with swap_ab per variant and M, then every timing."""
    table = None
    if not bench.cpu:
        from autotune.table.lookup import open_table

        table = open_table(args.table, bench.profile)
    rows, details = [], []
    for variant in moe.VARIANTS:
        for m in m_values:
            shape = moe.MoeShape.for_variant(variant, M=m, **dims)
            result = _sweep_mma(moe, bench, variant, shape, _timing_sets(moe, bench, variant, shape),
                                min(args.rep_ms, 30.0), args.mma_grid, table)
            if result is not None:
                details += result[0]
                rows.append(result[1])
                print(rows[-1], flush=True)
    return ["", "## MMA configs without and with swap_ab (best of each side)", "",
            f"grid {args.mma_grid}; table {'none' if table is None or table.table is None else table.table.path}", "",
            ("| variant | M | best us | best us, swap_ab | speedup | TFLOP/s / bf16 mm (swap) | GB/s / copy (swap) | "
             "config | config, swap_ab |"), "|---|---|---|---|---|---|---|---|---|", *rows,
            "", "## Every --mma-sweep measurement (µs)", "", "```", *details, "```"]


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    else:
        import torch

        if not torch.cuda.is_available():
            print("autotune: error: bench_moe_variants needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
            return 2
    from scripts.bench_common import emit_report

    emit_report(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
