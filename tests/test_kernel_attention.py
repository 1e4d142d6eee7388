"""Tests of the gpt-oss flash attention with sinks (:mod:`kernels.attention`): Triton kernels vs the fp32 reference.

On a CPU-only machine the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1). The
interpreter computes a bf16 ``tl.dot`` wrongly (triton#11584), so the CPU cases use fp16 and fp32 activations; the
``gpu`` cases run bf16 at gpt-oss sizes on CUDA.

The check is the tuner's own (:func:`autotune.tuning.evaluate.row_relative_error` and ``element_error`` against
``kernels.attention.tolerance(variant, dtype, config)``). The reference is HF transformers' eager math
(:func:`kernels.attention.attention_reference`); the cache is filled with NaN beyond the valid positions, so a kernel
that reads (or multiplies by zero) a key it must not see fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from autotune.tuning.evaluate import element_error, row_relative_error
from kernels import attention as attn
from kernels.attention import (AttentionConfig, AttentionShape, attention_decode, attention_prefill,
                               attention_reference, to_kv_dtype, tolerance)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
FP8 = torch.float8_e4m3fn
FP32_ON_GPU = pytest.mark.skipif(
    HAS_CUDA, reason="fp32 cases exercise the interpreter's IEEE products; on GPUs tl.dot uses tf32 (not run there)")
NAN_TAIL = 5
"""Cache positions past the valid ones, filled with NaN."""


@dataclass(frozen=True)
class Case:
    """One kernel-vs-reference comparison (in the style of triton_kernels' tests/test_matmul.py).

    prefill: T queries per sequence at positions start_pos..start_pos+T-1 (``seq`` = T). decode: one query per
    sequence; ``lens`` gives each sequence's cache length (default: all ``seq``).
    """

    variant: str
    seq: int
    window: int = 0
    heads_q: int = 4
    heads_kv: int = 2
    head_dim: int = 16
    batch: int = 1
    start_pos: int = 0
    lens: tuple[int, ...] | None = None
    config: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float16
    seed: int = 0

    @property
    def cfg(self) -> AttentionConfig:
        return AttentionConfig(**{"BLOCK_M": 16, "BLOCK_N": 16, **self.config})

    def id(self) -> str:
        c = self.cfg
        dt = str(self.dtype).removeprefix("torch.")
        extra = f"-start{self.start_pos}" if self.start_pos else ""
        extra += f"-lens{'_'.join(map(str, self.lens))}" if self.lens else ""
        return (f"{self.variant}-B{self.batch}-S{self.seq}-W{self.window}-H{self.heads_q}x{self.heads_kv}-"
                f"D{self.head_dim}{extra}-{dt}-{c.kv_dtype}-{c.BLOCK_M}x{c.BLOCK_N}-split{c.SPLIT_KV}")


@dataclass
class Problem:
    """Tensors of one case: ``q`` (a strided view), caches in both storages (NaN past the valid positions)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k8: torch.Tensor
    v8: torch.Tensor
    sinks: torch.Tensor
    positions: torch.Tensor
    lens: torch.Tensor


def make_problem(case: Case, device: str = DEVICE) -> Problem:
    gen = torch.Generator(device=device).manual_seed(case.seed)
    b, hq, hkv, d = case.batch, case.heads_q, case.heads_kv, case.head_dim
    if case.variant == "prefill":
        queries, valid = case.seq, case.start_pos + case.seq
        lens = torch.full((b,), valid, dtype=torch.int32, device=device)
        positions = (case.start_pos + torch.arange(queries, device=device)).expand(b, queries)
    else:
        queries = 1
        lens = torch.tensor(case.lens or (case.seq,) * b, dtype=torch.int32, device=device)
        positions = (lens.long() - 1)[:, None]
        valid = int(lens.max())
    # q as a view into a wider projection output [B, T, Hq·D + 8]: strided rows, contiguous head dim
    qkv = torch.randn((b, queries, hq * d + 8), generator=gen, device=device).to(case.dtype)
    q = qkv[..., :hq * d].unflatten(-1, (hq, d))
    if case.variant == "decode":
        q = q[:, 0]
    capacity = valid + NAN_TAIL
    k = torch.randn((b, capacity, hkv, d), generator=gen, device=device)
    v = torch.randn((b, capacity, hkv, d), generator=gen, device=device)
    hidden = torch.arange(capacity, device=device)[None, :] >= lens[:, None]           # [B, S]
    k[hidden], v[hidden] = float("nan"), float("nan")
    sinks = torch.rand((hq,), generator=gen, device=device) * (math.log(max(valid, 2)) + 3.0) - 1.0
    k, v = k.to(case.dtype), v.to(case.dtype)
    return Problem(q, k, v, to_kv_dtype(k, FP8), to_kv_dtype(v, FP8), sinks, positions, lens)


def run_kernel(case: Case, p: Problem, *, window: int | None = None, sinks: torch.Tensor | None = None,
               kv_heads: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel on a case; the keyword arguments inject a bug (another window, other sinks, a KV-head order)."""
    k, v = (p.k8, p.v8) if case.cfg.kv_dtype == "fp8" else (p.k, p.v)
    if kv_heads is not None:
        k, v = k[:, :, kv_heads], v[:, :, kv_heads]
    window = case.window if window is None else window
    sinks = p.sinks if sinks is None else sinks
    scale = 1.0 / math.sqrt(case.head_dim)
    if case.variant == "prefill":
        return attention_prefill(p.q, k, v, sinks, start_pos=case.start_pos, window=window, sm_scale=scale,
                                 config=case.cfg)
    return attention_decode(p.q, k, v, sinks, p.lens, window=window, sm_scale=scale, config=case.cfg)


def run_reference(case: Case, p: Problem, kv_dtype: str = "act") -> torch.Tensor:
    k, v = (p.k8, p.v8) if kv_dtype == "fp8" else (p.k, p.v)
    q = p.q if case.variant == "prefill" else p.q[:, None]
    ref = attention_reference(q, k, v, p.sinks, p.positions, p.lens, window=case.window,
                              sm_scale=1.0 / math.sqrt(case.head_dim))
    return ref if case.variant == "prefill" else ref[:, 0]


def errors(tri: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    assert torch.isfinite(ref).all()
    return row_relative_error(tri, ref), element_error(tri, ref)


def assert_within(case: Case, tri: torch.Tensor, ref: torch.Tensor, tol) -> None:
    assert tri.shape == ref.shape and tri.dtype == case.dtype
    assert torch.isfinite(ref).all()  # a NaN reference would make every error metric vacuous
    assert torch.isfinite(tri).all(), f"{case.id()}: {(~torch.isfinite(tri)).sum().item()} non-finite outputs"
    row, elem = errors(tri, ref)
    assert row <= tol.max_rel_err and elem <= tol.max_elem_err, \
        f"{case.id()}: row {row:.3e} / elem {elem:.3e} > {tol.max_rel_err:.1e} / {tol.max_elem_err:.1e} ({tol.reason})"


# --- kernel vs reference -----------------------------------------------------------------------------------------
_PREFILL = [
    Case("prefill", seq=37),                                                            # odd length, 3 blocks
    Case("prefill", seq=37, window=8, config=dict(BLOCK_M=32), seed=1),                 # sliding, W < tile
    Case("prefill", seq=45, window=20, config=dict(BLOCK_N=32), seed=2),                # W not a block multiple
    Case("prefill", seq=13, start_pos=19, seed=3),                                      # chunked prefill
    Case("prefill", seq=13, start_pos=19, window=8, dtype=torch.float32, seed=4),
    Case("prefill", seq=1, start_pos=6, window=4, seed=5),                              # one query
    Case("prefill", seq=1, seed=6),                                                     # one query, one key
    Case("prefill", seq=20, window=32, heads_q=2, heads_kv=2, dtype=torch.float32, seed=7),  # G = 1, W > seq
    Case("prefill", seq=33, batch=2, heads_q=8, heads_kv=2, head_dim=32, config=dict(BLOCK_M=64), seed=8),
    Case("prefill", seq=70, window=16, config=dict(BLOCK_M=16, BLOCK_N=16), seed=9),    # interior unmasked blocks
    Case("prefill", seq=70, config=dict(BLOCK_M=32, BLOCK_N=16), seed=10),
]
_DECODE = [
    Case("decode", seq=37),
    Case("decode", seq=37, batch=3, lens=(37, 1, 20), config=dict(SPLIT_KV=4), seed=11),  # ragged, len 1
    Case("decode", seq=37, window=8, batch=3, lens=(37, 5, 9), config=dict(SPLIT_KV=2), seed=12),
    Case("decode", seq=37, window=8, heads_q=2, heads_kv=2, dtype=torch.float32, seed=13),  # G = 1
    Case("decode", seq=1, config=dict(SPLIT_KV=2), seed=14),                            # one key, an empty split
    Case("decode", seq=20, config=dict(SPLIT_KV=64, BLOCK_N=16), seed=15),              # most splits empty
    Case("decode", seq=50, heads_q=32, heads_kv=1, config=dict(SPLIT_KV=2, BLOCK_N=32), seed=16),  # G = 32 rows
    Case("decode", seq=70, window=24, batch=2, lens=(70, 23), heads_q=8, heads_kv=2, head_dim=32,
         config=dict(SPLIT_KV=4, BLOCK_N=16), dtype=torch.float32, seed=17),
]
_FP8 = [
    Case("prefill", seq=45, window=8, heads_q=8, heads_kv=2, head_dim=32, config=dict(kv_dtype="fp8"), seed=21),
    Case("prefill", seq=13, start_pos=19, config=dict(kv_dtype="fp8", BLOCK_N=32), seed=22),
    Case("decode", seq=37, batch=3, lens=(37, 2, 30), heads_q=8, heads_kv=2, head_dim=32,
         config=dict(kv_dtype="fp8", SPLIT_KV=4), seed=23),
    Case("decode", seq=40, window=16, config=dict(kv_dtype="fp8"), dtype=torch.float32, seed=24),
]


def _marks(cases):
    return [pytest.param(c, marks=FP32_ON_GPU) if c.dtype == torch.float32 else c for c in cases]


@pytest.mark.parametrize("case", _marks(_PREFILL + _DECODE), ids=Case.id)
def test_matches_reference(case: Case):
    p = make_problem(case)
    assert_within(case, run_kernel(case, p), run_reference(case, p), tolerance(case.variant, case.dtype))


@pytest.mark.parametrize("case", _marks(_FP8), ids=Case.id)
def test_fp8_cache(case: Case):
    # Against the fp8-rounded cache: as tight as the activation dtype (the kernel converts e4m3 exactly). Against the
    # activation-dtype cache (what the tuner checks): within the fp8 tolerance.
    p = make_problem(case)
    tri = run_kernel(case, p)
    assert_within(case, tri, run_reference(case, p, "fp8"), tolerance(case.variant, case.dtype))
    assert_within(case, tri, run_reference(case, p, "act"), tolerance(case.variant, case.dtype, case.cfg))


def test_prefill_interior_blocks_are_visited():
    # Guard for the case list: at seq 70, W 16, 16x16 tiles, the query tile at rows 48..63 has unmasked interior
    # blocks only if the window spans more than one tile; W = 40 gives keys 32..47 to every row (rows 48..63 see
    # 9..63 .. 24..63), which must then be summed without masks.
    case = Case("prefill", seq=70, window=40, seed=30)
    p = make_problem(case)
    assert_within(case, run_kernel(case, p), run_reference(case, p), tolerance("prefill", case.dtype))


# --- the tolerance catches real bugs -----------------------------------------------------------------------------
_BUG_CASES = [
    Case("prefill", seq=45, window=8, heads_q=8, heads_kv=2, head_dim=32, seed=41),
    Case("prefill", seq=45, window=8, heads_q=8, heads_kv=2, head_dim=32, config=dict(kv_dtype="fp8"), seed=42),
    Case("decode", seq=40, window=8, batch=4, heads_q=8, heads_kv=2, head_dim=32, config=dict(SPLIT_KV=2),
         seed=43),
    Case("decode", seq=40, window=8, batch=4, heads_q=8, heads_kv=2, head_dim=32,
         config=dict(SPLIT_KV=2, kv_dtype="fp8"), seed=44),
]


def _bugs(case: Case, p: Problem) -> dict[str, dict]:
    swapped = torch.arange(case.heads_kv, device=p.k.device).roll(1)   # query head h reads KV head h//G + 1
    return {
        "window+1": dict(window=case.window + 1),
        "window-1": dict(window=case.window - 1),
        "no window": dict(window=0),
        "sink dropped": dict(sinks=torch.full_like(p.sinks, -1e4)),
        "sink doubled": dict(sinks=p.sinks + math.log(2.0)),
        "wrong GQA head": dict(kv_heads=swapped),
    }


@pytest.mark.parametrize("case", _BUG_CASES, ids=Case.id)
def test_tolerance_catches_bugs(case: Case):
    p = make_problem(case)
    ref = run_reference(case, p)
    tol = tolerance(case.variant, case.dtype, case.cfg)
    assert_within(case, run_kernel(case, p), ref, tol)  # the correct call passes ...
    for name, bug in _bugs(case, p).items():          # ... each bug fails the row limit
        row, _ = errors(run_kernel(case, p, **bug), ref)
        assert row > tol.max_rel_err, f"{case.id()}: bug '{name}' went unnoticed: row {row:.3e} <= {tol.max_rel_err}"


@pytest.mark.parametrize("variant, seq, window", [("decode", 4096, 128), ("decode", 512, 0), ("prefill", 256, 128)])
def test_fp8_tolerance_catches_bugs_at_real_dims(variant, seq, window):
    # Reference-only, on the tuner's own inputs at gpt-oss heads: the fp8 cache passes the fp8 limits, and the
    # reference made wrong (window one key off, sink doubled, wrong GQA head) fails them.
    shape = AttentionShape(batch=1, seq=seq, heads_q=64, heads_kv=8, head_dim=64, window=window)
    inputs = attn.make_inputs(variant, shape, dtype=torch.bfloat16, device="cpu", seed=51)
    ref = attn.reference(variant, inputs)
    tol = tolerance(variant, torch.bfloat16, AttentionConfig(kv_dtype="fp8"))
    row, elem = errors(attn.reference(variant, inputs, "fp8"), ref)
    assert row <= tol.max_rel_err and elem <= tol.max_elem_err, (row, elem)
    swapped = (torch.arange(64) // 8 + 1) % 8
    positions = torch.arange(seq)[None] if variant == "prefill" else torch.tensor([[seq - 1]])
    q = inputs.q if variant == "prefill" else inputs.q[:, None]
    bugs = {"sink doubled": dict(sinks=inputs.sinks + math.log(2.0)),
            # one cache head per query head (G = 1 in the reference), each the wrong KV head
            "wrong GQA head": dict(k=inputs.k_cache[:, :, swapped], v=inputs.v_cache[:, :, swapped])}
    if window:
        bugs.update({"window+1": dict(window=window + 1), "window-1": dict(window=window - 1)})
    for name, bug in bugs.items():
        args = dict(k=inputs.k_cache, v=inputs.v_cache, sinks=inputs.sinks, window=window)
        args.update(bug)
        wrong = attention_reference(q, args["k"], args["v"], args["sinks"], positions, inputs.cache_lens,
                                    window=args["window"], sm_scale=inputs.sm_scale)
        wrong = wrong if variant == "prefill" else wrong[:, 0]
        row, _ = errors(wrong, ref)
        assert row > tol.max_rel_err, (name, row, tol.max_rel_err)


# --- the uniform interface ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", attn.VARIANTS)
@pytest.mark.parametrize("kv_dtype", ["act", "fp8"])
def test_interface_roundtrip(variant, kv_dtype):
    shape = attn.shape_from_dims(variant, dict(batch=2, seq=24, heads_q=4, heads_kv=2, head_dim=32, window=8))
    inputs = attn.make_inputs(variant, shape, dtype=torch.float16, device=DEVICE, seed=61)
    config = attn.config_from_dict(dict(BLOCK_M=16, BLOCK_N=16, SPLIT_KV=2, kv_dtype=kv_dtype))
    out, plan = attn.launches(variant, inputs, config)
    assert len(plan) == (2 if variant == "decode" else 1)  # decode: split kernel + combine
    out.fill_(float("nan"))
    tri = attn.launch(variant, inputs, config, out)
    assert tri is out
    tol = tolerance(variant, torch.float16, config)
    assert_within(Case(variant, seq=24), tri, attn.reference(variant, inputs), tol)


@pytest.mark.parametrize("variant", attn.VARIANTS)
def test_empty_inputs_plan(variant):
    shape = AttentionShape(batch=1, seq=4096, heads_q=64, heads_kv=8, head_dim=64, window=0)
    inputs = attn.make_empty_inputs(variant, shape, dtype=torch.bfloat16)
    out, plan = attn.launches(variant, inputs, AttentionConfig(BLOCK_M=128, SPLIT_KV=32, kv_dtype="fp8"))
    assert out.device.type == "meta" and out.shape == inputs.q.shape
    assert plan[0].grid == ((32, 64) if variant == "prefill" else (1, 8, 32))


def test_model_shapes():
    shapes = attn.model_shapes("prefill", [128, 512, 32768], batch=[1, 2], heads_q=64, heads_kv=8, head_dim=64,
                               window=[0, 128], prefill_seq_max=8192)
    assert len(shapes) == 2 * 2 * 2 and max(s.seq for s in shapes) == 512
    decode = attn.model_shapes("decode", [128, 32768], batch=1, heads_q=64, heads_kv=8, head_dim=64, window=128,
                               prefill_seq_max=8192)
    assert [s.as_dict() for s in decode] == [
        dict(batch=1, seq=128, heads_q=64, heads_kv=8, head_dim=64, window=128),
        dict(batch=1, seq=32768, heads_q=64, heads_kv=8, head_dim=64, window=128)]
    with pytest.raises(ValueError):
        attn.shape_from_dims("decode", dict(batch=1, seq=8))
    with pytest.raises(ValueError):
        attn.shape_from_dims("bogus", attn.EXAMPLE_DIMS)


def test_cost():
    # prefill 8 tokens, W 4: pairs 1+2+3+4+4+4+4+4 = 26 per head; decode 100 keys, W 4: 4 keys read.
    shape = AttentionShape(batch=2, seq=8, heads_q=4, heads_kv=2, head_dim=16, window=4)
    inputs = [attn.make_inputs("prefill", shape, dtype=torch.float16, device="cpu", seed=0)]
    cost = attn.cost("prefill", inputs)
    assert cost.flops == 4 * 16 * 26 * 2 * 4
    assert cost.bytes == 2 * 2 * 8 * 4 * 16 * 2 + 2 * 2 * 8 * 2 * 16 * 2
    assert attn.cost("prefill", inputs, AttentionConfig(kv_dtype="fp8")).bytes == \
        2 * 2 * 8 * 4 * 16 * 2 + 2 * 2 * 8 * 2 * 16
    shape = AttentionShape(batch=1, seq=100, heads_q=4, heads_kv=2, head_dim=16, window=4)
    decode = attn.cost("decode", [attn.make_inputs("decode", shape, dtype=torch.float16, device="cpu", seed=0)])
    assert decode.flops == 4 * 16 * 4 * 4 and decode.bytes == 2 * 4 * 16 * 2 + 2 * 4 * 2 * 16 * 2


def test_timing_inputs_defeat_the_cache():
    shape = AttentionShape(batch=1, seq=2048, heads_q=8, heads_kv=2, head_dim=64, window=0)
    sets = attn.make_timing_inputs("decode", shape, dtype=torch.float16, device="cpu", seed=0, cache_bytes=2**20)
    per_call = 2 * 8 * 64 * 2 + 2 * 2048 * 2 * 64  # q + out, fp8 K/V
    assert len(sets) == math.ceil(3 * 2**20 / per_call)
    assert not torch.equal(sets[0].k_cache, sets[1].k_cache)


# --- tolerance values, validation --------------------------------------------------------------------------------
def test_tolerance_values():
    fp8 = AttentionConfig(kv_dtype="fp8")
    assert tolerance("prefill", torch.bfloat16).max_rel_err == 4 * 2.0**-8
    assert tolerance("decode", torch.float16, AttentionConfig()).max_elem_err == 16 * 2.0**-11
    assert (tolerance("prefill", torch.bfloat16, fp8).max_rel_err, tolerance("decode", torch.bfloat16, fp8).max_rel_err) \
        == (0.25, 0.12)
    assert "e4m3" in tolerance("decode", torch.bfloat16, fp8).reason
    assert tolerance("decode", torch.float32).max_rel_err == 1e-3


def test_to_kv_dtype_saturates():
    x = torch.tensor([1000.0, -1000.0, 1.0, 0.3], dtype=torch.float16)
    assert to_kv_dtype(x, FP8).float().tolist() == [448.0, -448.0, 1.0, 0.3125]
    assert to_kv_dtype(x, torch.float16) is x


@pytest.mark.parametrize("params", [
    dict(BLOCK_M=48), dict(BLOCK_N=8), dict(num_warps=3), dict(SPLIT_KV=3), dict(SPLIT_KV=128), dict(num_stages=0),
    dict(kv_dtype="bf16"), dict(BLOCK_N=True), dict(bogus=1),
])
def test_config_validation(params):
    with pytest.raises(ValueError):
        attn.config_from_dict(params)


def test_launcher_checks():
    case = Case("decode", seq=8)
    p = make_problem(case, "cpu")
    scale = 0.25
    with pytest.raises(TypeError, match="kv_dtype"):  # act config on an fp8 cache
        attention_decode(p.q, p.k8, p.v8, p.sinks, p.lens, window=0, sm_scale=scale, config=AttentionConfig())
    with pytest.raises(ValueError, match="cache_lens"):
        attention_decode(p.q, p.k, p.v, p.sinks, p.lens.long(), window=0, sm_scale=scale, config=AttentionConfig())
    with pytest.raises(ValueError, match="sinks"):
        attention_decode(p.q, p.k, p.v, p.sinks[:2], p.lens, window=0, sm_scale=scale, config=AttentionConfig())
    with pytest.raises(ValueError, match="do not fit"):
        attention_prefill(p.q[:, None], p.k, p.v, p.sinks, start_pos=p.k.shape[1], window=0, sm_scale=scale,
                          config=AttentionConfig())
    with pytest.raises(ValueError, match="out"):
        attention_decode(p.q, p.k, p.v, p.sinks, p.lens, window=0, sm_scale=scale, config=AttentionConfig(),
                         out=torch.empty(3, 4, 16, dtype=torch.float16))


# --- GPU only: bf16 at gpt-oss sizes, CUDA-graph capture ---------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("variant, seq, window, config", [
    ("prefill", 1000, 128, dict(BLOCK_M=64, BLOCK_N=64)),
    ("prefill", 2048, 0, dict(BLOCK_M=128, BLOCK_N=64, num_warps=8)),
    ("decode", 32768, 0, dict(BLOCK_N=64, SPLIT_KV=32)),
    ("decode", 4000, 128, dict(BLOCK_N=128, kv_dtype="fp8")),
])
def test_gpu_bf16_gpt_oss(variant, seq, window, config):
    shape = AttentionShape(batch=1, seq=seq, heads_q=64, heads_kv=8, head_dim=64, window=window)
    inputs = attn.make_inputs(variant, shape, dtype=torch.bfloat16, device="cuda", seed=71)
    cfg = AttentionConfig(**config)
    assert_within(Case(variant, seq, dtype=torch.bfloat16), attn.launch(variant, inputs, cfg),
                  attn.reference(variant, inputs), tolerance(variant, torch.bfloat16, cfg))


@pytest.mark.gpu
def test_gpu_decode_is_graph_capturable():
    shape = AttentionShape(batch=2, seq=1024, heads_q=64, heads_kv=8, head_dim=64, window=0)
    inputs = attn.make_inputs("decode", shape, dtype=torch.bfloat16, device="cuda", seed=72)
    cfg = AttentionConfig(BLOCK_N=64, SPLIT_KV=8)
    out = attn.launch("decode", inputs, cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attn.launch("decode", inputs, cfg, out)
    inputs.cache_lens.copy_(torch.tensor([1024, 300], dtype=torch.int32))  # new lengths, same graph
    graph.replay()
    torch.cuda.synchronize()
    ref = attn.reference("decode", inputs)
    assert row_relative_error(out, ref) <= tolerance("decode", torch.bfloat16).max_rel_err


def test_reference_matches_hf_eager():
    # The reference against HF transformers' own eager_attention_forward of GptOssAttention (sinks, GQA, window).
    import transformers.models.gpt_oss.modeling_gpt_oss as hf

    case = Case("prefill", seq=12, start_pos=5, window=6, heads_q=4, heads_kv=2, dtype=torch.float32, seed=81)
    p = make_problem(case, "cpu")
    valid = case.start_pos + case.seq
    module = torch.nn.Module()
    module.num_key_value_groups, module.sinks = 2, torch.nn.Parameter(p.sinks)
    keys = torch.arange(valid)
    pos = p.positions[0][:, None]
    hidden = (keys > pos) | (keys <= pos - case.window)                                 # [T, S]
    mask = torch.zeros(hidden.shape).masked_fill(hidden, torch.finfo(torch.float32).min)[None, None]
    hf_out, _ = hf.eager_attention_forward(module, p.q.transpose(1, 2), p.k[:, :valid].transpose(1, 2),
                                           p.v[:, :valid].transpose(1, 2), mask, scaling=0.25)
    ref = run_reference(case, p)
    assert (hf_out - ref).abs().max().item() < 1e-5
