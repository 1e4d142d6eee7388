"""Warm start: a new study begins with what is already known about its neighbours and about its own past.

Before the sampler proposes anything, a study queues (after its default config):

* the winners of the *neighbouring shapes* of the same kernel, variant and device: the other studies of the storage
  (and the entries of the lookup table) whose shape has the same dimensions, nearest first by the summed
  |log2| distance of the dimensions (M = 16 is one step from M = 8 and M = 32), at most ``count`` of them. On the
  H200 (2026-12-02, issue 8) a decode winner at M = 1 was within 2% of M = 2's; tiles transfer between neighbours
  far better than a random start does;
* when the study was tuned before under another fingerprint (a new Triton, driver or kernel source), its *old
  winners* (the finalists measured then), so they are measured again under the new one, as well as the winner of
  an older study of the same shape over an edited search space.

A neighbour's config may hold a value this shape's space does not offer (BLOCK_M = 128 where the rows per expert
allow at most 16): :func:`project` moves such a value to the nearest offered one (log2 distance for numbers, else
the default's value), and the label says which parameters were moved. Each queued trial carries the user attribute
``enqueued_from`` ("default", "user", "neighbour:M=16", "table:M=16", "table:same shape", "old_winner",
"old_space:s1a2b3c"); the tuner then adds one-parameter moves of the best so far (:mod:`autotune.tuning.local_moves`,
``"move:num_warps=8 of trial 3"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError
from autotune.tuning.space import Config, SearchSpace, config_hash

NEIGHBOURS = 2
"""Neighbouring shapes whose winners a new study starts from (a third rarely adds a config the first two lack)."""


@dataclass(frozen=True)
class WarmConfig:
    """A config to queue and where it came from (the trial's ``enqueued_from``)."""

    config: Config
    origin: str


def _log2_gap(x: int, y: int) -> float:
    if x <= 0 or y <= 0:
        return 0.0 if x == y else 1.0  # a zero dimension (a flag, a window of 0) against a set one: one step
    return abs(math.log2(x) - math.log2(y))


def shape_distance(a: Mapping[str, int], b: Mapping[str, int]) -> float | None:
    """Summed |log2| distance of two shapes' dimensions (0 against a positive value counts as one step); None when
    their dimension names differ (not comparable)."""
    if set(a) != set(b):
        return None
    return sum(_log2_gap(int(a[k]), int(b[k])) for k in a)


def _nearest_choice(value: Any, choices: Sequence) -> Any:
    numeric = all(isinstance(c, int) and not isinstance(c, bool) for c in choices)
    if numeric and isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(choices, key=lambda c: (abs(math.log2(max(c, 1)) - math.log2(value)), c))
    return None


def project(config: Mapping[str, Any], space: SearchSpace) -> tuple[Config, list[str]] | None:
    """A config of another shape made valid in ``space``: each value the space does not offer is moved to the
    nearest offered one (numbers, log2 distance) or to the default's value; unknown keys are dropped.

    Returns:
        (the validated config, names of the parameters moved), or None when no valid config results.
    """
    names = [p.name for p in space.params]
    moved = []
    candidate: dict[str, Any] = {}
    for param in space.params:
        if param.name not in config:
            continue
        value = config[param.name]
        if any(value == c and type(value) is type(c) for c in param.choices):
            candidate[param.name] = value
            continue
        if not param.active(candidate):
            continue  # inactive here: validate() sets the inactive value
        nearest = _nearest_choice(value, param.choices)
        fallback = space.default.get(param.name)
        candidate[param.name] = nearest if nearest is not None else fallback
        moved.append(param.name)
    try:
        return space.validate({k: v for k, v in candidate.items() if k in names}), moved
    except ConfigError:
        return None


def _label(prefix: str, shape: Mapping[str, int], mine: Mapping[str, int], moved: list[str]) -> str:
    dims = ",".join(f"{k}={v}" for k, v in shape.items() if mine.get(k) != v) or "same shape"
    return f"{prefix}:{dims}" + (f" (moved {', '.join(moved)})" if moved else "")


def neighbour_winners(storage, key, space: SearchSpace, device, *, table_path: Path | None = None,
                      count: int = NEIGHBOURS) -> list[WarmConfig]:
    """The winners of the ``count`` nearest other shapes of ``key``'s kernel, variant and device, feasible here.

    Args:
        storage: the Optuna storage (its other studies are read; the winner is decided by
            :func:`autotune.table.export.best_entry`, as for ``show`` and the table).
        key: the new study's :class:`autotune.tuning.study.StudyKey`.
        space: its search space.
        device: the device profile its constraints read.
        table_path: a lookup table whose entries for this device also count as tuned neighbours (None: storage only).
        count: neighbours to take.

    Returns:
        Nearest first; shapes tuned in the storage shadow the table's entry for the same shape.
    """
    tuned: dict[tuple, tuple[str, Mapping[str, int], Config]] = {}
    for other_key, entry in _storage_winners(storage, key):
        tuned[tuple(sorted(other_key.shape_dict.items()))] = ("neighbour", other_key.shape_dict, entry.config)
    for entry in _table_entries(table_path, key):
        tuned.setdefault(tuple(sorted(entry.shape.items())), ("table", entry.shape, entry.config))
    mine = key.shape_dict
    ranked = []
    for origin, shape, config in tuned.values():
        distance = shape_distance(mine, shape)
        if distance:  # None: other dimensions; 0: the same shape (an older space: see old_winners)
            ranked.append((distance, origin, shape, config))
    ranked.sort(key=lambda item: (item[0], item[1], sorted(item[2].items())))
    out: list[WarmConfig] = []
    for _, origin, shape, config in ranked[:count]:
        projected = project(config, space)
        if projected is None or space.check(projected[0], mine, device):
            continue
        out.append(WarmConfig(projected[0], _label(origin, shape, mine, projected[1])))
    return out


def _table_entries(table_path: Path | None, key):
    """The entries of the table at ``table_path`` (None or no file: none) for ``key``'s kernel, variant and device."""
    if table_path is None or not Path(table_path).is_file():
        return []
    from autotune.table import ConfigTable

    table = ConfigTable.load(table_path)
    if key.device_key not in table.device_keys():
        return []
    return [e for e in table.entries(key.device_key) if (e.kernel, e.variant) == (key.kernel, key.variant)]


def _storage_winners(storage, key):
    """(StudyKey, TableEntry) of the storage's other studies of the same kernel, variant and device."""
    import optuna

    from autotune.table.export import best_entry
    from autotune.tuning import study as study_mod

    prefix = f"{key.kernel}.{key.variant}."
    for name in optuna.get_all_study_names(storage=storage):
        if name == key.name or not name.startswith(prefix) or f".{key.device_key}." not in name:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        other = study_mod.key_of(study.user_attrs)
        if other is None or (other.kernel, other.variant, other.device_key) != (key.kernel, key.variant,
                                                                                key.device_key):
            continue
        entry = best_entry(other, study)
        if entry is not None:
            yield other, entry


def old_winners(study, storage, key, space: SearchSpace, fingerprint: Mapping[str, Any], *,
                table_path: Path | None = None) -> list[WarmConfig]:
    """Configs to measure again because the earlier winners were measured under something else.

    * this study's finalists, when they were measured under another fingerprint (``old_winner``);
    * the winner of a study of the same kernel, variant, shape and device over another version of the search space
      (``old_space:s<id>``), projected into this space;
    * the lookup table's entry for the same kernel, variant, shape and device (``table:same shape``), projected: a
      table tuned elsewhere or under an older fingerprint, tuned again with a new storage (a fresh machine keeps the
      table of the repository but not the storage).
    """
    out: list[WarmConfig] = []
    for entry in _table_entries(table_path, key):
        if entry.shape == key.shape_dict:
            projected = project(entry.config, space)
            if projected is not None:
                out.append(WarmConfig(projected[0], _label("table", entry.shape, key.shape_dict, projected[1])))
    attrs = study.user_attrs
    if attrs.get("finalists") and attrs.get("finalists_fingerprint") not in (None, dict(fingerprint)):
        for finalist in attrs["finalists"]:
            projected = project(finalist["config"], space)
            if projected is not None:
                out.append(WarmConfig(projected[0], "old_winner"))
    for other_key, entry in _storage_winners(storage, key):
        if other_key.shape_dict == key.shape_dict and other_key.space_id != key.space_id:
            projected = project(entry.config, space)
            if projected is not None:
                out.append(WarmConfig(projected[0], f"old_space:s{other_key.space_id}"))
    return out


def dedupe(warm: Sequence[WarmConfig]) -> list[WarmConfig]:
    """Keep the first of configs with equal hashes (the nearest neighbour's label wins)."""
    seen: set[str] = set()
    out = []
    for item in warm:
        digest = config_hash(item.config)
        if digest not in seen:
            seen.add(digest)
            out.append(item)
    return out
