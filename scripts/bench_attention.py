"""Benchmark of the gpt-oss attention: tuned (from the table) vs default config vs a torch eager baseline.

For each variant (prefill, decode), window (0 and 128) and length it prints median µs of the tuned config, the
default config and a straightforward torch bf16 eager implementation with sinks (the HF ``eager_attention_forward``
math with GQA as a view instead of repeated K/V; ``scaled_dot_product_attention`` has no sinks), then the tuned
kernel's GB/s over the measured copy bandwidth (decode is memory bound) and its TFLOP/s over the measured bf16
matmul rate (prefill). Timing is the tuner's own (:mod:`autotune.timing`: CUDA-graph replay over rotating input sets
so the cache comes from DRAM). Every config is checked against the fp32 reference first.

    python scripts/bench_attention.py --out scripts/results/...md

Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import kernels.attention as attn  # noqa: E402
from autotune import registry  # noqa: E402
from autotune.tuning.timing import median_us  # noqa: E402
from scripts.bench_common import (checked_error, emit_report, environment_lines, kernel_calls,  # noqa: E402
                                  open_gpu_bench)

GPT_OSS = dict(batch=1, heads_q=64, heads_kv=8, head_dim=64)
"""Attention dimensions of both gpt-oss sizes (FACTS.md)."""

SEQ = {"prefill": (128, 512, 2048, 8192), "decode": (128, 512, 2048, 8192, 32768)}
WINDOWS = (0, 128)


def torch_eager(variant: str, inputs: attn.AttentionInputs) -> torch.Tensor:
    """gpt-oss attention in bf16 torch ops (HF eager math): scores, mask, the sink column, softmax, drop, P·V.

    GQA as a view: q ``[B, T, Hq, D]`` → ``[B, Hkv, G, T, D]`` against K ``[B, Hkv, 1, S, D]``. Every sequence is
    full (``seq`` keys), as in the tuning inputs.
    """
    shape = inputs.shape
    b, hkv, g, d = shape.batch, shape.heads_kv, shape.group, shape.head_dim
    q = inputs.q if variant == "prefill" else inputs.q[:, None]                       # [B, T, Hq, D]
    t = q.shape[1]
    lo = max(0, shape.seq - shape.window) if variant == "decode" and shape.window else 0
    k = inputs.k_cache[:, lo:].permute(0, 2, 1, 3)[:, :, None]                          # [B, Hkv, 1, S, D]
    v = inputs.v_cache[:, lo:].permute(0, 2, 1, 3)[:, :, None]
    qg = q.view(b, t, hkv, g, d).permute(0, 2, 3, 1, 4)                                 # [B, Hkv, G, T, D]
    scores = torch.matmul(qg, k.transpose(-1, -2)) * inputs.sm_scale                   # [B, Hkv, G, T, S]
    if variant == "prefill":
        pos = torch.arange(t, device=q.device)
        keys = torch.arange(k.shape[3], device=q.device)
        hidden = keys[None, :] > pos[:, None]
        if shape.window:
            hidden |= keys[None, :] <= pos[:, None] - shape.window
        scores = scores.masked_fill(hidden, float("-inf"))
    sink = inputs.sinks.to(scores.dtype).view(1, hkv, g, 1, 1).expand(*scores.shape[:4], 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    out = torch.matmul(probs, v).permute(0, 3, 1, 2, 4).reshape(b, t, shape.heads_q, d)
    return out if variant == "prefill" else out[:, 0]


def bench_shape(variant, shape, table, device, rep_ms) -> dict:
    """One row of the report."""
    entry = table.lookup("attention", variant, shape.as_dict())
    tuned_cfg = attn.config_from_dict(entry.config)
    default_cfg = attn.config_from_dict(registry.get("attention").default_config(variant, shape.as_dict(), device))
    sets = attn.make_timing_inputs(variant, shape, dtype=torch.bfloat16, device="cuda", seed=7,
                                   cache_bytes=device.l2_bytes)
    row = {"variant": variant, "shape": shape, "source": entry.source, "tuned": tuned_cfg}
    row["err"] = max(checked_error(attn, variant, shape, tuned_cfg, 11),
                     checked_error(attn, variant, shape, default_cfg, 12))
    for name, cfg in (("tuned_us", tuned_cfg), ("default_us", default_cfg)):
        row[name] = median_us(kernel_calls(attn, variant, sets, cfg), on_gpu=True, rep_ms=rep_ms).median_us
    try:
        row["torch_us"] = median_us([lambda s=s: torch_eager(variant, s) for s in sets], on_gpu=True,
                                    rep_ms=rep_ms).median_us
    except torch.cuda.OutOfMemoryError:
        row["torch_us"] = math.nan
    cost = attn.cost(variant, sets, tuned_cfg)
    row["gbps"] = cost.bytes / row["tuned_us"] / 1e3
    row["tflops"] = cost.flops / row["tuned_us"] / 1e6
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="table file (default: studies/tables/configs.json)")
    parser.add_argument("--variants", default="prefill,decode")
    parser.add_argument("--rep-ms", type=float, default=100.0)
    parser.add_argument("--out", help="also write the report (markdown) here")
    args = parser.parse_args()
    opened = open_gpu_bench(args.table)
    if opened is None:
        print("bench_attention: needs a CUDA GPU", file=sys.stderr)
        return 2
    device, table, copy_gbps, mm_tflops = opened
    lines = [
        "# Attention benchmark, gpt-oss shapes (Hq 64, Hkv 8, D 64, batch 1)",
        "",
        *environment_lines(device, table, copy_gbps, mm_tflops),
        "",
        "| variant | W | seq | tuned us | default us | torch us | tuned/default | torch/tuned | GB/s | GB/s / copy "
        "| TFLOP/s | TFLOP/s / peak | max err | tuned config | table |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in args.variants.split(","):
        for window in WINDOWS:
            for seq in SEQ[variant]:
                shape = attn.AttentionShape(seq=seq, window=window, **GPT_OSS)
                row = bench_shape(variant, shape, table, device, args.rep_ms)
                cfg = row["tuned"]
                lines.append(
                    f"| {variant} | {window} | {seq} | {row['tuned_us']:.1f} | {row['default_us']:.1f} | "
                    f"{row['torch_us']:.1f} | {row['default_us'] / row['tuned_us']:.2f} | "
                    f"{row['torch_us'] / row['tuned_us']:.2f} | {row['gbps']:.0f} | {row['gbps'] / copy_gbps:.2f} | "
                    f"{row['tflops']:.1f} | {row['tflops'] / mm_tflops:.2f} | {row['err']:.1e} | "
                    f"{cfg.BLOCK_M}/{cfg.BLOCK_N}/w{cfg.num_warps}/s{cfg.num_stages}/split{cfg.SPLIT_KV}/"
                    f"{cfg.kv_dtype} | {row['source']} |")
                print(lines[-1], flush=True)
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
