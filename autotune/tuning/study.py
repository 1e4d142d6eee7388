"""One Optuna study per (kernel, variant, shape, device): names, creation, resume, and how trials are recorded.

Study names read as ``moe_gemm.mlp1.M16_N5760_K2880_E32_top_k4.nvidia-h100-80gb-hbm3-sm90.s1a2b3c`` (the last
part is the search space's signature: Optuna cannot change a parameter's choices inside a study). The study's user
attributes hold the kernel, variant, shape, device and, after each run, the re-timed finalists; each trial's user
attributes hold its full config (JSON), its outcome and its measurements (see :func:`record_result`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from autotune.tuning.outcomes import Kind, trial_state
from autotune.tuning.records import ENTRY_METRICS, Result
from autotune.tuning.space import Config, SearchSpace, config_hash, config_json

HOST = socket.gethostname()
NO_OWNER_GRACE = timedelta(minutes=1)


@dataclass(frozen=True)
class StudyKey:
    """What a study tunes: a kernel variant at a shape on a device, over one version of its search space."""

    kernel: str
    variant: str
    shape: tuple[tuple[str, int], ...]
    device_key: str
    space_id: str
    fingerprint_id: str = ""
    """A re-tune's :func:`autotune.device.fingerprint.fingerprint_id` (empty for ``run``'s studies)."""

    @classmethod
    def of(cls, kernel: str, variant: str, shape: Mapping[str, int], device_key: str, space_id: str,
           fingerprint_id: str = "") -> StudyKey:
        """Build from a shape mapping (dimension order is kept)."""
        return cls(kernel, variant, tuple((k, int(v)) for k, v in shape.items()), device_key, space_id,
                   fingerprint_id)

    @property
    def shape_dict(self) -> dict[str, int]:
        """The shape as a dict."""
        return dict(self.shape)

    @property
    def name(self) -> str:
        """``kernel.variant.M16_N5760_...device.s<space>``, then ``.f<fingerprint id>`` for a re-tune."""
        dims = "_".join(f"{k}{v}" for k, v in self.shape)
        name = f"{self.kernel}.{self.variant}.{dims}.{self.device_key}.s{self.space_id}"
        return f"{name}.f{self.fingerprint_id}" if self.fingerprint_id else name


OBJECTIVE = "median_us"
"""The name of every study's objective (``study.set_metric_names``): the median run time in microseconds, which
optuna-dashboard then shows instead of "Objective 0"."""


def create(storage, key: StudyKey, sampler, *, device_info: dict[str, Any]):
    """Create the study or load it if it exists (``direction="minimize"``: the objective is :data:`OBJECTIVE`, median
    µs); its user attributes hold the key's kernel, variant, shape, device key and search-space id and the device info.

    Returns:
        The ``optuna.Study``.
    """
    import warnings

    import optuna

    study = optuna.create_study(storage=storage, study_name=key.name, sampler=sampler, direction="minimize",
                                load_if_exists=True)
    if study.metric_names != [OBJECTIVE]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])
    attrs = study.user_attrs
    for name, value in (("kernel", key.kernel), ("variant", key.variant), ("shape", key.shape_dict),
                        ("device_key", key.device_key), ("space_id", key.space_id), ("device", device_info),
                        *((("fingerprint_id", key.fingerprint_id),) if key.fingerprint_id else ())):
        if attrs.get(name) != value:
            study.set_user_attr(name, value)
    return study


def key_of(study_summary_attrs: Mapping[str, Any]) -> StudyKey | None:
    """The :class:`StudyKey` stored in a study's user attributes, or None for a study this tool did not create."""
    try:
        return StudyKey.of(study_summary_attrs["kernel"], study_summary_attrs["variant"],
                           study_summary_attrs["shape"], study_summary_attrs["device_key"],
                           study_summary_attrs.get("space_id", "0"), study_summary_attrs.get("fingerprint_id", ""))
    except (KeyError, TypeError, AttributeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_attr(study, trial, key: str, value: Any) -> None:
    study._storage.set_trial_user_attr(trial._trial_id, key, value)  # noqa: SLF001 - Optuna has no public setter


def recover_interrupted(study, stale_after: timedelta) -> list[int]:
    """Fail the RUNNING trials whose process is gone, and queue their configs again.

    A trial is interrupted when it was asked on this host by a process that no longer runs, when it has no owner
    recorded and started more than a minute ago, or when it started longer than ``stale_after`` ago on any host (no
    live tuner keeps a trial that long: its worker is killed at the trial timeout; a storage copied from another
    machine has such trials). Younger trials of live processes or of other hosts are left alone (another tuner may be
    working on the same storage).

    Args:
        study: the ``optuna.Study``.
        stale_after: age past which any RUNNING trial is dead (a few trial timeouts).

    Returns:
        The numbers of the trials failed.
    """
    from optuna.trial import TrialState

    now = datetime.now()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
        age = now - (trial.datetime_start or now)
        if age > stale_after:
            orphan = True
        elif host is None or pid is None:
            orphan = age > NO_OWNER_GRACE
        else:
            orphan = host == HOST and not _pid_alive(int(pid))
        if not orphan:
            continue
        _set_attr(study, trial, "kind", Kind.INTERRUPTED.value)
        _set_attr(study, trial, "error", "the tuner process was killed while this trial ran; its config was re-queued")
        study.tell(trial.number, state=trial_state(Kind.INTERRUPTED))
        failed.append(trial.number)
        requeue(study, trial)
    return failed


def requeue(study, trial) -> None:
    """Queue the config of a trial that failed through no fault of its own (its tuner was killed, its machine left
    the Ray cluster), marked ``source="requeued"`` and ``requeued_from`` its number; a trial that never got a config
    is not queued."""
    if "config" in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={"source": "requeued", "requeued_from": trial.number})


def known_config_hashes(study) -> set[str]:
    """Config hashes of every trial already asked (running or finished) in the study."""
    return {trial.user_attrs["config_hash"] for trial in study.get_trials(deepcopy=False)
            if "config_hash" in trial.user_attrs}


def _queued_hashes(study, space: SearchSpace) -> set[str]:
    from optuna.trial import TrialState

    hashes = set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        fixed = trial.system_attrs.get("fixed_params", {})
        try:
            hashes.add(config_hash(space.validate(fixed)))
        except Exception:  # noqa: BLE001 - a queued config from an older space; it will be judged when asked
            continue
    return hashes


def enqueue(study, space: SearchSpace, config: Config, source: str, *, enqueued_from: str | None = None,
            again: bool = False, **attrs: Any) -> bool:
    """Queue a (validated) config unless an identical one was already run or queued (``again``: unless queued; for
    configs to measure again under a new fingerprint).

    Args:
        study: the ``optuna.Study``.
        space: its search space.
        config: the config.
        source: where it comes from (the trial's ``source`` user attribute: default, user, warm_start, old_winner...).
        enqueued_from: the trial's ``enqueued_from`` (default: ``source``), e.g. "neighbour:M=16".
        again: queue it even if an identical config was already measured.
        attrs: more user attributes of the queued trial, JSON values.

    Returns:
        True if it was queued.
    """
    digest = config_hash(config)
    if digest in _queued_hashes(study, space) or (not again and digest in known_config_hashes(study)):
        return False
    study.enqueue_trial(space.optuna_params(config),
                        user_attrs={**attrs, "source": source, "enqueued_from": enqueued_from or source})
    return True


@dataclass(frozen=True)
class WarmStart:
    """A config queued ahead of the sampler by a re-tune (the old winner, a neighbouring shape's winner).

    Attributes:
        config: the config (validated against the study's space).
        source: the trial's ``source`` user attribute (``old_winner``, ``neighbour``).
        attrs: more user attributes of the trial (``enqueued_from``, ``neighbour_key``).
        retime: re-time it beside the finalists even when it is not among the best (the old winner: old ÷ new is
            then measured by the same worker in the same session).
    """

    config: Config
    source: str
    attrs: Mapping[str, Any]
    retime: bool = False


def claim(trial, config: Config) -> None:
    """Record the owner and the config on a freshly asked trial (first thing after ``ask``)."""
    trial.set_user_attr("host", HOST)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("config", config_json(config))
    trial.set_user_attr("config_hash", config_hash(config))
    trial.set_user_attr("source", trial.user_attrs.get("source", "sampler"))


def record_result(study, trial, result: Result):
    """Store a worker's :class:`~autotune.tuning.records.Result` on the trial (:meth:`Result.trial_attrs`) and finish
    it with the state its outcome maps to.

    Returns:
        The finished ``FrozenTrial``.
    """
    for name, value in result.trial_attrs().items():
        trial.set_user_attr(name, value)
    if result.ok:
        return study.tell(trial, result.median_us)
    return study.tell(trial, state=trial_state(result.kind))


def record_pruned(study, trial, reason: str):
    """Finish a trial that a constraint rejected before any compile."""
    trial.set_user_attr("kind", Kind.PRUNED.value)
    trial.set_user_attr("pruned_reason", reason)
    return study.tell(trial, state=trial_state(Kind.PRUNED))


def record_duplicate(study, trial, original) -> Any:
    """Finish a trial whose config was already measured: same value, no second measurement."""
    trial.set_user_attr("kind", Kind.OK.value)
    trial.set_user_attr("duplicate_of", original.number)
    for name in ("median_us", *ENTRY_METRICS):
        if name in original.user_attrs:
            trial.set_user_attr(name, original.user_attrs[name])
    return study.tell(trial, original.value)


def record_repeat(study, trial, original, reason: str):
    """Prune a trial whose config another trial of the study already failed with, or is measuring right now (no
    second measurement, no budget): ``duplicate_of`` names that trial, ``pruned_reason`` says why."""
    trial.set_user_attr("kind", Kind.PRUNED.value)
    trial.set_user_attr("duplicate_of", original.number)
    trial.set_user_attr("pruned_reason", reason)
    return study.tell(trial, state=trial_state(Kind.PRUNED))


def set_finalists(study, finalists: list[dict[str, Any]], fingerprint: dict[str, Any], *, after_trial: int) -> None:
    """Store the re-timed finalists (best first), the fingerprint they were measured under, when, and the number of
    the last measured trial they account for."""
    study.set_user_attr("finalists", finalists)
    study.set_user_attr("finalists_fingerprint", fingerprint)
    study.set_user_attr("finalists_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    study.set_user_attr("finalists_after_trial", after_trial)


def config_of(trial) -> Config:
    """The full config of a trial (from its ``config`` user attribute)."""
    return json.loads(trial.user_attrs["config"])


def measured_us(study, config: Config) -> float | None:
    """The study's figure for ``config``: its re-timed finalist median when the study has finalists (None if it was
    not among them or failed its re-check), else the value of its COMPLETE trial (None if never measured), in µs."""
    from optuna.trial import TrialState

    digest = config_hash(config)
    finalists = study.user_attrs.get("finalists")
    if finalists:
        return next((f["median_us"] for f in finalists if config_hash(f["config"]) == digest), None)
    return next((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("config_hash") == digest and "duplicate_of" not in t.user_attrs), None)
