"""Tests of the fused layer glue (:mod:`kernels.layer_ops`): residual add + RMSNorm, RoPE + KV-cache write.

On a CPU-only machine the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), in
fp32 and fp16 (the interpreter's bf16 is unreliable); with a CUDA device the same tests run there, bf16 included,
plus a CUDA-graph test (marked ``gpu``).

The references are the torch formulas of the model (``autotune.model.model.rms_norm`` after
``(x.float() + delta.float()).to(x.dtype)``, restated here so the test does not follow a model that starts calling
the kernel; ``RopeTable.apply``; ``to_kv_dtype`` into index-put cache slots), compared bit for bit:

- RMSNorm data lie on a coarse grid (multiples of 1/16 plus one ±64 per row) so every sum of squares is exact in
  float32 whatever the summation order; the ±64 entries get a delta of ±1/32 that the fp16 residual must round
  away (a tie, to even), so normalizing the unrounded sum would be caught. Random data get an ulp bound instead.
- RoPE/KV: whole caches (pre-filled with random bytes) are compared byte for byte, so a write to a wrong slot or
  position and a missed one both fail; "sensitivity" tests show that a reference with one position or the
  sequence offset off by one differs from what the kernel wrote.
- The fp8 encoder (software rounding under the interpreter, whose float8 cast does not round to nearest even;
  hardware ``cvt`` on GPUs) is checked against torch on every fp16 value and on fp32 values at and around every
  e4m3 rounding boundary.
- Offline compile for sm_90 (bf16 activations, bf16 and fp8 caches) in a subprocess without the interpreter,
  skipped where Triton cannot target CUDA.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

import pytest
import torch
import triton
import triton.language as tl

from autotune.model.config import ModelConfig
from autotune.model.rope import RopeTable
from kernels import layer_ops
from kernels.attention import to_kv_dtype
from kernels.layer_ops import add_rms_norm, rope_qkv_write
from tests.offline_compile import run_offline_compile

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
FP8 = torch.float8_e4m3fn
DTYPES = (torch.float32, torch.float16) + ((torch.bfloat16,) if HAS_CUDA else ())
EPS = 1e-5  # gpt-oss RMSNorm epsilon (autotune.model.model.RMS_EPS)


def _ids(values) -> list[str]:
    return [str(v).replace("torch.", "") for v in values]


def _bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (bitwise comparison, NaN included, any dtype)."""
    return x.contiguous().view(torch.uint8)


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    same = _bits(actual) == _bits(expected)
    assert bool(same.all()), f"{what}: {int((~same).sum())} of {same.numel()} bytes differ"


def _ulp_distance(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in representable values between same-signed floats of one dtype (0: equal)."""
    ints = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    return int((a.view(ints).long() - b.view(ints).long()).abs().max()) if a.numel() else 0


# --------------------------------------------------------------------------------------------------------------------
# add_rms_norm
# --------------------------------------------------------------------------------------------------------------------

def torch_add_rms_norm(x, delta, scale, eps=EPS, round_residual=True):
    """The model's torch code (residual add, then ``autotune.model.model.rms_norm``); ``round_residual=False`` is a
    deliberately wrong variant (normalizes the unrounded fp32 sum) for the sensitivity test."""
    x_new = x if delta is None else (x.float() + delta.float())
    x32 = x_new.to(x.dtype).float() if round_residual else x_new.float()
    h = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * scale).to(x.dtype)
    return x_new.to(x.dtype), h


def grid_rows(rows: int, hidden: int, dtype: torch.dtype, delta_dtype: torch.dtype | None, seed: int):
    """x, delta, scale whose sums of squares are exact in float32 (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-32, 33, (rows, hidden), generator=gen).float() / 16
    delta = torch.randint(-32, 33, (rows, hidden), generator=gen).float() / 16
    for r in range(rows):
        col, sign = (5 * r + 1) % hidden, (-1.0) ** r
        x[r, col] = 64.0 * sign
        delta[r, col] = sign / 32  # fp16: 64 + 1/32 is a tie between 64 and 64.0625 → 64
    scale = torch.randn(hidden, generator=gen) + 1.0
    delta = None if delta_dtype is None else delta.to(DEVICE, delta_dtype)
    return x.to(DEVICE, dtype), delta, scale.to(DEVICE)


FP32_NORM_ULPS = 4
"""Largest float32 ulp distance of h from torch's when the sums of squares round (random data)."""


def _assert_norm_matches(h: torch.Tensor, ref: torch.Tensor) -> None:
    if not HAS_CUDA:  # interpreter: exact
        assert_bits_equal(h, ref, "h")
    else:  # GPU: hardware rsqrt/division approximate (as in torch's own CUDA kernels): at most one ulp
        assert _ulp_distance(h, ref) <= (2 if h.dtype == torch.float32 else 1)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("hidden", [96, 64])
@pytest.mark.parametrize("delta_dtype", [torch.float32, torch.float16, None], ids=_ids([torch.float32,
                                                                                       torch.float16, None]))
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
def test_add_rms_norm_exact(dtype, delta_dtype, hidden, rows):
    x, delta, scale = grid_rows(rows, hidden, dtype, delta_dtype, seed=hidden + rows)
    ref_x, ref_h = torch_add_rms_norm(x, delta, scale)
    x_before = x.clone()
    x_new, h = add_rms_norm(x, delta, scale, eps=EPS)
    assert_bits_equal(x_new, ref_x, "x_new")
    _assert_norm_matches(h, ref_h)
    assert_bits_equal(x, x_before, "x (not in place)")
    assert (x_new is x) == (delta is None)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
def test_add_rms_norm_inplace_into_buffers_with_row_stride(dtype):
    # The model's use: residual updated in place, h into a preallocated buffer; x a column slice (row stride 160).
    x_full, _, _ = grid_rows(3, 160, dtype, None, seed=1)
    x = x_full[:, :96]
    _, delta, scale = grid_rows(3, 96, dtype, torch.float32, seed=2)
    ref_x, ref_h = torch_add_rms_norm(x.clone(), delta, scale)
    tail = x_full[:, 96:].clone()
    out = torch.full((3, 96), float("nan"), dtype=dtype, device=DEVICE)
    x_new, h = add_rms_norm(x, delta, scale, eps=EPS, inplace=True, out=out)
    assert x_new is x and h is out
    assert_bits_equal(x, ref_x, "x updated in place")
    _assert_norm_matches(out, ref_h)
    assert_bits_equal(x_full[:, 96:], tail, "columns beyond the view")


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
def test_add_rms_norm_random_data_within_an_ulp(dtype):
    # Off the grid the sum of squares rounds, differently in different summation orders: both means are within
    # ~1.5e-7 of the exact one at H = 2880 (measured), so the fp32 norm may differ by a few ulps (3 seen) and a
    # 16-bit one by one.
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(3, 2880, generator=gen) * 3).to(DEVICE, dtype)
    delta = torch.randn(3, 2880, generator=gen).to(DEVICE)
    scale = torch.randn(2880, generator=gen).to(DEVICE)
    ref_x, ref_h = torch_add_rms_norm(x, delta, scale)
    x_new, h = add_rms_norm(x, delta, scale, eps=EPS)
    assert_bits_equal(x_new, ref_x, "x_new")
    assert _ulp_distance(h, ref_h) <= (FP32_NORM_ULPS if dtype == torch.float32 else 1)


def test_add_rms_norm_sensitivity():
    # The exact comparison above would catch an unrounded residual, a mean over the padded block and a lost eps.
    x, delta, scale = grid_rows(3, 96, torch.float16, torch.float32, seed=5)
    _, h = add_rms_norm(x, delta, scale, eps=EPS)
    _, ref_h = torch_add_rms_norm(x, delta, scale)
    assert torch.equal(h, ref_h) or HAS_CUDA
    _, unrounded = torch_add_rms_norm(x, delta, scale, round_residual=False)
    assert not torch.equal(h, unrounded)
    x32, _, scale32 = grid_rows(3, 96, torch.float32, None, seed=6)
    _, h32 = add_rms_norm(x32, None, scale32, eps=EPS)
    padded = x32.float() * torch.rsqrt(x32.float().pow(2).sum(-1, keepdim=True) / 128 + EPS) * scale32
    assert not torch.equal(h32, padded)
    _, no_eps = torch_add_rms_norm(x32, None, scale32, eps=0.0)
    assert not torch.equal(h32, no_eps)


def test_add_rms_norm_empty_batch():
    x = torch.empty(0, 96, dtype=torch.float16, device=DEVICE)
    delta = torch.empty(0, 96, dtype=torch.float32, device=DEVICE)
    x_new, h = add_rms_norm(x, delta, torch.ones(96, device=DEVICE), eps=EPS)
    assert x_new.shape == h.shape == (0, 96) and h.dtype == torch.float16
    x_new, h = add_rms_norm(x, None, torch.ones(96, device=DEVICE), eps=EPS, inplace=True)
    assert x_new is x and h.shape == (0, 96)


def _norm_inputs(**override):
    args = {"x": torch.zeros(2, 96, dtype=torch.float16), "delta": torch.zeros(2, 96), "scale": torch.ones(96)}
    args.update(override)
    return args


@pytest.mark.parametrize("override,kwargs,error,match", [
    ({"x": torch.zeros(2, 96, dtype=torch.int32)}, {}, TypeError, "x must be one of"),
    ({"x": torch.zeros(96, dtype=torch.float16)}, {}, ValueError, "x must have 2 dimensions"),
    ({"x": torch.zeros(2, 9000, dtype=torch.float16), "delta": None, "scale": torch.ones(9000)}, {}, ValueError,
     "must be in 1..8192"),
    ({"x": torch.zeros(96, 2, dtype=torch.float16).t()}, {}, ValueError, "contiguous last dimension"),
    ({"delta": torch.zeros(3, 96)}, {}, ValueError, "delta"),
    ({"delta": torch.zeros(2, 96, dtype=torch.float64)}, {}, TypeError, "delta must be one of"),
    ({"scale": torch.ones(96, dtype=torch.float16)}, {}, TypeError, "scale must be float32"),
    ({"scale": torch.ones(95)}, {}, ValueError, r"scale must be \[H\]"),
    ({}, {"eps": -1.0}, ValueError, "eps"),
    ({}, {"out": torch.zeros(2, 96)}, TypeError, "out must be"),
    ({}, {"out": torch.zeros(2, 95, dtype=torch.float16)}, ValueError, "out"),
    ({}, {"out": "x"}, ValueError, "out must not be x"),
], ids=["int-x", "1d-x", "too-wide", "strided-x", "delta-shape", "delta-f64", "scale-f16", "scale-len", "eps",
        "out-dtype", "out-shape", "out-is-x"])
def test_add_rms_norm_rejects_bad_inputs(override, kwargs, error, match):
    args = _norm_inputs(**override)
    kwargs = {"eps": EPS, **kwargs}
    if kwargs.get("out") == "x":
        kwargs["out"] = args["x"]
    with pytest.raises(error, match=match):
        add_rms_norm(args["x"], args["delta"], args["scale"], **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# rope_qkv_write
# --------------------------------------------------------------------------------------------------------------------

TINY = dict(num_hidden_layers=1, num_experts=4, experts_per_token=2, vocab_size=128, hidden_size=64,
            intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
            initial_context_length=32, rope_scaling_factor=4.0)


@dataclass(frozen=True)
class RopeCase:
    name: str
    batch_total: int      # cache rows
    tokens_per_seq: int   # T
    first_seq: int
    positions: tuple[int, ...]  # N = B·T entries
    capacity: int = 12
    heads_q: int = 4
    heads_kv: int = 2
    head_dim: int = 16

    def config(self) -> ModelConfig:
        return ModelConfig(**{**TINY, "head_dim": self.head_dim, "num_attention_heads": self.heads_q,
                              "num_key_value_heads": self.heads_kv})


ROPE_CASES = [
    RopeCase("decode", batch_total=3, tokens_per_seq=1, first_seq=0, positions=(5, 0, 9)),
    RopeCase("decode_rows", batch_total=4, tokens_per_seq=1, first_seq=2, positions=(11, 3)),
    RopeCase("prefill", batch_total=3, tokens_per_seq=4, first_seq=1, positions=(3, 4, 5, 6) * 2),
    RopeCase("prefill_ragged", batch_total=2, tokens_per_seq=3, first_seq=0, positions=(0, 1, 2, 7, 8, 9)),
    # Non-power-of-two group (G = 3) and half head dim (6): masked lanes.
    RopeCase("odd_heads", batch_total=2, tokens_per_seq=2, first_seq=0, positions=(1, 2, 4, 5), heads_q=6,
             heads_kv=2, head_dim=12),
]


def rope_inputs(case: RopeCase, dtype: torch.dtype, cache_dtype: torch.dtype, pos_dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    tokens = len(case.positions)
    hq, hkv, d = case.heads_q, case.heads_kv, case.head_dim
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, generator=gen) * 4
    # Entries beyond the fp8 range in q, k and v (clamped to ±448 in an fp8 cache).
    big = torch.rand(qkv.shape, generator=gen) < 0.05
    qkv[big] = torch.sign(qkv[big]) * 700
    cache_shape = (case.batch_total, case.capacity, hkv, d)
    k_cache = (torch.randn(cache_shape, generator=gen) * 8).to(cache_dtype)
    v_cache = (torch.randn(cache_shape, generator=gen) * 8).to(cache_dtype)
    positions = torch.tensor(case.positions, dtype=pos_dtype)
    rope = RopeTable(case.config(), max_positions=case.capacity + 4, device=DEVICE)
    return (qkv.to(DEVICE, dtype), positions.to(DEVICE), rope, k_cache.to(DEVICE), v_cache.to(DEVICE))


def rope_reference(case: RopeCase, qkv, positions, rope, k_cache, v_cache, *, first_seq=None):
    """The model's torch path: RopeTable.apply on q and k, to_kv_dtype, index-put into copies of the caches."""
    first_seq = case.first_seq if first_seq is None else first_seq
    hq, hkv, d, t = case.heads_q, case.heads_kv, case.head_dim, case.tokens_per_seq
    batch = qkv.shape[0] // t
    pos = positions.long().view(batch, t)
    q = qkv[:, :hq * d].view(batch, t, hq, d)
    k = qkv[:, hq * d:(hq + hkv) * d].view(batch, t, hkv, d)
    v = qkv[:, (hq + hkv) * d:].view(batch, t, hkv, d)
    q_ref = rope.apply(q, pos).reshape(-1, hq, d)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    seqs = (first_seq + torch.arange(batch, device=qkv.device))[:, None].expand(batch, t)
    # Index-put on byte views: works for fp8 on every device.
    k_ref.view(torch.uint8)[seqs, pos] = to_kv_dtype(rope.apply(k, pos), k_cache.dtype).view(torch.uint8)
    v_ref.view(torch.uint8)[seqs, pos] = to_kv_dtype(v, v_cache.dtype).view(torch.uint8)
    return q_ref, k_ref, v_ref


def run_rope(case: RopeCase, qkv, positions, rope, k_cache, v_cache):
    q_out = torch.full((qkv.shape[0], case.heads_q, case.head_dim), float("nan"), dtype=qkv.dtype,
                       device=qkv.device)
    result = rope_qkv_write(qkv, positions, rope.cos, rope.sin, q_out, k_cache, v_cache, heads_q=case.heads_q,
                            heads_kv=case.heads_kv, head_dim=case.head_dim, tokens_per_seq=case.tokens_per_seq,
                            first_seq=case.first_seq)
    assert result is q_out
    return q_out


def _rope_params():
    params = []
    for i, case in enumerate(ROPE_CASES):
        for dtype in DTYPES:
            for cache in ("act", "fp8"):
                pos_dtype = (torch.int32, torch.int64)[(i + len(params)) % 2]
                params.append(pytest.param(case, dtype, cache, pos_dtype,
                                           id=f"{case.name}-{_ids([dtype])[0]}-{cache}-{_ids([pos_dtype])[0]}"))
    return params


@pytest.mark.parametrize("case,dtype,cache,pos_dtype", _rope_params())
def test_rope_qkv_write_exact(case, dtype, cache, pos_dtype):
    cache_dtype = dtype if cache == "act" else FP8
    qkv, positions, rope, k_cache, v_cache = rope_inputs(case, dtype, cache_dtype, pos_dtype, seed=len(case.name))
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q_ref, k_ref, v_ref = rope_reference(case, qkv, positions, rope, k_cache, v_cache)
    q_out = run_rope(case, qkv, positions, rope, k_cache, v_cache)
    assert_bits_equal(q_out, q_ref, "q_out")
    assert_bits_equal(k_cache, k_ref, "k_cache")
    assert_bits_equal(v_cache, v_ref, "v_cache")
    # Untouched slots kept their bytes, written ones changed (the random prefill differs from any written value).
    written = torch.zeros(case.batch_total, case.capacity, dtype=torch.bool)
    for n, p in enumerate(case.positions):
        written[case.first_seq + n // case.tokens_per_seq, p] = True
    written = written.to(DEVICE)
    for name, after, before in (("k", k_cache, k_before), ("v", v_cache, v_before)):
        assert_bits_equal(after[~written], before[~written], f"{name}_cache slots not written")
        assert not bool((_bits(after[written]) == _bits(before[written])).all()), f"{name}_cache not written"
    if cache == "fp8":
        assert bool((k_cache.float().abs() <= 448).all()) and bool((k_ref.float().abs() == 448).any())


def test_rope_qkv_write_sensitivity():
    # A wrong position, a wrong sequence offset or a v that got rotated would all be caught by the exact test.
    case = ROPE_CASES[2]
    qkv, positions, rope, k_cache, v_cache = rope_inputs(case, torch.float32, torch.float32, torch.int64, seed=3)
    initial = (k_cache.clone(), v_cache.clone())
    run_rope(case, qkv, positions, rope, k_cache, v_cache)
    q_out = run_rope(case, qkv, positions, rope, *[c.clone() for c in initial])
    wrong = positions.clone()
    wrong[1] += 1
    q_bad, k_bad, _ = rope_reference(case, qkv, wrong, rope, *initial)
    assert not torch.equal(q_out, q_bad) and not torch.equal(k_cache, k_bad)
    _, k_bad, v_bad = rope_reference(case, qkv, positions, rope, *initial, first_seq=case.first_seq - 1)
    assert not torch.equal(k_cache, k_bad) and not torch.equal(v_cache, v_bad)
    _, k_ok, v_ok = rope_reference(case, qkv, positions, rope, *initial)
    assert torch.equal(k_cache, k_ok) and torch.equal(v_cache, v_ok)


def test_rope_qkv_write_cache_views_and_strided_q_out():
    # cache[rows] views (first_seq = 0 inside the view) and a q_out that is a slice of a wider buffer.
    case = RopeCase("view", batch_total=4, tokens_per_seq=2, first_seq=1, positions=(4, 5, 4, 5))
    qkv, positions, rope, k_cache, v_cache = rope_inputs(case, torch.float16, torch.float16, torch.int32, seed=8)
    q_ref, k_ref, v_ref = rope_reference(case, qkv, positions, rope, k_cache, v_cache)
    wide = torch.zeros(4, case.heads_q + 1, case.head_dim, dtype=torch.float16, device=DEVICE)
    rope_qkv_write(qkv, positions, rope.cos, rope.sin, wide[:, 1:], k_cache[1:3], v_cache[1:3],
                   heads_q=case.heads_q, heads_kv=case.heads_kv, head_dim=case.head_dim, tokens_per_seq=2,
                   first_seq=0)
    assert_bits_equal(wide[:, 1:], q_ref, "q_out view")
    assert not bool(wide[:, 0].any())
    assert_bits_equal(k_cache, k_ref, "k_cache")
    assert_bits_equal(v_cache, v_ref, "v_cache")


def test_rope_qkv_write_empty():
    case = ROPE_CASES[0]
    qkv, _, rope, k_cache, v_cache = rope_inputs(case, torch.float16, torch.float16, torch.int32, seed=1)
    before = k_cache.clone()
    q_out = torch.empty(0, 4, 16, dtype=torch.float16, device=DEVICE)
    rope_qkv_write(qkv[:0], torch.empty(0, dtype=torch.int32, device=DEVICE), rope.cos, rope.sin, q_out, k_cache,
                   v_cache, heads_q=4, heads_kv=2, head_dim=16, tokens_per_seq=1, first_seq=0)
    assert torch.equal(k_cache, before)


def _rope_args(**override):
    args = {"qkv": torch.zeros(2, 128, dtype=torch.float16), "positions": torch.zeros(2, dtype=torch.int32),
            "cos": torch.zeros(8, 8), "sin": torch.zeros(8, 8), "q_out": torch.zeros(2, 4, 16, dtype=torch.float16),
            "k_cache": torch.zeros(2, 8, 2, 16, dtype=torch.float16),
            "v_cache": torch.zeros(2, 8, 2, 16, dtype=torch.float16),
            "heads_q": 4, "heads_kv": 2, "head_dim": 16, "tokens_per_seq": 1, "first_seq": 0}
    args.update(override)
    return args


@pytest.mark.parametrize("override,error,match", [
    ({"qkv": torch.zeros(2, 128, dtype=torch.int16)}, TypeError, "qkv must be one of"),
    ({"qkv": torch.zeros(2, 120, dtype=torch.float16)}, ValueError, "columns"),
    ({"positions": torch.zeros(2)}, TypeError, "positions must be int32 or int64"),
    ({"positions": torch.zeros(3, dtype=torch.int64)}, ValueError, "entries"),
    ({"cos": torch.zeros(8, 8, dtype=torch.float64)}, TypeError, "cos must be float32"),
    ({"sin": torch.zeros(8, 16)}, ValueError, "sin must be"),
    ({"q_out": torch.zeros(2, 4, 16)}, TypeError, "q_out must be"),
    ({"q_out": torch.zeros(2, 2, 16, dtype=torch.float16)}, ValueError, "q_out must be"),
    ({"k_cache": torch.zeros(2, 8, 2, 16, dtype=torch.bfloat16)}, TypeError, "k_cache must be"),
    ({"v_cache": torch.zeros(2, 8, 2, 16, dtype=FP8)}, ValueError, "must match"),
    ({"k_cache": torch.zeros(2, 8, 4, 16, dtype=torch.float16)}, ValueError, "k_cache must be"),
    ({"heads_q": 3, "heads_kv": 2, "qkv": torch.zeros(2, 112, dtype=torch.float16)}, ValueError, "multiple"),
    ({"tokens_per_seq": 4}, ValueError, "multiple of tokens_per_seq"),
    ({"first_seq": 1}, ValueError, "do not fit"),
    ({"first_seq": -1}, ValueError, "first_seq"),
    ({"k_cache": torch.zeros(2, 8, 16, 2, dtype=torch.float16).transpose(2, 3)}, ValueError, "contiguous"),
], ids=["qkv-int", "qkv-width", "pos-float", "pos-len", "cos-f64", "sin-shape", "q-dtype", "q-shape",
        "k-bf16", "kv-mismatch", "k-heads", "heads", "T", "first-seq", "neg-first-seq", "k-strided"])
def test_rope_qkv_write_rejects_bad_inputs(override, error, match):
    args = _rope_args(**override)
    tensors = [args.pop(name) for name in ("qkv", "positions", "cos", "sin", "q_out", "k_cache", "v_cache")]
    with pytest.raises(error, match=match):
        rope_qkv_write(*tensors, **args)


# --------------------------------------------------------------------------------------------------------------------
# fp8 conversion
# --------------------------------------------------------------------------------------------------------------------

@triton.jit
def _fp8_store_kernel(x_ptr, o_ptr, n, FP8_SOFTWARE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(o_ptr + offs, layer_ops._to_cache(x, o_ptr, True, FP8_SOFTWARE), mask=mask)


def fp8_probe_values(dtype: torch.dtype) -> torch.Tensor:
    """fp16: every bit pattern. fp32: every e4m3 value, the midpoints between neighbours and the floats either side
    of each midpoint, both signs, plus values beyond ±448, infinities, NaN and fp32 subnormals."""
    if dtype == torch.float16:
        return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    codes = torch.arange(0, 127, dtype=torch.uint8).view(FP8).float()  # 0 .. 448, sorted
    mids = (codes[:-1] + codes[1:]) / 2
    around = torch.cat([mids, torch.nextafter(mids, torch.tensor(0.0)), torch.nextafter(mids, torch.tensor(1e9))])
    extra = torch.tensor([448.0, 449.0, 464.0, 480.0, 1e6, float("inf"), float("nan"), 1e-40, 2.0**-10, 2.0**-11,
                          3 * 2.0**-11, 2.0**-149])
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(4096, generator=gen) * torch.exp2(torch.randint(-14, 9, (4096,), generator=gen).float())
    values = torch.cat([codes, around, extra, spread])
    return torch.cat([values, -values])


@pytest.mark.parametrize("software", [True, False] if HAS_CUDA else [True], ids=lambda s: "sw" if s else "hw")
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
def test_fp8_store_matches_torch(dtype, software):
    if dtype == torch.bfloat16:
        values = fp8_probe_values(torch.float32).to(torch.bfloat16)
    else:
        values = fp8_probe_values(dtype)
    x = values.to(DEVICE)
    out = torch.empty(x.shape, dtype=FP8, device=DEVICE)
    block = 4096
    _fp8_store_kernel[(triton.cdiv(x.numel(), block),)](x, out, x.numel(), FP8_SOFTWARE=software, BLOCK=block)
    ref = to_kv_dtype(x, FP8)
    nan = ref.float().isnan()
    assert bool((out.float().isnan() == nan).all()), "NaN must stay NaN"
    assert_bits_equal(out[~nan], ref[~nan], "fp8 bytes")
    if not HAS_CUDA:  # the sign of NaN too (as torch); the hardware may canonicalize it
        assert_bits_equal(out, ref, "fp8 bytes with NaN")


# --------------------------------------------------------------------------------------------------------------------
# CUDA graph (GPU only)
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("cache", ["act", "fp8"])
def test_captured_in_a_cuda_graph(cache):
    # Decode-like step captured once; positions (cache lengths) change on the device between replays.
    case = RopeCase("graph", batch_total=3, tokens_per_seq=1, first_seq=0, positions=(0, 0, 0), capacity=16)
    dtype = torch.bfloat16
    cache_dtype = dtype if cache == "act" else FP8
    qkv, positions, rope, k_cache, v_cache = rope_inputs(case, dtype, cache_dtype, torch.int32, seed=4)
    x, delta, scale = grid_rows(3, 96, dtype, torch.float32, seed=4)
    q_out = torch.empty(3, case.heads_q, case.head_dim, dtype=dtype, device=DEVICE)
    h = torch.empty_like(x)
    initial = (x.clone(), k_cache.clone(), v_cache.clone())

    def step():
        add_rms_norm(x, delta, scale, eps=EPS, inplace=True, out=h)
        rope_qkv_write(qkv, positions, rope.cos, rope.sin, q_out, k_cache, v_cache, heads_q=case.heads_q,
                       heads_kv=case.heads_kv, head_dim=case.head_dim, tokens_per_seq=1, first_seq=0)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    x.copy_(initial[0]), k_cache.copy_(initial[1]), v_cache.copy_(initial[2])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    ref_x, ref_k, ref_v = initial
    for lens in ([5, 0, 9], [6, 1, 10], [7, 2, 11]):
        positions.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        ref_x, ref_h = torch_add_rms_norm(ref_x, delta, scale)
        q_ref, ref_k, ref_v = rope_reference(case, qkv, positions, rope, ref_k, ref_v)
        torch.cuda.synchronize()
        assert_bits_equal(x, ref_x, "x")
        _assert_norm_matches(h, ref_h)
        assert_bits_equal(q_out, q_ref, "q_out")
        assert_bits_equal(k_cache, ref_k, "k_cache")
        assert_bits_equal(v_cache, ref_v, "v_cache")


# --------------------------------------------------------------------------------------------------------------------
# Offline compile for sm_90 (no GPU needed)
# --------------------------------------------------------------------------------------------------------------------

_TYPE_CODES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
               torch.int64: "i64", FP8: "fp8e4nv"}
_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


def compile_planned(launch, capability: int, **constexpr_overrides):
    """``triton.compile`` of a planned :class:`kernels.launch_plan.KernelLaunch` for ``cuda:capability`` (the
    interpreter must be off). Pointers are marked 16-byte aligned, as the JIT does for fresh allocations."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kwargs = {**launch.kwargs, **constexpr_overrides}
    options = {key: kwargs[key] for key in _OPTIONS if key in kwargs}
    constexprs = {key: value for key, value in kwargs.items() if key not in _OPTIONS}
    names = launch.kernel.arg_names
    runtime = [name for name in names if name not in constexprs]
    assert len(runtime) == len(launch.args)
    signature, attrs = {}, {}
    for name, value in zip(runtime, launch.args):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPE_CODES[value.dtype]
            attrs[(names.index(name),)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
    signature.update({name: "constexpr" for name in constexprs})
    source = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def compile_report(capability: int) -> dict:
    """PTX of the kernels at gpt-oss sizes (bf16; caches bf16 and fp8, both fp8 encoders), on meta tensors."""
    try:
        probe = layer_ops.add_rms_norm_launches(torch.empty(1, 64, dtype=torch.bfloat16, device="meta"), None,
                                                torch.empty(64, device="meta"), eps=EPS)[2][0]
        compile_planned(probe, capability)
    except Exception as exc:  # no CUDA backend or no ptxas here
        return {"skip": f"triton.compile for cuda:{capability} is not possible here: {type(exc).__name__}: {exc}"}
    meta = dict(device="meta")
    report = {}
    x = torch.empty(4, 2880, dtype=torch.bfloat16, **meta)
    for name, delta in (("norm_bf16_delta", torch.empty_like(x)), ("norm_fp32_delta", torch.empty(4, 2880, **meta)),
                        ("norm_plain", None)):
        _, _, (launch,) = layer_ops.add_rms_norm_launches(x, delta, torch.empty(2880, **meta), eps=EPS,
                                                          inplace=True)
        report[name] = compile_planned(launch, capability).asm["ptx"]
    records = torch.empty(4, 2880 // 32, 32, dtype=torch.int32, **meta)  # + the dp4a records of h
    _, _, (launch,) = layer_ops.add_rms_norm_launches(x, torch.empty_like(x), torch.empty(2880, **meta), eps=EPS,
                                                      inplace=True, records=records)
    report["norm_bf16_records"] = compile_planned(launch, capability).asm["ptx"]
    tokens, hq, hkv, d = 4, 64, 8, 64
    qkv = torch.empty(tokens, (hq + 2 * hkv) * d, dtype=torch.bfloat16, **meta)
    table = torch.empty(4096, d // 2, **meta)
    for cache_name, cache_dtype in (("bf16", torch.bfloat16), ("fp8", FP8)):
        cache = torch.empty(8, 4096, hkv, d, dtype=cache_dtype, **meta)
        (launch,) = layer_ops.rope_qkv_write_launches(
            qkv, torch.empty(tokens, dtype=torch.int32, **meta), table, table,
            torch.empty(tokens, hq, d, dtype=torch.bfloat16, **meta), cache, cache, heads_q=hq, heads_kv=hkv,
            head_dim=d, tokens_per_seq=1, first_seq=0)
        report[f"rope_{cache_name}"] = compile_planned(launch, capability).asm["ptx"]
        if cache_name == "fp8":
            report["rope_fp8_software"] = compile_planned(launch, capability, FP8_SOFTWARE=True).asm["ptx"]
    return report


@pytest.fixture(scope="module")
def sm90_ptx():
    return run_offline_compile(__file__, 90)


def test_sm90_offline_compile(sm90_ptx):
    assert set(sm90_ptx) == {"norm_bf16_delta", "norm_fp32_delta", "norm_plain", "norm_bf16_records", "rope_bf16",
                             "rope_fp8", "rope_fp8_software"}
    for name, ptx in sm90_ptx.items():
        assert re.search(r"^\.target sm_90a\b", ptx, re.MULTILINE), name
    # The hardware e4m3 conversion (round to nearest even, saturating) in the GPU path; none in the others.
    assert "cvt.rn.satfinite.e4m3x2.f32" in sm90_ptx["rope_fp8"]
    assert "e4m3" not in sm90_ptx["rope_fp8_software"] and "e4m3" not in sm90_ptx["rope_bf16"]
    # enable_fp_fusion=False: products are rounded before the add/subtract, as in torch.
    for name in ("rope_bf16", "rope_fp8"):
        assert not re.search(r"\bfma\.rn\.f32\b", sm90_ptx[name]), name
    assert "st.global" in sm90_ptx["norm_bf16_delta"]
    # With records the norm also stores the 27 record words of each group: more stores than without.
    assert sm90_ptx["norm_bf16_records"].count("st.global") > sm90_ptx["norm_bf16_delta"].count("st.global")


if __name__ == "__main__":  # the offline-compile subprocess of the `sm90_ptx` fixture
    print(json.dumps(compile_report(int(sys.argv[1]))))
