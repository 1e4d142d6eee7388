"""``scripts/bench_search.py`` (issue 8): the replay on a cached sweep, the budget chosen from it, and the script end to
end on tiny interpreter shapes (``--cpu-smoke``, then ``--replay-only`` on its cache).

The replay tests use a hand-written cache over the fault-injection kernel's 12-config space (``faults=0``) with known
timings, so every expectation can be computed by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from autotune.tuning.presets import budget_from_benchmark, trials_to_reach
from autotune.tuning.space import enumerate_configs
from scripts import bench_search as bs
from tests import fault_kernel as fk

REPO = Path(__file__).resolve().parent.parent


def _cache(fail_block: int | None = 64) -> dict:
    shape = {"M": 64, "faults": 0, "delay_ms": 0}
    space = fk.space("only", shape, None)
    records = []
    for config in enumerate_configs(space.params, 1000):
        median = 100.0 / (config["BLOCK"] * config["UNROLL"]) + (50.0 if config["mode"] == "ok2" else 0.0)
        record = {"config": config, "kind": "ok", "median_us": median, "compile_s": 1.0, "seconds": 2.0}
        if config["BLOCK"] == fail_block and config["mode"] == "ok2":
            record = {"config": config, "kind": "compile_error", "median_us": None, "seconds": 1.5}
        records.append(record)
    case = {"label": "fault M=64", "kernel": fk.NAME, "variant": "only", "shape": shape,
            "choices": {p.name: list(p.choices) for p in space.params}, "default": space.default,
            "configs": records}
    return {"device": {"name": "synthetic"}, "cases": [case]}


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc", "tpe+warm"])
def test_replay_curve(sampler):
    doc = _cache()
    measurable = sum(1 for r in doc["cases"][0]["configs"] if r["kind"] == "ok")  # 12 - 2 failing = 10
    run = bs.replay_one(doc, doc["cases"][0], sampler, seed=1, max_trials=100)
    fractions, wall = run["trials"], run["wall"]
    assert len(fractions) == measurable == 10  # stops when every measurable config was measured
    assert fractions[0] == pytest.approx((100.0 / 128) / (100.0 / 16))  # trial 0: default (ok,16,1); best (ok,64,2)
    assert all(a <= b for a, b in pairwise(fractions)) and fractions[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in pairwise(wall))
    # 10 measured at 2 s each, plus the failing configs met before the last measured one at 1.5 s each
    assert wall[-1] in (pytest.approx(20.0), pytest.approx(21.5), pytest.approx(23.0))


def test_replay_summary_and_budget_choice():
    doc = _cache(fail_block=None)
    result = bs.replay(doc, ("random", "tpe"), seeds=3, max_trials=12, log=lambda *_: None)
    case = result["cases"][0]
    assert case["sweep_trials"] == 12 and case["ground_truth_us"] == pytest.approx(100.0 / 128)
    for name in ("random", "tpe"):
        runs = case["samplers"][name]["runs"]
        assert len(runs) == 3 and all(len(r["trials"]) == 12 for r in runs)
        assert case["samplers"][name]["goal_trials"] == 1
    choice = budget_from_benchmark(result, fk.NAME, target=1.0)
    worst = {name: max(trials_to_reach(r["trials"], 1.0) for r in case["samplers"][name]["runs"])
             for name in ("random", "tpe")}
    assert choice.trials == min(worst.values())
    assert worst[choice.sampler] == choice.trials
    assert "synthetic" in choice.describe()
    report = bs.report_markdown(result)
    assert "## fault M=64" in report and "| random |" in report and "| tpe |" in report


def test_budget_not_reached_and_bad_input(tmp_path):
    doc = _cache(fail_block=None)
    result = bs.replay(doc, ("random",), seeds=1, max_trials=1, log=lambda *_: None)
    choice = budget_from_benchmark(result, fk.NAME, target=1.0 + 1e-9)
    assert choice.trials is None and "no sampler reached" in choice.describe()
    from autotune.errors import PresetError

    with pytest.raises(PresetError, match="no moe_gemm shapes"):
        budget_from_benchmark(result, "moe_gemm")
    with pytest.raises(PresetError, match="cannot read benchmark result"):
        budget_from_benchmark(tmp_path / "missing.json", fk.NAME)


def test_trials_to_reach():
    assert trials_to_reach([0.5, 0.97, 0.99], 0.98) == 3
    assert trials_to_reach([0.5, 0.9], 0.98) is None
    assert trials_to_reach([1.0], 1.0) == 1


def _script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "scripts/bench_search.py", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def test_cpu_smoke_end_to_end(tmp_path):
    out = tmp_path / "bench"
    done = _script("--cpu-smoke", "--out", str(out), "--seeds", "1", "--samplers", "tpe,random,tpe+warm")
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = json.loads((out / "sweep.json").read_text())
    assert [c["kernel"] for c in sweep["cases"]] == ["moe_gemm"] * 3 + ["attention"]
    for case in sweep["cases"]:
        assert case["configs"] and all(r["kind"] in ("ok", "pruned") or r.get("error") for r in case["configs"])
        assert any(r["kind"] == "ok" and r["median_us"] > 0 and r["seconds"] > 0 for r in case["configs"])
    report = (out / "report.md").read_text()
    assert report.count("## ") == 4 and "tpe+warm" in report
    # replay again from the cache alone, with the other samplers
    again = _script("--replay-only", str(out / "sweep.json"), "--out", str(tmp_path / "again"), "--seeds", "2",
                    "--samplers", "qmc,cmaes,gp")
    assert again.returncode == 0, again.stderr[-3000:]
    replay = json.loads((tmp_path / "again" / "replay.json").read_text())
    assert set(replay["cases"][0]["samplers"]) == {"qmc", "cmaes", "gp"}
    # a sweep cut after two shapes resumes: those two are kept as they were, the other two measured
    cut = {**sweep, "cases": sweep["cases"][:2]}
    (out / "sweep.json").write_text(json.dumps(cut))
    resumed = _script("--cpu-smoke", "--sweep-only", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("kept from the cached sweep") == 2, resumed.stdout
    whole = json.loads((out / "sweep.json").read_text())
    assert [c["label"] for c in whole["cases"]] == [c["label"] for c in sweep["cases"]]
    assert whole["cases"][:2] == sweep["cases"][:2] and whole["sweep_wall_s"] > sweep["sweep_wall_s"]
    other = {**sweep, "rep_ms": 99.0}
    (out / "sweep.json").write_text(json.dumps(other))
    refused = _script("--cpu-smoke", "--sweep-only", "--resume", "--out", str(out))
    assert refused.returncode != 0 and "cached sweep is of another device, dtype or rep_ms" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_bad_arguments(tmp_path):
    missing = _script("--replay-only", str(tmp_path / "nope.json"), "--out", str(tmp_path), timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("bench_search: error: cannot read sweep cache")
    assert "Traceback" not in missing.stderr
    bad = _script("--replay-only", str(tmp_path / "nope.json"), "--out", str(tmp_path), "--samplers", "nope",
                  timeout=120)
    assert bad.returncode == 2 and "unknown sampler" in bad.stderr
