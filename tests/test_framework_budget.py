"""The tuning loop's budget (issue 8): ``--trials N`` gives N measured trials, failed, pruned and repeated configs
cost asks but no budget, each stop names its limit, a config that failed is not tried again, and an old winner is
measured again under a new fingerprint. Also the warm start's choice of neighbours.

These tests drive :func:`autotune.tuning.tuner.run_trials` in-process on an SQLite storage with a *scripted worker*
(an object with the real :class:`~autotune.tuning.worker.Worker`'s ``evaluate(job, timeout_s)`` that answers from
the config's ``mode``: ``ok``/``ok2`` are measured, every other mode fails with its kind), so hundreds of asks run in
seconds and each outcome is known. The real worker processes are exercised end to end in
test_framework_concurrency.py and test_framework_faults.py.
"""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from autotune.tuning import study as study_mod
from autotune.tuning import warm_start
from autotune.tuning.budget import Budget, StopReason, StudyCounts
from autotune.tuning.outcomes import Kind
from autotune.tuning.records import Result
from autotune.tuning.space import config_hash
from autotune.tuning.tuner import StudyReport, TuneSettings, run_trials
from tests import fault_kernel as fk

FAIL_KIND = {"compile_error": Kind.COMPILE_ERROR, "hang": Kind.TIMEOUT, "wrong": Kind.WRONG_RESULT, "nan": Kind.NAN,
             "crash": Kind.WORKER_DIED, "cuda_error": Kind.CUDA_ERROR}


class ScriptedWorker:
    """Answers a job from its config: ``ok`` takes BLOCK·UNROLL-dependent µs, ``ok2`` 20 ms more; others fail."""

    retired = False  # the tuner's worker interface: a local worker never retires (only Ray actors do)

    def __init__(self, delay_s: float = 0.0) -> None:
        self.jobs: list[dict] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def evaluate(self, job, timeout_s):
        with self.lock:
            self.jobs.append(dict(job.config))
        if self.delay_s:
            time.sleep(self.delay_s)
        mode = job.config["mode"]
        if mode in fk.SAFE_MODES:
            median = 100.0 / (job.config["BLOCK"] * job.config["UNROLL"]) + (20_000.0 if mode == "ok2" else 0.0)
            return Result(kind=Kind.OK, phase="time", median_us=median)
        return Result(kind=FAIL_KIND[mode], phase="compile", error=f"injected {mode}")


def settings(n_trials: int, timeout_s: float | None = None) -> TuneSettings:
    return TuneSettings(n_trials=n_trials, timeout_s=timeout_s, trial_timeout_s=5.0, dtype="float32", rep_ms=1.0,
                        finalists=0, final_rep_ms=1.0, final_rounds=1, seed=0)


def make_study(tmp_path, faults: int, M: int = 64, name: str = "s.db", seed: int = 0):
    shape = {"M": M, "faults": faults, "delay_ms": 0}
    space = fk.space("only", shape, None)
    key = study_mod.StudyKey.of(fk.NAME, "only", shape, "test-device", space.signature())
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name}")
    study = study_mod.create(storage, key, optuna.samplers.RandomSampler(seed=seed), device_info={})
    return study, key, space, storage


def tune(study, key, space, n_trials, worker=None, timeout_s=None, fingerprint_id=None) -> StudyReport:
    report = StudyReport(name=key.name)
    run_trials(study, key, space, None, [worker or ScriptedWorker()], settings(n_trials, timeout_s), report,
               fingerprint_id=fingerprint_id)
    return report


def measured(study) -> list:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "duplicate_of" not in t.user_attrs]


def test_trials_n_gives_n_measured_despite_failures(tmp_path):
    study, key, space, _ = make_study(tmp_path, faults=1)
    worker = ScriptedWorker()
    report = tune(study, key, space, 5, worker)
    assert len(measured(study)) == 5
    assert report.measured == 5
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert len(failed) == report.failed > 0  # 7 of the 9 modes fail: the sampler met some
    assert report.stop_reason == "stopped: trials reached (5/5 measured)"
    assert len(worker.jobs) == 5 + len(failed)  # pruned and repeated configs never reached the worker


def test_failed_and_pruned_configs_are_not_dispatched_again(tmp_path):
    study, key, space, _ = make_study(tmp_path, faults=1)
    worker = ScriptedWorker()
    broken = space.validate({"mode": "compile_error"})
    assert study_mod.enqueue(study, space, broken, source="user")
    tune(study, key, space, 1, worker)
    # queue the same config again (as a second run or a warm start might): it is answered, not compiled again
    assert study_mod.enqueue(study, space, broken, source="user", again=True)
    tune(study, key, space, 3, worker)
    same = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("config_hash") == config_hash(broken)]
    assert len(same) >= 2
    original, *repeats = same
    assert original.state == TrialState.FAIL and original.user_attrs["kind"] == "compile_error"
    for trial in repeats:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["duplicate_of"] == original.number
        assert "failed (compile_error)" in trial.user_attrs["pruned_reason"]
    assert worker.jobs.count(broken) == 1
    assert all(worker.jobs.count(c) == 1 for c in worker.jobs)  # no config measured twice, ever
    # every repeat of a measured config is answered from its first trial, with its value
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "duplicate_of" in trial.user_attrs:
            assert trial.value == study.get_trials(deepcopy=False)[trial.user_attrs["duplicate_of"]].value


def test_space_exhausted(tmp_path):
    study, key, space, _ = make_study(tmp_path, faults=0)  # ok/ok2 x BLOCK 16/32/64 x UNROLL 1/2 = 12 configs
    report = tune(study, key, space, 50)
    assert len(measured(study)) == 12
    assert report.stop_reason == "stopped: space exhausted (all 12 configs tried, 12 measured)"


def test_ask_cap_ends_a_study_that_cannot_succeed(tmp_path, monkeypatch):
    study, key, space, _ = make_study(tmp_path, faults=1)

    class AlwaysFails(ScriptedWorker):
        def evaluate(self, job, timeout_s):
            super().evaluate(job, timeout_s)
            return Result(kind=Kind.COMPILE_ERROR, phase="compile", error="nothing compiles here")

    report = tune(study, key, space, 1, AlwaysFails())
    # 1 budgeted trial x MAX_ASKS_PER_TRIAL (20) asks, fewer than the 33 configs of the space
    assert len(study.get_trials(deepcopy=False)) == 20
    assert report.stop_reason == "stopped: ask cap (20 asks, 0/1 measured)"
    assert measured(study) == []


def test_timeout_only_when_given(tmp_path):
    study, key, space, _ = make_study(tmp_path, faults=0)
    start = time.monotonic()
    report = tune(study, key, space, 12, ScriptedWorker(delay_s=0.3), timeout_s=1.0)
    assert time.monotonic() - start < 3.0
    assert report.stop_reason.startswith("stopped: timeout (time limit 1 s, ")
    assert 1 <= len(measured(study)) < 12
    # no timeout: the same study goes on to its budget
    report = tune(study, key, space, 6, ScriptedWorker(delay_s=0.01))
    assert len(measured(study)) == 6 and report.stop_reason == "stopped: trials reached (6/6 measured)"


def test_budget_counts_completed_trials_in_storage(tmp_path):
    """A study with trials of an earlier run spends only what is missing; running trials of another process count
    against the budget while they run."""
    study, key, space, storage = make_study(tmp_path, faults=0)
    tune(study, key, space, 3)
    report = tune(study, key, space, 5)
    assert report.measured == 2 and len(measured(study)) == 5
    budget = Budget(6)
    other = optuna.load_study(study_name=key.name, storage=storage)
    foreign = other.ask()
    study_mod.claim(foreign, space.suggest(foreign))
    counts = StudyCounts.read(study)
    assert (counts.completed, counts.running) == (5, 1)
    assert budget.blocker(counts) is StopReason.TRIALS  # 5 measured + 1 in flight elsewhere fill a budget of 6


def test_two_loops_on_one_storage_share_the_budget(tmp_path):
    """Two tuning loops (threads here, processes in test_framework_concurrency.py) on one storage, same sampler seed:
    together they measure the budget, each config once."""
    first, key, space, storage = make_study(tmp_path, faults=0, seed=7)
    second = optuna.load_study(study_name=key.name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=7))
    worker_a, worker_b = ScriptedWorker(delay_s=0.05), ScriptedWorker(delay_s=0.05)
    reports = [StudyReport(key.name), StudyReport(key.name)]
    shared = threading.Lock()  # what storage_lock is between processes: the budget check, ask and claim are one step
    threads = [threading.Thread(target=run_trials, args=(s, key, space, None, [w], settings(6), r),
                                kwargs={"lock": lambda: shared})
               for s, w, r in ((first, worker_a, reports[0]), (second, worker_b, reports[1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(measured(first)) == 6
    assert reports[0].measured + reports[1].measured == 6
    jobs = worker_a.jobs + worker_b.jobs
    assert len(jobs) == len({config_hash(c) for c in jobs})  # the same seed proposes the same configs: each ran once
    assert all(r.stop_reason == "stopped: trials reached (6/6 measured)" for r in reports)


def test_old_winner_measured_again_under_new_fingerprint(tmp_path):
    study, key, space, storage = make_study(tmp_path, faults=0)
    tune(study, key, space, 4, fingerprint_id="fp-old")
    best = min(measured(study), key=lambda t: t.value)
    finalist = {"trial": best.number, "config": study_mod.config_of(best), "median_us": best.value,
                "is_default": False}
    study_mod.set_finalists(study, [finalist], {"triton": "3.6.0"}, after_trial=best.number)
    assert warm_start.old_winners(study, storage, key, space, {"triton": "3.6.0"}) == []  # same fingerprint
    olds = warm_start.old_winners(study, storage, key, space, {"triton": "3.9.0"})
    assert olds == [warm_start.WarmConfig(study_mod.config_of(best), "old_winner")]
    assert not study_mod.enqueue(study, space, olds[0].config, source="warm_start")  # known: not again by default
    assert study_mod.enqueue(study, space, olds[0].config, source="warm_start", enqueued_from="old_winner",
                             again=True)
    worker = ScriptedWorker()
    tune(study, key, space, 4, worker, fingerprint_id="fp-new")  # budget already spent: only the queued one runs
    assert worker.jobs == [olds[0].config]
    rerun = study.get_trials(deepcopy=False)[-1]
    assert rerun.state == TrialState.COMPLETE and "duplicate_of" not in rerun.user_attrs
    assert rerun.user_attrs["enqueued_from"] == "old_winner" and rerun.user_attrs["fingerprint_id"] == "fp-new"


# ---------------------------------------------------------------------------------------------------- warm start


def _tuned_neighbour(tmp_path, M: int, winner: dict, storage_name="s.db"):
    study, key, space, storage = make_study(tmp_path, faults=0, M=M, name=storage_name)
    config = space.validate(winner)
    study_mod.enqueue(study, space, config, source="user")
    tune(study, key, space, 1)
    return storage


def test_neighbour_winners_nearest_first_with_labels(tmp_path):
    _tuned_neighbour(tmp_path, 16, {"mode": "ok", "BLOCK": 32, "UNROLL": 2})
    _tuned_neighbour(tmp_path, 256, {"mode": "ok", "BLOCK": 64, "UNROLL": 1})
    storage = _tuned_neighbour(tmp_path, 4096, {"mode": "ok", "BLOCK": 64, "UNROLL": 2})
    _, key, space, _ = make_study(tmp_path, faults=0, M=64)
    warm = warm_start.neighbour_winners(storage, key, space, None)
    # |log2 64 - log2 16| = 2 = |log2 64 - log2 256|: both nearer than 4096; ties by shape
    assert [w.origin for w in warm] == ["neighbour:M=16", "neighbour:M=256"]
    assert warm[0].config == {"mode": "ok", "BLOCK": 32, "UNROLL": 2}
    assert warm[1].config == {"mode": "ok", "BLOCK": 64, "UNROLL": 1}
    assert warm_start.neighbour_winners(storage, key, space, None, count=3)[2].origin == "neighbour:M=4096"
    # another device's studies are no neighbours
    other_device = study_mod.StudyKey.of(key.kernel, key.variant, key.shape_dict, "other-device", key.space_id)
    assert warm_start.neighbour_winners(storage, other_device, space, None) == []


def test_project_moves_values_the_space_lacks():
    from autotune.device import INTERPRETER
    from search_spaces import moe_gemm as moe_space

    shape = {"M": 1, "N": 64, "K": 64, "E": 4, "top_k": 2}
    space = moe_space.space("mlp2", shape, INTERPRETER)
    prefill_winner = {**space.default, "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8}
    projected, moved = warm_start.project(prefill_winner, space)
    assert moved == ["BLOCK_M"]
    assert projected["BLOCK_M"] == max(p for p in space.params if p.name == "BLOCK_M").choices[-1]
    assert projected["num_warps"] == 8 and projected["BLOCK_N"] == 64


def test_shape_distance():
    assert warm_start.shape_distance({"M": 1, "N": 8}, {"M": 4, "N": 8}) == 2.0
    assert warm_start.shape_distance({"M": 1}, {"M": 1, "N": 2}) is None
    assert warm_start.shape_distance({"M": 0, "W": 0}, {"M": 1, "W": 0}) == 1.0


@pytest.mark.parametrize("lines", [5, 3000])
def test_excerpt_bounded(lines):
    from autotune.tuning.capture import EXCERPT_BYTES, EXCERPT_LINES, excerpt

    text = "".join(f"line {i} " + "x" * 300 + "\n" for i in range(lines))
    out = excerpt(text)
    assert len(out.splitlines()) <= EXCERPT_LINES + 1
    assert len(out.encode()) <= EXCERPT_BYTES + 2 * EXCERPT_LINES * 8
    assert out.splitlines()[0].startswith("line 0 ")
    assert out.splitlines()[-1].startswith(f"line {lines - 1} ")
    if lines > EXCERPT_LINES:
        assert f"[... {lines - EXCERPT_LINES} lines left out ...]" in out
