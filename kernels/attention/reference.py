"""fp32 torch reference, cost model and tolerances of the gpt-oss attention with sinks.

Legend: B sequences, Tq queries per sequence, S cache positions, Hq query heads, Hkv KV heads, G = Hq / Hkv, D head
dim, W sliding window (0: full causal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.attention.config import AttentionConfig, AttentionShape

_MAX_SCORES = 2**26
"""Score elements the reference materializes at once (256 MB of fp32): it walks the queries in chunks."""


@torch.no_grad()
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                        positions: torch.Tensor, kv_lens: torch.Tensor, *, window: int,
                        sm_scale: float) -> torch.Tensor:
    """fp32 gpt-oss attention, as HF transformers' ``eager_attention_forward`` of ``GptOssAttention``: scores, mask,
    the sink as an extra softmax column, dropped after the softmax.

    Args:
        q: ``[B, Tq, Hq, D]`` queries.
        k, v: ``[B, S, Hkv, D]`` cached keys and values (any dtype, fp8 included: read as fp32).
        sinks: ``[Hq]``.
        positions: int ``[B, Tq]`` absolute position of each query.
        kv_lens: int ``[B]`` valid cache positions of each sequence (later positions are never read).
        window: W (key j is seen from p when ``p - W < j <= p``), 0 for full causal.
        sm_scale: score scale.

    Returns:
        ``[B, Tq, Hq, D]`` float32.
    """
    group = q.shape[2] // k.shape[2]
    keys = torch.arange(k.shape[1], device=q.device)                                 # [S]
    in_cache = (keys < kv_lens[:, None])[:, :, None, None]                           # [B, S, 1, 1]
    # positions past a sequence's length may hold anything (NaN): zero them, since 0 · NaN would reach the output
    kf = torch.where(in_cache, k.float(), 0.0).repeat_interleave(group, dim=2)      # [B, S, Hq, D]
    vf = torch.where(in_cache, v.float(), 0.0).repeat_interleave(group, dim=2)
    chunk = max(1, _MAX_SCORES // max(1, q.shape[0] * q.shape[2] * k.shape[1]))
    outs = []
    for t0 in range(0, q.shape[1], chunk):
        pos = positions[:, t0:t0 + chunk, None]                                      # [B, t, 1]
        visible = (keys <= pos) & (keys < kv_lens[:, None, None])                    # [B, t, S]
        if window:
            visible &= keys > pos - window
        scores = torch.einsum("bthd,bshd->bhts", q[:, t0:t0 + chunk].float(), kf) * sm_scale  # [B, Hq, t, S]
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        sink = sinks.float().view(1, -1, 1, 1).expand(*scores.shape[:3], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        outs.append(torch.einsum("bhts,bshd->bthd", probs, vf))
    return torch.cat(outs, dim=1) if outs else torch.zeros(q.shape, device=q.device)


@dataclass(frozen=True)
class Cost:
    """Work of one call: ``flops`` (multiply-adds count 2) and ``bytes`` (the fewest that must move)."""

    flops: float
    bytes: float


def visible_pairs(shape: AttentionShape, variant: str) -> int:
    """(query, key) pairs one sequence and head compute: prefill ``Σ_p min(p + 1, W)``, decode ``min(seq, W)``."""
    if variant == "decode":
        return shape.visible_keys
    full = shape.seq * (shape.seq + 1) // 2
    if not shape.window or shape.window >= shape.seq:
        return full
    tail = shape.seq - shape.window  # positions that see exactly W keys
    return shape.window * (shape.window + 1) // 2 + tail * shape.window


def cost(variant: str, shape: AttentionShape, act_bytes: int, kv_bytes: int) -> Cost:
    """FLOPs and the fewest bytes of one attention call.

    FLOPs: ``4·D`` per visible (query, key) pair and head (``q·k`` and ``p·v``, 2 per multiply-add), the softmax
    not counted (FlashAttention papers' convention). Bytes: the queries and the outputs once, and the K/V positions
    some query sees once (prefill: all seq; decode: the last min(seq, W)); sinks and lengths are negligible.

    Args:
        variant: "prefill" or "decode".
        shape: the problem size.
        act_bytes: bytes per query/output element (2 for bf16).
        kv_bytes: bytes per cache element (1 for fp8).

    Returns:
        The :class:`Cost`.
    """
    d = shape.head_dim
    flops = 4.0 * d * visible_pairs(shape, variant) * shape.batch * shape.heads_q
    queries = shape.seq if variant == "prefill" else 1
    keys = shape.seq if variant == "prefill" else shape.visible_keys
    q_and_out = 2 * shape.batch * queries * shape.heads_q * d * act_bytes
    kv = 2 * shape.batch * keys * shape.heads_kv * d * kv_bytes
    return Cost(flops=flops, bytes=float(q_and_out + kv))


@dataclass(frozen=True)
class Tolerance:
    """Accepted error against the fp32 reference, and why.

    Attributes:
        max_rel_err: largest row-wise relative error ``max_r ‖out_r − ref_r‖ / ‖ref_r‖`` (a row: one query head's
            D outputs).
        max_elem_err: largest element error relative to its row's RMS, ``max |out − ref| / rms(ref_r)``.
        reason: where the numbers come from.
    """

    max_rel_err: float
    max_elem_err: float
    reason: str


_UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}
FP8_UNIT_ROUNDOFF = 2.0**-4
"""e4m3 keeps 3 mantissa bits: round-to-nearest errs by at most 2^-4 relative (normal range)."""

FP8_LIMITS = {"prefill": (0.25, 1.0), "decode": (0.12, 0.4)}
"""(row, element) limits of an fp8 cache against the activation-dtype reference per variant (:func:`tolerance`)."""


def tolerance(variant: str, dtype: torch.dtype, config: AttentionConfig | None = None) -> Tolerance:
    """Accepted error of the kernel against the fp32 reference computed from the activation-dtype K/V.

    Activation-dtype cache: the kernel's own rounding is P (the softmax weights, <= 1) to the activation dtype
    before the P·V ``tl.dot`` and the output to the activation dtype; with unit roundoff u each contributes about
    u/√3 RMS to a row's relative error (independent errors average over the keys and over D). Measured in the
    interpreter (fp16, tiny shapes): row errors up to 1.1u, element errors up to 3.2u of the row RMS. Limits 4u
    per row and 16u per element. fp32 activations: 1e-3 / 1e-2, since ``tl.dot`` on GPUs rounds fp32 operands to
    tf32 (10-bit mantissa).

    fp8 (e4m3) cache, still against the activation-dtype reference (what a user gives up by storing fp8): every key
    and value element carries its own rounding error δ, |δ| <= u8 = 2^-4, RMS u8/√3 ≈ 0.036. V's errors reach a row
    of the output with about that RMS (``Σ_j p_j v_j δ_j`` against ``Σ_j p_j v_j``); K's move each score by about
    ``u8/√3 · |s|``, i.e. the weights by a few percent. Rows that see only a few keys are heavy-tailed (``Σ_j p_j
    v_j`` can cancel), which prefill has and decode has not. Measured on the tuning inputs at gpt-oss sizes (bf16,
    Hq 64, Hkv 8, D 64, CPU reference of the fp8-rounded cache against the bf16 one): prefill T = 2048 (W 0 and 128,
    2 seeds, 131,072 rows) max 0.137 per row, 0.48 per element; decode (seq 128 .. 32768, W 0 and 128, 15 draws of
    64 rows) max 0.064 per row, 0.20 per element. Limits (:data:`FP8_LIMITS`): prefill 0.25 / 1.0 (4 u8 per row),
    decode 0.12 / 0.4 (about 2× the measured maxima; the few-key tail does not grow with T, since every prompt has
    the same few first positions). The same measurement, with the reference itself made wrong, gives the smallest
    errors of the bugs a kernel can make: prefill >= 0.50 per row (sink counted twice; window one key too wide or
    narrow >= 0.99; dropped sink and wrong GQA head >= 19), decode >= 0.20 per row and 0.51 per element (window one
    key off; a doubled sink 0.40, a wrong GQA head 1.7): all above the limits (tests/test_kernel_attention.py).

    Args:
        variant: "prefill" or "decode".
        dtype: activation dtype (queries, outputs and the "act" cache).
        config: the launch config; its ``kv_dtype`` picks the fp8 limits. None: the activation-dtype cache.

    Returns:
        The :class:`Tolerance`.
    """
    if config is not None and config.kv_dtype == "fp8":
        row, elem = FP8_LIMITS[variant]
        return Tolerance(row, elem,
                         f"fp8 e4m3 K/V (unit roundoff {FP8_UNIT_ROUNDOFF}) against the {dtype} K/V reference")
    if dtype == torch.float32:
        return Tolerance(1e-3, 1e-2, "fp32 operands: tl.dot rounds them to tf32 on GPUs")
    unit = _UNIT_ROUNDOFF[dtype]
    return Tolerance(4 * unit, 16 * unit, f"{dtype} rounding (unit roundoff {unit:.2e}) of P and of the output")
