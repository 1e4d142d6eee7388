"""GPU worker processes: each evaluates configs in its own spawned process, so that a crash, a sticky CUDA error
(an illegal memory access poisons the whole CUDA context: pytorch#95542, triton#6224) or a hang costs one trial and a
restart, never the study.

The parent talks to a worker over a pipe: one :class:`~autotune.tuning.records.Job` in, one
:class:`~autotune.tuning.records.Result` out. :meth:`Worker.evaluate` waits at
most the trial timeout; on silence it kills the process (a hung kernel cannot be interrupted otherwise) and reports
``timeout``; if the process exits it reports ``worker_died`` with the exit code. After any sticky outcome
(:data:`autotune.tuning.outcomes.STICKY`) the worker is restarted before its next job.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import signal
import time
from dataclasses import replace

from autotune.tuning.capture import capture_fds
from autotune.tuning.outcomes import STICKY, Kind
from autotune.tuning.records import Job, Result


def _exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Watchdog thread: end this process when the tuner that spawned it is gone (killed with SIGKILL, say), even
    while a job hangs in a kernel, so no orphan keeps the GPU busy."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_main(conn, env: dict[str, str], parent_pid: int) -> None:
    """Entry point of the spawned process: set the environment, report the device, serve jobs.

    SIGINT is ignored here (and blocked from the spawn until now, see :meth:`Worker.start`): Ctrl-C reaches every
    process of the terminal's foreground group, and the tuner, not its workers, decides how a run stops (it stops
    them); a worker that took the signal would print its own KeyboardInterrupt traceback first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _exit_with_parent(parent_pid)
    os.environ.update(env)
    from autotune import device as device_mod
    from autotune import registry
    from autotune.tuning.evaluate import Evaluator

    registry.load_plugins()
    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    profile = device_mod.INTERPRETER if interpreter else device_mod.detect(0)
    evaluator = Evaluator(profile, "cpu" if interpreter else "cuda")
    conn.send({"ready": True, "pid": os.getpid(), "device": profile})
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        with capture_fds() as captured:  # compiler noise goes to the trial and the log, not the terminal
            result = evaluator.precompile(job) if job.compile_only else evaluator.evaluate(job)
        if captured.text.strip():
            result = replace(result, output=captured.text)
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return  # the tuner is gone
        if result.kind is Kind.CUDA_ERROR:
            os._exit(3)  # the CUDA context is unusable; the parent starts a fresh process


class WorkerStartError(RuntimeError):
    """A worker process did not come up (import error, no device)."""


class Worker:
    """One evaluation process bound to one GPU (or to the Triton interpreter).

    Args:
        gpu: CUDA device index for ``CUDA_VISIBLE_DEVICES``; None with ``interpreter``.
        interpreter: run kernels under ``TRITON_INTERPRET=1`` on the CPU.
        start_timeout_s: seconds to wait for the process to import torch/triton and report ready.

    Attributes:
        retired: always False here; a remote worker (:mod:`autotune.tuning.ray_pool`) sets it when its machine is gone,
            and the tuner then stops giving it jobs.
    """

    retired = False

    def __init__(self, gpu: int | None, *, interpreter: bool, start_timeout_s: float = 180.0) -> None:
        self.gpu = gpu
        self.interpreter = interpreter
        self.start_timeout_s = start_timeout_s
        self.device = None
        self.pid: int | None = None
        self.restarts = 0
        self._process = None
        self._conn = None
        self._closed = False

    def _env(self) -> dict[str, str]:
        env = {"TRITON_INTERPRET": "1"} if self.interpreter else {"TRITON_INTERPRET": "0"}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        return env

    def start(self) -> None:
        """Spawn the process and wait for its ready message (sets :attr:`device`).

        Raises:
            WorkerStartError: if it dies or stays silent past ``start_timeout_s``.
        """
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_worker_main, args=(child, self._env(), os.getpid()), daemon=True)
        # SIGINT stays blocked in the child until _worker_main ignores it: a Ctrl-C while it imports torch would
        # otherwise print a traceback from the child. The mask is per thread and inherited through the spawn.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child.close()
        self._conn = parent
        if not parent.poll(self.start_timeout_s):
            self.stop()
            raise WorkerStartError(f"worker for {self._label()} did not start within {self.start_timeout_s:.0f} s")
        try:
            hello = parent.recv()
        except EOFError as exc:
            code = self._process.exitcode
            self.stop()
            raise WorkerStartError(f"worker for {self._label()} exited during start-up (code {code})") from exc
        self.device = hello["device"]
        self.pid = hello["pid"]

    def _label(self) -> str:
        return "the Triton interpreter" if self.interpreter else f"GPU {self.gpu}"

    def alive(self) -> bool:
        """Whether the process is running."""
        return self._process is not None and self._process.is_alive()

    def stop(self) -> None:
        """Ask the process to exit, then kill it if it does not."""
        if self._process is None:
            return
        try:
            if self._process.is_alive() and self._conn is not None:
                self._conn.send(None)
                self._process.join(2.0)
        except (BrokenPipeError, OSError):
            pass
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5.0)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def interrupt(self) -> None:
        """End the process now, for good (the run is stopping): a job in flight returns an ``interrupted`` result at
        once and nothing is restarted. Safe to call from another thread than the one waiting in :meth:`evaluate`;
        :meth:`stop` cleans up afterwards."""
        self._closed = True
        process = self._process
        if process is not None and process.is_alive():
            process.kill()

    def restart(self) -> None:
        """Kill and start again."""
        self.stop()
        self.restarts += 1
        self.start()

    def evaluate(self, job: Job, timeout_s: float) -> Result:
        """Run one job, surviving whatever the job does to the process.

        Args:
            job: see :meth:`autotune.tuning.evaluate.Evaluator.evaluate`.
            timeout_s: wall-clock limit for compile + check + time.

        Returns:
            The worker's :class:`Result` (with :attr:`Result.where` set: this host, the GPU index, the device key),
            or one of kind ``timeout`` / ``worker_died`` with the reason.
        """
        if self._closed:
            return Result(kind=Kind.INTERRUPTED, error="the run is stopping")
        result = self._evaluate(job, timeout_s)
        key = self.device.key if self.device is not None else None
        return replace(result, where={"node": socket.gethostname(), "gpu": self.gpu, "device_key": key})

    def _evaluate(self, job: Job, timeout_s: float) -> Result:
        if not self.alive():
            self.restart()
        start = time.monotonic()
        try:
            self._conn.send(job)
            ready = self._conn.poll(timeout_s)
        except (BrokenPipeError, OSError):
            ready = True  # the process is gone; recv below reports it
        if not ready:
            if self._closed:
                return Result(kind=Kind.INTERRUPTED, error="the run stopped while this job ran")
            self._process.kill()
            self.restart()
            return Result(kind=Kind.TIMEOUT,
                          error=f"no result within the trial timeout of {timeout_s:.0f} s: worker killed")
        try:
            result = self._conn.recv()
        except (EOFError, OSError):
            if self._closed:
                return Result(kind=Kind.INTERRUPTED, error="the run stopped while this job ran")
            self._process.join(5.0)
            code = self._process.exitcode if self._process is not None else None
            self.restart()
            return Result(kind=Kind.WORKER_DIED,
                          error=f"worker process exited with code {code} after {time.monotonic() - start:.1f} s")
        if result.kind in STICKY:
            self.restart()
        return result
