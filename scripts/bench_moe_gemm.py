"""Benchmark of the MXFP4 MoE GEMM: tuned (from the table) vs default config vs a torch bf16 baseline, per M.

For each variant and token count it prints median µs of the tuned config, the default config and the faster of two
torch baselines (bf16 weights dequantized once, then ``torch._grouped_mm`` or one matmul per expert), the tuned
kernel's GB/s as a fraction of the measured copy bandwidth and its TFLOP/s as a fraction of the measured bf16 matmul
rate, and the routing time (top-k + softmax + grouping). Timing is the tuner's own (:mod:`autotune.timing`: CUDA-graph
replay over input sets that rotate experts so the weights come from DRAM). Every config is checked against the fp32
reference first.

    python scripts/bench_moe_gemm.py --model 20b --out scripts/results/...md

Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import kernels.moe_gemm as moe  # noqa: E402
from autotune import registry  # noqa: E402
from autotune.tuning.timing import median_us  # noqa: E402
from kernels.moe_routing import route  # noqa: E402
from scripts.bench_common import (checked_error, emit_report, environment_lines, kernel_calls,  # noqa: E402
                                  open_gpu_bench)
from scripts.moe_baselines import dequantized_weights, grouped_mm_call, per_expert_call  # noqa: E402

MODELS = {"20b": 32, "120b": 128}
M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def bench_shape(variant, shape, table, device, rep_ms):
    """One row of the report."""
    entry = table.lookup("moe_gemm", variant, shape.as_dict())
    tuned_cfg = moe.config_from_dict(entry.config)
    default_cfg = moe.config_from_dict(registry.get("moe_gemm").default_config(variant, shape.as_dict(), device))
    sets = moe.make_timing_inputs(variant, shape, dtype=torch.bfloat16, device="cuda", seed=7,
                                  cache_bytes=device.l2_bytes)
    cost = moe.cost(variant, sets)
    row = {"variant": variant, "M": shape.M, "source": entry.source}
    row["err"] = max(checked_error(moe, variant, shape, tuned_cfg, 11),
                     checked_error(moe, variant, shape, default_cfg, 12))
    for name, cfg in (("tuned_us", tuned_cfg), ("default_us", default_cfg)):
        row[name] = median_us(kernel_calls(moe, variant, sets, cfg), on_gpu=True, rep_ms=rep_ms).median_us
    weights = dequantized_weights(sets[0])
    baselines = {}
    for name, make in (("grouped_mm", grouped_mm_call), ("per_expert", per_expert_call)):
        try:
            baselines[name] = median_us([make(variant, s, weights) for s in sets], on_gpu=True,
                                        rep_ms=rep_ms).median_us
        except RuntimeError as exc:
            print(f"  torch {name} failed at {variant} M={shape.M}: {str(exc).splitlines()[0]}", file=sys.stderr)
    del weights
    row["torch_us"], row["torch"] = min((v, k) for k, v in baselines.items()) if baselines else (math.nan, "-")
    logits = torch.randn(shape.M, shape.E, device="cuda")
    row["routing_us"] = median_us([lambda: route(logits, shape.top_k)], on_gpu=True, rep_ms=rep_ms).median_us
    row["gbps"] = cost.bytes / row["tuned_us"] / 1e3
    row["tflops"] = cost.flops / row["tuned_us"] / 1e6
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="20b")
    parser.add_argument("--table", help="table file (default: studies/tables/configs.json)")
    parser.add_argument("--M", default=",".join(map(str, M_VALUES)), help="token counts")
    parser.add_argument("--rep-ms", type=float, default=200.0)
    parser.add_argument("--out", help="also write the report (markdown) here")
    args = parser.parse_args()
    opened = open_gpu_bench(args.table)
    if opened is None:
        print("bench_moe_gemm: needs a CUDA GPU", file=sys.stderr)
        return 2
    device, table, copy_gbps, mm_tflops = opened
    lines = [
        f"# MoE GEMM benchmark, gpt-oss-{args.model} shapes",
        "",
        *environment_lines(device, table, copy_gbps, mm_tflops),
        "",
        "| variant | M | tuned us | default us | torch us (which) | tuned/default | torch/tuned | GB/s | GB/s / copy "
        "| TFLOP/s | TFLOP/s / peak | routing us | max err | table |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for variant in moe.VARIANTS:
        for m in (int(v) for v in args.M.split(",")):
            shape = moe.MoeShape.for_variant(variant, M=m, hidden=2880, intermediate=2880, E=MODELS[args.model],
                                             top_k=4)
            row = bench_shape(variant, shape, table, device, args.rep_ms)
            rows.append(row)
            lines.append(
                f"| {variant} | {m} | {row['tuned_us']:.1f} | {row['default_us']:.1f} | {row['torch_us']:.1f} "
                f"({row['torch']}) | {row['default_us'] / row['tuned_us']:.2f} | {row['torch_us'] / row['tuned_us']:.2f} "
                f"| {row['gbps']:.0f} | {row['gbps'] / copy_gbps:.2f} | {row['tflops']:.1f} | "
                f"{row['tflops'] / mm_tflops:.2f} | {row['routing_us']:.1f} | {row['err']:.1e} | {row['source']} |")
            print(lines[-1], flush=True)
    ratios = [r["default_us"] / r["tuned_us"] for r in rows]
    decode = [r["gbps"] / copy_gbps for r in rows if r["M"] <= 16]
    prefill = [r["tflops"] / mm_tflops for r in rows if r["M"] >= 2048]
    lines += [
        "",
        f"- tuned/default geomean over {len(rows)} shapes: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f}x "
        "(target >= 1.25)",
        f"- decode M <= 16, GB/s / copy: min {min(decode):.2f}, max {max(decode):.2f} (target >= 0.85)" if decode else "",
        f"- prefill M >= 2048, TFLOP/s / peak: min {min(prefill):.2f}, max {max(prefill):.2f} (target >= 0.50)"
        if prefill else "",
    ]
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
