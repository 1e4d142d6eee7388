"""``scripts/offline_sass.py`` on the CPU machine: the two structural premises of the 2026-12-07 variants hold in the
sm_90 code Triton generates here, and the GB10 (sm_121) compile of each works.

- ``swap_ab``: the decoded weights reach wgmma as its register operand (the point of the swap);
- ``l2_prefetch``: the dp4a gemv issues L2 prefetches (SASS ``CCTL``) only when asked.

Each compile runs in a subprocess without ``TRITON_INTERPRET`` (the interpreter's jit functions cannot be compiled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _sass(variant: str, m: int, config: dict, device: str = "h200") -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "scripts/offline_sass.py", variant, str(m), json.dumps(config),
                             "--device", device], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "no cuobjdump" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr
    return result.stdout


def _count(line: str, opcode: str) -> int:
    return int(line.split(f" {opcode} ", 1)[1].split(",", 1)[0])


def test_swap_ab_feeds_wgmma_from_registers():
    out = _sass("mlp2", 16, {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "dequant": "upcast_ptx", "swap_ab": True})
    line = [ln for ln in out.splitlines() if "moe_mxfp4_gemm_kernel" in ln][0]
    assert "first operand in registers" in line and _count(line, "HGMMA") > 0, line


def test_l2_prefetch_issues_prefetches_only_when_asked():
    config = {"path": "gemv", "dequant": "dp4a", "BLOCK_N": 16, "BLOCK_K": 512, "num_warps": 8}
    lines = {}
    for flag in (False, True):
        out = _sass("mlp1", 1, {**config, "l2_prefetch": flag})
        lines[flag] = [ln for ln in out.splitlines() if "moe_mxfp4_gemv_dp4a_kernel" in ln][0]
    assert _count(lines[False], "CCTL") == 0 and _count(lines[True], "CCTL") > 0, lines


def test_gb10_compiles_both_variants():
    out = _sass("mlp1", 8192, {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "swap_ab": True},
                device="gb10")
    assert "sm_121" in out and "moe_mxfp4_gemm_kernel" in out
    out = _sass("mlp2", 1, {"path": "gemv", "dequant": "dp4a", "l2_prefetch": True, "SPLIT_K": 2}, device="gb10")
    line = [ln for ln in out.splitlines() if "moe_mxfp4_gemv_dp4a_kernel" in ln][0]
    assert _count(line, "CCTL") > 0, line
