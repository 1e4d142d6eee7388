"""A study's budget, counted from the storage, and the reason a study stopped.

``--trials N`` asks for N *measured* trials: COMPLETE trials that really ran (not answered as a repeat of an earlier
trial). Pruned configs (a constraint rejected them), failed configs (compile error, wrong result, hang...) and
repeats cost asks, not budget; a cap on asks (:data:`MAX_ASKS_PER_TRIAL` per budgeted trial) ends a study whose
sampler keeps proposing configs that cannot run. A time limit applies only when one was given.

Every count is read from the storage, not kept in the process: two ``run`` commands on one storage then share the
budget of a study (each counts the other's completed and running trials) instead of each spending all of it.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from autotune.tuning.outcomes import UNCOUNTED

MAX_ASKS_PER_TRIAL = 20
"""Give up after this many asks per budgeted trial (pruned, failed and repeated configs cost asks, not budget)."""


class StopReason(str, enum.Enum):
    """Why a study stopped asking for new trials (printed in its summary line)."""

    TRIALS = "trials reached"
    TIMEOUT = "timeout"
    EXHAUSTED = "space exhausted"
    ASK_CAP = "ask cap"


_UNCOUNTED_KINDS = frozenset(kind.value for kind in UNCOUNTED)


@dataclass(frozen=True)
class StudyCounts:
    """One read of a study's trials from the storage.

    Attributes:
        completed: COMPLETE trials that were measured (not repeats): the budget spent.
        running: RUNNING trials (of this process or another one on the same storage).
        waiting: queued (WAITING) trials: the default, ``--enqueue`` and warm-start configs, re-queued ones.
        seen: config hashes of every claimed trial, whatever its state.
        first_by_hash: config hash → the first trial with that config that was not a repeat, not interrupted and not
            cut by a lost Ray actor or node (the trial a later identical config is answered from).
    """

    completed: int
    running: int
    waiting: int
    seen: frozenset[str]
    first_by_hash: dict[str, object] = field(repr=False)

    @classmethod
    def read(cls, study, fingerprint_id: str | None = None) -> StudyCounts:
        """Count the study's trials (one storage query).

        Args:
            fingerprint_id: when given, only trials measured under it (user attribute ``fingerprint_id``; a trial
                without one counts as measured under it) answer later identical configs: under a new fingerprint
                an old winner is measured again.
        """
        from optuna.trial import TrialState

        completed = running = waiting = 0
        seen: set[str] = set()
        first: dict[str, object] = {}
        for trial in study.get_trials(deepcopy=False):
            attrs = trial.user_attrs
            repeat = "duplicate_of" in attrs
            if trial.state == TrialState.WAITING:
                waiting += 1
                continue
            if trial.state == TrialState.RUNNING:
                running += 1  # claimed or not yet (asked a moment ago by another process)
            digest = attrs.get("config_hash")
            if digest is None:
                continue
            seen.add(digest)
            if trial.state == TrialState.COMPLETE and not repeat:
                completed += 1
            current = fingerprint_id is None or attrs.get("fingerprint_id", fingerprint_id) == fingerprint_id
            if not repeat and current and attrs.get("kind") not in _UNCOUNTED_KINDS and not attrs.get("lost"):
                earlier = first.get(digest)
                if earlier is None or trial.number < earlier.number:
                    first[digest] = trial
        return cls(completed, running, waiting, frozenset(seen), first)


def completed_count(study) -> int:
    """Measured trials of a study (COMPLETE, not repeats), across every run on its storage."""
    return StudyCounts.read(study).completed


@dataclass
class Budget:
    """When a study may ask for another trial.

    Args:
        n_trials: measured trials wanted (COMPLETE, across runs and processes).
        timeout_s: seconds from now after which no new trial starts; None for no time limit.
        space_configs: number of distinct configs in the space (None when too large to list: never exhausted).
        max_asks: asks allowed in this run (default ``MAX_ASKS_PER_TRIAL * n_trials``).
    """

    n_trials: int
    timeout_s: float | None = None
    space_configs: int | None = None
    max_asks: int | None = None
    asks: int = 0
    deadline: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ValueError(f"n_trials must be >= 1, got {self.n_trials}")
        self.deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        if self.max_asks is None:
            self.max_asks = MAX_ASKS_PER_TRIAL * self.n_trials

    def blocker(self, counts: StudyCounts) -> StopReason | None:
        """The reason not to ask now, or None to ask.

        Queued configs are asked for even past the budget and the ask cap (a user or a warm start asked for them),
        never past the time limit. ``TRIALS`` is returned as soon as completed + running trials fill the budget: the
        caller waits for the running ones (they may fail and free budget again) before it stops.
        """
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return StopReason.TIMEOUT
        if counts.waiting:
            return None
        if counts.completed + counts.running >= self.n_trials:
            return StopReason.TRIALS
        if self.space_configs is not None and len(counts.seen) >= self.space_configs:
            return StopReason.EXHAUSTED
        if self.asks >= self.max_asks:
            return StopReason.ASK_CAP
        return None

    def describe(self, reason: StopReason, counts: StudyCounts) -> str:
        """The summary-line text: e.g. ``stopped: trials reached (12/12 measured)``."""
        detail = {
            StopReason.TRIALS: f"{counts.completed}/{self.n_trials} measured",
            StopReason.TIMEOUT: f"time limit {self.timeout_s:g} s, {counts.completed}/{self.n_trials} measured"
            if self.timeout_s else "",
            StopReason.EXHAUSTED: f"all {self.space_configs} configs tried, {counts.completed} measured",
            StopReason.ASK_CAP: f"{self.asks} asks, {counts.completed}/{self.n_trials} measured",
        }[reason]
        return f"stopped: {reason.value} ({detail})"
