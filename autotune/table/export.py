"""From studies to the lookup table: the best config of every study as a :class:`autotune.table.TableEntry`.

The best config is the fastest re-timed finalist when the study has current finalists (re-checked on fresh inputs,
timed interleaved with the default, after its last measured trial), else its best COMPLETE trial; the default's figure comes from the same source so the
speedup compares like with like.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from autotune.tuning import study as study_mod
from autotune.errors import TableError
from autotune.table import MergeReport, TableEntry, update_table, validate
from autotune.table.store import check_table_file
from autotune.tuning.records import ENTRY_METRICS


def _load_studies(storage):
    import optuna

    for name in optuna.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        key = study_mod.key_of(study.user_attrs)
        if key is not None:
            yield key, study


def best_entry(key, study) -> TableEntry | None:
    """The winner of one study as a table entry, or None if it has no successful trial.

    The one function that decides a study's winner: ``run`` exports it, ``export`` merges it, ``show`` prints it,
    and a warm start takes a neighbour's config from it. Finalists decide when they were re-timed after the study's
    last measured trial; otherwise (another run added trials since) the best COMPLETE trial does.
    """
    from optuna.trial import TrialState

    attrs = study.user_attrs
    finalists = attrs.get("finalists") or []
    if finalists and attrs.get("finalists_after_trial") is not None and attrs["finalists_after_trial"] < max(
            (t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if "duplicate_of" not in t.user_attrs), default=-1):
        finalists = []  # measured trials came after the re-timing (another run): they decide until it re-times
    if finalists:
        best = finalists[0]
        default = next((f for f in finalists if f["is_default"]), None)
        fingerprint = attrs.get("finalists_fingerprint") or attrs.get("fingerprint") or {}
        tuned_at = attrs.get("finalists_at")
        config, median, trial_number = best["config"], best["median_us"], best["trial"]
        metrics = {k: best.get(k) for k in ENTRY_METRICS if best.get(k)}
        default_us = default["median_us"] if default else None
    else:
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete:
            return None
        trial = min(complete, key=lambda t: t.value)
        default_trial = next((t for t in complete if t.user_attrs.get("source") == "default"), None)
        fingerprint = attrs.get("fingerprint") or {}
        tuned_at = (trial.datetime_complete or datetime.now()).astimezone(timezone.utc).isoformat(timespec="seconds")
        config, median, trial_number = study_mod.config_of(trial), trial.value, trial.number
        metrics = {k: trial.user_attrs[k] for k in ENTRY_METRICS if k in trial.user_attrs}
        default_us = default_trial.value if default_trial else None
    metrics["dtype"] = attrs.get("dtype", "")
    metrics["measured_trials"] = sum(1 for t in study.get_trials(deepcopy=False) if "median_us" in t.user_attrs)
    return TableEntry(kernel=key.kernel, variant=key.variant, shape=key.shape_dict, config=config,
                      median_us=float(median), default_median_us=default_us, fingerprint=fingerprint,
                      study=key.name, trial=int(trial_number), tuned_at=tuned_at, metrics=metrics)


class Tuned(NamedTuple):
    """The winner of one study: its key, its table entry and the device info stored on the study."""

    key: Any
    entry: TableEntry
    device_info: dict[str, Any]


def latest_entries(storage, *, kernel: str | None = None,
                   device_key: str | None = None) -> dict[str, list[Tuned]]:
    """The table entry of every tuned (kernel, variant, shape) per device, from the newest study when an edited search
    space made several.

    Returns:
        device key → list of :class:`Tuned`.
    """
    newest: dict[tuple[str, str], Tuned] = {}
    for key, study in _load_studies(storage):
        if (kernel and key.kernel != kernel) or (device_key and key.device_key != device_key):
            continue
        entry = best_entry(key, study)
        slot = (key.device_key, entry.key) if entry is not None else None
        if entry is not None and (slot not in newest or entry.tuned_at > newest[slot].entry.tuned_at):
            newest[slot] = Tuned(key, entry, study.user_attrs.get("device", {}))
    by_device: dict[str, list[Tuned]] = {}
    for (dev, _), pair in sorted(newest.items()):
        by_device.setdefault(dev, []).append(pair)
    return by_device


def entry_check(device_info: Any):
    """The check a table entry tuned on the device described by ``device_info`` (a stored
    :meth:`autotune.device.DeviceProfile.as_dict`) must pass to be written: :func:`autotune.table.validate.entry_problem`
    with that device's constraints, or the schema only when the info is not a readable profile."""
    from autotune.device import DeviceProfile

    try:
        device = DeviceProfile.from_dict(device_info)
    except (TypeError, ValueError):
        device = None
    return lambda entry: validate.entry_problem(entry, device)


def export(storage, table_path: Path, *, kernel: str | None = None,
           device_key: str | None = None) -> dict[str, MergeReport]:
    """Merge the best config of every matching study into the table file (atomically, under a lock).

    Every new entry is checked first (:func:`entry_check`), and so are the stored entries of each section written: an
    invalid one is refused before that section is written.

    Args:
        storage: an Optuna storage.
        table_path: the table file (created if missing; a corrupt or foreign file raises TableError untouched).
        kernel: only this kernel's studies.
        device_key: only this device's studies.

    Returns:
        The merge report per device key.

    Raises:
        TableError: the table path cannot be read and replaced (checked before the storage is read), the table is
            corrupt, or an entry is invalid (named with its problem; the file is not changed).
    """
    check_table_file(table_path)
    by_device = latest_entries(storage, kernel=kernel, device_key=device_key)
    checks = {dev: entry_check(tuned[-1].device_info) for dev, tuned in by_device.items()}
    for dev, tuned in by_device.items():  # every new entry before any write
        for item in tuned:
            problem = checks[dev](item.entry)
            if problem:
                raise TableError(f"{table_path}: refusing to export {item.entry.key} (study {item.entry.study}, "
                                 f"trial {item.entry.trial}): {problem}; the file was not changed")
    return {dev: update_table(table_path, dev, tuned[-1].device_info, [t.entry for t in tuned], check=checks[dev])
            for dev, tuned in by_device.items()}
