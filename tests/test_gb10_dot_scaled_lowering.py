"""What ``tl.dot_scaled`` (the MoE GEMM's ``dequant="dot_scaled"``) lowers to on sm_121 (GB10), compiled offline.

The MoE GEMM multiplies bf16 activations with e2m1 weights. A native block-scaled MMA (PTX ``mma ... block_scale``,
sm_120's ``kind::mxf8f6f4``) takes fp4/fp6/fp8 operands on both sides, so with a bf16 left operand Triton upcasts the
e2m1 tile and issues plain bf16 ``mma.sync.m16n8k16`` on sm_121 (seen with Triton 3.9.0 on 2026-12-02; sm_90 gets
bf16 ``wgmma``): on a Spark ``dot_scaled`` is an upcast path like ``upcast``, not a native MXFP4 MMA. This test pins
that finding; when it fails, the lowering changed (a Triton upgrade, or fp8 activations): re-measure the GB10 prefill
path. Compiled in a subprocess without ``TRITON_INTERPRET`` (see tests/test_gb10_offline_compile.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

WORKER = r'''
import json, re, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature
from autotune.device import GB10
from kernels import moe_gemm
from kernels.moe_gemm import MoeGemmConfig, MoeShape
from kernels.moe_gemm.inputs import make_empty_inputs
from search_spaces import moe_gemm as space_mod

out = {}
for cap in (121, 90):
    shape = MoeShape.for_variant("mlp2", M=8192, hidden=2880, intermediate=2880, E=32, top_k=4)
    config = {**space_mod.default_config("mlp2", shape.as_dict(), GB10), "dequant": "dot_scaled"}
    _, plan = moe_gemm.launches("mlp2", make_empty_inputs("mlp2", shape, dtype=torch.bfloat16), MoeGemmConfig(**config))
    kernel, target = plan[0].kernel, GPUTarget("cuda", cap, 32)
    backend = make_backend(target)
    try:
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, spec, options = binder(*plan[0].args, **plan[0].kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, plan[0].kwargs, bound, spec, options)
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    except Exception as exc:
        print(json.dumps({"skip": f"{type(exc).__name__}: {exc}"[:1000]}))
        raise SystemExit(0)
    ptx = compiled.asm["ptx"]
    out[cap] = {"mma": sorted(set(re.findall(r"(?:wgmma\.mma_async|mma\.sync)[\w.:]*", ptx))),
                "block_scale": "block_scale" in ptx, "triton": triton.__version__}
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def lowering() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(f"Triton cannot compile the kernel for sm_121/sm_90 here (Triton internals): {result['skip']}")
    return result


def test_dot_scaled_on_sm121_is_upcast_bf16_mma(lowering):
    sm121 = lowering["121"]
    assert not sm121["block_scale"], f"native block-scaled MMA on sm_121 now: {sm121}"
    assert sm121["mma"] == ["mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"], sm121


def test_dot_scaled_on_sm90_is_bf16_wgmma(lowering):
    sm90 = lowering["90"]
    assert not sm90["block_scale"]
    assert sm90["mma"] and all(m.startswith("wgmma.mma_async") and ".bf16.bf16" in m for m in sm90["mma"]), sm90
