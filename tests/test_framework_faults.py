"""End-to-end: one study of the fault-injection kernel through ``autotune.cli.main`` and real worker processes.

Every failure a candidate config can cause (compile error, hang, wrong result, NaN, dead worker, sticky CUDA error,
constraint) is enqueued once; the run must survive all of them, end each trial in the right Optuna state with the
right ``kind``, finish the study and export the one config that works fastest.
"""

from __future__ import annotations

import contextlib
import io
import json

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autotune import cli, defaults
from autotune.device import INTERPRETER_KEY
from autotune.table import ConfigTable
from tests import fault_kernel as fk

TRIAL_TIMEOUT_S = 10

# infeasible early: pruned trials cost no budget, and nothing is asked once the budget is reached, so a config
# queued after the last budgeted one would stay WAITING.
ENQUEUED_MODES = ("ok", "infeasible", "ok2", "compile_error", "wrong", "nan", "crash", "cuda_error", "hang")
MEASURED_MODES = tuple(m for m in ENQUEUED_MODES if m != "infeasible")
# --trials counts completed trials (issue 8): failed ones cost no budget, so the budget is the two modes that complete
# and every queued config still runs once (queued configs run past the budget).
COMPLETING_MODES = ("ok", "ok2")

EXPECTED_FAIL_KIND = {
    "compile_error": "compile_error",
    "hang": "timeout",
    "wrong": "wrong_result",
    "nan": "nan",
    "crash": "worker_died",
    "cuda_error": "cuda_error",
}
EXPECTED_ERROR_TEXT = {
    "compile_error": "CompilationError",
    "hang": "trial timeout",
    "wrong": "relative error",
    "nan": "NaN",
    "crash": "code 9",
    "cuda_error": "illegal memory access",
}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    """Run the study once for the whole module: (exit code, stderr, stdout, storage URL, table path)."""
    tmp = tmp_path_factory.mktemp("faults")
    preset = fk.write_preset(tmp / "faults.toml", M=(64,), faults=1, trials=len(MEASURED_MODES))
    storage = f"sqlite:///{tmp / 's.db'}"
    table = tmp / "t.json"
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOTUNE_PLUGINS", "tests.fault_kernel")
    mp.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # silences a Triton 3.9 warning in the compile-error trial
    # Without a GPU cmd_run replaces --preset with defaults.CPU_PRESET (bug reported in test_framework_cli.py).
    mp.setattr(defaults, "CPU_PRESET", str(preset))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([
                "run", fk.NAME, "--preset", str(preset), "--storage", storage, "--table", str(table),
                "--trial-timeout", str(TRIAL_TIMEOUT_S), "--trials", str(len(COMPLETING_MODES)), "--finalists", "1",
                "--enqueue", json.dumps([{"mode": m} for m in ENQUEUED_MODES]),
            ])
    finally:
        mp.undo()
    return code, err.getvalue(), out.getvalue(), storage, table


@pytest.fixture(scope="module")
def study(fault_run):
    names = optuna.get_all_study_names(storage=fault_run[3])
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=fault_run[3])


def _by_mode(study) -> dict[str, list]:
    out: dict[str, list] = {}
    for trial in study.get_trials(deepcopy=False):
        out.setdefault(fk.mode_of(trial), []).append(trial)
    return out


def test_exit_code_and_summary(fault_run):
    code, err, out, _, _ = fault_run
    assert code == 0, err
    assert "Traceback" not in err
    assert "studies:" in out and "measured" in out


def test_study_name_and_attrs(study):
    device_key = study.user_attrs["device_key"]
    if not torch.cuda.is_available():
        assert device_key == INTERPRETER_KEY
    assert study.study_name.startswith(f"{fk.NAME}.only.M64_faults1_delay_ms0.{device_key}.s")
    assert study.user_attrs["kernel"] == fk.NAME
    assert study.user_attrs["shape"] == {"M": 64, "faults": 1, "delay_ms": 0}


def test_every_enqueued_mode_ran_once(study):
    by_mode = _by_mode(study)
    assert sorted(by_mode) == sorted(ENQUEUED_MODES)
    for mode, trials in by_mode.items():
        assert len(trials) == 1, (mode, [t.number for t in trials])
    # "ok" completed from the default is the default: the user's identical {"mode": "ok"} was not queued again
    assert by_mode["ok"][0].user_attrs["source"] == "default"
    assert by_mode["ok"][0].number == 0
    assert all(by_mode[m][0].user_attrs["source"] == "user" for m in ENQUEUED_MODES if m != "ok")


def test_enqueue_completes_missing_keys_from_default(study):
    default = fk.default_config("only", {}, None)
    for trial in study.get_trials(deepcopy=False):
        config = json.loads(trial.user_attrs["config"])
        assert set(config) == set(default)
        assert config["BLOCK"] == default["BLOCK"]
        assert config["UNROLL"] == 1


def test_study_finished(study):
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert TrialState.RUNNING not in states
    assert TrialState.WAITING not in states


def test_ok_modes_complete_and_ok_wins(study):
    by_mode = _by_mode(study)
    ok, ok2 = by_mode["ok"][0], by_mode["ok2"][0]
    for trial in (ok, ok2):
        assert trial.state == TrialState.COMPLETE
        assert trial.user_attrs["kind"] == "ok"
        assert trial.value == pytest.approx(trial.user_attrs["median_us"])
        assert trial.user_attrs["max_rel_err"] <= trial.user_attrs["tolerance"]
    assert ok.value < ok2.value
    assert ok2.value >= fk.OK2_SLEEP_S * 1e6  # the 20 ms sleep is in every ok2 call


def test_infeasible_pruned_with_reason(study):
    trial = _by_mode(study)["infeasible"][0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["kind"] == "pruned"
    assert trial.user_attrs["pruned_reason"] == fk.INFEASIBLE_REASON
    assert "median_us" not in trial.user_attrs


@pytest.mark.parametrize("mode", sorted(EXPECTED_FAIL_KIND))
def test_failure_kinds(study, mode):
    trial = _by_mode(study)[mode][0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["kind"] == EXPECTED_FAIL_KIND[mode]
    error = trial.user_attrs.get("error", "")
    assert error.strip()
    assert EXPECTED_ERROR_TEXT[mode] in error


def test_budget_counts_measured_trials(study):
    measured = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                if "duplicate_of" not in t.user_attrs]
    assert len(measured) == len(MEASURED_MODES)
    assert len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))) == 1


def test_finalists_and_table(fault_run, study):
    finalists = study.user_attrs["finalists"]
    assert finalists and finalists[0]["config"]["mode"] == "ok"
    assert finalists[0]["is_default"]
    assert not study.user_attrs.get("finalists_rejected")

    table = ConfigTable.load(fault_run[4], missing_ok=False)
    device_key = study.user_attrs["device_key"]
    assert table.device_keys() == [device_key]
    entries = table.entries(device_key)
    assert len(entries) == 1
    entry = entries[0]
    assert entry.kernel == fk.NAME and entry.variant == "only"
    assert entry.shape == {"M": 64, "faults": 1, "delay_ms": 0}
    assert entry.config["mode"] == "ok"
    assert entry.study == study.study_name
    assert entry.metrics["measured_trials"] == 2  # only ok and ok2 have timings
