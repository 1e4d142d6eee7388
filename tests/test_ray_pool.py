"""``run --ray``: the tuner over Ray actors (autotune/tuning/ray_pool.py), on the CPU under the Triton interpreter.

Three levels:

* the tuner's handling of lost workers, with in-process fake workers (no Ray): a trial cut by a lost machine fails
  as ``lost``, its config runs again, the budget is not charged; no worker left is a :class:`ClusterError`;
* the command line: bad ``--ray`` values are one ``autotune: error:`` line and exit code 2; without ``--ray``
  nothing imports Ray;
* a real local multi-node cluster built with Ray's own ``ray.cluster_utils.Cluster`` (nodes of one CPU each, so
  that each node holds exactly one interpreter actor), driven by ``python -m autotune run --ray ADDRESS`` in a
  subprocess: the tiny preset over two nodes; a node removed mid-run; the driver killed with SIGKILL and resumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune import cli
from autotune.errors import ClusterError
from autotune.tuning import study as study_mod
from autotune.tuning.outcomes import Kind
from autotune.tuning.records import Result
from autotune.tuning.space import config_hash
from autotune.tuning.tuner import StudyReport, TuneSettings, measured_count, run_trials
from tests import fault_kernel as fk

REPO = Path(__file__).resolve().parent.parent
RUN_LIMIT_S = 240
OBJECT_STORE_BYTES = 100 * 2**20


# ------------------------------------------------------------------------------------ tuner level, fake workers


class FakeWorker:
    """Answers ``ok`` with a median derived from the config; with ``lose_first`` its first job comes back ``lost``
    (as a Ray proxy's does when its node leaves) and it retires."""

    def __init__(self, name: str, *, lose_first: bool = False) -> None:
        self.name = name
        self.lose_first = lose_first
        self.retired = False
        self.jobs: list[str] = []

    def evaluate(self, job, timeout_s):
        self.jobs.append(config_hash(job.config))
        where = {"node": self.name, "gpu": 0, "device_key": "fake-gpu"}
        if self.lose_first:
            self.lose_first = False
            self.retired = True
            time.sleep(0.05)
            return Result(kind=Kind.NODE_LOST, error=f"node {self.name} left", lost=True, where=where)
        time.sleep(0.01)
        return Result(kind=Kind.OK, phase="time", median_us=10.0 + int(config_hash(job.config)[:4], 16) / 65536,
                      where=where)


def _fake_setup(n_trials: int):
    shape = {"M": 64, "faults": 0, "delay_ms": 0}
    space = fk.space("only", shape, None)
    key = study_mod.StudyKey.of(fk.NAME, "only", shape, "fake-gpu", space.signature())
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
    study_mod.enqueue(study, space, space.default, source="default")
    settings = TuneSettings(n_trials=n_trials, timeout_s=None, trial_timeout_s=30, dtype="float32", rep_ms=1.0,
                            finalists=0, final_rep_ms=1.0, final_rounds=1, seed=0)
    return study, key, space, settings


def test_lost_trial_is_requeued_and_not_charged():
    study, key, space, settings = _fake_setup(n_trials=5)
    steady, doomed = FakeWorker("a"), FakeWorker("b", lose_first=True)
    report = StudyReport(name=key.name)
    run_trials(study, key, space, None, [steady, doomed], settings, report)

    trials = study.get_trials(deepcopy=False)
    lost = [t for t in trials if t.user_attrs.get("lost")]
    assert len(lost) == 1 and report.lost == 1
    assert lost[0].state == TrialState.FAIL
    assert lost[0].user_attrs["kind"] == "node_lost" and lost[0].user_attrs["node"] == "b"
    again = [t for t in trials if t.user_attrs.get("requeued_from") == lost[0].number]
    assert len(again) == 1
    assert again[0].state == TrialState.COMPLETE and again[0].user_attrs["source"] == "requeued"
    assert again[0].user_attrs["config"] == lost[0].user_attrs["config"]
    assert again[0].user_attrs["node"] == "a"
    assert doomed.jobs == [lost[0].user_attrs["config_hash"]]  # a retired worker gets no second job
    assert measured_count(study) == settings.n_trials  # the lost trial used no budget
    assert report.places == {("a", 0), ("b", 0)}
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))


def test_no_worker_left_is_a_cluster_error():
    study, key, space, settings = _fake_setup(n_trials=3)
    with pytest.raises(ClusterError, match="every evaluation worker is gone"):
        run_trials(study, key, space, None, [FakeWorker("only", lose_first=True)], settings,
                   StudyReport(name=key.name))
    lost = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("lost")]
    assert len(lost) == 1 and lost[0].state == TrialState.FAIL
    # its config was queued again and asked (the ask is still RUNNING, owned by this live process: a rerun
    # recovers it as interrupted and queues it once more); no budget was used
    assert [t.user_attrs.get("requeued_from") for t in study.get_trials(deepcopy=False)
            if t.number > lost[0].number] == [lost[0].number]
    assert measured_count(study) == 0


def test_group_by_device():
    from types import SimpleNamespace

    from autotune.tuning.ray_pool import group_by_device

    def worker(key):
        return SimpleNamespace(device=SimpleNamespace(key=key))

    workers = [worker("gb10"), worker("h100"), worker("gb10"), worker("a100"), worker("h100"), worker("gb10")]
    groups = group_by_device(workers)
    assert [[w.device.key for w in g] for g in groups] == [["gb10"] * 3, ["h100"] * 2, ["a100"]]
    assert groups[0] == [workers[0], workers[2], workers[5]]


# ------------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize(("argv", "needle"), [
    (["--ray", "nonsense"], "--ray wants local, auto or HOST:PORT"),
    (["--ray", "host:99999"], "--ray wants local, auto or HOST:PORT"),
    (["--ray", "local", "--ray-actors", "0"], "--ray-actors must be at least 1"),
    (["--ray-actors", "2"], "--ray-actors needs --ray ADDRESS"),
    (["--ray", "local", "--gpus", "0"], "with --ray use --ray-actors"),
    (["--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: nothing answers there"),
])
def test_bad_ray_flags(capsys, tmp_path, argv, needle):
    start = time.monotonic()
    code = cli.main(["run", "moe_gemm", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--table",
                     str(tmp_path / "t.json"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and err.count("autotune: error:") == 1 and "Traceback" not in err
    assert time.monotonic() - start < 30


def test_no_ray_import_without_flag(tmp_path):
    preset = fk.write_preset(tmp_path / "p.toml", faults=0, trials=2)
    code = ("import json, sys; import autotune.defaults as d; d.CPU_PRESET = sys.argv[1]; from autotune import cli; "
            "rc = cli.main(['run', 'fault_injection', '--storage', sys.argv[2], '--table', sys.argv[3], "
            "'--finalists', '0']); "
            "print(json.dumps({'rc': rc, 'ray': sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))}))")
    env = {**os.environ, **fk.PLUGIN_ENV, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(preset), f"sqlite:///{tmp_path / 's.db'}",
                           str(tmp_path / "t.json")], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=RUN_LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer == {"rc": 0, "ray": []}
    assert "1 device(s) on 1 node(s) took part" in proc.stdout


# ------------------------------------------------------------------------------ a local multi-node Ray cluster


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each (head + one worker node) on loopback; torn down at the end."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": OBJECT_STORE_BYTES})
    try:
        made.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
        made.wait_for_nodes()
        yield made
    finally:
        made.shutdown()


def _alive_node_ids(cluster) -> set[str]:
    return {node.node_id for node in cluster.list_all_nodes()}


class Driver:
    """``python -m autotune run ... --ray ADDRESS`` in its own session, outputs to files; killed at cleanup."""

    def __init__(self, tmp: Path, address: str, argv: list[str]) -> None:
        self.tmp = tmp
        self.storage = f"sqlite:///{tmp / 's.db'}"
        self.table = tmp / "t.json"
        self.argv = [*argv, "--storage", self.storage, "--table", str(self.table), "--ray", address]
        self.env = {**os.environ, **fk.PLUGIN_ENV, "TRITON_INTERPRET": "1"}
        self.procs: list[subprocess.Popen] = []

    def start(self, index: int) -> subprocess.Popen:
        with open(self.tmp / f"run{index}.out", "w") as out, open(self.tmp / f"run{index}.err", "w") as err:
            proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out, stderr=err,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, index: int) -> tuple[int, str, str]:
        try:
            code = proc.wait(RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {index} did not finish within {RUN_LIMIT_S} s: {self.read(index)[1][-3000:]}")
        return code, *self.read(index)

    def read(self, index: int) -> tuple[str, str]:
        return (self.tmp / f"run{index}.out").read_text(), (self.tmp / f"run{index}.err").read_text()

    def trials(self):
        try:
            names = optuna.get_all_study_names(storage=self.storage)
            return optuna.load_study(study_name=names[0], storage=self.storage).get_trials(deepcopy=True)
        except Exception:  # noqa: BLE001 - the storage or the study may not exist yet
            return []

    def study(self):
        names = optuna.get_all_study_names(storage=self.storage)
        assert len(names) == 1, names
        return optuna.load_study(study_name=names[0], storage=self.storage)

    def cleanup(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.returncode is None:
                proc.wait(10)


@pytest.fixture()
def driver_factory(tmp_path):
    made: list[Driver] = []

    def make(address: str, argv: list[str]) -> Driver:
        made.append(Driver(tmp_path, address, argv))
        return made[-1]

    yield make
    for driver in made:
        driver.cleanup()


def _fault_argv(tmp: Path, *, trials: int, delay_ms: int) -> list[str]:
    preset = fk.write_preset(tmp / "ray.toml", M=(64,), faults=0, delay_ms=delay_ms, trials=trials)
    return [sys.executable, "-c", fk.CLI_WITH_PRESET, str(preset), "run", fk.NAME, "--preset", str(preset),
            "--trials", str(trials), "--finalists", "1", "--trial-timeout", "60", "--seed", "3"]


def _measured(trials) -> list:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)
            and "duplicate_of" not in t.user_attrs and t.user_attrs.get("kind") != "interrupted"
            and not t.user_attrs.get("lost")]


@pytest.mark.slow
def test_tiny_preset_over_two_nodes(cluster, driver_factory):
    driver = driver_factory(cluster.address, [sys.executable, "-m", "autotune", "run", "moe_gemm", "--variants",
                                              "mlp1", "--shapes", "M=1", "--finalists", "1"])
    code, out, err = driver.wait(driver.start(1), 1)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    assert "ray: 2 interpreter actor(s) of triton-interpreter on 2 node(s)" in err
    assert "2 device(s) on 2 node(s) took part" in out
    study = driver.study()
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    measured = _measured(trials)
    summary = "\n".join(str((t.number, t.state.name, t.user_attrs.get("source"), t.user_attrs.get("kind"),
                               t.user_attrs.get("error"), t.params)) for t in trials)
    assert len(measured) == 4, summary  # the tiny preset's budget
    assert all(t.state == TrialState.COMPLETE for t in measured), [t.user_attrs.get("error") for t in measured]
    for trial in measured:
        assert trial.user_attrs["device_key"] == "triton-interpreter"
        assert trial.user_attrs["node"] and trial.user_attrs["worker"] in (0, 1)
    assert {t.user_attrs["node_id"] for t in measured} == _alive_node_ids(cluster)
    table = json.loads(driver.table.read_text())
    entries = json.dumps(table)
    assert "triton-interpreter" in entries and study.study_name in entries


@pytest.mark.slow
def test_node_removed_mid_run(cluster, driver_factory, tmp_path):
    extra = cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
    cluster.wait_for_nodes()
    trials_budget = 10
    driver = driver_factory(cluster.address, _fault_argv(tmp_path, trials=trials_budget, delay_ms=100))
    proc = driver.start(1)
    removed_at = None
    deadline = time.monotonic() + RUN_LIMIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        done_there = [t for t in driver.trials() if t.state == TrialState.COMPLETE
                      and t.user_attrs.get("node_id") == extra.node_id]
        if done_there:  # its actor works: take the node away while it holds its next trial
            before = {t.number: t.value for t in driver.trials() if t.state == TrialState.COMPLETE}
            cluster.remove_node(extra)
            removed_at = time.monotonic()
            break
        time.sleep(0.1)
    assert removed_at is not None, f"no trial ran on the extra node: {driver.read(1)}"
    code, out, err = driver.wait(proc, 1)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    trials = driver.study().get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    for number, value in before.items():  # no completed trial lost
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].value == value
    lost = [t for t in trials if t.user_attrs.get("lost")]
    assert lost, "the extra node's trial in flight was not reported lost"
    for trial in lost:
        assert trial.state == TrialState.FAIL and trial.user_attrs["kind"] == "node_lost"
        assert trial.user_attrs["node_id"] == extra.node_id and "left the Ray cluster" in trial.user_attrs["error"]
        again = [t for t in trials if t.user_attrs.get("requeued_from") == trial.number]
        assert len(again) == 1 and again[0].state == TrialState.COMPLETE
        assert again[0].user_attrs["node_id"] != extra.node_id
    assert len(_measured(trials)) == trials_budget
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert "3 device(s) on 3 node(s) took part" in out
    assert f"{len(lost)} trial(s) cut by a lost Ray actor or node" in out


@pytest.mark.slow
def test_driver_killed_and_resumed(cluster, driver_factory, tmp_path):
    trials_budget = 8
    driver = driver_factory(cluster.address, _fault_argv(tmp_path, trials=trials_budget, delay_ms=100))
    first = driver.start(1)
    deadline = time.monotonic() + RUN_LIMIT_S
    killed = False
    while time.monotonic() < deadline and first.poll() is None:
        trials = driver.trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        # kill while trials run on the actors, not in the milliseconds between an ask and its claim (an unclaimed
        # trial has no owner and is only recovered after NO_OWNER_GRACE, as without Ray)
        if len(complete) >= 2 and running and all("config_hash" in t.user_attrs for t in running):
            first.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    first.wait(30)
    assert killed, f"run 1 ended before it could be killed: {driver.read(1)}"
    after_kill = driver.trials()
    before = {t.number: t.value for t in after_kill if t.state == TrialState.COMPLETE}
    running = sorted(t.number for t in after_kill if t.state == TrialState.RUNNING and "config_hash" in t.user_attrs)
    ownerless = {t.number for t in after_kill if t.state == TrialState.RUNNING and "config_hash" not in t.user_attrs}
    assert running

    code, _out, err = driver.wait(driver.start(2), 2)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    match = re.search(r"re-queued (\d+) trial\(s\) interrupted by a killed run \[([\d, ]+)\]", err)
    assert match, err[-3000:]
    assert sorted(int(n) for n in match[2].split(",")) == running
    trials = driver.study().get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    for number, value in before.items():
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].value == value
    for number in running:
        assert by_number[number].user_attrs["kind"] == "interrupted"
        again = [t for t in trials if t.user_attrs.get("requeued_from") == number]
        assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert len(_measured(trials)) == trials_budget
    assert {t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)} <= ownerless
    assert json.loads(driver.table.read_text())  # the winner exported


@pytest.mark.slow
def test_actor_survives_a_crash_and_is_restarted_after_its_death(cluster):
    """One proxy driven from this process: a crashing kernel costs the child process only (``worker_died``, not
    ``lost``); the actor killed mid-trial gives a ``lost`` ``worker_died`` and is restarted on its node."""
    import threading

    import ray

    from autotune.tuning.ray_pool import RayWorker
    from autotune.tuning.records import Job

    def job(mode: str, delay_ms: int = 0) -> Job:
        return Job(kernel=fk.NAME, variant="only", shape={"M": 64, "faults": 1, "delay_ms": delay_ms},
                   config={"mode": mode, "BLOCK": 16, "UNROLL": 1}, dtype="float32", seed=1, rep_ms=5.0,
                   timed=False)

    ray.init(address=cluster.address, logging_level="WARNING")
    proxy = RayWorker(0, {"num_cpus": 1, "num_gpus": 0}, interpreter=True, start_timeout_s=120,
                      runtime_env={"env_vars": dict(fk.PLUGIN_ENV)})
    try:
        proxy.start()
        first_pid = proxy.info["pid"]
        crashed = proxy.evaluate(job("crash"), 60)
        assert crashed.kind is Kind.WORKER_DIED and not crashed.lost
        assert crashed.where["node_id"] == proxy.info["node_id"] and crashed.where["device_key"] == "triton-interpreter"
        assert proxy.evaluate(job("ok"), 60).ok  # same actor, fresh child process
        assert proxy.info["pid"] == first_pid

        answers = []
        thread = threading.Thread(target=lambda: answers.append(proxy.evaluate(job("ok", delay_ms=3000), 60)))
        thread.start()
        time.sleep(2.0)
        ray.kill(proxy.actor, no_restart=True)
        thread.join(180)
        assert answers and answers[0].lost and answers[0].kind is Kind.WORKER_DIED, answers
        assert "died mid-trial" in answers[0].error
        assert not proxy.retired and proxy.restarts == 1 and proxy.info["pid"] != first_pid
        assert proxy.evaluate(job("ok"), 60).ok
    finally:
        proxy.stop()
        ray.shutdown()
