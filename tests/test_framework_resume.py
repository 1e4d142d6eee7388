"""Kill the tuner with SIGKILL in the middle of a trial, resume it, and check that nothing was lost or double counted.

The command is ``python -m autotune run fault_injection ...`` in a subprocess (see ``fault_kernel.CLI_WITH_PRESET``
for why the CPU preset is pointed at the test preset). Its space holds only the ``ok``/``ok2`` modes, and every
launch sleeps ``DELAY_MS``, so a trial lasts about a second: long enough to be caught RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.tuning import study as study_mod
from autotune.tuning.space import config_json
from tests import fault_kernel as fk

REPO = Path(__file__).resolve().parent.parent
TRIALS = 6
DELAY_MS = 100
RUN_LIMIT_S = 150


def _measured(trials) -> list:
    return [t for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.FAIL) and "duplicate_of" not in t.user_attrs]


class Tuner:
    """The same ``run`` command, started as often as a test likes; every process group is killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.preset = fk.write_preset(tmp / "resume.toml", M=(64,), faults=0, delay_ms=DELAY_MS, trials=TRIALS)
        self.storage = f"sqlite:///{tmp / 's.db'}"
        self.table = tmp / "t.json"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, **fk.PLUGIN_ENV, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
        self.argv = [sys.executable, "-c", fk.CLI_WITH_PRESET, str(self.preset),
                     "run", fk.NAME, "--preset", str(self.preset), "--storage", self.storage,
                     "--table", str(self.table), "--trials", str(TRIALS), "--finalists", "1",
                     "--trial-timeout", "60", "--seed", "3"]

    def start(self, index: int) -> subprocess.Popen:
        out = open(self.tmp / f"run{index}.out", "w")  # noqa: SIM115 - files, not pipes: nothing can block
        err = open(self.tmp / f"run{index}.err", "w")  # noqa: SIM115
        proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out, stderr=err, start_new_session=True)
        out.close()
        err.close()
        self.procs.append(proc)
        return proc

    def finish(self, index: int) -> tuple[int, str, str, float]:
        start = time.monotonic()
        proc = self.start(index)
        try:
            code = proc.wait(RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {index} did not finish within {RUN_LIMIT_S} s: {self.read(index)[1][-2000:]}")
        return code, *self.read(index), time.monotonic() - start

    def read(self, index: int) -> tuple[str, str]:
        return (self.tmp / f"run{index}.out").read_text(), (self.tmp / f"run{index}.err").read_text()

    def study(self):
        names = optuna.get_all_study_names(storage=self.storage)
        assert len(names) == 1, names
        return optuna.load_study(study_name=names[0], storage=self.storage)

    def cleanup(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the tuner's session: its orphaned worker too
            except (ProcessLookupError, PermissionError):
                pass
            if proc.returncode is None:
                proc.wait(10)


def _trials_or_none(tuner: Tuner):
    try:
        return tuner.study().get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - the study may not exist yet (or be mid-creation)
        return None


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Run 1 killed mid-trial, run 2 to completion, run 3 again; returns what each left behind."""
    tuner = Tuner(tmp_path_factory.mktemp("resume"))
    try:
        first = tuner.start(1)
        deadline = time.monotonic() + RUN_LIMIT_S
        victim = None
        while time.monotonic() < deadline and first.poll() is None:
            trials = _trials_or_none(tuner)
            if trials is not None:
                complete = [t for t in trials if t.state == TrialState.COMPLETE]
                done = {t.user_attrs.get("config_hash") for t in complete}
                # claimed, and a config that will really be measured (not answered as a repeat within milliseconds)
                running = [t for t in trials if t.state == TrialState.RUNNING and "config_hash" in t.user_attrs
                           and t.user_attrs["config_hash"] not in done]
                # kill early in a trial (a trial lasts ~1 s) so that it is still the one running at the kill
                if (len(complete) >= 2 and running
                        and datetime.now() - running[0].datetime_start < timedelta(seconds=0.4)):
                    victim = running[0].number
                    first.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.05)
        first.wait(30)
        assert victim is not None, f"run 1 ended (code {first.returncode}) before it could be killed: {tuner.read(1)}"
        assert first.returncode == -signal.SIGKILL

        after_kill = tuner.study().get_trials(deepcopy=True)
        second = tuner.finish(2)
        after_second = tuner.study().get_trials(deepcopy=True)
        finalists_at = tuner.study().user_attrs.get("finalists_at")
        third = tuner.finish(3)
        after_third = tuner.study().get_trials(deepcopy=True)
        yield {"victim": victim, "after_kill": after_kill, "second": second, "after_second": after_second,
               "finalists_at": finalists_at, "third": third, "after_third": after_third, "tuner": tuner}
    finally:
        tuner.cleanup()


def test_kill_left_one_running_trial(resumed):
    running = [t for t in resumed["after_kill"] if t.state == TrialState.RUNNING]
    assert [t.number for t in running] == [resumed["victim"]]
    assert running[0].user_attrs["pid"] != os.getpid()
    assert len([t for t in resumed["after_kill"] if t.state == TrialState.COMPLETE]) >= 2


def test_second_run_succeeds_and_reports_recovery(resumed):
    code, out, err, _ = resumed["second"]
    assert code == 0, err
    assert "Traceback" not in err
    assert f"re-queued 1 trial(s) interrupted by a killed run [{resumed['victim']}]" in err


def test_completed_trials_survive(resumed):
    before = {t.number: t.value for t in resumed["after_kill"] if t.state == TrialState.COMPLETE}
    after = {t.number: (t.state, t.value) for t in resumed["after_second"]}
    for number, value in before.items():
        assert after[number] == (TrialState.COMPLETE, value)


def test_no_trial_left_running_or_waiting(resumed):
    for key in ("after_second", "after_third"):
        states = {t.state for t in resumed[key]}
        assert TrialState.RUNNING not in states and TrialState.WAITING not in states, key


def test_interrupted_trial_failed_and_requeued(resumed):
    victim = resumed["victim"]
    trials = {t.number: t for t in resumed["after_second"]}
    interrupted = trials[victim]
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["kind"] == "interrupted"
    assert interrupted.user_attrs["error"].strip()
    requeued = [t for t in trials.values() if t.user_attrs.get("requeued_from") == victim]
    assert len(requeued) == 1
    again = requeued[0]
    assert again.number > victim
    assert again.user_attrs["source"] == "requeued"
    assert again.state == TrialState.COMPLETE
    assert again.user_attrs["kind"] == "ok" and "median_us" in again.user_attrs
    assert "duplicate_of" not in again.user_attrs
    assert again.user_attrs["config"] == interrupted.user_attrs["config"]


def test_interrupted_trial_does_not_consume_budget(resumed):
    really = [t for t in _measured(resumed["after_second"]) if t.user_attrs.get("kind") != "interrupted"]
    assert len(really) == TRIALS


def test_third_run_does_nothing(resumed):
    code, out, err, elapsed = resumed["third"]
    assert code == 0, err
    before = [(t.number, t.state, t.value) for t in resumed["after_second"]]
    after = [(t.number, t.state, t.value) for t in resumed["after_third"]]
    assert after == before
    assert "0 measured, 0 pruned, 0 failed trials this run" in out
    assert "re-queued" not in err
    assert resumed["tuner"].study().user_attrs.get("finalists_at") == resumed["finalists_at"]  # not re-timed
    assert elapsed < 30


# ---------------------------------------------------------------------------------------------------- unit level


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def unit_study():
    space = fk.space("only", {"M": 64, "faults": 0}, None)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))

    def running(config, **owner):
        trial = study.ask()
        config = space.suggest(trial) if config is None else config
        study_mod.claim(trial, config)
        for key, value in owner.items():
            trial.set_user_attr(key, value)
        return trial

    return study, space, running


HOUR = timedelta(hours=1)


def test_recover_interrupted_dead_pid(unit_study):
    study, space, running = unit_study
    trial = running(None, pid=_dead_pid())
    params, config = dict(trial.params), trial.user_attrs["config"]
    assert study_mod.recover_interrupted(study, HOUR) == [trial.number]
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["kind"] == "interrupted" and frozen.user_attrs["error"]
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == params
    assert waiting[0].user_attrs == {"source": "requeued", "requeued_from": trial.number}
    # asking again gives the same config, marked as re-queued
    again = study.ask()
    assert config_json(space.suggest(again)) == config
    assert again.user_attrs["source"] == "requeued"
    assert study_mod.recover_interrupted(study, HOUR) == []  # the asking process (this one) is alive


def test_recover_interrupted_leaves_live_and_foreign_trials(unit_study):
    study, _, running = unit_study
    live = running(None)  # claimed by this (live) process
    foreign = running(None, host="some-other-host", pid=_dead_pid())
    assert study_mod.recover_interrupted(study, HOUR) == []
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[live.number] == states[foreign.number] == TrialState.RUNNING


def test_recover_interrupted_stale_on_any_host(unit_study):
    study, _, running = unit_study
    foreign = running(None, host="some-other-host", pid=_dead_pid())
    live = running(None)  # this live process: stale by age all the same
    time.sleep(0.02)
    assert study_mod.recover_interrupted(study, timedelta(milliseconds=10)) == [foreign.number, live.number]
    assert len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) == 2  # both configs re-queued


def test_recover_interrupted_ownerless(unit_study, monkeypatch):
    study, _, _ = unit_study
    trial = study.ask()  # never claimed: no host, pid or config
    assert study_mod.recover_interrupted(study, HOUR) == []  # started less than NO_OWNER_GRACE ago
    monkeypatch.setattr(study_mod, "NO_OWNER_GRACE", timedelta(0))
    time.sleep(0.01)
    assert study_mod.recover_interrupted(study, HOUR) == [trial.number]
    assert study.get_trials(deepcopy=False)[trial.number].state == TrialState.FAIL
    assert not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # no config: nothing to re-queue


# ---------------------------------------------------------------------------------------------------- orphans


def _session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(stat.parent.name))
    return members


def test_worker_does_not_outlive_killed_tuner(tmp_path):
    tuner = Tuner(tmp_path)
    tuner.argv = [*tuner.argv[:3], str(fk.write_preset(tmp_path / "hang.toml", faults=1, trials=2)),
                  *tuner.argv[4:], "--enqueue", '{"mode": "hang"}']
    tuner.argv[tuner.argv.index("--preset") + 1] = tuner.argv[3]
    try:
        proc = tuner.start(1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            trials = _trials_or_none(tuner) or []
            if any(t.state == TrialState.RUNNING and t.user_attrs.get("config", "").find('"hang"') > 0
                   for t in trials):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the hang trial never started: {tuner.read(1)}")
        time.sleep(0.5)  # let the worker reach the hang
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(3)
        assert _session_members(proc.pid) == []
    finally:
        tuner.cleanup()
