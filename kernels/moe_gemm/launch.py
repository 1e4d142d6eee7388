"""Launchers of the MXFP4 MoE GEMM: check shapes, allocate, compute the grid, launch.

Legend: T tokens, k top-k, R = T·k routed rows (sorted by expert), E experts, N output features, K input
features, G = K / 32.
"""

from __future__ import annotations

import functools
import torch
import triton

from kernels.launch_plan import KernelLaunch
from kernels.moe_gemm.config import MoeGemmConfig
from kernels.moe_gemm.gemv_dp4a import RECORD_WORDS, moe_mxfp4_gemv_dp4a_kernel, quantize_activations_kernel
from kernels.moe_gemm.triton_kernels import (DEQUANT_CODES, moe_mxfp4_gemm_kernel, moe_mxfp4_gemv_kernel,
                                             swiglu_kernel)
from kernels.moe_routing import Routing, max_row_blocks

SWIGLU_ALPHA = 1.702
"""gpt-oss SwiGLU sigmoid scale (openai/gpt-oss ``gpt_oss/torch/model.py``, ``swiglu``)."""

SWIGLU_LIMIT = 7.0
"""gpt-oss clamp of the gate (above) and of the linear half (both sides); config.json ``swiglu_limit``."""

DP4A_QUANTIZE_GROUPS = 16
"""Activation groups per program of the dp4a pre-pass (:func:`kernels.moe_gemm.gemv_dp4a.quantize_activations_kernel`):
512 activations, 6 programs per 2880-wide row."""

GEMV_SWIGLU_COLS = 256
"""Output columns per program of the unfused SwiGLU pass after a gemv (a power of two; 512 B of fp16 per row)."""

_ACT_FORMATS = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_INTERPRETER_SMS = 4


def activation_dtype_problem(config: MoeGemmConfig, dtype: torch.dtype) -> str | None:
    """Why ``config`` cannot run on activations of ``dtype``, or None when it can.

    ``tl.dot_scaled`` takes bf16 or fp16 operands beside the e2m1 weights (Triton's ``dot_scaled`` formats); the
    inline-PTX decode of the MMA path feeds ``tl.dot`` its bf16 output (bf16 activations only). The upcast paths and
    the gemv's float32 products take any float dtype.

    Args:
        config: the launch config.
        dtype: the activation dtype (bf16 on GPUs, fp32 in the CPU inference loop, fp16 when tuning on the CPU).

    Returns:
        A one-line reason, or None.
    """
    if config.dequant == "dot_scaled" and dtype not in _ACT_FORMATS:
        return f"dequant='dot_scaled' needs bf16 or fp16 activations, got {dtype}"
    if config.dequant == "upcast_ptx" and config.path == "mma" and dtype != torch.bfloat16:
        return f"dequant='upcast_ptx' needs bf16 activations (and a GPU of sm_90 or newer), got {dtype}"
    return None


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return _INTERPRETER_SMS
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _check_weights(w_blocks: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor, k: int) -> tuple[int, int]:
    if w_blocks.dtype != torch.uint8 or w_scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks/scales must be uint8, got {w_blocks.dtype}/{w_scales.dtype}")
    if w_blocks.dim() != 4 or w_blocks.shape[-1] != 16:
        raise ValueError(f"w_blocks must be [E, N, K/32, 16], got {tuple(w_blocks.shape)}")
    num_experts, n, groups, _ = w_blocks.shape
    if tuple(w_scales.shape) != (num_experts, n, groups):
        raise ValueError(f"w_scales {tuple(w_scales.shape)} does not match w_blocks {tuple(w_blocks.shape)}")
    if groups * 32 != k:
        raise ValueError(f"activations have K={k} but the weights hold K={groups * 32}")
    if tuple(bias.shape) != (num_experts, n):
        raise ValueError(f"bias must be [E, N] = [{num_experts}, {n}], got {tuple(bias.shape)}")
    return num_experts, n


def gemm_launch(
    a: torch.Tensor,
    routing: Routing,
    w_blocks: torch.Tensor,
    w_scales: torch.Tensor,
    bias: torch.Tensor,
    out: torch.Tensor,
    config: MoeGemmConfig,
    *,
    gather_a: bool,
    scatter_out: bool,
    fuse_swiglu: bool,
    atomic_out: bool,
    records: torch.Tensor | None = None,
) -> list[KernelLaunch]:
    """Arguments, constexprs and grid of the :func:`moe_mxfp4_gemm_kernel` launch, or of the gemv's launches (the
    dp4a decode adds its activation pre-pass first); nothing runs.

    Args:
        a: ``[T, K]`` (gather_a) or ``[R, K]`` activations, bf16/fp16 (fp32 with the upcast path), K contiguous.
        routing: the rows sorted by expert.
        w_blocks: ``[E, N, K/32, 16]`` uint8, contiguous.
        w_scales: ``[E, N, K/32]`` uint8, contiguous.
        bias: ``[E, N]``.
        out: the destination (layout per the flags, see :mod:`kernels.moe_gemm.triton_kernels`).
        config: the launch config.
        gather_a: read activation row ``row_token[r]`` (mlp1) instead of ``r``.
        scatter_out: ``out[row_token[r]] += row_gate[r] * y[r]`` (mlp2).
        fuse_swiglu: SwiGLU epilogue writing ``[R, N/2]``.
        atomic_out: accumulate ``[R, N]`` float32 with atomics (split-K without scatter).
        records: the dp4a activation records of ``a`` (``[rows of a, K/32, 32]`` int32, e.g. written by
            :func:`kernels.layer_ops.add_rms_norm`); the dp4a gemv then skips its pre-pass. Only with
            ``dequant="dp4a"``.

    Returns:
        The :class:`KernelLaunch` list, in launch order.

    Raises:
        ValueError: if the activation dtype cannot use the chosen dequant path, or ``records`` come with another
            decode or do not match ``a`` (TypeError: not int32; :func:`check_activation_records`).
    """
    num_experts, n = w_blocks.shape[0], w_blocks.shape[1]
    k = a.shape[1]
    act_format = _ACT_FORMATS.get(a.dtype)
    problem = activation_dtype_problem(config, a.dtype)
    if problem:
        raise ValueError(problem)
    num_m_blocks = max_row_blocks(routing.num_rows, num_experts, config.BLOCK_M)
    total_tiles = num_m_blocks * triton.cdiv(n, config.BLOCK_N) * config.SPLIT_K
    if records is not None:
        if config.dequant != "dp4a":
            raise ValueError(f"records are the input of the dp4a gemv; this config decodes with {config.dequant!r}")
        check_activation_records(records, a.shape[0], k, a.device)
    if config.path == "gemv":
        return _gemv_launch(a, routing, w_blocks, w_scales, bias, out, config, num_m_blocks, total_tiles,
                            gather_a=gather_a, scatter_out=scatter_out, fuse_swiglu=fuse_swiglu,
                            atomic_out=atomic_out, records=records)
    persistent = config.schedule == "persistent"
    num_programs = min(total_tiles, _num_sms(a.device) * config.programs_per_sm) if persistent else total_tiles
    args = (
        a, w_blocks, w_scales, bias, out, routing.expert_offsets, routing.row_token, routing.row_gate,
        n, k, num_m_blocks, num_programs,
        a.stride(0), w_blocks.stride(0), w_blocks.stride(1), w_scales.stride(0), w_scales.stride(1),
        bias.stride(0), out.stride(0),
    )
    kwargs = dict(
        NUM_EXPERTS=num_experts, EXPERTS_POW2=triton.next_power_of_2(num_experts),
        GATHER_A=gather_a, SCATTER_OUT=scatter_out, FUSE_SWIGLU=fuse_swiglu, ATOMIC_OUT=atomic_out,
        SWIGLU_ALPHA=SWIGLU_ALPHA, SWIGLU_LIMIT=SWIGLU_LIMIT, DEQUANT=DEQUANT_CODES[config.dequant],
        ACT_FORMAT=act_format or "fp32",
        BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, BLOCK_K=config.BLOCK_K, GROUP_M=config.GROUP_M,
        SPLIT_K=config.SPLIT_K, PERSISTENT=persistent, SWAP_AB=config.swap_ab,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return [KernelLaunch(moe_mxfp4_gemm_kernel, (num_programs,), args, kwargs)]


def check_activation_records(records, rows: int, k: int, device: torch.device) -> None:
    """Check that ``records`` can hold the dp4a records of ``rows`` activation rows of width ``k``: int32
    ``[rows, k/32, RECORD_WORDS]`` with contiguous groups, on ``device``.

    Raises:
        TypeError: not an int32 tensor.
        ValueError: k not a multiple of 32, another shape or layout, or another device.
    """
    if not isinstance(records, torch.Tensor) or records.dtype != torch.int32:
        raise TypeError(f"records must be an int32 tensor, got {getattr(records, 'dtype', type(records).__name__)}")
    if k % 32:
        raise ValueError(f"records need a width that is a multiple of 32 (the dp4a group), got {k}")
    want = (rows, k // 32, RECORD_WORDS.value)
    if tuple(records.shape) != want or records.stride(2) != 1 or records.stride(1) != RECORD_WORDS.value:
        raise ValueError(f"records must be a [rows, K/32, {RECORD_WORDS.value}] int32 tensor with contiguous groups, "
                         f"shape {want}; got {tuple(records.shape)} with strides {tuple(records.stride())}")
    if records.device != device:
        raise ValueError(f"records are on {records.device}, expected {device}")


def _empty_records(rows: int, k: int, device: torch.device) -> torch.Tensor:
    return torch.empty((rows, k // 32, RECORD_WORDS.value), dtype=torch.int32, device=device)


def _gemv_launch(a, routing, w_blocks, w_scales, bias, out, config, num_m_blocks, total_tiles, *, gather_a,
                 scatter_out, fuse_swiglu, atomic_out, records=None) -> list[KernelLaunch]:
    """The :func:`moe_mxfp4_gemv_kernel` launch of ``config.path == "gemv"`` (arguments as :func:`gemm_launch`), or
    for ``dequant="dp4a"`` the activation pre-pass :func:`kernels.moe_gemm.gemv_dp4a.quantize_activations_kernel`
    (``[rows of a, K/32, 32]`` int32 records; skipped when ``records`` are given) and
    :func:`kernels.moe_gemm.gemv_dp4a.moe_mxfp4_gemv_dp4a_kernel` (the
    codes as int32 words; on CPU tensors, i.e. under the interpreter, the Triton-op twin of its inline PTX): one
    program per (row block, N block, K slice), or for dp4a with the persistent schedule ``programs_per_sm`` · SMs
    programs looping over those tiles."""
    num_experts, n = w_blocks.shape[0], w_blocks.shape[1]
    k = a.shape[1]
    kwargs = {
        "NUM_EXPERTS": num_experts, "EXPERTS_POW2": triton.next_power_of_2(num_experts),
        "GATHER_A": gather_a, "SCATTER_OUT": scatter_out, "FUSE_SWIGLU": fuse_swiglu, "ATOMIC_OUT": atomic_out,
        "SWIGLU_ALPHA": SWIGLU_ALPHA, "SWIGLU_LIMIT": SWIGLU_LIMIT,
        "BLOCK_M": config.BLOCK_M, "BLOCK_N": config.BLOCK_N, "BLOCK_K": config.BLOCK_K, "SPLIT_K": config.SPLIT_K,
        "num_warps": config.num_warps, "num_stages": config.num_stages,
    }
    tail = (routing.expert_offsets, routing.row_token, routing.row_gate, n, k, num_m_blocks)
    if config.dequant != "dp4a":
        args = (a, w_blocks, w_scales, bias, out, *tail, a.stride(0), w_blocks.stride(0), w_blocks.stride(1),
                w_scales.stride(0), w_scales.stride(1), bias.stride(0), out.stride(0))
        kwargs["DEQUANT_PTX"] = config.dequant == "upcast_ptx"
        return [KernelLaunch(moe_mxfp4_gemv_kernel, (total_tiles,), args, kwargs)]
    groups = k // 32
    pre_pass = []
    if records is None:
        records = _empty_records(a.shape[0], k, a.device)
        pre_pass = [KernelLaunch(quantize_activations_kernel, (a.shape[0], triton.cdiv(groups, DP4A_QUANTIZE_GROUPS)),
                                 (a, records, a.shape[0], k, a.stride(0), records.stride(0)),
                                 {"GROUPS": DP4A_QUANTIZE_GROUPS, "num_warps": 4})]
    w = w_blocks.view(torch.int32)  # [E, N, K/32, 4] words: 16-byte groups stay whole
    persistent = config.schedule == "persistent"
    num_programs = min(total_tiles, _num_sms(a.device) * config.programs_per_sm) if persistent else total_tiles
    args = (records, w, w_scales, bias, out, *tail, num_programs, records.stride(0), w.stride(0), w.stride(1),
            w_scales.stride(0), w_scales.stride(1), w_scales.stride(2), bias.stride(0), out.stride(0))
    emulate = a.device.type == "cpu"  # the interpreter; "meta" tensors plan a GPU compile
    kwargs.update(SUB_N=dp4a_sub_n(config), EMULATE=emulate, L2_PREFETCH=config.l2_prefetch and not emulate,
                  THREADS=32 * config.num_warps, PERSISTENT=persistent)
    return [*pre_pass, KernelLaunch(moe_mxfp4_gemv_dp4a_kernel, (num_programs,), args, kwargs)]


def activation_records(config: MoeGemmConfig, x: torch.Tensor) -> torch.Tensor | None:
    """An empty ``[T, K/32, 32]`` int32 buffer for the dp4a records of ``x`` ``[T, K]`` when ``config`` runs the dp4a
    gemv (for the kernel that writes x to fill, e.g. :func:`kernels.layer_ops.add_rms_norm`, and
    :func:`moe_mlp1` to read), else None."""
    if config.dequant != "dp4a" or x.shape[1] % 32:
        return None
    return _empty_records(x.shape[0], x.shape[1], x.device)


def dp4a_sub_n(config: MoeGemmConfig) -> int:
    """Rows that the threads of one dp4a gemv program cover once beside its ``BLOCK_K / 32`` groups (one group per
    thread, 32 · num_warps threads): the rest of BLOCK_N, ``BLOCK_N / SUB_N`` rows, is held in each thread, which
    then loads an activation record once for that many rows (see
    :func:`kernels.moe_gemm.gemv_dp4a.moe_mxfp4_gemv_dp4a_kernel`). Powers of two, at most BLOCK_N."""
    groups = config.BLOCK_K // 32
    return min(config.BLOCK_N, max(1, 32 * config.num_warps // groups))


def swiglu_launch(h: torch.Tensor, out: torch.Tensor, config: MoeGemmConfig) -> KernelLaunch:
    """The unfused SwiGLU pass ``h [R, N] → out [R, N/2]``, tiled by the config's BLOCK_M × BLOCK_N/2 (path "gemv":
    BLOCK_M × 256, since its narrow N tiles would give programs of a few elements)."""
    rows, cols = out.shape
    block_c = config.BLOCK_N // 2 if config.path == "mma" else GEMV_SWIGLU_COLS
    grid = (triton.cdiv(rows, config.BLOCK_M), triton.cdiv(cols, block_c))
    args = (h, out, rows, cols, h.stride(0), out.stride(0))
    kwargs = dict(ALPHA=SWIGLU_ALPHA, LIMIT=SWIGLU_LIMIT, BLOCK_R=config.BLOCK_M, BLOCK_C=block_c,
                  num_warps=config.num_warps)
    return KernelLaunch(swiglu_kernel, grid, args, kwargs)


def mlp1_launches(
    x: torch.Tensor,
    routing: Routing,
    w_blocks: torch.Tensor,
    w_scales: torch.Tensor,
    bias: torch.Tensor,
    config: MoeGemmConfig,
    out: torch.Tensor | None = None,
    records: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Allocate the mlp1 outputs and plan its launches (see :func:`moe_mlp1`)."""
    if x.dim() != 2:
        raise ValueError(f"x must be [T, K], got {tuple(x.shape)}")
    _, n = _check_weights(w_blocks, w_scales, bias, x.shape[1])
    if n % 2:
        raise ValueError(f"mlp1 needs an even N (gate/linear interleaved), got N={n}")
    if x.shape[0] != routing.num_tokens:
        raise ValueError(f"x has {x.shape[0]} tokens but the routing has {routing.num_tokens}")
    rows = routing.num_rows
    if out is None:
        out = torch.empty((rows, n // 2), dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != (rows, n // 2):
        raise ValueError(f"out must be [R, N/2] = [{rows}, {n // 2}], got {tuple(out.shape)}")
    if rows == 0:
        return out, []
    if config.fuse_swiglu:
        if config.SPLIT_K > 1:
            raise ValueError("mlp1 with SPLIT_K > 1 needs fuse_swiglu=False (SwiGLU applies to the full K sum)")
        return out, gemm_launch(x, routing, w_blocks, w_scales, bias, out, config, gather_a=True,
                                scatter_out=False, fuse_swiglu=True, atomic_out=False, records=records)
    split = config.SPLIT_K > 1
    h = (torch.zeros if split else torch.empty)((rows, n), dtype=torch.float32 if split else x.dtype,
                                               device=x.device)  # [R, N]
    return out, [
        *gemm_launch(x, routing, w_blocks, w_scales, bias, h, config, gather_a=True, scatter_out=False,
                     fuse_swiglu=False, atomic_out=split, records=records),
        swiglu_launch(h, out, config),
    ]


def moe_mlp1(
    x: torch.Tensor,
    routing: Routing,
    w_blocks: torch.Tensor,
    w_scales: torch.Tensor,
    bias: torch.Tensor,
    config: MoeGemmConfig,
    out: torch.Tensor | None = None,
    records: torch.Tensor | None = None,
) -> torch.Tensor:
    """gpt-oss mlp1 over routed rows: ``swiglu(x[row_token[r]] @ W1[e]^T + b1[e])``.

    Args:
        x: ``[T, K]`` activations (bf16 on GPUs, fp16/fp32 under the interpreter), K contiguous.
        routing: rows sorted by expert (:func:`kernels.moe_routing.route`).
        w_blocks: ``[E, N, K/32, 16]`` uint8 MXFP4 blocks (checkpoint layout, no repacking).
        w_scales: ``[E, N, K/32]`` uint8 e8m0 scales.
        bias: ``[E, N]`` in x's dtype (or float32).
        config: launch config.
        out: optional ``[R, N/2]`` destination in x's dtype.
        records: optional dp4a records of x, ``[T, K/32, 32]`` int32 (``dequant="dp4a"`` only), written by the
            kernel that wrote x (:func:`kernels.layer_ops.add_rms_norm` with ``records``): the gemv then skips its
            activation pre-pass (one launch fewer per call).

    Returns:
        ``[R, N/2]`` activations in sorted-row order (the input of :func:`moe_mlp2`).

    Raises:
        ValueError / TypeError: on inconsistent shapes or dtypes, or SPLIT_K > 1 with the fused epilogue.
    """
    out, launches = mlp1_launches(x, routing, w_blocks, w_scales, bias, config, out, records)
    for launch in launches:
        launch.run()
    return out


def mlp2_launches(
    a: torch.Tensor,
    routing: Routing,
    w_blocks: torch.Tensor,
    w_scales: torch.Tensor,
    bias: torch.Tensor,
    config: MoeGemmConfig,
    out: torch.Tensor | None = None,
    out_zeroed: bool = False,
) -> tuple[torch.Tensor, list[KernelLaunch]]:
    """Allocate and zero the mlp2 output (unless ``out_zeroed``) and plan its launch (see :func:`moe_mlp2`)."""
    if a.dim() != 2 or a.shape[0] != routing.num_rows:
        raise ValueError(f"a must be [R, K] with R={routing.num_rows}, got {tuple(a.shape)}")
    _, n = _check_weights(w_blocks, w_scales, bias, a.shape[1])
    tokens = routing.num_tokens
    if out is not None and (tuple(out.shape) != (tokens, n) or out.dtype != torch.float32):
        raise ValueError(f"out must be float32 [T, N] = [{tokens}, {n}], got {out.dtype} {tuple(out.shape)}")
    if not isinstance(out_zeroed, bool):
        raise TypeError(f"out_zeroed must be a bool, got {out_zeroed!r}")
    if out_zeroed and out is None:
        raise ValueError("out_zeroed=True needs the zeroed out tensor")
    if out is None:
        out = torch.zeros((tokens, n), dtype=torch.float32, device=a.device)
    elif not out_zeroed:
        out.zero_()
    if routing.num_rows == 0:
        return out, []
    return out, gemm_launch(a, routing, w_blocks, w_scales, bias, out, config, gather_a=False, scatter_out=True,
                            fuse_swiglu=False, atomic_out=True)


def moe_mlp2(
    a: torch.Tensor,
    routing: Routing,
    w_blocks: torch.Tensor,
    w_scales: torch.Tensor,
    bias: torch.Tensor,
    config: MoeGemmConfig,
    out: torch.Tensor | None = None,
    out_zeroed: bool = False,
) -> torch.Tensor:
    """gpt-oss mlp2 and the top-k combine: ``out[t] = Σ_r→t row_gate[r] · (a[r] @ W2[e]^T + b2[e])``.

    Args:
        a: ``[R, K]`` mlp1 output in sorted-row order.
        routing: the same routing as mlp1.
        w_blocks: ``[E, N, K/32, 16]`` uint8.
        w_scales: ``[E, N, K/32]`` uint8.
        bias: ``[E, N]``.
        config: launch config (``fuse_swiglu`` is ignored).
        out: optional float32 ``[T, N]`` destination; it is zeroed first (the kernel accumulates atomically).
        out_zeroed: the caller guarantees that ``out`` holds zeros (e.g. the residual norm that read the previous
            layer's output zeroed it: :func:`kernels.layer_ops.add_rms_norm` with ``consume_delta``), so no memset
            launch runs.

    Returns:
        ``[T, N]`` float32.

    Raises:
        ValueError / TypeError: on inconsistent shapes or dtypes, a non-bool ``out_zeroed``, ``out_zeroed`` without
            ``out``.
    """
    out, launches = mlp2_launches(a, routing, w_blocks, w_scales, bias, config, out, out_zeroed)
    for launch in launches:
        launch.run()
    return out
