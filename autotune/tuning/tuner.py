"""The tuning loop of one study: ask, prune, evaluate on the workers, tell; then re-time the finalists.

A trial's path: ``study.ask()`` → the search space turns it into a config (:meth:`SearchSpace.suggest`) → the
constraints may prune it with a reason (no compile) → a config already measured in this study is answered from the
earlier trial → otherwise a worker compiles, checks and times it → :func:`autotune.tuning.study.record_result`. The budget
(``n_trials``) counts measured trials (COMPLETE or FAIL) across runs, so a resumed study runs only what is missing.
After the loop the best few configs and the default config are re-timed together, interleaved, with longer
repetitions, and re-checked on fresh inputs: timing noise picks different winners run to run otherwise
(Megatron-LM#6966, helion#2377).
"""

from __future__ import annotations

import queue
import statistics
import time
import zlib
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from autotune.tuning import study as study_mod
from autotune.tuning.outcomes import UNCOUNTED, Kind
from autotune.tuning.records import ENTRY_METRICS, Job, Result
from autotune.tuning.space import Config, SearchSpace, config_hash

COMPILE_AHEAD = 2
"""Trials per evaluation worker compiled ahead of it (H100, 2026-11-21: compile ~1 s, check + time ~1 s)."""

MAX_ASKS_PER_TRIAL = 20
"""Give up asking after this many asks per budgeted trial (pruned and duplicate configs cost asks, not budget)."""


@dataclass(frozen=True)
class TuneSettings:
    """Knobs of one tuning run (defaults live in :mod:`autotune.cli`, nowhere else).

    Attributes:
        n_trials: measured trials per study (COMPLETE + FAIL, across runs).
        timeout_s: wall-clock limit per study for new trials (None: none).
        trial_timeout_s: limit for one compile + check + time.
        dtype: activation dtype name.
        rep_ms: timed milliseconds per trial measurement.
        finalists: best configs re-timed at the end (0 disables re-timing).
        final_rep_ms: timed milliseconds per finalist per round.
        final_rounds: interleaved re-timing rounds.
        seed: sampler seed (combined with the study name).
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


def study_seed(seed: int, name: str) -> int:
    """Per-study sampler seed: reproducible, different between studies."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def measured_count(study) -> int:
    """Trials that used budget: measured (COMPLETE or FAIL), not repeats, not interrupted by a killed run."""
    from optuna.trial import TrialState

    uncounted = {kind.value for kind in UNCOUNTED}
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
               if "duplicate_of" not in t.user_attrs and t.user_attrs.get("kind") not in uncounted)


def _has_queued(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _completed_by_hash(study) -> dict[str, Any]:
    from optuna.trial import TrialState

    out = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "duplicate_of" not in trial.user_attrs:
            out.setdefault(trial.user_attrs.get("config_hash"), trial)
    return out


def _job(key, config: Config, settings: TuneSettings, seed: int, **extra) -> Job:
    return Job(kernel=key.kernel, variant=key.variant, shape=key.shape_dict, config=config, dtype=settings.dtype,
               seed=seed, **{"rep_ms": settings.rep_ms, **extra})


def _evaluate_pipeline(job: Job, timeout_s: float, compilers: queue.Queue | None,
                       evaluators: queue.Queue, report: StudyReport) -> Result:
    """Compile on a free compile worker (if any), then evaluate on a free evaluation worker."""
    if compilers is not None:
        compiler = compilers.get()
        try:
            ahead = compiler.evaluate(job.with_(compile_only=True), timeout_s)
            report.precompiled.append(ahead.kind.value)  # a failure resurfaces, classified, in the evaluation
        finally:
            compilers.put(compiler)
    worker = evaluators.get()
    try:
        return worker.evaluate(job, timeout_s)
    finally:
        evaluators.put(worker)


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
               on_trial=None, compilers=()) -> None:
    """Ask/evaluate/tell until the budget, the timeout or the ask limit is reached; queued configs always run.

    Up to ``len(workers) · (1 + COMPILE_AHEAD)`` trials are in flight: each is compiled by a free compile worker,
    then checked and timed by a free evaluation worker.

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
    """
    deadline = time.monotonic() + settings.timeout_s if settings.timeout_s else None
    completed = _completed_by_hash(study)
    measured = measured_count(study)
    asks = 0
    pending: dict = {}
    shape = key.shape_dict
    evaluators = _idle_queue(workers)
    compile_queue = _idle_queue(compilers) if compilers else None
    # Compiling ~COMPILE_AHEAD trials per GPU ahead keeps the GPU busy; a deeper queue only delays the stop at the
    # study's deadline (every trial in flight then still runs) and feeds the sampler staler information.
    max_in_flight = len(workers) + min(len(compilers), COMPILE_AHEAD * len(workers))

    def may_ask() -> bool:
        # Queued configs (default, --enqueue, re-queued after a kill) run even past the budget: they were asked for.
        within_budget = measured + len(pending) < settings.n_trials or _has_queued(study)
        return (within_budget and asks < MAX_ASKS_PER_TRIAL * settings.n_trials
                and (deadline is None or time.monotonic() < deadline))

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="trial") as executor, \
            _interrupt_on_stop([*workers, *compilers]):
        while True:
            while len(pending) < max_in_flight and may_ask():
                asks += 1
                trial = study.ask()
                config = space.suggest(trial)
                study_mod.claim(trial, config)
                reason = space.check(config, shape, device)
                if reason:
                    finished = study_mod.record_pruned(study, trial, reason)
                    report.pruned += 1
                elif config_hash(config) in completed:
                    finished = study_mod.record_duplicate(study, trial, completed[config_hash(config)])
                    report.duplicates += 1
                else:
                    job = _job(key, config, settings, seed=study_seed(settings.seed, key.name) + trial.number)
                    future = executor.submit(_evaluate_pipeline, job, settings.trial_timeout_s, compile_queue,
                                             evaluators, report)
                    pending[future] = trial
                    continue
                if on_trial:
                    on_trial(finished)
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                trial = pending.pop(future)
                finished = study_mod.record_result(study, trial, future.result())
                measured += 1
                if finished.user_attrs.get("kind") == Kind.OK.value:
                    report.measured += 1
                    completed.setdefault(finished.user_attrs["config_hash"], finished)
                else:
                    report.failed += 1
                if on_trial:
                    on_trial(finished)


def _finalist_candidates(study, count: int) -> list[Any]:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if "duplicate_of" not in t.user_attrs]
    trials.sort(key=lambda t: t.value)
    chosen = trials[:count]
    default = next((t for t in trials if t.user_attrs.get("source") == "default"), None)
    if default is not None and default not in chosen:
        chosen.append(default)
    return chosen


def retime_finalists(study, key, worker, settings: TuneSettings, fingerprint: dict[str, Any]) -> list[dict]:
    """Re-check and re-time the best configs and the default, interleaved, and store them on the study.

    Each candidate is checked once more on fresh inputs (a config that only passed by luck is dropped with its
    reason) and timed ``final_rounds`` times in round-robin order with ``final_rep_ms``; its figure is the median of
    its rounds.

    Returns:
        Finalist records sorted by re-timed median (``trial, config, median_us, rounds_us, is_default`` and the
        throughput figures), also stored via :func:`autotune.tuning.study.set_finalists`.
    """
    candidates = _finalist_candidates(study, settings.finalists)
    rounds: dict[int, list[dict]] = {t.number: [] for t in candidates}
    rejected: dict[int, str] = {}
    for round_index in range(settings.final_rounds):
        for trial in candidates:
            if trial.number in rejected:
                continue
            job = _job(key, study_mod.config_of(trial), settings,
                       seed=study_seed(settings.seed, key.name) + 100_000 * (round_index + 1) + trial.number,
                       check=round_index == 0, rep_ms=settings.final_rep_ms)
            result = worker.evaluate(job, settings.trial_timeout_s)
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


def _last_measured_number(study) -> int:
    from optuna.trial import TrialState

    numbers = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))]
    return max(numbers, default=-1)


def finalists_current(study, fingerprint: dict[str, Any]) -> bool:
    """Whether the stored finalists were measured under ``fingerprint`` after the last measured trial."""
    attrs = study.user_attrs
    return (attrs.get("finalists_fingerprint") == fingerprint
            and attrs.get("finalists_after_trial") == _last_measured_number(study))
