"""``autotune retune``: re-tune exactly the table entries of this device that went stale under the current software.

Order of work: load the table → compare each entry of this device's section with the current fingerprint of its
kernel (:mod:`autotune.table.freshness`) → for each stale entry, one new study named after the new fingerprint
(``...s<space>.f<fingerprint id>``: the study tuned under the old software is never resumed), warm-started with the
old winner (trial user attribute ``enqueued_from="old_winner"``) and the winners of the neighbouring buckets
(``enqueued_from="neighbour"``) after the default → tune with ``run``'s machinery (:func:`autotune.tuning.run._tune_one`:
budget, interrupted trials re-queued, finalists re-timed) with the old winner re-timed beside the finalists by the
same worker → replace the entry in the table → print old ÷ new per shape.

Interrupt and resume behave like ``run``: the same command continues, since entries already replaced are fresh and
the others' studies (same names) resume where they stopped.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autotune import registry
from autotune.device import fingerprint as fingerprint_mod
from autotune.errors import ConfigError, UserError
from autotune.table import ConfigTable, TableEntry, freshness, update_table
from autotune.tuning import study as study_mod
from autotune.tuning.run import RunRequest, _tune_one
from autotune.tuning.tuner import TuneSettings

NEIGHBOURS = 2
"""Neighbouring buckets whose winners warm-start a re-tune: the nearest smaller and the nearest larger one."""

DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class Planned:
    """One stale entry and how it will be re-tuned.

    Attributes:
        stale: the entry and the fields that changed.
        key: the new study's key (with the new fingerprint id).
        warm: the configs queued after the default (the old winner first).
        dtype: the activation dtype it was tuned in (the entry's ``metrics.dtype``), and is re-tuned in.
        notes: why a warm start was left out (e.g. the old winner is outside the current search space).
    """

    stale: freshness.Staleness
    key: study_mod.StudyKey
    warm: list[study_mod.WarmStart]
    dtype: str
    notes: list[str] = field(default_factory=list)

    @property
    def entry(self) -> TableEntry:
        """The stale entry."""
        return self.stale.entry


@dataclass(frozen=True)
class Retuned:
    """The outcome of one re-tuned entry.

    Attributes:
        key: the entry key.
        study: the new study's name.
        table_old_us: the old entry's median µs (measured under the old software).
        old_us: the old winner measured now, beside the new best (None: pruned, failed or not re-timed).
        new_us: the new best's median µs (None: no successful trial; the entry was left as it was).
        config_changed: whether the new winner differs from the old one.
        merged: what the table merge did ("replaced", "added", "kept", or "" when nothing was merged).
    """

    key: str
    study: str
    table_old_us: float
    old_us: float | None
    new_us: float | None
    config_changed: bool
    merged: str


def _device(interpreter: bool):
    from autotune import device as device_mod

    return device_mod.INTERPRETER if interpreter else device_mod.detect(0)


def _neighbours(entry: TableEntry, section: Sequence[TableEntry], bucket_dim: str | None) -> list[TableEntry]:
    """The entries of the same kernel and variant whose shape differs from ``entry``'s in the bucket dimension only:
    the nearest smaller and the nearest larger bucket."""
    if bucket_dim is None or bucket_dim not in entry.shape:
        return []
    fixed = {k: v for k, v in entry.shape.items() if k != bucket_dim}
    here = entry.shape[bucket_dim]
    same_row = [e for e in section if e.kernel == entry.kernel and e.variant == entry.variant and e.key != entry.key
                and {k: v for k, v in e.shape.items() if k != bucket_dim} == fixed and bucket_dim in e.shape]
    below = max((e for e in same_row if e.shape[bucket_dim] < here), key=lambda e: e.shape[bucket_dim], default=None)
    above = min((e for e in same_row if e.shape[bucket_dim] > here), key=lambda e: e.shape[bucket_dim], default=None)
    return [e for e in (below, above) if e is not None][:NEIGHBOURS]


def plan(table: ConfigTable, device, kernels: Sequence[str], default_dtype: str) -> tuple[list[Planned], int]:
    """The stale entries of ``device``'s section and their re-tune studies; nothing is tuned or written.

    Args:
        table: the loaded table.
        device: the :class:`autotune.device.DeviceProfile` of this machine (its key selects the section).
        kernels: only these kernels (empty: every registered kernel in the section).
        default_dtype: the dtype for entries that do not record theirs.

    Returns:
        (the planned re-tunes in key order, the number of fresh entries left alone).

    Raises:
        UnknownKernelError: a name in ``kernels`` is not registered.
    """
    for name in kernels:
        registry.get(name)
    fingerprints = freshness.CurrentFingerprints(device)
    section = table.entries(device.key)
    surveyed = freshness.survey(table, device.key, fingerprints, kernels or None)
    planned, fresh = [], 0
    for stale in surveyed:
        if stale.fresh:
            fresh += 1
            continue
        if stale.current is None:  # an unregistered kernel: nothing here can tune it
            continue
        entry = stale.entry
        spec = registry.get(entry.kernel)
        space = spec.space(entry.variant, entry.shape, device)
        key = study_mod.StudyKey.of(entry.kernel, entry.variant, entry.shape, device.key, space.signature(),
                                    fingerprint_mod.fingerprint_id(stale.current))
        dtype = entry.metrics.get("dtype")
        item = Planned(stale, key, [], dtype if dtype in DTYPES else default_dtype)
        try:
            item.warm.append(study_mod.WarmStart(space.validate(entry.config), "old_winner",
                                                 {"enqueued_from": "old_winner", "old_study": entry.study,
                                                  "old_median_us": entry.median_us}, retime=True))
        except ConfigError as exc:
            item.notes.append(f"old winner not in the current search space ({exc}): not re-timed")
        for other in _neighbours(entry, section, spec.bucket_dim):
            try:
                config = space.validate(other.config)
            except ConfigError:
                continue
            item.warm.append(study_mod.WarmStart(config, "neighbour",
                                                 {"enqueued_from": "neighbour", "neighbour_key": other.key}))
        planned.append(item)
    return planned, fresh


def format_plan(planned: Sequence[Planned], fresh: int, table: Path, device_key: str) -> str:
    """What a ``--dry-run`` prints: per stale entry, why (the changed fields, old → new), the new study and its warm
    start."""
    lines = [f"{table} [{device_key}]: {len(planned)} stale entries to re-tune, {fresh} fresh left alone"]
    for item in planned:
        neighbours = sum(1 for w in item.warm if w.source == "neighbour")
        old = "the old winner" if any(w.source == "old_winner" for w in item.warm) else "no old winner"
        lines += [f"  {item.entry.key}: {item.stale.describe()}",
                  f"    → study {item.key.name} ({item.dtype}); warm start: default, {old}, {neighbours} neighbour(s)"]
        lines += [f"    note: {note}" for note in item.notes]
    return "\n".join(lines)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def retune(request: RunRequest, kernels: Sequence[str],
           budgets: Mapping[str, Mapping[str, Any]] | None = None) -> list[Retuned]:
    """Re-tune the stale entries of this device in ``request.table`` and replace them there.

    Args:
        request: the run's storage, sampler, workers, settings and table (``kernel_preset`` and ``variants`` are not
            read; ``settings.dtype`` is the dtype of entries that do not record theirs).
        kernels: only these kernels (empty: all).
        budgets: kernel → :class:`TuneSettings` fields (``n_trials``, ``timeout_s``) that replace
            ``request.settings``' for its entries (the preset's budget per kernel).

    Returns:
        One :class:`Retuned` per stale entry, in key order.

    Raises:
        UserError: no table file, bad storage URL, corrupt table, unknown kernel.
    """
    from autotune.tuning.pool import WorkerPool
    from autotune.tuning.storage import open_storage

    table_path = request.table
    table = ConfigTable.load(table_path, missing_ok=False)
    storage = open_storage(request.storage_url)
    results = []
    with WorkerPool(list(request.gpus), interpreter=request.interpreter,
                    compile_workers=request.compile_workers) as pool:
        device = pool.start()
        planned, fresh = plan(table, device, kernels, request.settings.dtype)
        _log(f"device: {device.name} ({device.key}); {len(planned)} stale entries to re-tune, {fresh} fresh; "
             f"storage {request.storage_url}")
        for item in planned:
            entry = item.entry
            _log(f"{entry.key}: {item.stale.describe()} → {item.key.name}")
            spec = registry.get(entry.kernel)
            space = spec.space(entry.variant, entry.shape, device)
            fingerprint = item.stale.current
            settings = replace(request.settings, dtype=item.dtype, **(budgets or {}).get(entry.kernel, {}))
            study = study_mod.create(storage, item.key, None, device_info=device.as_dict())
            study.set_user_attr("old_winner", {"key": entry.key, "config": dict(entry.config),
                                               "table_median_us": entry.median_us, "study": entry.study,
                                               "fingerprint": dict(entry.fingerprint),
                                               "stale_fields": list(item.stale.changed)})
            _, new = _tune_one(item.key, space, [], pool, device, fingerprint, storage,
                               replace(request, kernel=entry.kernel, settings=settings), warm=item.warm)
            old_us = study_mod.measured_us(study, entry.config) if item.warm and item.warm[0].retime else None
            merged = ""
            if new is not None:
                merge = update_table(table_path, device.key, device.as_dict(), [new])
                merged = "added" if merge.added else "replaced" if merge.replaced else "kept"
                _log(f"  table {table_path}: {entry.key} {merged}")
            results.append(Retuned(entry.key, item.key.name, entry.median_us, old_us,
                                   new.median_us if new is not None else None,
                                   new is not None and dict(new.config) != dict(entry.config), merged))
    return results


def format_results(results: Sequence[Retuned]) -> str:
    """A Markdown table: per shape, the old entry's µs, the old winner and the new best measured now, old ÷ new; then
    the geometric mean of old ÷ new."""
    lines = ["| entry | table µs (old software) | old winner µs (now) | new best µs | old ÷ new | config | table |",
             "|---|---|---|---|---|---|---|"]
    ratios = []
    for r in results:
        ratio = r.old_us / r.new_us if r.old_us and r.new_us else None
        if ratio:
            ratios.append(ratio)
        lines.append(f"| {r.key} | {r.table_old_us:.2f} | {_us(r.old_us)} | {_us(r.new_us)} | "
                     f"{f'{ratio:.3f}' if ratio else '-'} | {'changed' if r.config_changed else 'same'} | "
                     f"{r.merged or 'untouched (no successful trial)'} |")
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    lines += ["", f"{len(results)} entries re-tuned; old ÷ new geomean {geomean:.3f} over {len(ratios)} shapes"]
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def cmd_retune(*, kernel: Sequence[str], dry_run: bool, table: str, storage: str, trials: int | None,
               timeout: float | None, sampler: str, seed: int, gpus: str | None, trial_timeout: float,
               finalists: int, compile_workers: int | None, dtype: str | None) -> int:
    """``python -m autotune retune [KERNEL ...]``: list (``--dry-run``) or re-tune the stale entries of this device."""
    from autotune import defaults
    from autotune.cli import _gpu_count, _parse_gpus
    from autotune.tuning import presets

    kernels = tuple(dict.fromkeys(kernel))
    for name in kernels:
        registry.get(name)
    if trials is not None and trials < 1:
        raise UserError("--trials must be at least 1")
    for flag, value, minimum in (("--timeout", timeout, 1e-9), ("--trial-timeout", trial_timeout, 1e-9),
                                 ("--finalists", finalists, 0), ("--compile-workers", compile_workers, 0)):
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be {'positive' if minimum else 'at least 0'}, got {value}")
    table_path = Path(table)
    if not table_path.exists():
        raise UserError(f"{table_path}: no table to re-tune (tune first: `python -m autotune run KERNEL`)")
    gpu_count = _gpu_count()
    interpreter = gpu_count == 0
    default_dtype = dtype or (defaults.CPU_DTYPE if interpreter else defaults.GPU_DTYPE)
    if dry_run:
        device = _device(interpreter)
        planned, fresh = plan(ConfigTable.load(table_path, missing_ok=False), device, kernels, default_dtype)
        print(format_plan(planned, fresh, table_path, device.key))
        return 0
    if interpreter:
        print("autotune: no CUDA GPU found: re-tuning the interpreter's entries under the Triton interpreter (CPU)",
              file=sys.stderr, flush=True)
    preset = presets.load(defaults.CPU_PRESET if interpreter else defaults.GPU_PRESET)
    if not preset.kernels:
        raise UserError(f"preset {preset.name!r} has no kernel budgets")
    budgets = {name: {"n_trials": trials if trials is not None else kp.trials,
                      "timeout_s": timeout if timeout is not None else kp.timeout_s}
               for name, kp in preset.kernels.items()}
    reference = next(iter(preset.kernels.values()))  # kernels outside the preset (plugins) take its budget
    settings = TuneSettings(
        n_trials=trials if trials is not None else reference.trials,
        timeout_s=timeout if timeout is not None else reference.timeout_s, trial_timeout_s=trial_timeout,
        dtype=default_dtype, rep_ms=defaults.REP_MS, finalists=finalists, final_rep_ms=defaults.FINAL_REP_MS,
        final_rounds=defaults.FINAL_ROUNDS, seed=seed)
    request = RunRequest(kernel="", kernel_preset=reference, variants=(), storage_url=storage, sampler=sampler,
                         enqueue=(), table=table_path, gpus=_parse_gpus(gpus, gpu_count) if not interpreter else (),
                         interpreter=interpreter,
                         compile_workers=defaults.compile_workers() if compile_workers is None else compile_workers,
                         settings=settings)
    results = retune(request, kernels, budgets)
    print(format_results(results) if results else f"{table_path}: nothing stale to re-tune on this device")
    return 0
