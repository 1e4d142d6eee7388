"""The tuning loop of one study: ask, prune, evaluate on the workers, tell; then re-time the finalists.

A trial's path: ``study.ask()`` → the search space turns it into a config (:meth:`SearchSpace.suggest`) → the
constraints may prune it with a reason (no compile) → a config already measured in this study is answered from the
earlier trial (one that failed is not tried again) → otherwise a worker compiles, checks and times it →
:func:`autotune.tuning.study.record_result`. The budget (``n_trials``) counts measured COMPLETE trials in the storage
(:mod:`autotune.tuning.budget`), so a resumed study runs only what is missing and two runs on one storage share it.
After the loop the best few configs and the default config are re-timed together, interleaved, with longer
repetitions, and re-checked on fresh inputs: timing noise picks different winners run to run otherwise
(Megatron-LM#6966, helion#2377).
"""

from __future__ import annotations

import contextlib
import queue
import statistics
import time
import zlib
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from autotune.errors import ClusterError
from autotune.tuning import local_moves
from autotune.tuning import study as study_mod
from autotune.tuning.budget import Budget, StopReason, StudyCounts, completed_count
from autotune.tuning.outcomes import Kind
from autotune.tuning.records import ENTRY_METRICS, Job, Result
from autotune.tuning.space import Config, SearchSpace, config_hash, enumerate_configs

COMPILE_AHEAD = 2
"""Trials per evaluation worker compiled ahead of it (H100, 2026-11-21: compile ~1 s, check + time ~1 s)."""

EXHAUSTIVE_LIMIT = 200_000
"""Spaces with at most this many configs (before conditions) are listed, so that a study can end as exhausted."""

OTHERS_POLL_S = 0.5
"""Poll interval while the rest of a study's budget is being measured by another process."""


@dataclass(frozen=True)
class TuneSettings:
    """Knobs of one tuning run (defaults live in :mod:`autotune.cli`, nowhere else).

    Attributes:
        n_trials: measured trials per study (COMPLETE, not repeats, across runs and processes on one storage).
        timeout_s: wall-clock limit per study for new trials (None: no time limit).
        trial_timeout_s: limit for one compile + check + time.
        dtype: activation dtype name.
        rep_ms: timed milliseconds per trial measurement.
        finalists: best configs re-timed at the end (0 disables re-timing).
        final_rep_ms: timed milliseconds per finalist per round.
        final_rounds: interleaved re-timing rounds.
        seed: sampler seed (combined with the study name).
        incumbent_moves: queue one-parameter moves of the best config so far before the sampler's proposals, for
            up to half the budget (:mod:`autotune.tuning.local_moves`).
    """

    n_trials: int
    timeout_s: float | None
    trial_timeout_s: float
    dtype: str
    rep_ms: float
    finalists: int
    final_rep_ms: float
    final_rounds: int
    seed: int
    incumbent_moves: bool = True


@dataclass
class StudyReport:
    """What one study run did."""

    name: str
    measured: int = 0
    pruned: int = 0
    failed: int = 0
    duplicates: int = 0
    recovered: list[int] = field(default_factory=list)
    precompiled: list[str] = field(default_factory=list)
    best_us: float | None = None
    default_us: float | None = None
    finalists: list[dict[str, Any]] = field(default_factory=list)
    lost: int = 0
    places: set[tuple[str, Any]] = field(default_factory=set)
    stop_reason: str = ""


def study_seed(seed: int, name: str) -> int:
    """Per-study sampler seed: reproducible, different between studies."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def measured_count(study) -> int:
    """Trials that used budget: measured COMPLETE trials, not repeats (see :mod:`autotune.tuning.budget`)."""
    return completed_count(study)


def _job(key, config: Config, settings: TuneSettings, seed: int, **extra) -> Job:
    return Job(kernel=key.kernel, variant=key.variant, shape=key.shape_dict, config=config, dtype=settings.dtype,
               seed=seed, **{"rep_ms": settings.rep_ms, **extra})


def _evaluate_pipeline(job: Job, timeout_s: float, compilers: queue.Queue | None,
                       evaluators: queue.Queue, workers, report: StudyReport) -> Result:
    """Compile on a free compile worker (if any), then evaluate on a free evaluation worker.

    A worker that comes back ``retired`` (its machine left the Ray cluster) is not put back; when the last one
    retires, a None left in the queue tells every waiting trial that no worker is left.

    Raises:
        ClusterError: no evaluation worker is left.
    """
    ahead = None
    if compilers is not None:
        compiler = compilers.get()
        try:
            ahead = compiler.evaluate(job.with_(compile_only=True), timeout_s)
            report.precompiled.append(ahead.kind.value)  # a failure resurfaces, classified, in the evaluation
        finally:
            compilers.put(compiler)
    worker = evaluators.get()
    if worker is None:
        evaluators.put(None)
        raise ClusterError("every evaluation worker is gone (their Ray nodes left the cluster); the storage is "
                           "resumable: rerun the same command when GPUs are back")
    try:
        result = worker.evaluate(job, timeout_s)
    finally:
        if not worker.retired:
            evaluators.put(worker)
        elif all(other.retired for other in workers):
            evaluators.put(None)
    if ahead is not None and ahead.output and not result.output:  # the compiler spoke in the compile worker
        result = replace(result, output=ahead.output)
    return result


def _idle_queue(workers) -> queue.Queue:
    idle: queue.Queue = queue.Queue()
    for worker in workers:
        idle.put(worker)
    return idle


@contextmanager
def _interrupt_on_stop(workers):
    """On Ctrl-C or SIGTERM (a KeyboardInterrupt in this thread), end the workers at once so that the trials in flight
    return instead of running to their timeout; they stay RUNNING in the storage, and the next run fails them as
    ``interrupted`` and queues their configs again (:func:`autotune.tuning.study.recover_interrupted`)."""
    try:
        yield
    except KeyboardInterrupt:
        for worker in workers:
            worker.interrupt()
        raise


def run_trials(study, key, space: SearchSpace, device, workers, settings: TuneSettings, report: StudyReport,
               on_trial=None, compilers=(), log=None, fingerprint_id: str | None = None,
               lock=contextlib.nullcontext) -> None:
    """Ask/evaluate/tell until the budget is spent, the time limit passes, the space is exhausted or the ask cap is
    reached (:class:`autotune.tuning.budget.Budget`); queued configs always run. Sets ``report.stop_reason``.

    Up to ``len(workers) · (1 + COMPILE_AHEAD)`` trials are in flight: each is compiled by a free compile worker,
    then checked and timed by a free evaluation worker. Before dispatch, a config that this study already measured is
    answered from that trial, one that already failed or is being measured by another trial (another ``run`` on
    the same storage, say) is pruned as a repeat; neither costs budget.

    Args:
        study: the ``optuna.Study``.
        key: its :class:`autotune.tuning.study.StudyKey`.
        space: the search space at this shape and device.
        device: the :class:`autotune.device.DeviceProfile` the constraints read.
        workers: evaluation :class:`autotune.tuning.worker.Worker` objects (one trial on each at a time).
        settings: the run's settings.
        report: updated in place.
        on_trial: called with each finished ``FrozenTrial`` (progress display).
        compilers: compile-only workers.
        log: called with ``(trial number, Result)`` for every result that carries worker output (compiler noise).
        fingerprint_id: stored on each trial; only trials measured under it answer a repeated config.
        lock: a context-manager factory held while the budget is checked and a trial asked and claimed
            (:func:`autotune.tuning.storage.storage_lock` when other processes may share the storage).
    """
    configs = enumerate_configs(space.params, EXHAUSTIVE_LIMIT)
    budget = Budget(settings.n_trials, settings.timeout_s,
                    space_configs=None if configs is None else len({config_hash(c) for c in configs}))
    pending: dict = {}
    shape = key.shape_dict
    evaluators = _idle_queue(workers)
    compile_queue = _idle_queue(compilers) if compilers else None
    # Compiling ~COMPILE_AHEAD trials per GPU ahead keeps the GPU busy; a deeper queue only delays the stop at the
    # study's deadline (every trial in flight then still runs) and feeds the sampler staler information.
    max_in_flight = len(workers) + min(len(compilers), COMPILE_AHEAD * len(workers))
    stale_after = timedelta(seconds=3 * settings.trial_timeout_s + 60)
    climber = local_moves.IncumbentMoves(
        space, shape, device, local_moves.move_budget(settings.n_trials) if settings.incumbent_moves else 0)

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="trial") as executor, \
            _interrupt_on_stop([*workers, *compilers]):
        while True:
            counts = StudyCounts.read(study)
            reason = budget.blocker(counts)
            while len(pending) < max_in_flight and reason is None:
                with lock():  # check and ask as one step: another run on the storage cannot ask in between
                    counts = StudyCounts.read(study)
                    reason = budget.blocker(counts)
                    if reason is not None:
                        break
                    budget.asks += 1
                    climber.before_ask(study)
                    trial = study.ask()
                    config = space.suggest(trial)
                    study_mod.claim(trial, config)
                    if fingerprint_id:
                        trial.set_user_attr("fingerprint_id", fingerprint_id)
                finished = _answer_without_running(study, trial, config, space, shape, device, report, fingerprint_id)
                if finished is None:
                    job = _job(key, config, settings, seed=study_seed(settings.seed, key.name) + trial.number)
                    future = executor.submit(_evaluate_pipeline, job, settings.trial_timeout_s, compile_queue,
                                             evaluators, workers, report)
                    pending[future] = trial
                elif on_trial:
                    on_trial(finished)
                counts = StudyCounts.read(study)
                reason = budget.blocker(counts)
            if not pending:
                if reason is StopReason.TRIALS and counts.completed < settings.n_trials:
                    # the budget is held by trials another process is running: wait for them (they may fail and free
                    # budget); trials of a process that died are failed and re-queued once stale
                    time.sleep(OTHERS_POLL_S)
                    study_mod.recover_interrupted(study, stale_after)
                    continue
                report.stop_reason = budget.describe(reason, counts)
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                trial = pending.pop(future)
                result = future.result()
                if log is not None and result.output:
                    log(trial.number, result)
                finished = study_mod.record_result(study, trial, result)
                if result.where:  # (node, device): a Ray node id or the host name; the Ray worker or the GPU
                    where = result.where
                    report.places.add((where.get("node_id") or where.get("node"), where.get("worker", where.get("gpu"))))
                if result.lost:  # the machine went away, not the config: no budget used, the config runs again
                    report.lost += 1
                    study_mod.requeue(study, finished)
                elif finished.user_attrs.get("kind") == Kind.OK.value:
                    report.measured += 1
                else:
                    report.failed += 1
                if on_trial:
                    on_trial(finished)


def _answer_without_running(study, trial, config: Config, space: SearchSpace, shape, device, report: StudyReport,
                            fingerprint_id: str | None):
    """Finish a just-claimed trial that needs no worker (constraint, or a config this study already has); returns the
    finished trial, or None when the config must be measured."""
    reason = space.check(config, shape, device)
    if reason:
        report.pruned += 1
        return study_mod.record_pruned(study, trial, reason)
    from optuna.trial import TrialState

    earlier = StudyCounts.read(study, fingerprint_id).first_by_hash.get(config_hash(config))
    if earlier is None or earlier.number == trial.number:
        return None
    report.duplicates += 1
    if earlier.state == TrialState.COMPLETE:
        return study_mod.record_duplicate(study, trial, earlier)
    what = "is being measured" if earlier.state == TrialState.RUNNING else f"failed ({earlier.user_attrs.get('kind')})"
    return study_mod.record_repeat(study, trial, earlier, f"same config as trial {earlier.number}, which {what}")


def _finalist_candidates(study, count: int, also: frozenset[str] = frozenset()) -> list[Any]:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if "duplicate_of" not in t.user_attrs]
    trials.sort(key=lambda t: t.value)
    chosen = trials[:count]
    extra = [t for t in trials if t.user_attrs.get("source") == "default" or t.user_attrs.get("config_hash") in also]
    chosen += [t for t in extra if t not in chosen]
    return chosen


def retime_finalists(study, key, workers, settings: TuneSettings, fingerprint: dict[str, Any],
                     also: frozenset[str] = frozenset()) -> list[dict]:
    """Re-check and re-time the best configs and the default, interleaved, and store them on the study.

    Each candidate is checked once more on fresh inputs (a config that only passed by luck is dropped with its
    reason) and timed ``final_rounds`` times in round-robin order with ``final_rep_ms``; its figure is the median of
    its rounds. Configs whose hash is in ``also`` (a re-tune's old winner) are re-timed with them. All of it runs on
    the first live worker of ``workers``; a measurement cut by a lost Ray node is repeated on the next live one.

    Returns:
        Finalist records sorted by re-timed median (``trial, config, median_us, rounds_us, is_default`` and the
        throughput figures), also stored via :func:`autotune.tuning.study.set_finalists`.
    """
    candidates = _finalist_candidates(study, settings.finalists, also)
    rounds: dict[int, list[dict]] = {t.number: [] for t in candidates}
    rejected: dict[int, str] = {}
    for round_index in range(settings.final_rounds):
        for trial in candidates:
            if trial.number in rejected:
                continue
            job = _job(key, study_mod.config_of(trial), settings,
                       seed=study_seed(settings.seed, key.name) + 100_000 * (round_index + 1) + trial.number,
                       check=round_index == 0, rep_ms=settings.final_rep_ms)
            result = _evaluate_on_live(workers, job, settings.trial_timeout_s)
            if not result.ok:
                rejected[trial.number] = f"{result.kind.value}: {result.error or ''}"[:500]
            else:
                rounds[trial.number].append(result)
    finalists = []
    for trial in candidates:
        if trial.number in rejected or not rounds[trial.number]:
            continue
        results = rounds[trial.number]
        median = statistics.median(r.median_us for r in results)
        best = min(results, key=lambda r: abs(r.median_us - median))
        finalists.append({
            "trial": trial.number, "config": study_mod.config_of(trial), "median_us": median,
            "rounds_us": [r.median_us for r in results], "is_default": trial.user_attrs.get("source") == "default",
            **{name: getattr(best, name) for name in ENTRY_METRICS}, "max_rel_err": results[0].max_rel_err,
        })
    finalists.sort(key=lambda f: f["median_us"])
    if rejected:
        study.set_user_attr("finalists_rejected", {str(k): v for k, v in rejected.items()})
    study_mod.set_finalists(study, finalists, fingerprint, after_trial=_last_measured_number(study))
    return finalists


def _evaluate_on_live(workers, job: Job, timeout_s: float) -> Result:
    """Evaluate on the first worker that is not retired, moving on while the result is ``lost``.

    Raises:
        ClusterError: every worker is retired.
    """
    for worker in workers:
        if worker.retired:
            continue
        result = worker.evaluate(job, timeout_s)
        if not result.lost:
            return result
    raise ClusterError("every evaluation worker is gone (their Ray nodes left the cluster) while re-timing the "
                       "finalists; rerun the same command when GPUs are back")


def _last_measured_number(study) -> int:
    from optuna.trial import TrialState

    numbers = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))]
    return max(numbers, default=-1)


def finalists_current(study, fingerprint: dict[str, Any]) -> bool:
    """Whether the stored finalists were measured under ``fingerprint`` after the last measured trial."""
    attrs = study.user_attrs
    return (attrs.get("finalists_fingerprint") == fingerprint
            and attrs.get("finalists_after_trial") == _last_measured_number(study))
