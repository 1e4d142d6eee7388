"""Fused MoE routing for small token counts: top-k, softmax over the k and grouping by expert in ONE Triton launch.

Legend: T tokens, E experts, k experts per token, R = T·k routed rows; TP, EP, KP are T, E, k rounded up to powers
of two (the register tile sizes).

Why: in a CUDA-graph decode step the torch path of :func:`kernels.moe_routing.route` (topk, softmax, stable sort,
searchsorted, gathers, dtype casts) replays 15 tiny kernels per layer, about 25 µs on an H200 even at one token;
this kernel takes 1.6 to 3.5 µs at decode sizes (figures under :data:`FUSED_MAX_TILE`). Here one program
(grid ``(1,)``) holds the whole ``[TP, EP]`` logits tile in registers:

1. **Top-k**: k successive arg-max passes over each token's row; a tie goes to the lowest expert index (an expert
   that was already taken, or a padding column, is never a candidate).
2. **Softmax over the k** in float32, the formula of ``torch.softmax``: subtract the max, exp, divide by the sum.
   The sum runs as a pairwise tree over the k slots padded with zeros to KP (slot j plus slot j + KP/2, then
   halved again), which is the order of the warp butterfly in PyTorch's CUDA softmax for a last dim of at most 32
   (one element per lane; larger k add within a lane first, so the bits may differ there); on CUDA
   the exp is libdevice's ``expf`` (what ``std::exp`` compiles to there) rather than Triton's ``ex2.approx`` based
   ``tl.exp``, and the division is IEEE (``div_rn``). Triton's interpreter has no libdevice and evaluates ``tl.exp``
   with numpy, whose float32 exp is not torch's: there the gates agree with the torch path to a few ulp only. On
   CUDA they were bit-equal in every case tried (an H200, Triton 3.6, torch 2.11: fp32/fp16/bf16 logits, k = 1 to
   8, E = 4 to 256, T = 1 to 512; tests/test_moe_routing_fused.py).
3. **Group by expert without a sort**: with ``sel[t, e]`` = 1 when token t picked expert e (a token picks an
   expert at most once), ``count[e] = Σ_t sel[t, e]``, ``start[e]`` is its exclusive prefix sum (= expert_offsets)
   and the row of (t, e) in the expert-sorted order is ``start[e] + Σ_{t' < t} sel[t', e]``. Ordering rows of one
   expert by token is ordering them by flattened index ``t·k + j``, i.e. the stable sort of the torch path. Each
   slot's position is then read back from the ``[TP, EP]`` tile (k masked reductions) and ``row_token``,
   ``row_expert`` and ``row_gate`` are scattered from the ``[TP, KP]`` slot tile, so ``row_gate`` holds exactly the
   bits of ``topk_gates``.

Everything stays on the device (no ``.item()``, shapes known from the input shape), so the launch can be captured
in a CUDA graph.

Limits (see :func:`fused_routing_supported`): R <= :data:`FUSED_MAX_ROWS`, E <= :data:`FUSED_MAX_EXPERTS` and
TP·EP <= :data:`FUSED_MAX_TILE`. Ties: ``torch.topk`` does not specify which of equal logits it returns on CUDA, so
only the lowest-index rule of this kernel is guaranteed here; for logits without ties both paths pick the same
experts. NaN logits count as +inf for the choice (``torch.topk`` ranks NaN above +inf), so every chosen expert is a
valid index; that token's gates are NaN on both paths.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kernels import interpreter_active
from kernels.moe_routing import Routing

FUSED_MAX_ROWS = 512
"""Largest R = T·k the fused kernel takes: decode batches up to 128 tokens at gpt-oss's k = 4. The kernel is one
program on one SM, worth it while launch overhead dominates; for prefill-sized T the torch path's launches are
amortised and its kernels spread over the whole GPU."""

FUSED_MAX_EXPERTS = 256
"""Largest E the fused kernel takes (gpt-oss: 32 for 20b, 128 for 120b)."""

FUSED_MAX_TILE = 128 * 128
"""Largest TP·EP (padded logits tile, elements) the fused kernel takes: 128 × 128 is gpt-oss-120b at 128 tokens.
The program keeps a few tiles of this size (logits, slot of each (token, expert), prefix sums) in registers; from
64 × 128 on (8 warps) they spill to local memory on sm_90, and larger tiles would spill ever more (not measured past
this size, where prefill-like batches make the torch path's launches cheap in comparison anyway). Measured on an
H200 (Triton 3.6, CUDA-graph replay, µs per call, fused vs torch): T=1 E=32 1.6 vs 25; T=8 E=128 3.5 vs 31;
T=64 E=128 11 vs 49; T=128 E=32 6.6 vs 50; T=128 E=128 22 vs 52."""

_LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@triton.jit
def _exp_f32(x, LIBDEVICE_EXP: tl.constexpr):
    """float32 exp: libdevice ``expf`` (as accurate as CUDA's ``std::exp``) or ``tl.exp`` (the interpreter)."""
    if LIBDEVICE_EXP:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def moe_route_fused_kernel(
    logits_ptr,  # [T, E] any float dtype, strides (stride_t, stride_e)
    topk_ids_ptr,  # [T, K] int32 out
    topk_gates_ptr,  # [T, K] float32 out
    row_token_ptr,  # [R] int32 out
    row_expert_ptr,  # [R] int32 out
    row_gate_ptr,  # [R] float32 out
    expert_offsets_ptr,  # [E + 1] int32 out
    T,
    E,
    stride_t,
    stride_e,
    K: tl.constexpr,
    T_PAD: tl.constexpr,
    E_PAD: tl.constexpr,
    K_PAD: tl.constexpr,
    LOG2_K_PAD: tl.constexpr,
    LIBDEVICE_EXP: tl.constexpr,
):
    """Top-K routing of T tokens over E experts, rows grouped by expert; one program (grid ``(1,)``).

    T_PAD, E_PAD, K_PAD are powers of two >= T, E, K, and ``K_PAD == 2 ** LOG2_K_PAD``; K <= E.
    """
    offs_t = tl.arange(0, T_PAD)  # [TP]
    offs_e = tl.arange(0, E_PAD)  # [EP]
    offs_k = tl.arange(0, K_PAD)  # [KP]
    valid_t = offs_t < T  # [TP]
    valid = valid_t[:, None] & (offs_e[None, :] < E)  # [TP, EP]
    x = tl.load(logits_ptr + offs_t[:, None] * stride_t + offs_e[None, :] * stride_e, mask=valid,
                other=float("-inf")).to(tl.float32)  # [TP, EP]
    x = tl.where(x != x, float("inf"), x)  # NaN ranks first, as in torch.topk: every pick is a valid expert

    # 1. Top-K by K arg-max passes. slot[t, e] = j when expert e is token t's j-th choice, else -1.
    slot = tl.full([T_PAD, E_PAD], -1, tl.int32)  # [TP, EP]
    top_val = tl.full([T_PAD, K_PAD], float("-inf"), tl.float32)  # [TP, KP]
    top_idx = tl.zeros([T_PAD, K_PAD], tl.int32)  # [TP, KP]
    for j in tl.static_range(K):
        avail = valid & (slot < 0)  # [TP, EP] not padding, not taken yet
        cand = tl.where(avail, x, float("-inf"))  # [TP, EP]
        best = tl.max(cand, axis=1)  # [TP]
        hit = avail & (cand == best[:, None])  # [TP, EP] (also right when best is -inf)
        idx = tl.min(tl.where(hit, offs_e[None, :], E_PAD), axis=1)  # [TP] lowest index among the maxima
        slot = tl.where(offs_e[None, :] == idx[:, None], j, slot)
        top_val = tl.where(offs_k[None, :] == j, best[:, None], top_val)
        top_idx = tl.where(offs_k[None, :] == j, idx[:, None], top_idx)

    # 2. Softmax over the K selected logits (float32): max, exp, pairwise-tree sum, IEEE division.
    in_k = offs_k[None, :] < K  # [1, KP]
    top_max = tl.max(tl.where(in_k, top_val, float("-inf")), axis=1)  # [TP] (-inf on padding rows: use 0)
    top_max = tl.where(valid_t, top_max, 0.0)
    ex = tl.where(in_k, _exp_f32(top_val - top_max[:, None], LIBDEVICE_EXP), 0.0)  # [TP, KP]
    total = ex
    for level in tl.static_range(LOG2_K_PAD):
        # [TP, W] -> [TP, W / 2]: column c becomes c + (c + W / 2), W = K_PAD >> level.
        total = tl.sum(tl.reshape(total, [T_PAD, 2, K_PAD >> (level + 1)]), axis=1)
    total = tl.where(valid_t, tl.reshape(total, [T_PAD]), 1.0)  # [TP] (padding rows: 1, not 0 / 0)
    gates = tl.math.div_rn(ex, total[:, None])  # [TP, KP]

    out_tk = valid_t[:, None] & in_k  # [TP, KP]
    flat_tk = offs_t[:, None] * K + offs_k[None, :]  # [TP, KP] flattened row t·K + j
    tl.store(topk_ids_ptr + flat_tk, top_idx, mask=out_tk)
    tl.store(topk_gates_ptr + flat_tk, gates, mask=out_tk)

    # 3. Stable grouping by expert: counts, exclusive prefix sums over experts and over tokens.
    sel = (slot >= 0).to(tl.int32)  # [TP, EP]
    count = tl.sum(sel, axis=0)  # [EP]
    start = tl.cumsum(count, axis=0) - count  # [EP] exclusive prefix sum = expert_offsets[:E]
    pos_te = start[None, :] + tl.cumsum(sel, axis=0) - sel  # [TP, EP] sorted row of (t, e) where selected
    pos = tl.zeros([T_PAD, K_PAD], tl.int32)  # [TP, KP]
    for j in tl.static_range(K):
        pos_j = tl.sum(tl.where(slot == j, pos_te, 0), axis=1)  # [TP] (one selected entry per valid row)
        pos = tl.where(offs_k[None, :] == j, pos_j[:, None], pos)
    tl.store(row_token_ptr + pos, tl.broadcast_to(offs_t[:, None], [T_PAD, K_PAD]), mask=out_tk)
    tl.store(row_expert_ptr + pos, top_idx, mask=out_tk)
    tl.store(row_gate_ptr + pos, gates, mask=out_tk)
    tl.store(expert_offsets_ptr + offs_e, start, mask=offs_e < E)
    tl.store(expert_offsets_ptr + E, tl.sum(count, axis=0))


def fused_routing_supported(router_logits: torch.Tensor, top_k: int) -> bool:
    """Whether :func:`route_fused` takes this call (``route`` falls back to the torch path otherwise).

    True for a 2-D ``[T, E]`` tensor of a float dtype (fp32, fp16, bf16, fp64) on a CUDA device (or on the CPU
    while the Triton interpreter is active), with ``1 <= T``, ``1 <= top_k <= E``, ``T·top_k <=``
    :data:`FUSED_MAX_ROWS`, ``E <=`` :data:`FUSED_MAX_EXPERTS`, the padded tile within :data:`FUSED_MAX_TILE`, and
    no autograd graph to build (the kernel has no backward).
    """
    if router_logits.dim() != 2 or router_logits.dtype not in _LOGIT_DTYPES:
        return False
    device = router_logits.device.type
    if not (device == "cuda" or (device == "cpu" and interpreter_active())):
        return False
    if router_logits.requires_grad and torch.is_grad_enabled():
        return False
    num_tokens, num_experts = router_logits.shape
    return (num_tokens >= 1 and 1 <= top_k <= num_experts <= FUSED_MAX_EXPERTS
            and num_tokens * top_k <= FUSED_MAX_ROWS
            and triton.next_power_of_2(num_tokens) * triton.next_power_of_2(num_experts) <= FUSED_MAX_TILE)


def launch_config(num_tokens: int, num_experts: int, top_k: int, *, libdevice_exp: bool = True) -> dict:
    """Constexprs and ``num_warps`` of :func:`moe_route_fused_kernel` for T, E, k (also used by offline compiles).

    Warps: one per 256 elements of the ``[TP, EP]`` tile, 1 to 8 (on an H200 within 15 % of the fastest of 1 to 32
    warps from T=1 to 128 at E=32 and 128; 16 or 32 warps were slower on the large tiles, 1 warp up to 15× slower).
    """
    t_pad, e_pad, k_pad = (triton.next_power_of_2(n) for n in (num_tokens, num_experts, top_k))
    return {"K": top_k, "T_PAD": t_pad, "E_PAD": e_pad, "K_PAD": k_pad, "LOG2_K_PAD": k_pad.bit_length() - 1,
            "LIBDEVICE_EXP": libdevice_exp, "num_warps": max(1, min(8, t_pad * e_pad // 256))}


def route_fused(router_logits: torch.Tensor, top_k: int) -> Routing:
    """:func:`kernels.moe_routing.route` in one Triton launch (grid ``(1,)``), for small T (decode).

    Args:
        router_logits: ``[T, E]`` router outputs, float32/float16/bfloat16/float64, any strides; on a CUDA device
            (or the CPU under the Triton interpreter). Computed in float32.
        top_k: k.

    Returns:
        The :class:`~kernels.moe_routing.Routing` (outputs allocated with ``torch.empty`` on the logits' device):
        the same experts, rows and offsets as the torch path for logits without ties (ties: lowest expert index
        first); gates bit-equal to the torch path on CUDA in every case tried, a few ulp apart under the
        interpreter (module docstring).

    Raises:
        ValueError: if :func:`fused_routing_supported` is False for these arguments.
    """
    if not fused_routing_supported(router_logits, top_k):
        raise ValueError(f"fused routing does not take logits {tuple(router_logits.shape)} {router_logits.dtype} "
                         f"on {router_logits.device} with top_k={top_k} (see fused_routing_supported)")
    num_tokens, num_experts = router_logits.shape
    rows = num_tokens * top_k
    device = router_logits.device
    topk_ids = torch.empty((num_tokens, top_k), dtype=torch.int32, device=device)
    topk_gates = torch.empty((num_tokens, top_k), dtype=torch.float32, device=device)
    row_token = torch.empty((rows,), dtype=torch.int32, device=device)
    row_expert = torch.empty((rows,), dtype=torch.int32, device=device)
    row_gate = torch.empty((rows,), dtype=torch.float32, device=device)
    expert_offsets = torch.empty((num_experts + 1,), dtype=torch.int32, device=device)
    moe_route_fused_kernel[(1,)](
        router_logits, topk_ids, topk_gates, row_token, row_expert, row_gate, expert_offsets,
        num_tokens, num_experts, router_logits.stride(0), router_logits.stride(1),
        **launch_config(num_tokens, num_experts, top_k, libdevice_exp=not interpreter_active()),
    )
    return Routing(topk_ids=topk_ids, topk_gates=topk_gates, row_token=row_token, row_expert=row_expert,
                   row_gate=row_gate, expert_offsets=expert_offsets)
