"""Exception hierarchy of the autotuner.

Only :class:`UserError` and its subclasses cross the command-line boundary: the CLI prints their message on one
line of stderr and exits with code 2 (no traceback). Failures of a single *trial* (compile errors, wrong results,
hangs, crashed workers) are never raised to the study loop: the worker classifies them into a
:class:`autotune.tuning.outcomes.Outcome`, and :mod:`autotune.outcomes` maps them to Optuna trial states in one place.
"""

from __future__ import annotations


class AutotuneError(Exception):
    """Base class of every error this package raises on purpose."""


class UserError(AutotuneError):
    """Bad input from the user (flags, files, URLs). The CLI prints ``str(err)`` and exits with code 2."""

    exit_code = 2


class UnknownKernelError(UserError):
    """A kernel or variant name that is not registered."""


class ShapeSpecError(UserError):
    """A malformed ``--shapes`` string or preset shape block."""


class ConfigError(UserError):
    """A config (``--enqueue`` JSON, a table entry) that does not fit the kernel's search space."""


class PresetError(UserError):
    """A preset file that is missing, unreadable or malformed."""


class StorageError(UserError):
    """An Optuna storage URL that cannot be opened."""


class TableError(UserError):
    """A lookup table that is unreadable, corrupt, of a foreign format or of a newer schema.

    The message always names the file. A table that raised this error is never overwritten.
    """


class ClusterError(UserError):
    """A Ray cluster (``run --ray``) that cannot be reached, cannot place the workers asked for, or lost every
    evaluation worker mid-run (the storage stays resumable: rerun the same command)."""
