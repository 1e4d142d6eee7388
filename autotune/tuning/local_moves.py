"""Incumbent moves: before the sampler's own proposals, try the one-parameter changes of the best config so far.

Why: on the H200 (2026-12-02, ``scripts/results/search-h200``), the exhaustive sweeps of four reduced spaces put the
best config one or two parameter changes away from the default (mlp1 M = 2048: ``num_warps`` 4 → 8, then
``num_stages`` 3 → 4; attention prefill 2048: ``BLOCK_M`` 128 → 64 with ``num_warps`` 8 → 4), while TPE, random, QMC
and CMA-ES sampled whole configs and needed 24–39 measured trials to come within 2% of it at M = 2048. A
best-improvement hill climb (coordinate search) from the queued starts walks that distance in a few trials; the
sampler then spends the rest of the budget with those trials in its model.

A *move* changes one active parameter of the *centre* config: a numeric parameter to the next smaller or larger
offered value, any other parameter to each other offered value, in the space's parameter order. Moves the device
constraints reject, and configs the study has already asked (in any state, pruned and failed included), are
skipped, so a move never costs a pruned trial. The centre is the best COMPLETE trial when the moves start; once all
its moves were asked and measured, the best COMPLETE trial becomes the next centre, and when that is the same
config again (no move improved on it) it is a local optimum and the moves stop. (First improvement, re-centring on
the first better move, was tried on the same sweeps and stuck at 0.965 of the M = 2048 best: the first move,
``dequant``, improved a little and led away from ``num_warps = 8``.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from autotune.errors import ConfigError
from autotune.tuning import study as study_mod
from autotune.tuning.space import Config, SearchSpace, config_hash

MOVES_FRACTION = 0.5
"""At most this fraction of a study's measured-trial budget goes to moves; the sampler keeps the rest (a local
optimum of the moves is not the global one: the M = 64 sweep's best three configs differ in two parameters)."""


def move_budget(n_trials: int) -> int:
    """Moves a study of ``n_trials`` measured trials may queue (:data:`MOVES_FRACTION` of it, rounded down)."""
    return int(n_trials * MOVES_FRACTION)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def moves(space: SearchSpace, config: Mapping) -> Iterator[tuple[str, object, Config]]:
    """The one-parameter moves of ``config``: ``(parameter, new value, validated config)`` in parameter order.

    A move that switches a condition on (``dequant`` away from ``dot_scaled`` activates ``path``) completes the newly
    active parameters from the default, as :meth:`SearchSpace.validate` does.
    """
    for param in space.params:
        if not param.active(config):
            continue
        current = config[param.name]
        choices = list(param.choices)
        if all(_is_number(c) for c in choices) and current in choices:
            ordered = sorted(choices)
            at = ordered.index(current)
            targets = [ordered[i] for i in (at - 1, at + 1) if 0 <= i < len(ordered)]
        else:
            targets = [c for c in choices if not (c == current and type(c) is type(current))]
        for value in targets:
            try:
                yield param.name, value, space.validate({**config, param.name: value})
            except ConfigError:
                continue


def next_move(space: SearchSpace, incumbent: Mapping, asked: set[str], shape: Mapping[str, int],
              device) -> tuple[str, object, Config] | None:
    """The first move of ``incumbent`` whose config is feasible on ``device`` at ``shape`` and not in ``asked``
    (config hashes); None at a local optimum."""
    for name, value, config in moves(space, incumbent):
        if config_hash(config) in asked or space.check(config, shape, device):
            continue
        return name, value, config
    return None


class IncumbentMoves:
    """Queues the centre's next move into an Optuna study whenever its queue is empty (call :meth:`before_ask` right
    before each ``study.ask()``).

    Args:
        space: the study's search space.
        shape: the problem shape its constraints read.
        device: the :class:`autotune.device.DeviceProfile` its constraints read.
        limit: most moves to queue in this study (see :func:`move_budget`); moves queued by earlier runs on the same
            storage count too (their trials carry ``enqueued_from="move:..."``).

    Trials are read and queued as the tuner keeps them: the config from the ``config``/``config_hash`` user attributes
    that :func:`autotune.tuning.study.claim` sets, a move queued by :func:`autotune.tuning.study.enqueue` with
    ``source="move"``.
    """

    def __init__(self, space: SearchSpace, shape: Mapping[str, int], device, limit: int) -> None:
        self.space, self.shape, self.device, self.limit = space, shape, device, limit
        self._centre: tuple[int, Config] | None = None  # (trial number, config)
        self._done = False

    def before_ask(self, study) -> str | None:
        """Queue one move if nothing is queued, a trial is complete and the limit allows; returns its label
        (``"move:num_warps=8 of trial 3"``) or None."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        if self._done or self.limit <= 0 or any(t.state == TrialState.WAITING for t in trials):
            return None
        if sum(1 for t in trials if str(t.user_attrs.get("enqueued_from", "")).startswith("move:")) >= self.limit:
            return None
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not complete:
            return None
        asked = {t.user_attrs["config_hash"] for t in trials if "config_hash" in t.user_attrs}
        for _ in range(2):
            if self._centre is None:
                best = min(complete, key=lambda t: t.value)
                self._centre = (best.number, study_mod.config_of(best))
            number, centre = self._centre
            move = next_move(self.space, centre, asked, self.shape, self.device)
            if move is not None:
                name, value, config = move
                label = f"move:{name}={value} of trial {number}"
                study_mod.enqueue(study, self.space, config, source="move", enqueued_from=label)
                return label
            if any(t.state == TrialState.RUNNING for t in trials):
                return None  # the centre's last moves are still being measured: re-centre when they are in
            best = min(complete, key=lambda t: t.value)
            if best.user_attrs["config_hash"] == config_hash(centre):
                self._done = True  # a local optimum: every move of the centre was measured and none was better
                return None
            self._centre = None
        return None
