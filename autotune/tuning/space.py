"""Search spaces: typed parameters, constraints with reasons, a default; turning Optuna trials into configs.

A kernel's search space lives in ``search_spaces/<kernel>.py`` as plain data and small functions; this module gives
them one shape (:class:`SearchSpace`) and does the Optuna side. Parameters are categorical (block sizes are powers of
two, so a categorical over the listed values is the natural distribution) and may be conditional: a parameter whose
``when`` predicate is false for the values chosen so far is not suggested and takes its ``inactive`` value, so
Optuna never spends trials on settings that do not apply (e.g. ``programs_per_sm`` of a non-persistent schedule).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.errors import ConfigError
from kernels import next_pow2  # noqa: F401 - re-exported for the search spaces

Config = dict[str, Any]
"""A config is a plain JSON-ready dict of parameter name → value."""

Constraint = Callable[[Mapping[str, Any], Mapping[str, int], Any], "str | None"]
"""``constraint(config, shape, device) -> reason or None``; ``device`` is a :class:`autotune.device.DeviceProfile`."""


@dataclass(frozen=True)
class Param:
    """One tunable.

    Attributes:
        name: config key (the kernel's field name).
        choices: the values the sampler may pick, in a meaningful order.
        when: predicate on the values chosen before this one; None means always active.
        inactive: the value used when ``when`` is false.
        doc: one line on what it changes.
        implied: ``(earlier_name, earlier_value, value)`` triples: when the parameter is inactive and an earlier
            parameter took ``earlier_value``, its value is ``value`` instead of ``inactive`` (e.g. moe_gemm's
            ``dequant = "dp4a"`` exists only on ``path = "gemv"``, so it fixes the path).
    """

    name: str
    choices: tuple
    when: Callable[[Mapping[str, Any]], bool] | None = None
    inactive: Any = None
    doc: str = ""
    implied: tuple = ()

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter applies given the earlier choices."""
        return self.when is None or bool(self.when(chosen))

    def inactive_value(self, chosen: Mapping[str, Any]) -> Any:
        """The value of this parameter when it is inactive, given the earlier choices (see ``implied``)."""
        for earlier, earlier_value, value in self.implied:
            if chosen.get(earlier) == earlier_value:
                return value
        return self.inactive


def _is_choice(value: Any, choices: Sequence) -> bool:
    """Equal to a choice and of the same type (16.0 and True are not the choice 16 or 1)."""
    return any(value == choice and type(value) is type(choice) for choice in choices)


def config_json(config: Mapping[str, Any]) -> str:
    """Canonical JSON of a config (sorted keys, no spaces): equal configs give equal strings."""
    return json.dumps(dict(config), sort_keys=True, separators=(",", ":"))


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash of a config (first 12 hex digits of the SHA-256 of its canonical JSON)."""
    return hashlib.sha256(config_json(config).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SearchSpace:
    """A kernel's tunables for one variant and shape.

    Attributes:
        params: the parameters in suggestion order (a ``when`` may only read earlier ones).
        constraints: functions returning a reason when a config cannot work on a device.
        default: the heuristic config for the shape and device.
        coupled: pairs of numeric parameters that the incumbent moves (:mod:`autotune.tuning.local_moves`) also
            step together, each to its next offered value in the same direction, before the one-parameter moves:
            parameters whose useful values scale with each other (a flash-attention query tile and its warps), so
            that changing one alone is slower and both together faster. Not part of the sampled space.
    """

    params: tuple[Param, ...]
    constraints: tuple[Constraint, ...]
    default: Config
    coupled: tuple[tuple[str, str], ...] = ()

    def suggest(self, trial) -> Config:
        """Sample a config from an Optuna trial (active parameters only).

        Args:
            trial: an ``optuna.Trial``.

        Returns:
            The config, inactive parameters set to their ``inactive`` value.
        """
        config: Config = {}
        for param in self.params:
            if param.active(config):
                config[param.name] = trial.suggest_categorical(param.name, list(param.choices))
            else:
                config[param.name] = param.inactive_value(config)
        return config

    def optuna_params(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The subset of ``config`` that Optuna stores as trial params (the active parameters)."""
        out: dict[str, Any] = {}
        for param in self.params:
            if param.active(config):
                out[param.name] = config[param.name]
        return out

    def validate(self, config: Mapping[str, Any]) -> Config:
        """Complete and check a user-supplied config (e.g. ``--enqueue``).

        Missing parameters take the default's value; every active value must be one of the choices.

        Returns:
            The completed config.

        Raises:
            ConfigError: on unknown keys or values outside the choices.
        """
        names = {param.name for param in self.params}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ConfigError(f"unknown parameters {unknown}; known: {sorted(names)}")
        full: Config = {}
        for param in self.params:
            if not param.active(full):
                full[param.name] = param.inactive_value(full)
                continue
            if param.name in config:
                value = config[param.name]
            elif _is_choice(self.default[param.name], param.choices):
                value = self.default[param.name]
            else:  # inactive in the default, made active by the user's other values
                value = param.choices[0]
            if not _is_choice(value, param.choices):
                raise ConfigError(f"{param.name}={value!r} is not one of {list(param.choices)}")
            full[param.name] = value
        return full

    def check(self, config: Mapping[str, Any], shape: Mapping[str, int], device) -> str | None:
        """First reason the config cannot run on ``device`` at ``shape``, or None if it is feasible."""
        for constraint in self.constraints:
            reason = constraint(config, shape, device)
            if reason:
                return reason
        return None

    def signature(self) -> str:
        """Short hash of the parameters and their choices. Optuna refuses a categorical whose choices changed inside
        one study, so a study belongs to one signature: an edited space starts a new study."""
        spec = [(p.name, [repr(c) for c in p.choices], repr(p.inactive), *([repr(p.implied)] if p.implied else []))
                for p in self.params]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:6]


def space_size(params: Sequence[Param]) -> int:
    """Number of configs if every parameter were active (an upper bound on the space)."""
    size = 1
    for param in params:
        size *= len(param.choices)
    return size


def enumerate_configs(params: Sequence[Param], limit: int) -> list[Config] | None:
    """Every config of a space (inactive parameters at their ``inactive`` value), in parameter order.

    Args:
        params: the space's parameters (a ``when`` may only read earlier ones).
        limit: give up (return None) when :func:`space_size` exceeds this; enumeration is exact below it.

    Returns:
        The distinct configs, or None for a space too large to list.
    """
    if space_size(params) > limit:
        return None
    configs: list[Config] = [{}]
    for param in params:
        grown: list[Config] = []
        for partial in configs:
            if param.active(partial):
                grown.extend({**partial, param.name: choice} for choice in param.choices)
            else:
                grown.append({**partial, param.name: param.inactive_value(partial)})
        configs = grown
    return configs
