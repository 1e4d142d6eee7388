"""How a trial ends: the one place where exceptions become failure kinds and failure kinds become trial states.

The worker calls :func:`classify` on any exception raised while it compiles, checks or times a config; the study
loop calls :func:`trial_state` on the kind it gets back (or on the kind it decides itself: a hang past the trial
timeout, a worker that died). Nothing else maps errors to Optuna states.
"""

from __future__ import annotations

import enum


class Kind(str, enum.Enum):
    """Why a trial ended (``ok`` for a measured config)."""

    OK = "ok"
    PRUNED = "pruned"  # a constraint rejected the config before any compile
    INVALID_CONFIG = "invalid_config"  # the kernel's config class rejected it
    COMPILE_ERROR = "compile_error"
    OUT_OF_RESOURCES = "out_of_resources"  # shared memory / registers over the device limit at compile or launch
    OUT_OF_MEMORY = "out_of_memory"  # device memory for the inputs
    CUDA_ERROR = "cuda_error"  # illegal memory access and other sticky errors: the worker must restart
    RUNTIME_ERROR = "runtime_error"
    NAN = "nan"  # NaN/Inf in the output, or elements never written (outputs are pre-filled with NaN)
    WRONG_RESULT = "wrong_result"  # relative error above the tolerance
    TIMEOUT = "timeout"  # no answer within --trial-timeout: the worker was killed
    WORKER_DIED = "worker_died"  # the worker process exited (segfault, os._exit, killed)
    NODE_LOST = "node_lost"  # the machine of a remote (Ray) worker left the cluster mid-trial
    INTERRUPTED = "interrupted"  # the tuner process itself was killed while the trial ran; its config is re-queued


STICKY = {Kind.CUDA_ERROR, Kind.TIMEOUT, Kind.WORKER_DIED}
"""Kinds after which the worker process must not be reused."""

UNCOUNTED = {Kind.INTERRUPTED}
"""Kinds of trials that used no budget: the tuner died, not the config (they are re-queued and run again)."""


def classify(exc: BaseException, phase: str) -> Kind:
    """Failure kind of an exception raised by the worker in a phase ("config", "compile", "run", "time").

    Args:
        exc: the exception.
        phase: what the worker was doing.

    Returns:
        The :class:`Kind`.
    """
    name = type(exc).__name__
    text = str(exc)
    if name == "OutOfResources" or "out of resource" in text.lower():
        return Kind.OUT_OF_RESOURCES
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        return Kind.OUT_OF_MEMORY
    if "illegal memory access" in text or "CUDA error" in text or "cudaError" in text or name == "AcceleratorError":
        return Kind.CUDA_ERROR
    if phase == "config":
        return Kind.INVALID_CONFIG
    if name in {"CompilationError", "CompileTimeAssertionFailure", "PTXASError", "MLIRCompilationError"}:
        return Kind.COMPILE_ERROR
    if phase == "compile":
        return Kind.COMPILE_ERROR
    return Kind.RUNTIME_ERROR


def trial_state(kind: Kind):
    """The Optuna state of a trial that ended with ``kind``: COMPLETE (ok), PRUNED (constraints) or FAIL (every
    other kind, ``interrupted`` included: Optuna has no state for "the tuner died", the ``kind`` attribute says it)."""
    from optuna.trial import TrialState

    if kind is Kind.OK:
        return TrialState.COMPLETE
    if kind is Kind.PRUNED:
        return TrialState.PRUNED
    return TrialState.FAIL
