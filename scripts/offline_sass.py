"""What the compiler makes of one MoE GEMM config, without a GPU: registers, shared memory and an instruction mix.

Plans the launches of a ``moe_gemm`` config at a gpt-oss shape on ``meta`` tensors, compiles each for a CUDA compute
capability offline (:func:`autotune.device.offline.compile_launch`, the JIT's argument specialization) and reads the
cubin with the ``cuobjdump`` bundled with Triton's NVIDIA backend: registers per thread, shared memory per program,
counts of the SASS opcodes that tell a kernel design apart (HGMMA = wgmma, HMMA = mma.sync, LDS/STS shared-memory
traffic, LDG/LDGSTS global loads and cp.async, CCTL = prefetch) and the form of the first wgmma in the PTX (first
operand from registers or from a shared-memory descriptor). Evidence for a design, not a timing: the GPU machines
run another Triton version, whose code may differ.

    python scripts/offline_sass.py mlp1 16 '{"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "swap_ab": true}'
    python scripts/offline_sass.py mlp2 1 '{"path": "gemv", "dequant": "dp4a", "l2_prefetch": true}' --dump /tmp/k

The config is applied on top of the default config for the shape and ``--device`` (H200 by default: its profile as
stored in the committed table, compiled for its compute capability; ``gb10``: the carried GB10 profile, sm_121).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = {"20b": 32, "120b": 128}
DEVICES = {"h100": "nvidia-h100-80gb-hbm3-sm90", "h200": "nvidia-h200-sm90", "gb10": "nvidia-gb10"}
OPCODES = ("HGMMA", "HMMA", "LDS", "LDSM", "STS", "LDG", "LDGSTS", "STG", "SHFL", "BAR", "PRMT", "LOP3", "IDP",
           "CCTL", "RED", "ATOM")
"""SASS opcodes counted (the first dot-separated field of each instruction)."""


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=("mlp1", "mlp2"))
    parser.add_argument("M", type=int, help="tokens")
    parser.add_argument("config", help="JSON object of MoeGemmConfig fields over the shape's default")
    parser.add_argument("--model", choices=sorted(MODELS), default="20b")
    parser.add_argument("--device", choices=sorted(DEVICES), default="h200", help="whose limits and default config "
                        "(h100/h200: the committed table's device section, compiled for sm_90; gb10: sm_121)")
    parser.add_argument("--dump", help="also write PREFIX.<kernel>.{ptx,sass,ttgir}")
    args = parser.parse_args(argv)
    try:
        args.config = json.loads(args.config)
        if not isinstance(args.config, dict):
            raise ValueError
    except ValueError:
        parser.error(f"config must be a JSON object, got {args.config!r}")
    if args.M < 1:
        parser.error("M must be >= 1")
    return args


def _cuobjdump() -> Path:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        raise FileNotFoundError(f"no cuobjdump in this Triton install ({tool})")
    return tool


def sass_summary(cubin: bytes) -> tuple[str, int, collections.Counter]:
    """``(sass text, registers per thread, opcode counts)`` of one cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        tool = _cuobjdump()
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    ops = collections.Counter(m.group(1).split(".")[0] for m in
                              re.finditer(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass, re.M))
    return sass, registers, ops


def _wgmma_form(ptx: str) -> str:
    first = re.search(r"wgmma\.mma_async[^;]*;", ptx)
    if first is None:
        return "no wgmma"
    operands = first.group(0).split("}", 1)[1]  # after the accumulator list
    return "first operand in registers" if operands.lstrip(", ").startswith("{") else "first operand in shared memory"


def run(args) -> list[str]:
    import torch

    import kernels.moe_gemm as moe
    from autotune import defaults
    from autotune.device import GB10, DeviceProfile
    from autotune.device.offline import compile_launch
    from autotune.table import ConfigTable
    from kernels.moe_gemm import inputs as inputs_mod

    shape = moe.MoeShape.for_variant(args.variant, M=args.M, hidden=2880, intermediate=2880, E=MODELS[args.model],
                                     top_k=4)
    if args.device == "gb10":
        profile = GB10
    else:
        profile = DeviceProfile.from_dict(ConfigTable.load(defaults.TABLE, missing_ok=False).device_info(
            DEVICES[args.device]))
    capability = 10 * profile.compute_capability[0] + profile.compute_capability[1]
    config = moe.config_from_dict({**moe.default_config(args.variant, shape.as_dict(), profile), **args.config})
    inputs = inputs_mod.make_empty_inputs(args.variant, shape, dtype=torch.bfloat16, device="meta")
    _, plan = moe.launches(args.variant, inputs, config)
    lines = [f"{args.variant} {args.model} M={args.M} {profile.name} sm_{capability}: {json.dumps(config.as_dict())}"]
    for launch in plan:
        info = compile_launch(launch.kernel, launch.args, launch.kwargs, capability=capability)
        sass, registers, ops = sass_summary(info.asm["cubin"])
        counts = ", ".join(f"{op} {ops.get(op, 0)}" for op in OPCODES)
        lines.append(f"  {info.name}: {registers} registers, {info.shared_bytes} B shared, {info.num_warps} warps; "
                     f"{_wgmma_form(info.asm['ptx'])}; {counts}")
        if args.dump:
            for suffix, text in (("ptx", info.asm["ptx"]), ("sass", sass), ("ttgir", info.asm.get("ttgir", ""))):
                Path(f"{args.dump}.{info.name}.{suffix}").write_text(text)
    return lines


def main(argv=None) -> int:
    args = _parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # (the interpreter's jit functions cannot be compiled)
    try:
        print("\n".join(run(args)))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"offline_sass: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
