"""The worker processes of a run: evaluation workers (one per GPU, or one under the Triton interpreter) and, on
GPUs, compile workers that fill Triton's cache ahead of the evaluation workers.

Compiling a config takes about a second of CPU (measured on the H100 host, Triton 3.6), timing it about as long on
the GPU; with compile workers the two overlap, and several configs compile at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune.tuning.worker import Worker


@dataclass(frozen=True)
class DeviceGroup:
    """The workers of a pool that share one device key: the studies of that key run on them and on nothing else,
    so timings of different GPU kinds never meet in one study.

    Attributes:
        device: their :class:`autotune.device.DeviceProfile`.
        workers: evaluation workers (``evaluate(job, timeout_s) -> Result``, ``retired``).
        compilers: compile-ahead workers serving them.
    """

    device: Any
    workers: list
    compilers: list


class WorkerPool:
    """Start and own the workers.

    Args:
        gpus: CUDA device indices, one evaluation worker each; ignored with ``interpreter``.
        interpreter: one worker under ``TRITON_INTERPRET=1`` (and no compile workers: nothing to compile).
        compile_workers: processes that only compile, on the first GPU.
        start_timeout_s: per worker start-up limit.

    Raises:
        WorkerStartError: from :meth:`start` when a worker does not come up.
        RuntimeError: when the GPUs are of different kinds (their timings would not be comparable).
    """

    def __init__(self, gpus: list[int], *, interpreter: bool, compile_workers: int = 0,
                 start_timeout_s: float = 180.0) -> None:
        targets = [None] if interpreter else list(gpus)
        self.workers = [Worker(gpu, interpreter=interpreter, start_timeout_s=start_timeout_s) for gpu in targets]
        count = 0 if interpreter or not targets else compile_workers
        self.compilers = [Worker(targets[0], interpreter=False, start_timeout_s=start_timeout_s)
                          for _ in range(count)]

    def start(self):
        """Start every worker (in parallel: each imports torch); returns the device profile the evaluation workers
        share."""
        from concurrent.futures import ThreadPoolExecutor

        everyone = self.workers + self.compilers
        with ThreadPoolExecutor(max_workers=len(everyone)) as executor:
            for future in [executor.submit(worker.start) for worker in everyone]:
                future.result()
        keys = {worker.device.key for worker in self.workers}
        if len(keys) > 1:
            self.close()
            raise RuntimeError(f"workers see different devices {sorted(keys)}: tune one kind of GPU per run")
        return self.workers[0].device

    def groups(self) -> list[DeviceGroup]:
        """The one device group of a local pool (:meth:`start` refused GPUs of different kinds)."""
        return [DeviceGroup(self.workers[0].device, self.workers, self.compilers)]

    def close(self) -> None:
        """Stop every worker, all at once (each may take seconds to exit)."""
        from concurrent.futures import ThreadPoolExecutor

        everyone = self.workers + self.compilers
        with ThreadPoolExecutor(max_workers=max(1, len(everyone))) as executor:
            list(executor.map(lambda worker: worker.stop(), everyone))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
