"""scripts/bench_moe_variants.py --cpu-smoke: the benchmark runs end to end under the interpreter (tiny shapes) and
writes a report naming both paths, their checked errors and the path the default heuristic picks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "bench_moe_variants.py"), *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900, check=False)


def test_cpu_smoke_writes_a_report(tmp_path):
    out = tmp_path / "report.md"
    proc = _run("--cpu-smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "Triton interpreter" in text and "triton " in text and "torch " in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| mlp")]
    cells = {(r[0].strip(), int(r[1]), r[3].strip()): r for r in rows}
    for variant in ("mlp1", "mlp2"):
        for m in (1, 3, 16):
            for path in ("mma", "gemv"):
                row = cells[(variant, m, path)]
                assert float(row[5]) > 0  # a time in µs
                assert float(row[10]) < 1e-2  # the checked error (the run raises over the tolerance)
        assert cells[(variant, 1, "mma")][4].strip() == "gemv"  # R = 2 rows: the default picks the gemv
        assert cells[(variant, 16, "mma")][4].strip() == "mma"  # R = 32 rows


def test_bad_m_is_a_usage_error():
    proc = _run("--cpu-smoke", "--M", "1,x")
    assert proc.returncode == 2 and "--M" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_m_outside_m_is_a_usage_error():
    # The sweep runs beside each --M value's default rows: asking for one at an M that is not timed was silently
    # skipped (2026-12-08 H100 call); now it is one usage line. The GPU check comes after the parsing.
    proc = _run("--M", "1", "--gemv-sweep", "--sweep-M", "1,4,8")
    assert proc.returncode == 2 and "--sweep-M 4,8 not in --M" in proc.stderr and "Traceback" not in proc.stderr


def test_cpu_smoke_mma_sweep_times_both_operand_orders(tmp_path):
    out = tmp_path / "sweep.md"
    grid = ('{"BLOCK_M": [16], "BLOCK_N": [32], "BLOCK_K": [32], "num_warps": [4], "num_stages": [1], '
            '"GROUP_M": [1], "dequant": ["upcast"]}')
    proc = _run("--cpu-smoke", "--M", "", "--mma-sweep", "--mma-grid", grid, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| mlp")]
    assert {(r[0].strip(), int(r[1])) for r in rows} == {("mlp1", 16), ("mlp2", 16)}
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0  # best µs without and with swap_ab
    assert text.count("swap_ab=True") == 2 and text.count("swap_ab=False") == 2  # every timing listed


def test_bad_mma_grid_is_a_usage_error():
    proc = _run("--cpu-smoke", "--mma-sweep", "--mma-grid", '{"BLOCK_Q": [1]}')
    assert proc.returncode == 2 and "--mma-grid" in proc.stderr and "Traceback" not in proc.stderr
