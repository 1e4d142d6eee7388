"""``autotune run``: tune every study of a preset, exporting each winner to the table as soon as it is known.

Order of work: start the workers (they report the device) → for each (variant, shape) of the preset: open or resume
its study, fail and re-queue interrupted trials, queue the default config (trial 0 of a new study), the user's
configs and the warm start (old winners under a new fingerprint, neighbouring shapes' winners), run trials to the
budget, re-time the finalists → merge the winner into the table. Worker output (compiler diagnostics) goes to the
trials and to ``<storage>.worker.log`` beside a file storage, never to the terminal. A study already at its
budget whose finalists were measured under the current fingerprint is skipped, so re-running a finished command
costs seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from autotune.device import fingerprint as fingerprint_mod
from autotune.tuning import presets
from autotune import registry
from autotune.tuning import notes
from autotune.tuning import study as study_mod
from autotune.tuning.space import config_hash
from autotune.errors import ConfigError
from autotune.table.export import best_entry, entry_check
from autotune.tuning.pool import WorkerPool
from autotune.tuning.progress import StudyProgress
from autotune.tuning import warm_start
from autotune.tuning.capture import append_log
from autotune.tuning.storage import make_sampler, open_storage, storage_lock, worker_log_path
from autotune.table import TableEntry, update_table
from autotune.table.store import check_table_file
from autotune.tuning.tuner import StudyReport, TuneSettings, finalists_current, retime_finalists, run_trials, study_seed


@dataclass(frozen=True)
class RunRequest:
    """Everything ``autotune run`` was asked to do (built by the CLI from its flags and the preset)."""

    kernel: str
    kernel_preset: presets.KernelPreset
    variants: tuple[str, ...]
    storage_url: str
    sampler: str
    enqueue: tuple[dict[str, Any], ...]
    table: Path | None
    gpus: tuple[int, ...]
    interpreter: bool
    compile_workers: int
    settings: TuneSettings
    ray: Any = None  # autotune.tuning.ray_pool.RaySettings with --ray, else None (and Ray is never imported)
    warm_start: bool = True


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan_studies(request: RunRequest) -> list[tuple[str, dict[str, int]]]:
    """(variant, shape) of every study to run, in preset order."""
    spec = registry.get(request.kernel)
    return [(v, s) for v, s in presets.expand(request.kernel_preset, spec) if v in request.variants]


def _make_pool(request: RunRequest):
    """The local worker pool, or with ``--ray`` the Ray pool (imported only then)."""
    if request.ray is None:
        return WorkerPool(list(request.gpus), interpreter=request.interpreter, compile_workers=request.compile_workers)
    from autotune.tuning.ray_pool import RayPool

    return RayPool(request.ray, interpreter=request.interpreter, compile_workers=request.compile_workers)


def run(request: RunRequest) -> list[StudyReport]:
    """Tune each study, merging its winner into ``request.table`` as soon as it is done (unless None).

    Returns:
        One :class:`StudyReport` per study.

    Raises:
        UserError: bad storage URL, invalid ``--enqueue`` config; TableError (before any study runs) for a table path
            that cannot be read and replaced (see :func:`autotune.table.store.check_table_file`) or a corrupt table.
    """
    spec = registry.get(request.kernel)
    plan = plan_studies(request)
    if request.table is not None:  # a table that cannot be updated fails now, not after the first study
        check_table_file(request.table)
    storage = open_storage(request.storage_url)
    source_hash = spec.source_hash()
    reports = []
    with _make_pool(request) as pool:
        pool.start()
        for group in pool.groups():  # one device key at a time: a mixed Ray cluster never mixes timings
            reports += _tune_group(request, plan, spec, group, storage, source_hash)
    return reports


def _tune_group(request: RunRequest, plan, spec, group, storage, source_hash: str) -> list[StudyReport]:
    """Tune the plan's studies on one device group, exporting each winner as soon as it is known."""
    device = group.device
    reports = []
    if request.table is not None:  # a stored entry that export would refuse: say so before tuning
        check_table_file(request.table, device.key, entry_check(device.as_dict()))
    fingerprint = fingerprint_mod.fingerprint(device, source_hash)
    _log(f"device: {device.name} ({device.key}); {len(plan)} studies of {request.kernel}; "
         f"storage {request.storage_url}")
    work = []
    for variant, shape in plan:  # check every --enqueue config against every study before tuning any
        space = spec.space(variant, shape, device)
        try:
            user_configs = [space.validate(config) for config in request.enqueue]
        except ConfigError as exc:
            raise ConfigError(f"--enqueue for {request.kernel}/{variant}: {exc}") from exc
        work.append((study_mod.StudyKey.of(request.kernel, variant, shape, device.key, space.signature()), space,
                     user_configs))
    for key, space, user_configs in work:
        report, entry = _tune_one(key, space, user_configs, group, device, fingerprint, storage, request)
        reports.append(report)
        if request.table is not None and entry is not None:  # export as we go: a crash later loses nothing
            merge = update_table(request.table, device.key, device.as_dict(), [entry],
                                 check=entry_check(device.as_dict()))
            changed = "added" if merge.added else "replaced" if merge.replaced else "kept (faster entry stored)"
            _log(f"  table {request.table}: {key.name} {changed}")
    return reports


def _tune_one(key, space, user_configs, pool, device, fingerprint, storage, request: RunRequest,
              warm: Sequence[study_mod.WarmStart] = ()) -> tuple[StudyReport, TableEntry | None]:
    settings = request.settings
    sampler = make_sampler(request.sampler, study_seed(settings.seed, key.name), settings.n_trials)
    study = study_mod.create(storage, key, sampler, device_info=device.as_dict())
    study.set_user_attr("dtype", settings.dtype)
    changed = fingerprint_mod.stale_fields(study.user_attrs.get("fingerprint") or fingerprint, fingerprint)
    if changed:
        _log(f"{key.name}: last tuned under another {', '.join(changed)}; its finalists will be re-timed now")
    study.set_user_attr("fingerprint", fingerprint)
    report = StudyReport(name=key.name)
    report.recovered = study_mod.recover_interrupted(study, timedelta(seconds=3 * settings.trial_timeout_s + 60))
    if report.recovered:
        _log(f"{key.name}: re-queued {len(report.recovered)} trial(s) interrupted by a killed run "
             f"{report.recovered}")
    with storage_lock(request.storage_url):  # two runs on one storage: the default (and the rest) queued once
        queued = _enqueue_start(study, storage, key, space, device, user_configs, fingerprint, request, warm)
    if queued:
        _log(f"{key.name}: queued {', '.join(queued)}")
    log_path = worker_log_path(request.storage_url)

    def log(number: int, result) -> None:
        append_log(log_path, f"{key.name} trial {number} {result.kind.value}", result.output)

    progress = StudyProgress(study, key.name, settings.n_trials)
    try:
        run_trials(study, key, space, device, pool.workers, settings, report, on_trial=progress.update,
                   compilers=pool.compilers, log=log, fingerprint_id=fingerprint_mod.fingerprint_id(fingerprint),
                   lock=lambda: storage_lock(request.storage_url))
        with storage_lock(request.storage_url):  # a second run on the storage finds them current and exports the same
            if settings.finalists and not finalists_current(study, fingerprint):
                progress.note("re-timing finalists")
                report.finalists = retime_finalists(study, key, pool.workers, settings, fingerprint,
                                                    also=frozenset(config_hash(w.config) for w in warm if w.retime))
            entry = best_entry(key, study)
    finally:
        progress.close()
    notes.save_study_note(study, entry)
    if entry is not None:
        report.best_us, report.default_us = entry.median_us, entry.default_median_us
    progress.summary(report)
    return report, entry



def _enqueue_start(study, storage, key, space, device, user_configs, fingerprint, request: RunRequest,
                   warm=()) -> list[str]:
    """Queue, in this order and each config once: the default, the user's configs, a re-tune's ``warm`` configs (its
    old winner and neighbours, :mod:`autotune.tuning.retune`), the old winners to measure again under a new
    fingerprint, the neighbouring shapes' winners (:mod:`autotune.tuning.warm_start`).

    Returns:
        ``enqueued_from`` labels of what was queued now.
    """
    queued = []
    if study_mod.enqueue(study, space, space.default, source="default"):
        queued.append("default")
    for config in user_configs:
        if study_mod.enqueue(study, space, config, source="user"):
            queued.append("user")
    for start in warm:
        if study_mod.enqueue(study, space, start.config, source=start.source, again=start.retime, **start.attrs):
            queued.append(start.attrs.get("enqueued_from", start.source))
    if request.warm_start:
        for item in warm_start.old_winners(study, storage, key, space, fingerprint, table_path=request.table):
            if study_mod.enqueue(study, space, item.config, source="warm_start", enqueued_from=item.origin,
                                 again=item.origin == "old_winner"):
                queued.append(item.origin)
        if not study_mod.known_config_hashes(study) - {config_hash(space.default)}:  # a new study
            for item in warm_start.neighbour_winners(storage, key, space, device, table_path=request.table):
                if study_mod.enqueue(study, space, item.config, source="warm_start", enqueued_from=item.origin):
                    queued.append(item.origin)
    return queued


def summarize(reports: Sequence[StudyReport]) -> str:
    """One line: studies, measured/pruned/failed trials, geomean speedup over the default."""
    import math

    ratios = [r.default_us / r.best_us for r in reports if r.best_us and r.default_us]
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    places = set().union(*(r.places for r in reports))
    lost = sum(r.lost for r in reports)
    return (f"{len(reports)} studies: {sum(r.measured for r in reports)} measured, "
            f"{sum(r.pruned for r in reports)} pruned, {sum(r.failed for r in reports)} failed trials this run; "
            f"tuned/default geomean speedup {geomean:.3f}x over {len(ratios)} studies; "
            f"{len(places)} device(s) on {len({node for node, _ in places})} node(s) took part"
            + (f"; {lost} trial(s) cut by a lost Ray actor or node, their configs re-run" if lost else ""))
