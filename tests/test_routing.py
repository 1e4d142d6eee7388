"""Tests of the MoE routing preparation (:mod:`kernels.moe_routing`) against a naive per-token Python loop."""

from __future__ import annotations

import math
import random

import pytest
import torch

from kernels.moe_routing import Routing, group_by_expert, max_row_blocks, route


def naive_route(logits: torch.Tensor, top_k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Per token: the k largest logits (descending), softmax over those k only, in float64."""
    ids, gates = [], []
    for row in logits.float().tolist():
        chosen = sorted(range(len(row)), key=lambda e: -row[e])[:top_k]
        top = [row[e] for e in chosen]
        m = max(top)
        exps = [math.exp(v - m) for v in top]
        total = sum(exps)
        ids.append(chosen)
        gates.append([v / total for v in exps])
    return ids, gates


def check_grouping(r: Routing, num_tokens: int, top_k: int, num_experts: int) -> None:
    rows = num_tokens * top_k
    assert r.num_tokens == num_tokens and r.top_k == top_k and r.num_experts == num_experts and r.num_rows == rows
    assert r.topk_ids.shape == (num_tokens, top_k) and r.topk_ids.dtype == torch.int32
    assert r.topk_gates.shape == (num_tokens, top_k) and r.topk_gates.dtype == torch.float32
    for name in ("row_token", "row_expert"):
        assert getattr(r, name).shape == (rows,) and getattr(r, name).dtype == torch.int32
    assert r.row_gate.shape == (rows,) and r.row_gate.dtype == torch.float32
    assert r.expert_offsets.shape == (num_experts + 1,) and r.expert_offsets.dtype == torch.int32

    ids = r.topk_ids.tolist()
    gates = r.topk_gates.tolist()
    row_token = r.row_token.tolist()
    row_expert = r.row_expert.tolist()
    row_gate = r.row_gate.tolist()
    offsets = r.expert_offsets.tolist()

    # Every (token, slot) pair appears exactly once: the multiset of (token, expert) of the sorted rows equals that
    # of topk_ids (experts of one token are distinct, so (token, expert) identifies the slot).
    pairs = sorted(zip(row_token, row_expert))
    expected_pairs = sorted((t, ids[t][s]) for t in range(num_tokens) for s in range(top_k))
    assert pairs == expected_pairs
    assert len(set(pairs)) == rows
    # Sorted by expert.
    assert all(a <= b for a, b in zip(row_expert, row_expert[1:]))
    # Offsets consistent with row_expert through the per-expert counts.
    counts = [0] * num_experts
    for e in row_expert:
        counts[e] += 1
    assert offsets[0] == 0 and offsets[-1] == rows
    assert [offsets[e + 1] - offsets[e] for e in range(num_experts)] == counts
    for e in range(num_experts):
        assert all(row_expert[i] == e for i in range(offsets[e], offsets[e + 1]))
        # Stable: token order within an expert's segment is strictly increasing.
        seg = row_token[offsets[e]:offsets[e + 1]]
        assert all(a < b for a, b in zip(seg, seg[1:]))
    # Gates travel with their row (exact copies of topk_gates).
    for t, e, g in zip(row_token, row_expert, row_gate):
        assert g == gates[t][ids[t].index(e)]


CASES = [
    # (T, E, k)
    (1, 32, 4),
    (7, 32, 4),
    (64, 128, 4),
    (33, 6, 2),  # E not a power of two
    (5, 3, 3),  # top_k == E
    (9, 1, 1),  # a single expert
    (16, 5, 5),  # top_k == E, E not a power of two
]


@pytest.mark.parametrize("num_tokens, num_experts, top_k", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_route_matches_naive_loop(num_tokens, num_experts, top_k, dtype):
    gen = torch.Generator().manual_seed(num_tokens * 1000 + num_experts * 10 + top_k)
    if dtype == torch.float16:
        # fp16 rounding of random normals creates ties, whose order topk does not define: use a random permutation
        # of distinct multiples of 1/4 instead (exact in fp16 for |v| ≤ 512).
        perms = [torch.randperm(num_experts, generator=gen) for _ in range(num_tokens)]
        logits = ((torch.stack(perms).float() - num_experts / 2) * 0.25).to(dtype)
        assert all(len(set(row)) == num_experts for row in logits.tolist())
    else:
        logits = torch.randn((num_tokens, num_experts), generator=gen)
    r = route(logits, top_k)
    ids, gates = naive_route(logits, top_k)
    assert r.topk_ids.tolist() == ids
    # Softmax of ≤ 128 fp32 values against float64: error a few ulp of fp32 (~1e-7); 1e-6 leaves room.
    torch.testing.assert_close(r.topk_gates, torch.tensor(gates, dtype=torch.float32), rtol=1e-6, atol=1e-6)
    assert torch.allclose(r.topk_gates.sum(-1), torch.ones(num_tokens), atol=1e-6)
    check_grouping(r, num_tokens, top_k, num_experts)


def test_softmax_over_selected_only():
    # Logits [3, 1, 0, -100]: softmax over the top-2 {3, 1} only gives e^3/(e^3+e^1); a softmax over all four
    # first would give a different (smaller) pair that does not sum to 1.
    logits = torch.tensor([[3.0, 1.0, 0.0, -100.0]])
    r = route(logits, 2)
    assert r.topk_ids.tolist() == [[0, 1]]
    g0 = math.exp(3) / (math.exp(3) + math.exp(1))
    torch.testing.assert_close(r.topk_gates, torch.tensor([[g0, 1 - g0]]), rtol=1e-6, atol=1e-7)


def test_empty_batch():
    r = route(torch.randn(0, 32), 4)
    assert r.num_rows == 0 and r.num_tokens == 0
    assert r.topk_ids.shape == (0, 4)
    assert r.expert_offsets.tolist() == [0] * 33
    check_grouping(r, 0, 4, 32)


def test_single_token_offsets():
    logits = torch.full((1, 8), -1.0)
    logits[0, 6], logits[0, 2] = 5.0, 4.0
    r = route(logits, 2)
    assert r.topk_ids.tolist() == [[6, 2]]
    assert r.row_expert.tolist() == [2, 6] and r.row_token.tolist() == [0, 0]
    assert r.expert_offsets.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    check_grouping(r, 1, 2, 8)


def test_group_by_expert_with_skewed_ids():
    # All tokens choose experts {0, E-1} (empty segments in between), given in varying slot order.
    ids = torch.tensor([[4, 0], [0, 4], [4, 0]], dtype=torch.int64)
    gates = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    r = group_by_expert(ids, gates, 5)
    assert r.row_expert.tolist() == [0, 0, 0, 4, 4, 4]
    assert r.row_token.tolist() == [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(r.row_gate, torch.tensor([0.1, 0.6, 0.7, 0.9, 0.4, 0.3]))
    assert r.expert_offsets.tolist() == [0, 3, 3, 3, 3, 6]
    check_grouping(r, 3, 2, 5)


@pytest.mark.parametrize("bad", [torch.randn(4), torch.randn(2, 3, 4)])
def test_route_rejects_non_2d(bad):
    with pytest.raises(ValueError):
        route(bad, 1)


@pytest.mark.parametrize("top_k", [0, 9])
def test_route_rejects_top_k_out_of_range(top_k):
    with pytest.raises(ValueError):
        route(torch.randn(3, 8), top_k)


def _blocks_needed(counts: list[int], block_m: int) -> int:
    return sum(-(-c // block_m) for c in counts)


def test_max_row_blocks_is_a_true_upper_bound():
    rng = random.Random(0)
    checked = 0
    for _ in range(3000):
        num_experts = rng.choice([1, 2, 3, 5, 8, 32, 128])
        block_m = rng.choice([16, 32, 64, 128, 256])
        num_rows = rng.choice([0, 1, 2, 3, rng.randrange(0, 40), rng.randrange(0, 600), rng.randrange(0, 5000)])
        # Count distributions from spread-out to concentrated: Dirichlet-like via random cut points, or all rows
        # on a few experts, or one row on as many experts as possible then the rest on one.
        mode = rng.randrange(3)
        if mode == 0:
            cuts = sorted(rng.randrange(0, num_rows + 1) for _ in range(num_experts - 1))
            counts = [b - a for a, b in zip([0] + cuts, cuts + [num_rows])]
        elif mode == 1:
            hot = rng.randrange(1, num_experts + 1)
            counts = [0] * num_experts
            for _ in range(num_rows):
                counts[rng.randrange(hot)] += 1
        else:
            n = min(num_experts, num_rows)
            counts = [1] * n + [0] * (num_experts - n)
            if num_rows:
                counts[0] += num_rows - n
        assert sum(counts) == num_rows and len(counts) == num_experts
        bound = max_row_blocks(num_rows, num_experts, block_m)
        assert _blocks_needed(counts, block_m) <= bound, (counts, block_m, bound)
        checked += 1
    assert checked == 3000


@pytest.mark.parametrize("num_rows, num_experts, block_m", [(4, 32, 16), (17, 4, 16), (100, 3, 32), (0, 8, 16)])
def test_max_row_blocks_is_attained(num_rows, num_experts, block_m):
    # The bound is tight: min(E, R) experts with one row each and the rest on one expert reaches it exactly.
    n = min(num_experts, num_rows)
    counts = [1] * n + [0] * (num_experts - n)
    if num_rows:
        counts[0] += num_rows - n
    assert _blocks_needed(counts, block_m) == max_row_blocks(num_rows, num_experts, block_m)


def test_max_row_blocks_exhaustive_small():
    # Every composition of R ≤ 10 rows over E ≤ 4 experts, every BLOCK_M in {1, 2, 3, 4, 16}.
    import itertools

    for num_experts in range(1, 5):
        for num_rows in range(0, 11):
            for counts in itertools.product(range(num_rows + 1), repeat=num_experts):
                if sum(counts) != num_rows:
                    continue
                for block_m in (1, 2, 3, 4, 16):
                    assert _blocks_needed(list(counts), block_m) <= max_row_blocks(num_rows, num_experts, block_m)
