"""Ctrl-C and SIGTERM in the middle of a trial (issue 12, item 6): the run ends promptly with the one clean message
(exit 130 for Ctrl-C, 143 for SIGTERM), no worker prints a KeyboardInterrupt traceback, every completed trial stays in
the storage and no worker process outlives the run.

The command is ``python -m autotune run fault_injection`` (see ``fault_kernel.CLI_WITH_PRESET``) in its own process
group; Ctrl-C is SIGINT to the whole group, as a terminal sends it, SIGTERM goes to the tuner alone, as ``kill`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests import fault_kernel as fk

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 150
MESSAGE = "autotune: interrupted; completed trials are saved, rerun the same command to continue"


def _trials(storage: str):
    try:
        names = optuna.get_all_study_names(storage=storage)
        return optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False) if names else None
    except Exception:  # noqa: BLE001 - the study may be mid-creation
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("how, code", [("sigint-group", 130), ("sigterm-tuner", 143)])
def test_interrupt_mid_trial_is_clean(tmp_path, how, code):
    preset = fk.write_preset(tmp_path / "p.toml", M=(64,), faults=0, delay_ms=150, trials=30)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    argv = [sys.executable, "-c", fk.CLI_WITH_PRESET, str(preset), "run", fk.NAME, "--preset", str(preset),
            "--storage", storage, "--table", str(tmp_path / "t.json"), "--trials", "30", "--trial-timeout", "60"]
    env = {**os.environ, **fk.PLUGIN_ENV, "TRITON_INTERPRET": "1"}
    with open(tmp_path / "err", "w") as err_file:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + LIMIT_S
        complete = []
        while time.monotonic() < deadline and proc.poll() is None:
            trials = _trials(storage) or []
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            if len(complete) >= 2 and any(t.state == TrialState.RUNNING for t in trials):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be interrupted: {(tmp_path / 'err').read_text()}"
        sent = time.monotonic()
        if how == "sigint-group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(60)
        stopped_s = time.monotonic() - sent
        err = (tmp_path / "err").read_text()
        assert returncode == code, err
        assert err.strip().splitlines()[-1] == MESSAGE, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert stopped_s < 20, f"took {stopped_s:.1f} s to stop (the trial timeout is 60 s)"
        for _ in range(50):  # the watchdog of an orphaned worker polls every 0.5 s
            if not _group_alive(proc.pid):
                break
            time.sleep(0.1)
        left = subprocess.run(["ps", "-o", "pid,args", "-g", str(proc.pid)], check=False, capture_output=True,
                              text=True).stdout
        assert not _group_alive(proc.pid), f"a process outlived the run: {left}"
        after = {t.number for t in _trials(storage) if t.state == TrialState.COMPLETE}
        assert {t.number for t in complete} <= after, "a completed trial was lost"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(10)
