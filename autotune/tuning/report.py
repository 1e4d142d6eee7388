"""Tables for ``list`` and ``show``: what is registered, what the storage holds, what tuning found (pandas)."""

from __future__ import annotations

import json

import pandas as pd

from autotune import registry
from autotune.table.export import latest_entries
from autotune.tuning.space import space_size


def kernels_frame(device) -> pd.DataFrame:
    """Registered kernels: variants, bucketed dimension, parameters and the size of their space."""
    rows = []
    for name in registry.names():
        spec = registry.get(name)
        for variant in spec.variants:
            shape = _example_shape(spec, variant)
            space = spec.space(variant, shape, device)
            rows.append({"kernel": name, "variant": variant, "bucket": spec.bucket_dim,
                         "parameters": ", ".join(f"{p.name}{list(p.choices)}" for p in space.params),
                         "configs<=": space_size(space.params)})
    return pd.DataFrame(rows)


def _example_shape(spec, variant) -> dict[str, int]:
    example = getattr(spec.kernel, "EXAMPLE_DIMS", None)
    if example is None:
        raise RuntimeError(f"kernel {spec.name} defines no EXAMPLE_DIMS")
    return spec.kernel.model_shapes(variant, **{k: ([v] if k == spec.bucket_dim else v)
                                                 for k, v in example.items()})[0].as_dict()


def studies_frame(storage) -> pd.DataFrame:
    """One row per study in the storage: trials by state, best median µs."""
    import optuna
    from optuna.trial import TrialState

    rows = []
    for summary in optuna.get_all_study_summaries(storage=storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = {state.name.lower(): sum(1 for t in trials if t.state == state)
                  for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
                                TrialState.WAITING)}
        values = [t.value for t in trials if t.state == TrialState.COMPLETE]
        rows.append({"study": summary.study_name, **counts, "best_us": min(values) if values else None})
    return pd.DataFrame(rows)


def _entry_row(device_key: str, entry, freshness_of=None) -> dict:
    row = {
        "device": device_key, "variant": entry.variant, **entry.shape,
        "best_us": round(entry.median_us, 2),
        "default_us": round(entry.default_median_us, 2) if entry.default_median_us else None,
        "speedup": round(entry.speedup, 3) if entry.speedup else None,
        "TFLOP/s": _round(entry.metrics.get("tflops")), "GB/s": _round(entry.metrics.get("gbps")),
        "peak_frac": _round(entry.metrics.get("peak_fraction"), 3),
    }
    if freshness_of is not None:
        row["fresh"] = freshness_of(device_key, entry)
    row["config"] = json.dumps(entry.config, sort_keys=True)
    return row


def _sorted(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values([c for c in ("device", "variant", "M") if c in frame.columns]).reset_index(drop=True)
    return frame


def show_frame(storage, kernel: str, device_key: str | None, freshness_of=None) -> pd.DataFrame:
    """Best config per shape of one kernel: median µs, default µs, speedup, fraction of peak, config; with
    ``freshness_of(device_key, entry) -> str`` a ``fresh`` column (see :func:`freshness_column`)."""
    return _sorted([_entry_row(key.device_key, entry, freshness_of)
                    for per_device in latest_entries(storage, kernel=kernel, device_key=device_key).values()
                    for key, entry, _ in per_device])


def table_frame(table, kernel: str, device_key: str | None, freshness_of=None) -> pd.DataFrame:
    """The same columns as :func:`show_frame`, from the entries of a :class:`autotune.table.ConfigTable` file."""
    return _sorted([_entry_row(dev, entry, freshness_of) for dev in table.device_keys()
                    if device_key is None or dev == device_key
                    for entry in table.entries(dev) if entry.kernel == kernel])


def freshness_column(device):
    """``(device_key, entry) -> "fresh" | "stale: triton 3.8.0 → 3.9.0, ..."`` against the current software on
    ``device`` (:mod:`autotune.table.freshness`); entries of other devices read "other device" (their driver and GPU
    cannot be compared from here)."""
    from autotune.table import freshness

    fingerprints = freshness.CurrentFingerprints(device)

    def of(device_key: str, entry) -> str:
        if device_key != device.key:
            return "other device"
        return freshness.check(entry, fingerprints).describe()

    return of


def _round(value, digits: int = 1):
    return round(value, digits) if isinstance(value, (int, float)) else None
