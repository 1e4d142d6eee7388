"""Tests of the one-launch MoE routing kernel (:mod:`kernels.moe_routing_kernel`) against the torch path of
:func:`kernels.moe_routing.route`.

Where they run: on a CPU-only machine under Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1``
before triton is imported; CPU tensors), else on the GPU (CUDA tensors, the compiled kernel). fp32 and fp16 logits
only under the interpreter (the project keeps bf16 off it); the ``gpu`` test adds bf16.

What "equal" means (:func:`assert_same_routing`): ``topk_ids``, ``row_token``, ``row_expert`` and
``expert_offsets`` are bit-equal (``torch.equal``) to the torch path, and ``row_gate`` is bit-equal to the fused
call's own ``topk_gates`` taken in sorted-row order. The gates themselves are bit-equal to ``torch.softmax`` on
CUDA (same expf, summation order and IEEE division; see the module docstring of the kernel) but not under the
interpreter, whose ``tl.exp`` is numpy's float32 exp while torch's CPU softmax uses its own vectorised exp (numpy's
and torch's float32 exp differed in the last bit for 20 to 35 % of the arguments tried): there the gates must agree
to :data:`GATE_ULPS` ulp.

Logits are drawn without ties (a shuffled grid plus jitter, checked per row), since ``torch.topk`` leaves the order
of equal values unspecified; ties are tested separately against the lowest-index rule. The offline-compile tests
build the kernel for sm_90 and sm_121 in a subprocess without the interpreter (like tests/test_e2m1_ptx.py).
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
import triton
import triton.language as tl

from kernels import moe_routing_kernel
from kernels.moe_routing import Routing, route, route_torch
from kernels.moe_routing_kernel import (FUSED_MAX_EXPERTS, FUSED_MAX_ROWS, FUSED_MAX_TILE, fused_routing_supported,
                                        launch_config, route_fused)
from tests.offline_compile import run_offline_compile

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
"""CPU tensors run the kernel under the interpreter; CUDA tensors the compiled kernel."""

EXACT_GATES = HAS_CUDA
"""Gates bit-equal to the torch path on CUDA only (see the module docstring)."""

GATE_ULPS = 8
"""Interpreter vs torch CPU softmax: the exps differ by up to 1 ulp each (measured: gates up to 3 ulp apart)."""

FIELDS = ("topk_ids", "topk_gates", "row_token", "row_expert", "row_gate", "expert_offsets")

# (T, E, k): decode sizes of gpt-oss-20b (E=32) and -120b (E=128), non-powers of two, k = E, and R = T·k at the limit.
SHAPES = [(1, 32, 4), (3, 32, 4), (5, 128, 4), (7, 4, 2), (1, 8, 8), (3, 5, 3), (2, 3, 3), (1, 1, 1),
          (FUSED_MAX_ROWS // 4, 32, 4)]


def distinct_logits(num_tokens: int, num_experts: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``[T, E]`` logits with no two equal values in a row: a shuffled grid over [-4, 4] plus jitter below a third
    of the grid step (exactly representable steps apart in fp16 too), on :data:`DEVICE`."""
    gen = torch.Generator().manual_seed(seed)
    step = 8.0 / max(num_experts, 2)
    grid = torch.arange(num_experts, dtype=torch.float64) * step - 4.0
    order = torch.argsort(torch.rand((num_tokens, num_experts), generator=gen), dim=1)
    jitter = torch.rand((num_tokens, num_experts), generator=gen, dtype=torch.float64) * (step / 3)
    logits = (grid[order] + jitter).to(dtype)
    sorted_rows = logits.float().sort(dim=1).values
    assert bool((sorted_rows[:, 1:] > sorted_rows[:, :-1]).all()), "test logits must be tie-free"
    return logits.to(DEVICE)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units in the last place between two float32 tensors of non-negative values."""
    if a.numel() == 0:
        return 0
    return int((a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max().item())


def assert_same_routing(fused: Routing, ref: Routing, exact_gates: bool = EXACT_GATES) -> None:
    """The fused routing equals the torch one (see the module docstring for what is bit-exact where)."""
    for name in FIELDS:
        a, b = getattr(fused, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, (name, a, b)
    for name in ("topk_ids", "row_token", "row_expert", "expert_offsets"):
        assert torch.equal(getattr(fused, name), getattr(ref, name)), (name, getattr(fused, name), getattr(ref, name))
    if exact_gates:
        assert torch.equal(fused.topk_gates, ref.topk_gates), (fused.topk_gates, ref.topk_gates)
        assert torch.equal(fused.row_gate, ref.row_gate), (fused.row_gate, ref.row_gate)
    else:
        assert ulp_distance(fused.topk_gates, ref.topk_gates) <= GATE_ULPS, (fused.topk_gates, ref.topk_gates)
        assert ulp_distance(fused.row_gate, ref.row_gate) <= GATE_ULPS, (fused.row_gate, ref.row_gate)
    # row_gate is the fused call's own topk_gates in sorted-row order, bit for bit.
    slot = (fused.topk_ids[fused.row_token.long()] == fused.row_expert[:, None]).int().argmax(dim=1)
    assert torch.equal(fused.row_gate, fused.topk_gates[fused.row_token.long(), slot]), "row_gate != topk_gates"


@pytest.fixture
def path_spy(monkeypatch):
    """Counts the calls of the fused and the torch implementations made through :func:`route`."""
    calls = {"fused": 0, "torch": 0}
    fused, torch_path = moe_routing_kernel.route_fused, route_torch

    def spy_fused(*args, **kwargs):
        calls["fused"] += 1
        return fused(*args, **kwargs)

    def spy_torch(*args, **kwargs):
        calls["torch"] += 1
        return torch_path(*args, **kwargs)

    monkeypatch.setattr(moe_routing_kernel, "route_fused", spy_fused)
    monkeypatch.setattr("kernels.moe_routing.route_torch", spy_torch)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{t}-E{e}-k{k}" for t, e, k in SHAPES])
def test_fused_equals_torch_path(shape, dtype, path_spy):
    num_tokens, num_experts, top_k = shape
    for seed in range(3):
        logits = distinct_logits(num_tokens, num_experts, dtype, seed)
        fused = route(logits, top_k)
        assert_same_routing(fused, route_torch(logits, top_k))
    assert path_spy == {"fused": 3, "torch": 0}  # route() took the kernel (the reference is called directly)


def test_non_contiguous_logits():
    logits = distinct_logits(32, 6, torch.float32, seed=5).t()  # [6, 32] with strides (1, 6)
    assert not logits.is_contiguous()
    assert_same_routing(route_fused(logits, 4), route_torch(logits.contiguous(), 4))


def test_masked_experts_with_minus_inf():
    # As in kernels/moe_gemm/inputs.py: experts outside an eligible set get -inf; each token keeps >= k finite.
    logits = distinct_logits(6, 16, torch.float32, seed=7)
    logits[:, 5:] = float("-inf")
    fused = route_fused(logits, 4)
    assert_same_routing(fused, route_torch(logits, 4))
    assert bool((fused.topk_ids < 5).all())


def test_ties_take_the_lowest_expert_index():
    # Row 0: three-way tie at the top, k=2 -> experts 1 and 2 (not 4). Row 1: tie across the k boundary -> 0, 1.
    # Row 2: all equal -> 0, 1. Row 3: -inf entries tie below the finite ones, only the finite ones are taken.
    inf = float("-inf")
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0],
                           [5.0, 1.0, 1.0, 1.0, 0.5, 0.5],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [inf, 2.0, inf, 1.0, inf, inf]], device=DEVICE)
    fused = route_fused(logits, 2)
    assert fused.topk_ids.tolist() == [[1, 2], [0, 1], [0, 1], [1, 3]]
    gates = fused.topk_gates.tolist()
    assert gates[0][0] == gates[0][1] == 0.5 and gates[2] == [0.5, 0.5]
    assert fused.row_expert.tolist() == [0, 0, 1, 1, 1, 1, 2, 3]
    assert fused.row_token.tolist() == [1, 2, 0, 1, 2, 3, 0, 3]
    assert fused.expert_offsets.tolist() == [0, 2, 6, 7, 8, 8, 8]
    # Everything equal, k = E: the identity order, uniform gates.
    flat = route_fused(torch.zeros((2, 8), device=DEVICE), 8)
    assert flat.topk_ids.tolist() == [list(range(8))] * 2
    assert bool((flat.topk_gates == 0.125).all())


@pytest.mark.parametrize("shape", [(FUSED_MAX_ROWS // 4 + 1, 32, 4), (2, FUSED_MAX_EXPERTS + 1, 4),
                                   (FUSED_MAX_ROWS, 64, 1)],
                         ids=["rows-above-limit", "experts-above-limit", "tile-above-limit"])
def test_above_the_limits_takes_the_torch_path(shape, path_spy):
    num_tokens, num_experts, top_k = shape
    logits = torch.randn((num_tokens, num_experts), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    assert not fused_routing_supported(logits, top_k)
    r = route(logits, top_k)
    assert path_spy == {"fused": 0, "torch": 1}
    for name in FIELDS:
        assert torch.equal(getattr(r, name), getattr(route_torch(logits, top_k), name)), name
    with pytest.raises(ValueError, match="fused routing does not take"):
        route_fused(logits, top_k)


def test_limits_are_the_documented_ones():
    at_rows = torch.zeros((FUSED_MAX_ROWS // 4, 32), device=DEVICE)
    assert fused_routing_supported(at_rows, 4) and not fused_routing_supported(at_rows[:, :31], 32)
    assert fused_routing_supported(torch.zeros((1, FUSED_MAX_EXPERTS), device=DEVICE), 4)
    assert fused_routing_supported(torch.zeros((FUSED_MAX_TILE // 128, 128), device=DEVICE), 4)
    wide = torch.zeros((FUSED_MAX_TILE // 256 + 1, 256), device=DEVICE)  # R = 65 rows, but a 128 x 256 tile
    assert fused_routing_supported(wide[:-1], 1) and not fused_routing_supported(wide, 1)
    assert not fused_routing_supported(torch.zeros((0, 8), device=DEVICE), 2)  # T = 0: torch path
    assert not fused_routing_supported(torch.zeros((2, 8), dtype=torch.int32, device=DEVICE), 2)
    grad = torch.zeros((2, 8), device=DEVICE, requires_grad=True)
    assert not fused_routing_supported(grad, 2)
    with torch.no_grad():
        assert fused_routing_supported(grad, 2)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU dispatch: fused only under the interpreter")
def test_cpu_without_interpreter_takes_the_torch_path(monkeypatch, path_spy):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    logits = distinct_logits(2, 8, torch.float32, seed=1)
    route(logits, 2)
    assert path_spy == {"fused": 0, "torch": 1}


def test_errors_are_those_of_route():
    with pytest.raises(ValueError, match=r"must be \[T, E\]"):
        route(torch.zeros(4, device=DEVICE), 1)
    with pytest.raises(ValueError, match="top_k=9"):
        route(torch.zeros((2, 8), device=DEVICE), 9)


def _perturb(r: Routing, what: str) -> Routing:
    fields = {name: getattr(r, name).clone() for name in FIELDS}
    # Sorted row of (token 0, slot 0), to change one gate consistently in topk_gates and row_gate.
    row = int(((r.row_token == 0) & (r.row_expert == r.topk_ids[0, 0])).int().argmax())
    if what == "swap_rows":  # two rows of different tokens of one expert: not the stable order
        fields["row_token"][[0, 1]] = fields["row_token"][[1, 0]]
    elif what == "expert_offsets":
        fields["expert_offsets"][1] += 1
    elif what == "topk_ids":
        fields["topk_ids"][0, [0, 1]] = fields["topk_ids"][0, [1, 0]]
    elif what == "row_gate_order":  # row_gate no longer topk_gates in row order
        fields["row_gate"][[0, 1]] = fields["row_gate"][[1, 0]]
    elif what in ("gate_far", "gate_1ulp"):  # beyond the interpreter's tolerance, or 1 ulp
        gate = fields["topk_gates"][0, 0]
        bumped = gate * (1 + 1e-5) if what == "gate_far" else torch.nextafter(gate, torch.ones_like(gate))
        fields["topk_gates"][0, 0] = bumped
        fields["row_gate"][row] = bumped
    return Routing(**fields)


@pytest.mark.parametrize("what", ["swap_rows", "expert_offsets", "topk_ids", "row_gate_order", "gate_far",
                                  "gate_1ulp"])
def test_comparison_detects_a_perturbed_routing(what):
    # Two tokens both routed to expert 0 first, with well-separated gates, so every perturbation changes something.
    logits = torch.tensor([[9.0, 1.0, 0.0, 4.0], [8.0, 2.0, 0.5, 0.0]], device=DEVICE)
    ref = route_torch(logits, 2)
    fused = route_fused(logits, 2)
    assert_same_routing(fused, ref)
    assert ref.row_expert.tolist()[:2] == [0, 0] and ref.row_token.tolist()[:2] == [0, 1]
    bad = _perturb(fused, what)
    if what == "gate_1ulp":  # caught where gates must be bit-equal, within the tolerance elsewhere
        with pytest.raises(AssertionError):
            assert_same_routing(bad, fused, exact_gates=True)
        assert_same_routing(bad, fused, exact_gates=False)
        return
    for exact in (False, True):
        with pytest.raises(AssertionError):
            assert_same_routing(bad, ref, exact_gates=exact)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES + [(64, 128, 4), (16, 32, 4), (FUSED_MAX_ROWS, 16, 1)],
                         ids=[f"T{t}-E{e}-k{k}" for t, e, k in SHAPES + [(64, 128, 4), (16, 32, 4),
                                                                         (FUSED_MAX_ROWS, 16, 1)]])
def test_gpu_fused_is_bit_equal_to_torch(shape, dtype):
    num_tokens, num_experts, top_k = shape
    for seed in range(5):
        logits = distinct_logits(num_tokens, num_experts, dtype, seed)
        assert_same_routing(route_fused(logits, top_k), route_torch(logits, top_k), exact_gates=True)


@pytest.mark.gpu
def test_gpu_fused_routing_is_graph_capturable():
    logits = distinct_logits(4, 32, torch.float32, seed=0)
    route(logits, 4)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = route(logits, 4)
    for seed in (1, 2):
        logits.copy_(distinct_logits(4, 32, torch.float32, seed))
        graph.replay()
        torch.cuda.synchronize()
        assert_same_routing(captured, route_torch(logits, 4), exact_gates=True)


# ------------------------------------------------------------------------------------------------------------------
# Offline compile for sm_90 (H100) and sm_121 (GB10) without a GPU
# ------------------------------------------------------------------------------------------------------------------

COMPILE_SHAPES = [(1, 32, 4), (8, 128, 4), (FUSED_MAX_ROWS // 4, 32, 4), (FUSED_MAX_TILE // 128, 128, 4),
                  (3, 5, 3), (FUSED_MAX_ROWS // 32, 256, 1)]
"""Decode at both gpt-oss widths, the row limit, the largest tile at E = 128, odd sizes, the widest E."""

SIGNATURE = {"logits_ptr": "*bf16", "topk_ids_ptr": "*i32", "topk_gates_ptr": "*fp32", "row_token_ptr": "*i32",
             "row_expert_ptr": "*i32", "row_gate_ptr": "*fp32", "expert_offsets_ptr": "*i32", "T": "i32",
             "E": "i32", "stride_t": "i32", "stride_e": "i32"}


@triton.jit
def _probe_kernel(o_ptr, BLOCK: tl.constexpr):
    tl.store(o_ptr + tl.arange(0, BLOCK), tl.arange(0, BLOCK))


def compile_report(capability: int) -> dict:
    """Compile the kernel for ``capability`` at :data:`COMPILE_SHAPES` with the launcher's constexprs and warps (run
    with TRITON_INTERPRET=0); pointers marked 16-byte aligned as the JIT would. ``{"skip": reason}`` when Triton
    cannot target it here (no CUDA backend or no ptxas for it)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = moe_routing_kernel.moe_route_fused_kernel
    target = GPUTarget("cuda", capability, 32)
    try:  # can Triton produce code for this target at all? (a trivial kernel, so that our kernel's bugs fail)
        probe = ASTSource(fn=_probe_kernel, signature={"o_ptr": "*i32", "BLOCK": "constexpr"},
                          constexprs={"BLOCK": 128})
        triton.compile(probe, target=target, options={"num_warps": 4})
    except Exception as exc:  # no CUDA backend, no ptxas, or a ptxas without this target
        return {"skip": f"triton.compile for cuda:{capability} is not possible here: {type(exc).__name__}: {exc}"}
    report = {}
    for num_tokens, num_experts, top_k in COMPILE_SHAPES:
        config = launch_config(num_tokens, num_experts, top_k)
        num_warps = config.pop("num_warps")
        signature = {name: SIGNATURE.get(name, "constexpr") for name in kernel.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names) if name.endswith("_ptr")}
        source = ASTSource(fn=kernel, signature=signature, constexprs=config, attrs=attrs)
        compiled = triton.compile(source, target=target, options={"num_warps": num_warps})
        report[f"T{num_tokens}-E{num_experts}-k{top_k}"] = {
            "cubin_bytes": len(compiled.asm["cubin"]), "ptx": compiled.asm["ptx"],
            "num_warps": int(compiled.metadata.num_warps), "expected_warps": num_warps}
    return report




@pytest.fixture(scope="module", params=[90, 121], ids=["sm90", "sm121"])
def compiled(request):
    """``(capability, report)`` from :func:`compile_report` run in a fresh interpreter-free process."""
    return request.param, run_offline_compile(__file__, request.param, TRITON_DEFAULT_FP_FUSION="1")


@pytest.mark.slow
def test_fused_kernel_compiles_offline(compiled):
    cap, report = compiled
    assert sorted(report) == sorted(f"T{t}-E{e}-k{k}" for t, e, k in COMPILE_SHAPES)
    for name, item in report.items():
        assert item["cubin_bytes"] > 0, name
        assert re.search(rf"^\.target sm_{cap}a?\b", item["ptx"], re.MULTILINE), name
        assert item["num_warps"] == item["expected_warps"], name
        assert "div.rn.f32" in item["ptx"], name  # IEEE division, as torch.softmax


if __name__ == "__main__":  # the offline-compile subprocess of the `compiled` fixture
    print(json.dumps(compile_report(int(sys.argv[1]))))
