"""Kill ``retune`` with SIGKILL in the middle of a trial and run the same command again: it continues (the killed
trial is failed as ``interrupted`` and queued again, completed trials are kept, every stale entry ends up replaced),
and a third run finds nothing stale.

The kernel is the synthetic ``fault_injection`` (``tests/fault_kernel.py``; only its ``ok`` modes, each launch
sleeping ``DELAY_MS``), so a trial lasts about a second: long enough to be caught RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.tuning.outcomes import Kind
from tests import fault_kernel as fk

REPO = Path(__file__).resolve().parent.parent
DELAY_MS = 100
LIMIT_S = 240
DEVICE = "triton-interpreter"

pytestmark = pytest.mark.slow


class Cli:
    """``python -m autotune ...`` with the fault kernel registered and its preset as the CPU preset."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.preset = fk.write_preset(tmp / "p.toml", M=(16, 64), faults=0, delay_ms=DELAY_MS, trials=2)
        self.storage = f"sqlite:///{tmp / 's.db'}"
        self.table = tmp / "t.json"
        self.env = {**os.environ, **fk.PLUGIN_ENV, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        argv = [sys.executable, "-c", fk.CLI_WITH_PRESET, str(self.preset), *args, "--storage", self.storage,
                "--table", str(self.table), "--seed", "3"]
        with open(self.tmp / f"{name}.out", "w") as out, open(self.tmp / f"{name}.err", "w") as err:
            proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=out, stderr=err, start_new_session=True)
        self.procs.append(proc)
        return proc

    def finish(self, name: str, *args: str) -> tuple[int, str, str]:
        proc = self.start(name, *args)
        try:
            code = proc.wait(LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not finish within {LIMIT_S} s")
        return code, (self.tmp / f"{name}.out").read_text(), (self.tmp / f"{name}.err").read_text()

    def cleanup(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the command's session: its orphaned worker too
            except (ProcessLookupError, PermissionError):
                pass
            if proc.returncode is None:
                proc.wait(10)


def _retune_studies(storage: str) -> list:
    try:
        names = optuna.get_all_study_names(storage=storage)
    except Exception:  # noqa: BLE001 - the storage may be mid-creation
        return []
    return [optuna.load_study(study_name=n, storage=storage) for n in sorted(names) if ".f" in n.rsplit(".s", 1)[-1]]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    cli = Cli(tmp_path_factory.mktemp("retune_resume"))
    try:
        code, _, err = cli.finish("run", "run", fk.NAME, "--finalists", "1")
        assert code == 0, err
        doc = json.loads(cli.table.read_text())
        entries = doc["devices"][DEVICE]["entries"]
        assert len(entries) == 2
        for entry in entries.values():
            entry["fingerprint"]["triton"] = "3.0.0"
        cli.table.write_text(json.dumps(doc))
        stale = json.loads(cli.table.read_text())["devices"][DEVICE]["entries"]

        args = ("retune", fk.NAME, "--trials", "4", "--finalists", "1")
        first = cli.start("retune1", *args)
        deadline = time.monotonic() + LIMIT_S
        victim = None
        while time.monotonic() < deadline and first.poll() is None:
            studies = _retune_studies(cli.storage)
            if studies:
                trials = studies[0].get_trials(deepcopy=False)
                complete = [t for t in trials if t.state == TrialState.COMPLETE]
                running = [t for t in trials if t.state == TrialState.RUNNING and "config_hash" in t.user_attrs
                           and t.user_attrs["config_hash"] not in {c.user_attrs.get("config_hash") for c in complete}]
                if complete and running:
                    victim = (studies[0].study_name, running[0].number)
                    os.killpg(first.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
        first.wait(30)
        assert victim is not None, f"retune ended (code {first.returncode}) before it could be killed"
        after_kill = json.loads(cli.table.read_text())["devices"][DEVICE]["entries"]
        second = cli.finish("retune2", *args)
        after_second = json.loads(cli.table.read_text())["devices"][DEVICE]["entries"]
        third = cli.finish("retune3", *args)
        yield {"cli": cli, "victim": victim, "stale": stale, "after_kill": after_kill, "second": second,
               "after_second": after_second, "third": third}
    finally:
        cli.cleanup()


def test_the_kill_replaced_nothing_yet(resumed):
    assert resumed["after_kill"] == resumed["stale"]


def test_second_run_continues_and_replaces_every_stale_entry(resumed):
    code, out, err = resumed["second"]
    assert code == 0, err
    assert "2 stale entries to re-tune" in err
    after = resumed["after_second"]
    assert set(after) == set(resumed["stale"])
    assert all(e["fingerprint"]["triton"] != "3.0.0" for e in after.values())
    assert out.count("| replaced |") == 2 and "2 entries re-tuned" in out


def test_killed_trial_failed_as_interrupted_and_queued_again(resumed):
    name, number = resumed["victim"]
    study = optuna.load_study(study_name=name, storage=resumed["cli"].storage)
    trials = study.get_trials(deepcopy=False)
    killed = next(t for t in trials if t.number == number)
    assert killed.state == TrialState.FAIL and killed.user_attrs["kind"] == Kind.INTERRUPTED.value
    again = [t for t in trials if t.user_attrs.get("requeued_from") == number]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].user_attrs["config_hash"] == killed.user_attrs["config_hash"]
    assert [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)] == []


def test_one_study_per_entry_and_none_resumed_from_the_old_software(resumed):
    studies = _retune_studies(resumed["cli"].storage)
    assert len(studies) == 2
    for study in studies:
        assert study.user_attrs["old_winner"]["fingerprint"]["triton"] == "3.0.0"
        assert [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("enqueued_from") == "old_winner"] \
            or study.user_attrs["old_winner"]["config"] == json.loads(
                next(t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("source") == "default")
                .user_attrs["config"])


def test_third_run_finds_nothing_stale(resumed):
    code, out, err = resumed["third"]
    assert code == 0, err
    assert "nothing stale to re-tune" in out
    assert json.loads(resumed["cli"].table.read_text())["devices"][DEVICE]["entries"] == resumed["after_second"]
