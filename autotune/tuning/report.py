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


def show_frame(storage, kernel: str, device_key: str | None) -> pd.DataFrame:
    """Best config per shape of one kernel: median µs, default µs, speedup, fraction of peak, config."""
    rows = []
    for key, entry, _ in (tuned for per_device in latest_entries(storage, kernel=kernel, device_key=device_key).values()
                          for tuned in per_device):
        rows.append({
            "device": key.device_key, "variant": key.variant, **key.shape_dict,
            "best_us": round(entry.median_us, 2),
            "default_us": round(entry.default_median_us, 2) if entry.default_median_us else None,
            "speedup": round(entry.speedup, 3) if entry.speedup else None,
            "TFLOP/s": _round(entry.metrics.get("tflops")), "GB/s": _round(entry.metrics.get("gbps")),
            "peak_frac": _round(entry.metrics.get("peak_fraction"), 3),
            "config": json.dumps(entry.config, sort_keys=True),
        })
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values([c for c in ("device", "variant", "M") if c in frame.columns]).reset_index(drop=True)
    return frame


def _round(value, digits: int = 1):
    return round(value, digits) if isinstance(value, (int, float)) else None
