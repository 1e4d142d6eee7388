"""The live progress line of a study (tqdm on a terminal, one summary line per study otherwise)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from autotune.tuning.tuner import measured_count

FAILED_LINE_CHARS = 200
"""A failed trial's line on the terminal is cut to this many characters (the full text is on the trial)."""


class StudyProgress:
    """Progress of one study: measured trials against the budget, best and default median µs so far."""

    def __init__(self, study, name: str, budget: int) -> None:
        from optuna.trial import TrialState

        done = measured_count(study)
        self.name = name
        self.best: float | None = None
        self.default: float | None = None
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self._see(trial)
        self.bar = tqdm(total=budget, initial=min(done, budget), desc=name, unit="trial", leave=True,
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)
        self._refresh()

    def _see(self, trial) -> None:
        if trial.value is None:
            return
        if self.best is None or trial.value < self.best:
            self.best = trial.value
        if trial.user_attrs.get("source") == "default":
            self.default = trial.value

    def _refresh(self) -> None:
        parts = {}
        if self.best is not None:
            parts["best_us"] = f"{self.best:.1f}"
        if self.default is not None:
            parts["default_us"] = f"{self.default:.1f}"
        self.bar.set_postfix(parts, refresh=True)

    def update(self, trial) -> None:
        """Account for a finished trial; a failed one gets one line (its first error line), never more."""
        from optuna.trial import TrialState

        self._see(trial)
        if trial.state == TrialState.COMPLETE and "duplicate_of" not in trial.user_attrs:
            self.bar.update(1)
        elif trial.state == TrialState.FAIL:
            first = (trial.user_attrs.get("error") or "").strip().splitlines()[:1]
            line = f"  {self.name} trial {trial.number} failed: {trial.user_attrs.get('kind')}"
            tqdm.write(f"{line}: {first[0]}"[:FAILED_LINE_CHARS] if first else line, file=sys.stderr)
        self._refresh()

    def note(self, text: str) -> None:
        """Show a phase name after the counters."""
        self.bar.set_description_str(f"{self.name} [{text}]")

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()

    def summary(self, report) -> None:
        """One line per study on stderr."""
        best = f"{report.best_us:.1f} us" if report.best_us else "-"
        default = f"{report.default_us:.1f} us" if report.default_us else "-"
        speed = f" ({report.default_us / report.best_us:.2f}x)" if report.best_us and report.default_us else ""
        ahead = ""
        if report.precompiled:
            ahead = f", compiled ahead {report.precompiled.count('ok')}/{len(report.precompiled)}"
        print(f"{self.name}: best {best}, default {default}{speed}; this run {report.measured} measured, "
              f"{report.pruned} pruned, {report.failed} failed, {report.duplicates} repeats{ahead}"
              f"{'; ' + report.stop_reason if report.stop_reason else ''}", file=sys.stderr,
              flush=True)
