"""The address plan of the gemv's L2 prefetch (:func:`kernels.moe_gemm.triton_kernels.prefetch_line_offsets`),
run under the interpreter: every element of the prefetched rows and columns lies in a prefetched 128-byte line,
wherever the tile starts inside a line, and no address leaves the tile. (The prefetch instruction itself needs a GPU:
``tests/test_kernel_moe_gemm.py::test_gpu_l2_prefetch_changes_no_value``.)"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kernels.moe_gemm.triton_kernels import PREFETCH_LINE_BYTES, prefetch_line_offsets

THREADS = 64


@triton.jit
def _offsets_kernel(out_ptr, count_ptr, row_stride, num_rows, col_begin, col_end, ELEM_BYTES: tl.constexpr,
                    THREADS: tl.constexpr, PASSES: tl.constexpr):
    first_offsets, total = prefetch_line_offsets(0, row_stride, num_rows, col_begin, col_end, ELEM_BYTES, THREADS)
    tl.store(count_ptr, total)
    for p in tl.static_range(PASSES):
        offsets, lines = prefetch_line_offsets(p * THREADS, row_stride, num_rows, col_begin, col_end, ELEM_BYTES,
                                           THREADS)
        tl.store(out_ptr + p * THREADS + tl.arange(0, THREADS), offsets)


@pytest.mark.parametrize("elem_bytes, row_stride, num_rows, col_begin, col_end", [
    (4, 360, 16, 0, 360),     # mlp1 codes (int32 words): 16 rows of 1440 B, the whole K
    (4, 360, 13, 128, 256),   # a split-K slice of a part-masked row block
    (1, 90, 16, 0, 90),       # mlp1 scales: 90 B per row
    (1, 90, 3, 48, 90),       # the last K slice of the scales
    (4, 4, 1, 0, 4),          # one 16-byte group
])
@pytest.mark.parametrize("start_byte", [0, 32, 100])
def test_prefetched_lines_cover_the_tile(elem_bytes, row_stride, num_rows, col_begin, col_end, start_byte):
    passes = 8
    out = torch.full((passes * THREADS,), -1, dtype=torch.int64)
    count = torch.zeros(1, dtype=torch.int32)
    _offsets_kernel[(1,)](out, count, row_stride, num_rows, col_begin, col_end, ELEM_BYTES=elem_bytes,
                          THREADS=THREADS, PASSES=passes)
    total = int(count.item())
    assert 0 < total <= passes * THREADS
    offsets = out[:triton.cdiv(total, THREADS) * THREADS].tolist()
    rows_cols = [(o // row_stride, o % row_stride) for o in offsets]
    assert all(r < num_rows and col_begin <= c < col_end for r, c in rows_cols)  # inside the tile
    line = PREFETCH_LINE_BYTES.value
    fetched = {(start_byte + o * elem_bytes) // line for o in offsets}
    wanted = {(start_byte + (r * row_stride + c) * elem_bytes) // line
              for r in range(num_rows) for c in range(col_begin, col_end)}
    assert fetched == wanted, sorted(wanted - fetched)[:5]
    assert total <= len(wanted) + 2 * num_rows  # about one prefetch per line, not one per element
