"""A pool of evaluation workers: one per GPU, or one running the Triton interpreter on a machine without a GPU."""

from __future__ import annotations

from autotune.worker import Worker


class WorkerPool:
    """Start and own the workers.

    Args:
        gpus: CUDA device indices, one worker each; ignored with ``interpreter``.
        interpreter: one worker under ``TRITON_INTERPRET=1``.
        start_timeout_s: per worker start-up limit.

    Raises:
        WorkerStartError: from :meth:`start` when a worker does not come up.
        RuntimeError: when the GPUs are of different kinds (their timings would not be comparable).
    """

    def __init__(self, gpus: list[int], *, interpreter: bool, start_timeout_s: float = 180.0) -> None:
        targets = [None] if interpreter else list(gpus)
        self.workers = [Worker(gpu, interpreter=interpreter, start_timeout_s=start_timeout_s) for gpu in targets]

    def start(self):
        """Start every worker; returns the device profile they share."""
        for worker in self.workers:
            worker.start()
        keys = {worker.device.key for worker in self.workers}
        if len(keys) > 1:
            self.close()
            raise RuntimeError(f"workers see different devices {sorted(keys)}: tune one kind of GPU per run")
        return self.workers[0].device

    def close(self) -> None:
        """Stop every worker."""
        for worker in self.workers:
            worker.stop()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
