"""End to end through real ``python -m autotune run`` processes and worker processes (issue 8).

* Two concurrent runs on one SQLite storage share a study's budget (``--trials 4`` gives 4 measured trials in all,
  not 8), queue and measure the default config once, each says why it stopped, and ``show`` prints the winner the
  table holds.
* Compiler noise stays in the trial: a worker that writes hundreds of MLIR-like lines to file descriptor 2 (as
  Triton's C++ does; ``fault_kernel.NOISE_ENV``) leaves none of them on the terminal, one line per failed trial, an
  excerpt (first and last lines, bounded) in the trial's ``error`` and the whole text in the log beside the storage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.table import ConfigTable
from autotune.tuning.capture import EXCERPT_BYTES
from tests import fault_kernel as fk

REPO = Path(__file__).resolve().parent.parent
RUN_LIMIT_S = 240
TRIALS = 4
NOISE_LINES = 400


def _argv(preset: Path, storage: str, table: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", fk.CLI_WITH_PRESET, str(preset), "run", fk.NAME, "--preset", str(preset),
            "--storage", storage, "--table", str(table), "--finalists", "1", "--trial-timeout", "60", "--seed", "3",
            *extra]


def _start(argv, tmp: Path, name: str, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, **fk.PLUGIN_ENV, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1",
           **(env_extra or {})}
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)


def _wait(procs) -> None:
    try:
        for proc in procs:
            proc.wait(RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a run did not finish within {RUN_LIMIT_S} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _only_study(storage: str):
    names = optuna.get_all_study_names(storage=storage)
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage)


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concurrent")
    preset = fk.write_preset(tmp / "p.toml", M=(64,), faults=0, delay_ms=50, trials=TRIALS)
    storage, table = f"sqlite:///{tmp / 's.db'}", tmp / "t.json"
    procs = [_start(_argv(preset, storage, table), tmp, f"run{i}") for i in (1, 2)]
    _wait(procs)
    return {"codes": [p.returncode for p in procs], "errs": [(tmp / f"run{i}.err").read_text() for i in (1, 2)],
            "storage": storage, "table": table}


def test_both_runs_succeed_and_say_why_they_stopped(concurrent):
    for code, err in zip(concurrent["codes"], concurrent["errs"]):
        assert code == 0, err
        assert "Traceback" not in err
        assert f"stopped: trials reached ({TRIALS}/{TRIALS} measured)" in err


def test_budget_shared(concurrent):
    study = _only_study(concurrent["storage"])
    trials = study.get_trials(deepcopy=False)
    measured = [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(measured) == TRIALS
    assert len({t.user_attrs["config_hash"] for t in measured}) == TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.user_attrs["pid"] for t in measured}) == 2  # both processes measured some of them


def test_default_queued_and_measured_once(concurrent):
    study = _only_study(concurrent["storage"])
    defaults = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("source") == "default"]
    assert len(defaults) == 1
    assert defaults[0].user_attrs["enqueued_from"] == "default" and defaults[0].state == TrialState.COMPLETE


def test_show_and_table_agree(concurrent):
    from autotune.table.export import best_entry
    from autotune.tuning import study as study_mod

    study = _only_study(concurrent["storage"])
    entry = best_entry(study_mod.key_of(study.user_attrs), study)
    stored = ConfigTable.load(concurrent["table"], missing_ok=False).entries(study.user_attrs["device_key"])
    assert [(e.config, e.median_us, e.trial) for e in stored] == [(entry.config, entry.median_us, entry.trial)]
    show = subprocess.run([sys.executable, "-m", "autotune", "show", fk.NAME, "--storage", concurrent["storage"]],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **fk.PLUGIN_ENV})
    assert show.returncode == 0, show.stderr
    assert json.dumps(entry.config, sort_keys=True) in show.stdout


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("noisy")
    preset = fk.write_preset(tmp / "p.toml", M=(64,), faults=1, trials=1)
    storage, table = f"sqlite:///{tmp / 's.db'}", tmp / "t.json"
    proc = _start(_argv(preset, storage, table, "--trials", "1", "--enqueue", '{"mode": "compile_error"}'), tmp,
                  "noisy", env_extra={fk.NOISE_ENV: str(NOISE_LINES)})
    _wait([proc])
    return {"code": proc.returncode, "err": (tmp / "noisy.err").read_text(), "out": (tmp / "noisy.out").read_text(),
            "storage": storage, "log": tmp / "s.db.worker.log"}


def test_noise_not_on_terminal(noisy):
    assert noisy["code"] == 0, noisy["err"][-3000:]
    assert fk.NOISE_MARK not in noisy["err"] and fk.NOISE_MARK not in noisy["out"]
    failed_lines = [line for line in noisy["err"].splitlines() if " failed: " in line]
    assert len(failed_lines) == 1 and "compile_error" in failed_lines[0]
    assert len(noisy["err"].splitlines()) < 15


def test_noise_excerpt_in_trial_error(noisy):
    study = _only_study(noisy["storage"])
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert len(failed) == 1
    error = failed[0].user_attrs["error"]
    assert error.startswith("CompilationError")
    assert "--- worker output ---" in error and "lines left out" in error
    assert f"{fk.NOISE_MARK} line 0:" in error and f"{fk.NOISE_MARK} line {NOISE_LINES - 1}:" in error
    assert len(error.encode()) < EXCERPT_BYTES + 3000


def test_noise_whole_in_log(noisy):
    text = noisy["log"].read_text()
    assert "trial 1 compile_error" in text
    section = text[text.index("trial 1 compile_error"):]
    assert all(f"{fk.NOISE_MARK} line {i}:" in section for i in (0, NOISE_LINES // 2, NOISE_LINES - 1))
