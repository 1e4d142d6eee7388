"""Offline sm_121 (GB10 / DGX Spark) compiles of the gemv's default configs (:mod:`autotune.device.offline`).

At gpt-oss's projection shapes (qkv [5120, 2880], attn_out [2880, 4096], router [32, 2880] and [128, 2880]) and
1 and 4 tokens, the GB10 default config is planned on ``meta`` tensors and compiled for compute capability 12.1
without a GPU; besides the defaults, the configs of the search space with the largest shared-memory estimate and a
split-K config (two launches: the partial sums and the reduction) are compiled. The compiled kernels' shared memory
must fit GB10's 101,376 B per block and must not exceed :func:`search_spaces.gemv.estimated_shared_bytes` (an
estimate below the compiler's figure would let the tuner try configs that cannot launch).

As in tests/test_gb10_offline_attention.py, the compiles run in one subprocess with the interpreter off
(:func:`tests.offline_compile.run_offline_compile`), after a trivial kernel compiled in a child process of its own:
when Triton cannot target sm_121 here the tests skip.
"""

from __future__ import annotations

import json
import sys

import pytest
import triton
import triton.language as tl

from autotune.device import GB10
from search_spaces import gemv as space_mod
from tests.offline_compile import run_offline_compile

pytestmark = pytest.mark.slow  # a subprocess, ~12 distinct compiles

GB10_SMEM = 101_376  # ../shared/FACTS.md: max shared memory per block (opt-in) on GB10
CAPABILITY = 121
SHAPES = {"qkv": (5120, 2880), "attn_out": (2880, 4096), "router-20b": (32, 2880), "router-120b": (128, 2880)}

# (id, variant, M, N, K, config overrides on top of the GB10 default)
CASES = [(f"{name}-M{m}-default", name.split("-")[0], m, n, k, {}) for name, (n, k) in SHAPES.items()
         for m in (1, 4)]
CASES += [
    ("qkv-M1-largest-estimate", "qkv", 1, 5120, 2880, {"BLOCK_N": 32, "BLOCK_K": 1024, "num_warps": 8}),
    ("router-20b-M1-splitk8", "router", 1, 32, 2880, {"BLOCK_K": 256, "SPLIT_K": 8}),
]


@triton.jit
def _probe_kernel(o_ptr, BLOCK: tl.constexpr):
    tl.store(o_ptr + tl.arange(0, BLOCK), tl.arange(0, BLOCK))


def _probe(capability: int) -> None:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    triton.compile(ASTSource(fn=_probe_kernel, signature={"o_ptr": "*i32", "BLOCK": "constexpr"},
                             constexprs={"BLOCK": 128}),
                   target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})


def compile_report(capability: int) -> dict:
    """Plan and compile every case of :data:`CASES` for ``cuda:capability`` (run with TRITON_INTERPRET=0).

    Returns:
        ``{"results": {case id: {"config", "estimate", "check", "launches": [...]} or {"error"}}}``, or
        ``{"skip": reason}`` when Triton cannot target the capability here.
    """
    import subprocess
    import traceback

    import torch

    from autotune.device.offline import compile_launch
    from kernels import gemv

    probe = subprocess.run([sys.executable, __file__, "--probe", str(capability)], capture_output=True, text=True,
                           timeout=300, check=False)
    if probe.returncode != 0:
        return {"skip": f"triton.compile for cuda:{capability} is not possible here: {probe.stderr[-1500:]}"}
    results = {}
    for case_id, variant, m, n, k, overrides in CASES:
        shape_dict = {"M": m, "N": n, "K": k}
        config = {**space_mod.default_config(variant, shape_dict, GB10), **overrides}
        entry = {"config": config, "estimate": space_mod.estimated_shared_bytes(config),
                 "check": space_mod.space(variant, shape_dict, GB10).check(config, shape_dict, GB10),
                 "launches": []}
        try:
            shape = gemv.shape_from_dims(variant, shape_dict)
            inputs = gemv.make_empty_inputs(variant, shape, dtype=torch.bfloat16)
            _, plan = gemv.launches(variant, inputs, gemv.config_from_dict(config))
            for launch in plan:
                info = compile_launch(launch.kernel, launch.args, launch.kwargs, capability=capability)
                entry["launches"].append({"name": info.name, "target": info.target,
                                          "shared_bytes": info.shared_bytes, "num_warps": info.num_warps,
                                          "grid": list(launch.grid)})
        except Exception:  # noqa: BLE001 - reported per case, so one bad config fails only its test
            entry["error"] = traceback.format_exc()[-4000:]
        results[case_id] = entry
    return {"results": results}


@pytest.fixture(scope="module")
def compiled() -> dict:
    """The report of :func:`compile_report` for sm_121 from a fresh interpreter-free process."""
    return run_offline_compile(__file__, CAPABILITY, TRITON_DEFAULT_FP_FUSION="1")["results"]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gb10_gemv_compiles_and_fits(compiled, case):
    case_id = case[0]
    entry = compiled[case_id]
    assert "error" not in entry, entry["error"]
    config = entry["config"]
    assert entry["check"] is None, entry  # the search space accepts the config on GB10
    expected = ["gemv_kernel"] + (["gemv_reduce_kernel"] if config["SPLIT_K"] > 1 else [])
    assert [item["name"] for item in entry["launches"]] == expected
    assert entry["launches"][0]["num_warps"] == config["num_warps"]
    for item in entry["launches"]:
        assert item["target"] == f"cuda:{CAPABILITY}"
        assert 0 <= item["shared_bytes"] <= min(GB10_SMEM, entry["estimate"]), (case_id, item, entry["estimate"])


if __name__ == "__main__":  # the compile subprocess of the `compiled` fixture, or its probe child
    if sys.argv[1] == "--probe":
        _probe(int(sys.argv[2]))
    else:
        print(json.dumps(compile_report(int(sys.argv[1]))))
