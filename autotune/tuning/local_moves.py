"""Incumbent moves: before the sampler's own proposals, try the one-parameter changes of the best config so far.

Why: on the H200 (2026-12-02, ``scripts/results/search-h200``), the exhaustive sweeps of four reduced spaces put the
best config one or two parameter changes away from the default (mlp1 M = 2048: ``num_warps`` 4 → 8, then
``num_stages`` 3 → 4; attention prefill 2048: ``BLOCK_M`` 128 → 64 with ``num_warps`` 8 → 4), while TPE, random, QMC
and CMA-ES sampled whole configs and needed 24–39 measured trials to come within 2% of it at M = 2048. A
best-improvement hill climb (coordinate search) from the queued starts walks that distance in a few trials; the
sampler then spends the rest of the budget with those trials in its model.

A *move* changes one active parameter of the *centre* config: a numeric parameter to the next smaller or larger
offered value, any other parameter to each other offered value, in the space's parameter order. A space may also
declare *coupled* pairs (:attr:`SearchSpace.coupled`: the attention query tile with its warps) that move together,
one step each in the same direction; those moves come first. Moves the device
constraints reject, and configs the study has already asked (in any state, pruned and failed included), are
skipped, so a move never costs a pruned trial. The centre is the best COMPLETE trial when the moves start; once all
its moves were asked and measured (or as soon as one is :data:`RECENTRE_GAIN` faster than it), the best COMPLETE
trial becomes the next centre, and when that is the same
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


RECENTRE_GAIN = 0.05
"""A move at least this much faster than its centre becomes the centre at once, before the centre's other moves
(best improvement otherwise). Why: on the H200 sweeps of mlp1 M = 1 and M = 64 over both paths
(``scripts/results/search-h200``, 2026-12-03) the first centre offers 8-9 moves, more than half of a 10-trial budget,
and the ``dequant = upcast_ptx`` move alone was 1.10x and 1.44x faster than the default; small gains (the 1-2% of
``dequant`` at M = 2048 that led first improvement astray) still wait for the whole neighbourhood."""


def move_budget(n_trials: int) -> int:
    """Moves a study of ``n_trials`` measured trials may queue (:data:`MOVES_FRACTION` of it, rounded down)."""
    return int(n_trials * MOVES_FRACTION)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _step(param, current, direction: int):
    """The next offered number of ``param`` below (-1) or above (+1) ``current``; None at an end or for a
    non-numeric parameter."""
    choices = list(param.choices)
    if not (all(_is_number(c) for c in choices) and current in choices):
        return None
    ordered = sorted(choices)
    at = ordered.index(current) + direction
    return ordered[at] if 0 <= at < len(ordered) else None


def _neighbours(param, current) -> list:
    """The values a move sets ``param`` to from ``current``: the neighbouring offered numbers, else every other
    offered value."""
    if all(_is_number(c) for c in param.choices) and current in param.choices:
        return [v for v in (_step(param, current, -1), _step(param, current, 1)) if v is not None]
    return [c for c in param.choices if not (c == current and type(c) is type(current))]


def coupled_moves(space: SearchSpace, config: Mapping) -> Iterator[tuple[str, Config]]:
    """The joint moves of ``config`` over the space's :attr:`~SearchSpace.coupled` pairs: both parameters one
    offered value down, then both one up, as ``(change, validated config)`` with change ``"BLOCK_M=64,num_warps=4"``.

    Why: at attention prefill 2048 on the H200 (2026-12-02, ``scripts/results/search-h200``) the exhaustive best,
    BLOCK_M 64 with num_warps 4, is 1.03x faster than the default (128, 8), and neither change alone is faster
    (64 with 8 warps: 0.59x, 128 with 4: 0.93x): Triton lays the query rows over the warps, so the two scale
    together (:data:`search_spaces.attention.COUPLED`).
    """
    params = {p.name: p for p in space.params}
    for first, second in space.coupled:
        a, b = params[first], params[second]
        if not (a.active(config) and b.active(config)):
            continue
        for direction in (-1, 1):
            x, y = _step(a, config[first], direction), _step(b, config[second], direction)
            if x is None or y is None:
                continue
            try:
                yield f"{first}={x},{second}={y}", space.validate({**config, first: x, second: y})
            except ConfigError:
                continue


def moves(space: SearchSpace, config: Mapping) -> Iterator[tuple[str, Config]]:
    """The moves of ``config`` as ``(change, validated config)`` (change ``"num_warps=8"``): the coupled moves
    first (:func:`coupled_moves`), then the one-parameter moves in parameter order.

    A move that switches a condition on (``dequant`` away from ``dot_scaled`` activates ``path``) completes the newly
    active parameters from the default, as :meth:`SearchSpace.validate` does.
    """
    yield from coupled_moves(space, config)
    for param in space.params:
        if not param.active(config):
            continue
        for value in _neighbours(param, config[param.name]):
            try:
                yield f"{param.name}={value}", space.validate({**config, param.name: value})
            except ConfigError:
                continue


def next_move(space: SearchSpace, incumbent: Mapping, asked: set[str], shape: Mapping[str, int],
              device) -> tuple[str, Config] | None:
    """The first move ``(change, config)`` of ``incumbent`` whose config is feasible on ``device`` at ``shape`` and
    not in ``asked`` (config hashes); None at a local optimum."""
    for change, config in moves(space, incumbent):
        if config_hash(config) in asked or space.check(config, shape, device):
            continue
        return change, config
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
        self._centre: tuple[int, Config, float] | None = None  # (trial number, config, value)
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
            best = min(complete, key=lambda t: t.value)
            if self._centre is None or best.value <= self._centre[2] * (1 - RECENTRE_GAIN):
                self._centre = (best.number, study_mod.config_of(best), best.value)
            number, centre, _ = self._centre
            move = next_move(self.space, centre, asked, self.shape, self.device)
            if move is not None:
                change, config = move
                label = f"move:{change} of trial {number}"
                study_mod.enqueue(study, self.space, config, source="move", enqueued_from=label)
                return label
            if any(t.state == TrialState.RUNNING for t in trials):
                return None  # the centre's last moves are still being measured: re-centre when they are in
            if best.user_attrs["config_hash"] == config_hash(centre):
                self._done = True  # a local optimum: every move of the centre was measured and none was better
                return None
            self._centre = None
        return None
