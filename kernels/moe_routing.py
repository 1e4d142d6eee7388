"""Routing preparation for the gpt-oss MoE layer: top-k, softmax over the k, and grouping rows by expert.

Legend: T tokens, E experts, k experts per token (top-k), R = T·k routed rows.

gpt-oss routes with ``topk(router_logits, k)`` and a softmax over the k selected logits only (openai/gpt-oss
``gpt_oss/torch/model.py``, ``MLPBlock.forward``). The grouped GEMM wants the R (token, expert) pairs sorted by
expert: row ``r`` of the sorted order belongs to expert ``row_expert[r]``, reads token ``row_token[r]`` and is
weighted by ``row_gate[r]``; ``expert_offsets[e] : expert_offsets[e + 1]`` is expert ``e``'s segment. The row-block
schedule (which BLOCK_M rows a program owns) is derived from ``expert_offsets`` inside the GEMM kernel, so nothing
here depends on a tuned tile size and everything runs without a host synchronisation (CUDA-graph capturable).

:func:`route` has two implementations. Small calls (decode: T·k <= 512, E <= 256, on CUDA or under Triton's
interpreter) take one Triton launch (:mod:`kernels.moe_routing_kernel`): in a CUDA-graph decode step the torch path
below replays about 15 tiny kernels per layer, which then dominate the step time. Everything else takes the torch
path (``torch.topk``, ``torch.softmax``, :func:`group_by_expert`), which is also the reference of the fused kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import interpreter_active


@dataclass(frozen=True)
class Routing:
    """Routed rows of one MoE layer call, sorted by expert.

    Attributes:
        topk_ids: ``[T, k]`` int32 expert of each (token, slot).
        topk_gates: ``[T, k]`` float32 softmax weights over the k selected logits.
        row_token: ``[R]`` int32 token of each sorted row.
        row_expert: ``[R]`` int32 expert of each sorted row (non-decreasing).
        row_gate: ``[R]`` float32 gate of each sorted row.
        expert_offsets: ``[E + 1]`` int32 start of each expert's segment in the sorted rows; ``[E]`` is R.
    """

    topk_ids: torch.Tensor
    topk_gates: torch.Tensor
    row_token: torch.Tensor
    row_expert: torch.Tensor
    row_gate: torch.Tensor
    expert_offsets: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """T."""
        return self.topk_ids.shape[0]

    @property
    def top_k(self) -> int:
        """k."""
        return self.topk_ids.shape[1]

    @property
    def num_experts(self) -> int:
        """E."""
        return self.expert_offsets.shape[0] - 1

    @property
    def num_rows(self) -> int:
        """R = T·k."""
        return self.row_token.shape[0]


def route(router_logits: torch.Tensor, top_k: int) -> Routing:
    """Top-k routing with softmax over the selected logits, rows grouped by expert.

    Dispatch: when :func:`kernels.moe_routing_kernel.fused_routing_supported` holds (CUDA tensor, or CPU tensor
    while ``TRITON_INTERPRET=1``; T·k <= 512, E <= 256, no autograd) the whole routing is one Triton launch, since
    in a CUDA-graph decode step the ~15 small kernels of the torch path cost more than the routing itself; else the
    torch path (:func:`route_torch`). Both are free of host synchronisation (CUDA-graph capturable) and give the
    same experts, rows and offsets for logits without ties. Ties: the fused kernel takes the lowest expert index;
    ``torch.topk`` leaves the choice unspecified on CUDA. Gates: bit-equal on CUDA in every case tried, a few ulp
    apart under the interpreter (numpy's exp); see :mod:`kernels.moe_routing_kernel`.

    Args:
        router_logits: ``[T, E]`` router outputs (any float dtype; the softmax runs in float32).
        top_k: k, the experts per token (4 in gpt-oss).

    Returns:
        The :class:`Routing` of the T·k rows. Rows of one expert keep token order (stable sort).

    Raises:
        ValueError: if ``router_logits`` is not 2-D or ``top_k`` is not in ``1..E``.
    """
    _check_route_args(router_logits, top_k)
    if _fused_allowed(router_logits):
        from kernels import moe_routing_kernel  # imports triton: only when needed (the CLI sets the interpreter first)

        if moe_routing_kernel.fused_routing_supported(router_logits, top_k):
            return moe_routing_kernel.route_fused(router_logits, top_k)
    return route_torch(router_logits, top_k)


def _check_route_args(router_logits: torch.Tensor, top_k: int) -> None:
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be [T, E], got shape {tuple(router_logits.shape)}")
    num_experts = router_logits.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in 1..{num_experts}")


def _fused_allowed(router_logits: torch.Tensor) -> bool:
    """Cheap pre-check (no triton import): a CUDA tensor, or a CPU tensor while the Triton interpreter is on."""
    device = router_logits.device.type
    return device == "cuda" or (device == "cpu" and interpreter_active())


def route_torch(router_logits: torch.Tensor, top_k: int) -> Routing:
    """The torch implementation of :func:`route` (the reference of the fused kernel; taken for large T).

    Args, Returns and Raises: as :func:`route`. About 15 kernel launches on CUDA (topk, softmax, stable sort,
    searchsorted, gathers, casts).
    """
    _check_route_args(router_logits, top_k)
    num_experts = router_logits.shape[1]
    top_logits, top_ids = torch.topk(router_logits.float(), top_k, dim=-1, sorted=True)  # [T, k] each
    gates = torch.softmax(top_logits, dim=-1)  # [T, k]
    return group_by_expert(top_ids.to(torch.int32), gates, num_experts)


def group_by_expert(topk_ids: torch.Tensor, topk_gates: torch.Tensor, num_experts: int) -> Routing:
    """Sort the (token, slot) pairs by expert.

    Args:
        topk_ids: ``[T, k]`` integer expert ids in ``0..E-1``.
        topk_gates: ``[T, k]`` float gates.
        num_experts: E.

    Returns:
        The :class:`Routing`; ``expert_offsets`` comes from a binary search over the sorted ids (no bincount, whose
        CUDA path synchronises with the host).
    """
    top_k = topk_ids.shape[1]
    flat_ids = topk_ids.reshape(-1)  # [R]
    sorted_ids, order = torch.sort(flat_ids, stable=True)  # [R], [R]
    boundaries = torch.arange(num_experts + 1, device=flat_ids.device, dtype=sorted_ids.dtype)
    expert_offsets = torch.searchsorted(sorted_ids, boundaries).to(torch.int32)  # [E + 1]
    return Routing(
        topk_ids=topk_ids.to(torch.int32),
        topk_gates=topk_gates.float(),
        row_token=(order // top_k).to(torch.int32),
        row_expert=sorted_ids.to(torch.int32),
        row_gate=topk_gates.reshape(-1).float()[order],
        expert_offsets=expert_offsets,
    )


def max_row_blocks(num_rows: int, num_experts: int, block_m: int) -> int:
    """Upper bound on the BLOCK_M-row blocks the expert segments need, known without reading the routing.

    Each expert with c > 0 rows needs ceil(c / BLOCK_M) = 1 + floor((c - 1) / BLOCK_M) blocks; summed over at most
    n = min(E, R) non-empty experts this is at most n + floor((R - n) / BLOCK_M).

    Args:
        num_rows: R.
        num_experts: E.
        block_m: BLOCK_M.

    Returns:
        The bound (0 when R is 0).
    """
    nonempty = min(num_experts, num_rows)
    return nonempty + (num_rows - nonempty) // block_m
