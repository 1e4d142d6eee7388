"""Run one MoE GEMM call with the default config of a path a few times, for a profiler (``ncu``) to capture.

    ncu --clock-control none -k regex:moe_mxfp4 --launch-skip 2 --launch-count 1 \\
        python scripts/profile_moe_launch.py --variant mlp1 --M 1 --path gemv

Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("mlp1", "mlp2"), default="mlp1")
    parser.add_argument("--M", type=int, default=1)
    parser.add_argument("--E", type=int, default=32, help="experts (32: gpt-oss-20b, 128: 120b)")
    parser.add_argument("--path", choices=("mma", "gemv"), default="gemv")
    parser.add_argument("--dequant", choices=("upcast", "upcast_ptx", "dp4a", "dot_scaled"),
                        help="replace the path default's decode")
    parser.add_argument("--config", default="{}", help="JSON of further config fields to replace")
    parser.add_argument("--calls", type=int, default=4)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("autotune: error: profile_moe_launch needs a CUDA GPU", file=sys.stderr)
        return 2
    import kernels.moe_gemm as moe
    from autotune import device as device_mod
    from kernels.moe_gemm.heuristics import path_default

    shape = moe.MoeShape.for_variant(args.variant, M=args.M, hidden=2880, intermediate=2880, E=args.E, top_k=4)
    params = path_default(args.variant, shape.as_dict(), device_mod.detect(0), args.path)
    import json

    config = moe.config_from_dict({**params, **({"dequant": args.dequant} if args.dequant else {}),
                                   **json.loads(args.config)})
    inputs = moe.make_inputs(args.variant, shape, dtype=torch.bfloat16, device="cuda", seed=3)
    for _ in range(args.calls):
        moe.launch(args.variant, inputs, config)
    torch.cuda.synchronize()
    print(args.variant, shape, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
