"""Offline sm_121 (GB10 / DGX Spark) compiles of the attention's default configs (:mod:`autotune.offline`).

At gpt-oss attention shapes (batch 1, 64 query heads, 8 KV heads, head dim 64), prefill at 128, 2048 and 8192 prompt
tokens and decode at 128, 8192 and 32768 cached keys, each with full causal attention and a 128-token sliding
window, each with the bf16 ("act") and the float8_e4m3fn ("fp8") KV cache: the GB10 default config is planned on
``meta`` tensors and every planned launch (decode with SPLIT_KV > 1: the split kernel and the combine kernel) is
compiled for compute capability 12.1 without a GPU. The compiled kernels' shared memory must fit GB10's 101,376 B per
block.

Besides the defaults, the largest prefill configs the search space accepts on GB10 at 8192 tokens are compiled: the
128 x 128 tiles with as many pipeline stages as :func:`search_spaces.attention.fits_shared_memory` lets through, and
the config with the largest :func:`search_spaces.attention.estimated_shared_bytes` of all accepted ones, per KV
dtype. For every case the constraint's estimate must not be below the compiler's figure: an estimate below it would
let the tuner try configs that cannot launch on a GB10.

The compiles run in one subprocess (this module run as a script, :func:`tests.offline_compile.run_offline_compile`)
with the interpreter off: under ``TRITON_INTERPRET=1`` (tests/conftest.py on CPU-only machines) ``triton.jit`` gives
``InterpretedFunction`` objects that ``triton.compile`` cannot take. Identical compiles (same kernel, argument types,
constexprs and options) are done once. That process first compiles a trivial kernel in a child process of its own:
when Triton cannot target sm_121 here (no CUDA backend, or a ptxas too old for it, which aborts the process) the
tests skip.
"""

from __future__ import annotations

import itertools
import json
import sys

import pytest
import triton
import triton.language as tl

from autotune.device import GB10
from search_spaces import attention as space_mod
from tests.offline_compile import run_offline_compile

pytestmark = pytest.mark.slow  # a subprocess, 17 distinct compiles: ~30 s on 2 cores with an empty Triton cache

GB10_SMEM = 101_376  # ../shared/FACTS.md: max shared memory per block (opt-in) on GB10
CAPABILITY = 121
GPT_OSS = {"batch": 1, "heads_q": 64, "heads_kv": 8, "head_dim": 64}
PREFILL_SEQS = (128, 2048, 8192)
DECODE_SEQS = (128, 8192, 32768)
WINDOWS = (0, 128)
KV_DTYPES = ("act", "fp8")
LARGEST_SEQ = 8192


def _shape(seq: int, window: int) -> dict[str, int]:
    return {**GPT_OSS, "seq": seq, "window": window}


def _largest_stages(config: dict, shape: dict) -> int:
    """The most pipeline stages of the space's choices that the space accepts for ``config`` on GB10."""
    space = space_mod.space("prefill", shape, GB10)
    stages = dict((p.name, p.choices) for p in space.params)["num_stages"]
    accepted = [s for s in stages if space.check({**config, "num_stages": s}, shape, GB10) is None]
    assert accepted, f"no num_stages fits {config} on GB10"
    return max(accepted)


def _largest_estimate(kv_dtype: str, shape: dict) -> dict:
    """The accepted prefill config with the largest shared-memory estimate on GB10 (ties: larger tiles, more warps)."""
    space = space_mod.space("prefill", shape, GB10)
    params = space.params
    accepted = []
    for values in itertools.product(*(p.choices for p in params)):
        config = dict(zip((p.name for p in params), values))
        if config["kv_dtype"] == kv_dtype and space.check(config, shape, GB10) is None:
            accepted.append(config)
    return max(accepted, key=lambda c: (space_mod.estimated_shared_bytes(c, shape), c["BLOCK_M"], c["BLOCK_N"],
                                        c["num_warps"], c["num_stages"]))


# (id, variant, seq, window, config overrides on top of the GB10 default)
CASES = [(f"{variant}-S{seq}-W{window}-{kv}-default", variant, seq, window, {"kv_dtype": kv})
         for variant, seqs in (("prefill", PREFILL_SEQS), ("decode", DECODE_SEQS))
         for seq in seqs for window in WINDOWS for kv in KV_DTYPES]
LARGEST = []
for _kv in KV_DTYPES:
    _tiles = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "SPLIT_KV": 1, "kv_dtype": _kv}
    _stages = _largest_stages({**_tiles, "num_stages": 1}, _shape(LARGEST_SEQ, 0))
    LARGEST.append((f"prefill-S{LARGEST_SEQ}-W0-{_kv}-128x128-{_stages}stages", "prefill", LARGEST_SEQ, 0,
                    {**_tiles, "num_stages": _stages}))
    _config = _largest_estimate(_kv, _shape(LARGEST_SEQ, 0))
    LARGEST.append((f"prefill-S{LARGEST_SEQ}-W0-{_kv}-largest-estimate", "prefill", LARGEST_SEQ, 0, _config))
# The largest tiles (128 x 256, one stage: bf16 only, fp8's converted tiles do not fit). Without pipelining the
# compiler stages K, V and Q through shared memory for the dots, exactly the estimate: the case with no margin.
_TILES_256 = {"BLOCK_M": 128, "BLOCK_N": 256, "num_warps": 8, "num_stages": 1, "SPLIT_KV": 1, "kv_dtype": "act"}
LARGEST.append((f"prefill-S{LARGEST_SEQ}-W0-act-128x256-1stages", "prefill", LARGEST_SEQ, 0, _TILES_256))
ALL_CASES = CASES + LARGEST


@triton.jit
def _probe_kernel(o_ptr, BLOCK: tl.constexpr):
    tl.store(o_ptr + tl.arange(0, BLOCK), tl.arange(0, BLOCK))


def _probe(capability: int) -> None:
    """Compile a trivial kernel for ``cuda:capability`` (raises, or aborts the process, when Triton cannot)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    triton.compile(ASTSource(fn=_probe_kernel, signature={"o_ptr": "*i32", "BLOCK": "constexpr"},
                             constexprs={"BLOCK": 128}),
                   target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})


def compile_report(capability: int) -> dict:
    """Plan and compile every case of :data:`ALL_CASES` for ``cuda:capability`` (run with TRITON_INTERPRET=0).

    Returns:
        ``{"results": {case id: {"config", "estimate", "check", "launches": [...]} or {"error"}},
        "distinct_compiles": n}``, or ``{"skip": reason}`` when Triton cannot target the capability here (no CUDA
        backend or no ptxas for it).
    """
    import subprocess
    import traceback

    import torch

    import kernels.attention as attention
    from autotune.device.offline import compile_launch

    # Can Triton produce code for this target at all? A trivial kernel, so that a bug in the attention kernels fails
    # the tests instead of skipping them; in a child process, because a ptxas too old for the target makes LLVM
    # abort the process ("PTX version 8.0 does not support target 'sm_121a'") rather than raise.
    probe = subprocess.run([sys.executable, __file__, "--probe", str(capability)], capture_output=True, text=True,
                           timeout=300)
    if probe.returncode != 0:
        return {"skip": f"triton.compile for cuda:{capability} is not possible here: {probe.stderr[-1500:]}"}

    def arg_key(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", str(value.dtype))
        if isinstance(value, int) and not isinstance(value, bool):  # compile_launch specializes multiples of 16
            return ("int", value % 16 == 0, -(2**31) <= value < 2**31)
        return (type(value).__name__, value if isinstance(value, (bool, float)) else None)

    cache, results = {}, {}
    for case_id, variant, seq, window, overrides in ALL_CASES:
        shape_dict = _shape(seq, window)
        config = {**space_mod.default_config(variant, shape_dict, GB10), **overrides}
        entry = {"config": config, "estimate": space_mod.estimated_shared_bytes(config, shape_dict),
                 "check": space_mod.space(variant, shape_dict, GB10).check(config, shape_dict, GB10),
                 "launches": []}
        try:
            shape = attention.shape_from_dims(variant, shape_dict)
            inputs = attention.make_empty_inputs(variant, shape, dtype=torch.bfloat16)
            _, plan = attention.launches(variant, inputs, attention.config_from_dict(config))
            for launch in plan:
                key = (launch.kernel.__name__, tuple(arg_key(a) for a in launch.args),
                       tuple(sorted((k, repr(v)) for k, v in launch.kwargs.items())))
                if key not in cache:
                    info = compile_launch(launch.kernel, launch.args, launch.kwargs, capability=capability)
                    cache[key] = {"name": info.name, "target": info.target, "shared_bytes": info.shared_bytes,
                                  "num_warps": info.num_warps}
                pointer_dtypes = sorted({str(a.dtype) for a in launch.args if isinstance(a, torch.Tensor)})
                entry["launches"].append(dict(cache[key], grid=list(launch.grid), pointer_dtypes=pointer_dtypes))
        except Exception:
            entry["error"] = traceback.format_exc()[-4000:]
        results[case_id] = entry
    return {"results": results, "distinct_compiles": len(cache)}


@pytest.fixture(scope="module")
def compiled() -> dict:
    """The report of :func:`compile_report` for sm_121 from a fresh interpreter-free process."""
    return run_offline_compile(__file__, CAPABILITY, TRITON_DEFAULT_FP_FUSION="1")["results"]


def _entry(compiled: dict, case_id: str) -> dict:
    entry = compiled[case_id]
    assert "error" not in entry, entry["error"]
    return entry


@pytest.mark.parametrize("case", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_gb10_attention_compiles_and_fits(compiled, case):
    case_id, variant, _, _, overrides = case
    entry = _entry(compiled, case_id)
    config = entry["config"]
    assert entry["check"] is None, entry  # the search space accepts the config on GB10
    assert config["kv_dtype"] == overrides["kv_dtype"]
    if variant == "prefill":
        expected = ["attention_prefill_kernel"]
    else:
        expected = ["attention_decode_kernel"] + (["attention_combine_kernel"] if config["SPLIT_KV"] > 1 else [])
    assert [item["name"] for item in entry["launches"]] == expected
    main, *rest = entry["launches"]
    # The fp8 case really reads a float8_e4m3fn cache (compiled as fp8e4nv pointers).
    assert ("torch.float8_e4m3fn" in main["pointer_dtypes"]) == (config["kv_dtype"] == "fp8"), main
    assert main["num_warps"] == config["num_warps"]
    assert all(item["num_warps"] == 1 for item in rest)  # the combine kernel
    for item in entry["launches"]:
        assert item["target"] == f"cuda:{CAPABILITY}"
        assert 0 <= item["shared_bytes"] <= GB10_SMEM, (case_id, item)
        assert all(g >= 1 for g in item["grid"])


@pytest.mark.parametrize("case", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_shared_estimate_not_below_compiler(compiled, case):
    # fits_shared_memory prunes with estimated_shared_bytes: it must not under-count what the compiled key loop
    # (the prefill or split kernel; the combine kernel has no pipeline) really uses on sm_121.
    entry = _entry(compiled, case[0])
    main = entry["launches"][0]
    assert main["shared_bytes"] <= entry["estimate"], (case[0], entry["config"], main["shared_bytes"],
                                                       entry["estimate"])


def test_largest_configs_are_at_the_shared_memory_limit():
    # The 128 x 128 and 128 x 256 cases take the most stages fits_shared_memory accepts: one more is rejected for
    # shared memory (unless the space offers no more), so they probe the constraint at its edge.
    shape = _shape(LARGEST_SEQ, 0)
    space = space_mod.space("prefill", shape, GB10)
    most_stages = max(dict((p.name, p.choices) for p in space.params)["num_stages"])
    for case_id, _, _, _, config in LARGEST:
        assert space.check(config, shape, GB10) is None, case_id
        if "largest-estimate" not in case_id and config["num_stages"] < most_stages:
            reason = space.check({**config, "num_stages": config["num_stages"] + 1}, shape, GB10)
            assert reason and reason.startswith("shared memory"), (case_id, reason)


if __name__ == "__main__":  # the offline-compile subprocess of the `compiled` fixture (and its probe)
    if sys.argv[1] == "--probe":
        _probe(int(sys.argv[2]))
    else:
        print(json.dumps(compile_report(int(sys.argv[1]))))
