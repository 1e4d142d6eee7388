"""The short note each study carries in optuna-dashboard: its best config against the default, and where the best
came from (the default, a ``--enqueue`` config, the old winner of a re-tune, a neighbouring shape's winner, or the
sampler).

The note is stored with optuna-dashboard's own API (:func:`optuna_dashboard.save_note`, kept in the study's system
attributes, shown on the study page); without optuna-dashboard installed nothing is written.
"""

from __future__ import annotations

import json
from typing import Any

from autotune.table.entry import TableEntry
from autotune.tuning.study import measured_us

SOURCES = {
    "default": "the kernel's default config (trial 0)",
    "user": "a config given with --enqueue",
    "old_winner": "the winner of the stale table entry (re-tune warm start)",
    "neighbour": "a neighbouring shape's winner (re-tune warm start)",
    "requeued": "a config re-queued after an interrupted run",
    "warm_start": "a warm-start config",
    "move": "a one-parameter move of the best config so far",
    "sampler": "the sampler",
}
"""A trial's ``source`` user attribute → how the note names it."""


def best_origin(study, trial_number: int) -> str:
    """How the trial ``trial_number`` of ``study`` came to be asked, in words (see :data:`SOURCES`)."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == trial_number), None)
    if trial is None:
        return "an unknown trial"
    source = trial.user_attrs.get("source", "sampler")
    origin = SOURCES.get(source, source)
    if source == "neighbour" and trial.user_attrs.get("neighbour_key"):
        origin += f" ({trial.user_attrs['neighbour_key']})"
    elif source in ("warm_start", "move") and trial.user_attrs.get("enqueued_from"):
        origin += f" ({trial.user_attrs['enqueued_from']})"
    return origin


def study_note(study, entry: TableEntry) -> str:
    """The note's Markdown: shape and device, best vs default (µs and speedup), the best's origin, the software.

    Args:
        study: the ``optuna.Study`` that produced ``entry``.
        entry: its best config as a table entry (:func:`autotune.table.export.best_entry`).

    Returns:
        A few lines of Markdown.
    """
    attrs = study.user_attrs
    shape = ", ".join(f"{k}={v}" for k, v in entry.shape.items())
    timed = "re-timed finalists, interleaved" if attrs.get("finalists") else "trial measurements"
    lines = [f"### {entry.kernel}/{entry.variant} {shape} on {attrs.get('device_key', '?')}", "",
             f"- best: **{entry.median_us:.2f} µs** (trial {entry.trial}, from {best_origin(study, entry.trial)})"]
    if entry.default_median_us is not None:
        lines.append(f"- default: {entry.default_median_us:.2f} µs → best is **{entry.speedup:.3f}×** the "
                     f"default's speed ({timed})")
    else:
        lines.append("- default: not measured")
    old = attrs.get("old_winner")
    if isinstance(old, dict) and isinstance(old.get("config"), dict):
        old_us = measured_us(study, old["config"])
        lines.append(f"- old winner (table: {old.get('table_median_us', 0):.2f} µs under the old software) measured "
                     + (f"here: {old_us:.2f} µs → old ÷ new **{old_us / entry.median_us:.3f}**" if old_us else
                        "here: not measured (pruned, failed or not re-timed; see its trial)"))
    fp: dict[str, Any] = entry.fingerprint
    lines += [f"- config: `{json.dumps(entry.config, sort_keys=True)}`",
              (f"- under: triton {fp.get('triton', '?')}, torch {fp.get('torch', '?')}, "
               f"driver {fp.get('driver', '?')}, CUDA {fp.get('cuda', '?')}, "
               f"kernel source {fp.get('kernel_source', '?')}")]
    return "\n".join(lines) + "\n"


def save_study_note(study, entry: TableEntry | None) -> bool:
    """Write :func:`study_note` as the study's optuna-dashboard note.

    Returns:
        True when written; False without an entry (no successful trial) or without optuna-dashboard installed.
    """
    if entry is None:
        return False
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return False
    save_note(study, study_note(study, entry))
    return True
