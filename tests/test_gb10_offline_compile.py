"""Offline sm_121 (GB10 / DGX Spark) compiles of the default MoE GEMM configs (:mod:`autotune.offline`).

For each variant and a spread of token counts at gpt-oss-20b and -120b dimensions, the default config for GB10 is
planned on ``meta`` tensors and every planned launch is compiled for compute capability 12.1 without a GPU; the
compiled kernel's shared memory must fit GB10's 101,376 B per block.

The compiles run in one subprocess without ``TRITON_INTERPRET``: under the interpreter (which tests/conftest.py
turns on for CPU-only machines) ``triton.jit`` yields ``InterpretedFunction`` objects that ``triton.compile`` cannot
take. Identical compiles (same kernel, signature, constexprs and options) are done once.

Besides :func:`autotune.device.offline.compile_launch` the worker also compiles each launch the way ``JITFunction.run``
would on a real GPU (Triton's own argument specialization: 16-byte-aligned pointers and integers divisible by 16 get
``tt.divisibility=16``), because that is what a GB10 would actually run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GB10_SMEM = 101_376  # ../shared/FACTS.md: max shared memory per block (opt-in) on GB10
M_VALUES = (1, 16, 256, 8192)
MODELS = {"20b": 32, "120b": 128}
REPO = Path(__file__).resolve().parent.parent


def _has_upcast_ptx() -> bool:
    from kernels.moe_gemm import config as config_mod

    return "upcast_ptx" in getattr(config_mod, "DEQUANT_PATHS", ())


_HAS_PTX = _has_upcast_ptx()

# (id, variant, M, E, config overrides on top of the GB10 default, dtype)
CASES = [(f"{v}-{model}-M{m}-default", v, m, e, {}, "bfloat16")
         for v in ("mlp1", "mlp2") for model, e in MODELS.items() for m in M_VALUES]
CASES += [
    # The unfused SwiGLU path: two launches (GEMM into h, then the SwiGLU kernel), split-K with float32 atomics.
    ("mlp1-20b-M1-unfused-splitk2", "mlp1", 1, 32, {"fuse_swiglu": False, "SPLIT_K": 2}, "bfloat16"),
    ("mlp1-20b-M8192-unfused", "mlp1", 8192, 32, {"fuse_swiglu": False}, "bfloat16"),
    # The other MXFP4 path and the persistent schedule.
    ("mlp2-120b-M16-dot_scaled", "mlp2", 16, 128, {"dequant": "dot_scaled"}, "bfloat16"),
    ("mlp1-20b-M8192-persistent", "mlp1", 8192, 32, {"schedule": "persistent", "programs_per_sm": 2}, "bfloat16"),
]
# The gemv path (CUDA-core dot products; the default at M = 1): forced where the MMA path is the default, with
# split-K and the unfused SwiGLU (two launches), and at gpt-oss-120b M = 1.
CASES += [
    ("mlp1-20b-M1-gemv-unfused-splitk4", "mlp1", 1, 32, {"path": "gemv", "fuse_swiglu": False, "SPLIT_K": 4},
     "bfloat16"),
    ("mlp2-120b-M16-gemv", "mlp2", 16, 128, {"path": "gemv", "BLOCK_N": 32, "num_stages": 2, "SPLIT_K": 2},
     "bfloat16"),
    ("mlp1-20b-M8-gemv", "mlp1", 8, 32, {"path": "gemv", "BLOCK_K": 256, "num_warps": 8}, "bfloat16"),
]
# The inline-PTX decode (bf16, sm_90+): GB10 is sm_121, so the search space keeps it and it must plan on meta tensors.
PTX_CASES = [("mlp1-20b-M16-upcast_ptx", "mlp1", 16, 32, {"dequant": "upcast_ptx"}, "bfloat16"),
             ("mlp2-120b-M8192-upcast_ptx", "mlp2", 8192, 128, {"dequant": "upcast_ptx"}, "bfloat16"),
             ("mlp1-20b-M1-gemv-upcast_ptx", "mlp1", 1, 32, {"path": "gemv", "dequant": "upcast_ptx"}, "bfloat16")]
DP4A_CASES = [("mlp1-20b-M1-gemv-dp4a", "mlp1", 1, 32, {"path": "gemv", "dequant": "dp4a", "BLOCK_N": 16,
                                                        "BLOCK_K": 512}, "bfloat16"),
              ("mlp2-120b-M2-gemv-dp4a", "mlp2", 2, 128, {"path": "gemv", "dequant": "dp4a"}, "bfloat16"),
              ("mlp2-20b-M1-gemv-dp4a-l2_prefetch-splitk2", "mlp2", 1, 32,
               {"path": "gemv", "dequant": "dp4a", "l2_prefetch": True, "SPLIT_K": 2}, "bfloat16"),
              ("mlp1-120b-M4-gemv-dp4a-persistent-l2_prefetch", "mlp1", 4, 128,
               {"path": "gemv", "dequant": "dp4a", "l2_prefetch": True, "schedule": "persistent",
                "programs_per_sm": 2}, "bfloat16")]
"""The dp4a decode (sm_61+, so on GB10 too): its activation pre-pass and the inline-PTX gemv, with the H200 sweep's
fastest tiles at mlp1 M = 1 and the gemv default's at mlp2, with the L2 prefetch of each program's tile, and
persistent with the prefetch of each program's next tile."""
SWAP_AB_CASES = [("mlp1-20b-M8192-swap_ab-upcast_ptx", "mlp1", 8192, 32,
                  {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "dequant": "upcast_ptx",
                   "swap_ab": True}, "bfloat16"),
                 ("mlp2-120b-M16-swap_ab-upcast", "mlp2", 16, 128, {"swap_ab": True}, "bfloat16")]
"""swap_ab (the decoded weights as the MMA's first operand) with both register decodes; on sm_121 the MMA is
mma.sync (no wgmma), so this checks that the swapped dot lowers there and fits the shared memory."""
# A pipelined config (3 stages of 128x128x64 tiles): used to compare compile_launch with the JIT's specialization.
PIPELINED = [
    ("mlp2-20b-M8192-pipelined-upcast", "mlp2", 8192, 32,
     {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_stages": 3, "dequant": "upcast"}, "bfloat16"),
    ("mlp2-20b-M8192-pipelined-dot_scaled", "mlp2", 8192, 32,
     {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_stages": 3, "dequant": "dot_scaled"}, "bfloat16"),
]

WORKER = r'''
import json, sys, traceback
import torch
from autotune.device import GB10
from autotune.device.offline import compile_launch
from kernels import moe_gemm
from kernels.moe_gemm import MoeGemmConfig, MoeShape
from kernels.moe_gemm import inputs as inputs_mod
from search_spaces import moe_gemm as space_mod

make_meta_inputs = getattr(inputs_mod, "make_meta_inputs", None) or inputs_mod.make_empty_inputs

def probe():
    # Can Triton produce sm_121 code here at all (a CUDA backend and a ptxas that knows sm_121)? A trivial kernel
    # from a temporary module, so that a bug in the project's kernels fails the tests instead of skipping them.
    import importlib.util, pathlib, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "gb10_probe_kernel.py"
        path.write_text("import triton\nimport triton.language as tl\n\n@triton.jit\n"
                        "def probe_kernel(o_ptr, BLOCK: tl.constexpr):\n"
                        "    tl.store(o_ptr + tl.arange(0, BLOCK), tl.arange(0, BLOCK))\n")
        spec = importlib.util.spec_from_file_location("gb10_probe_kernel", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        src = ASTSource(fn=module.probe_kernel, signature={"o_ptr": "*i32", "BLOCK": "constexpr"},
                        constexprs={"BLOCK": 128})
        triton.compile(src, target=GPUTarget("cuda", 121, 32), options={"num_warps": 4})

def jit_like_shared(kernel, args, kwargs, capability):
    """Shared bytes of the kernel JITFunction.run would compile for these arguments on a real GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    return int(compiled.metadata.shared)

def arg_key(value):
    if hasattr(value, "dtype") and hasattr(value, "data_ptr"):
        return ("tensor", str(value.dtype))
    return (type(value).__name__, value if isinstance(value, (bool, float)) else None)

request = json.load(sys.stdin)
cases, with_jit = request["cases"], request["jit"]
try:
    probe()
except Exception as exc:
    print(json.dumps({"skip": f"{type(exc).__name__}: {exc}"[:2000]}))
    sys.exit(0)

cache, jit_cache, results = {}, {}, {}
for case_id, variant, m, experts, overrides, dtype in cases:
    shape = MoeShape.for_variant(variant, M=m, hidden=2880, intermediate=2880, E=experts, top_k=4)
    default = space_mod.default_config(variant, shape.as_dict(), GB10)
    config = {**default, **overrides}
    entry = {"config": config, "launches": []}
    try:
        inputs = make_meta_inputs(variant, shape, dtype=getattr(torch, dtype))
        _, plan = moe_gemm.launches(variant, inputs, MoeGemmConfig(**config))
        for launch in plan:
            key = (launch.kernel.__name__, tuple(arg_key(a) for a in launch.args),
                   tuple(sorted((k, repr(v)) for k, v in launch.kwargs.items())))
            if key not in cache:
                info = compile_launch(launch.kernel, launch.args, launch.kwargs, capability=121)
                cache[key] = {"name": info.name, "target": info.target, "shared_bytes": info.shared_bytes,
                              "num_warps": info.num_warps}
            item = dict(cache[key], grid=list(launch.grid))
            if not with_jit:
                entry["launches"].append(item)
                continue
            jit_key = (key, tuple(int(a) % 16 == 0 for a in launch.args if isinstance(a, int)))
            if jit_key not in jit_cache:
                try:
                    jit_cache[jit_key] = jit_like_shared(launch.kernel, launch.args, launch.kwargs, 121)
                except Exception as exc:  # Triton internals moved: report, do not fail the offline check
                    jit_cache[jit_key] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
            item["jit_shared_bytes"] = jit_cache[jit_key]
            entry["launches"].append(item)
    except Exception:
        entry["error"] = traceback.format_exc()[-4000:]
    results[case_id] = entry
print(json.dumps({"results": results, "distinct_compiles": len(cache)}))
'''


def _run_worker(cases: list, with_jit: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", WORKER], input=json.dumps({"cases": cases, "jit": with_jit}),
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"Triton cannot compile for sm_121 here: {out['skip']}")
    return out["results"]


@pytest.fixture(scope="module")
def compiled() -> dict:
    """compile_launch only: about 24 distinct compiles, about 30 s with an empty Triton cache, 3 s with a warm one."""
    return _run_worker(CASES + (PTX_CASES if _HAS_PTX else []) + DP4A_CASES + SWAP_AB_CASES, with_jit=False)


@pytest.fixture(scope="module")
def compiled_jit() -> dict:
    """compile_launch plus the JIT-specialized compile of every launch: about 40 s with an empty Triton cache."""
    return _run_worker(CASES + PIPELINED, with_jit=True)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gb10_launches_compile_and_fit(compiled, case):
    case_id, variant, m, experts, overrides, _ = case
    entry = compiled[case_id]
    assert "error" not in entry, entry.get("error")
    config = entry["config"]
    unfused = variant == "mlp1" and not config["fuse_swiglu"]
    names = [item["name"] for item in entry["launches"]]
    dp4a = config.get("dequant") == "dp4a"
    gemm = "moe_mxfp4_gemm_kernel"
    if config.get("path") == "gemv":
        gemm = "moe_mxfp4_gemv_dp4a_kernel" if dp4a else "moe_mxfp4_gemv_kernel"
    expected = ["quantize_activations_kernel"] * dp4a + [gemm] + ["swiglu_kernel"] * unfused
    assert names == expected
    for item in entry["launches"]:
        assert item["target"] == "cuda:121"
        if item["name"] != "quantize_activations_kernel":  # the pre-pass has its own 4 warps
            assert item["num_warps"] == config["num_warps"]
        assert 0 <= item["shared_bytes"] <= GB10_SMEM, item
        assert all(g >= 1 for g in item["grid"])


def test_gb10_default_at_decode_is_the_gemv(compiled):
    # The default heuristic's dp4a gemv (sm_61+, R = M·top_k <= 32) is what a Spark runs at batch-1 decode: both
    # variants, both models, compiled for sm_121 above.
    for model in MODELS:
        for variant in ("mlp1", "mlp2"):
            entry = compiled[f"{variant}-{model}-M1-default"]
            assert entry["config"]["path"] == "gemv" and entry["config"]["dequant"] == "dp4a", entry["config"]
            assert [item["name"] for item in entry["launches"]] == ["quantize_activations_kernel",
                                                                    "moe_mxfp4_gemv_dp4a_kernel"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gb10_launches_fit_with_jit_specialization(compiled_jit, case):
    # The figure a real launch on a GB10 would see (see the module docstring).
    entry = compiled_jit[case[0]]
    assert "error" not in entry, entry.get("error")
    for item in entry["launches"]:
        if isinstance(item["jit_shared_bytes"], str):
            pytest.skip(item["jit_shared_bytes"])
        assert item["jit_shared_bytes"] <= GB10_SMEM, item


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES + PIPELINED, ids=[c[0] for c in CASES + PIPELINED])
def test_offline_shared_bytes_match_a_real_launch(compiled_jit, case):
    # compile_launch must specialize like the JIT (16-divisible pointers and integers): without it Triton does not
    # pipeline the K loop (no 16-byte cp.async) and metadata.shared under-reports, e.g. 4,096 B instead of 41,216 B
    # for the 3-stage 128x128x64 dot_scaled config, and num_stages has no effect on the offline figure.
    entry = compiled_jit[case[0]]
    assert "error" not in entry, entry.get("error")
    for item in entry["launches"]:
        if isinstance(item["jit_shared_bytes"], str):
            pytest.skip(item["jit_shared_bytes"])
        assert item["shared_bytes"] == item["jit_shared_bytes"], item


@pytest.mark.slow
def test_pipelined_config_uses_its_stages(compiled_jit):
    # The 3-stage 128x128x64 configs must hold more than one stage of buffers: at least 2 × (128·64·2 B of
    # activations + 128·32 B of packed weights) = 40,960 B (scales aside), i.e. the K loop is really pipelined.
    for case in PIPELINED:
        item = compiled_jit[case[0]]["launches"][0]
        assert item["shared_bytes"] >= 2 * (128 * 64 * 2 + 128 * 32), (case[0], item)


@pytest.mark.skipif(not _HAS_PTX, reason="this kernel version has no dequant='upcast_ptx'")
@pytest.mark.parametrize("case", PTX_CASES, ids=[c[0] for c in PTX_CASES])
def test_gb10_upcast_ptx_compiles_and_fits(compiled, case):
    entry = compiled[case[0]]
    assert "error" not in entry, entry.get("error")
    gemm = "moe_mxfp4_gemv_kernel" if case[4].get("path") == "gemv" else "moe_mxfp4_gemm_kernel"
    assert [item["name"] for item in entry["launches"]] == [gemm]
    for item in entry["launches"]:
        assert 0 <= item["shared_bytes"] <= GB10_SMEM, item


@pytest.mark.parametrize("case", DP4A_CASES, ids=[c[0] for c in DP4A_CASES])
def test_gb10_dp4a_compiles_and_fits(compiled, case):
    entry = compiled[case[0]]
    assert "error" not in entry, entry.get("error")
    assert [item["name"] for item in entry["launches"]] == ["quantize_activations_kernel", "moe_mxfp4_gemv_dp4a_kernel"]
    for item in entry["launches"]:
        assert item["target"] == "cuda:121"
        assert 0 <= item["shared_bytes"] <= GB10_SMEM, item


@pytest.mark.parametrize("case", SWAP_AB_CASES, ids=[c[0] for c in SWAP_AB_CASES])
def test_gb10_swap_ab_compiles_and_fits(compiled, case):
    entry = compiled[case[0]]
    assert "error" not in entry, entry.get("error")
    assert entry["config"]["swap_ab"] is True
    assert [item["name"] for item in entry["launches"]] == ["moe_mxfp4_gemm_kernel"]
    for item in entry["launches"]:
        assert item["target"] == "cuda:121"
        assert 0 <= item["shared_bytes"] <= GB10_SMEM, item
