"""``run --ray ADDRESS``: the workers of a run as Ray actors, spread over every GPU of a Ray cluster (the GPUs of
one machine, or two DGX Sparks joined with ``ray start``).

The same interface as :class:`autotune.tuning.pool.WorkerPool` (``start``, ``groups``, ``close``), so the tuner does
not know where its workers run. The driver (the ``run`` process) keeps the Optuna storage and the study loop: it
asks, prunes, dispatches a :class:`~autotune.tuning.records.Job` to an actor and tells the study the
:class:`~autotune.tuning.records.Result`; actors never open the storage, so nothing but the Ray cluster is shared
between machines.

* One evaluation actor per GPU (``num_gpus=1``: Ray sets its ``CUDA_VISIBLE_DEVICES``). Each actor owns one
  :class:`autotune.tuning.worker.Worker`, the isolated process of the local pool: a crashing kernel kills that child
  process (``worker_died`` for that trial, as without Ray) and the actor starts a new one.
* On a cluster without GPUs (CI, laptops) the actors run the Triton interpreter with ``num_cpus=1`` each, spread over
  the nodes; ``--ray-actors N`` says how many (default: one per node). On GPU clusters ``--ray-actors N`` uses N of
  the cluster's GPUs (default: all).
* Compile-ahead: each compile slot is one CPU actor on every node that has evaluation actors, and compiling a config
  runs on all of them at once, so whichever GPU of the group gets the config finds it in its own node's Triton cache
  (Triton's cache is a per-machine directory; Spark has 20 cores to spare for it).
* Actors report their device key; actors are grouped by it and each group tunes its own studies (study names hold
  the device key), so a mixed cluster never mixes timings in one study.
* An actor that dies mid-trial (``worker_died``) or whose node leaves the cluster (``node_lost``) fails that trial
  with :attr:`Result.lost` set: the tuner re-queues its config and does not charge the budget. A dead actor is
  restarted on its node; a proxy whose node is gone is retired and the run goes on with the GPUs left.

Without ``--ray`` nothing imports this module, and so nothing imports Ray.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Self

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from autotune import defaults
from autotune.errors import ClusterError, UserError
from autotune.tuning.outcomes import Kind
from autotune.tuning.pool import DeviceGroup
from autotune.tuning.records import Job, Result
from autotune.tuning.worker import Worker

PASSED_ENV = ("AUTOTUNE_PLUGINS", "TRITON_DEFAULT_FP_FUSION")
"""Driver environment variables handed to the actors (``runtime_env``): the kernels to register and Triton
switches that change the code generated. Paths (PYTHONPATH...) are not passed: they differ between machines."""

_CONNECTED_HERE = False
"""Whether :func:`connect` called ``ray.init`` in this process (then :meth:`RayPool.close` calls ``ray.shutdown``)."""

_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RaySettings:
    """Where the actors run.

    Attributes:
        address: ``local`` (a private cluster started in this process with ``ray.init()``), ``auto`` (the cluster
            of ``ray start`` on this machine) or ``HOST:PORT`` of a ``ray start --head``.
        actors: evaluation actors; None: one per GPU of the cluster, or one per node on a cluster without GPUs.
        start_timeout_s: seconds for the actors to be placed and their worker processes to import torch.
    """

    address: str
    actors: int | None = None
    start_timeout_s: float = defaults.RAY_START_TIMEOUT_S

    @classmethod
    def parse(cls, address: str, actors: int | None) -> RaySettings:
        """Validate the ``--ray`` and ``--ray-actors`` values.

        Raises:
            UserError: an address that is neither ``local``, ``auto`` nor ``HOST:PORT``; ``actors`` < 1.
        """
        text = address.strip()
        if text not in ("local", "auto"):
            match = _ADDRESS.match(text.removeprefix("ray://"))
            if match is None or not 0 < int(match["port"]) < 65536:
                raise UserError(f"--ray wants local, auto or HOST:PORT (e.g. 192.168.1.10:6379), got {address!r}")
        if actors is not None and actors < 1:
            raise UserError(f"--ray-actors must be at least 1, got {actors}")
        return cls(address=text, actors=actors)


def connect(settings: RaySettings) -> int:
    """Join (or, for ``local``, start) the cluster once per process; returns how many GPUs it has.

    Raises:
        ClusterError: the cluster cannot be reached.
    """
    global _CONNECTED_HERE
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if settings.address == "local":
            kwargs.update(include_dashboard=False, object_store_memory=defaults.RAY_OBJECT_STORE_BYTES)
        else:
            _check_reachable(settings.address)
            kwargs["address"] = settings.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"--ray {settings.address}: cannot join the Ray cluster: {first}") from exc
        _CONNECTED_HERE = True
    return int(ray.cluster_resources().get("GPU", 0))


def _check_reachable(address: str) -> None:
    """Fail in seconds, not Ray's minute of retries, when nothing listens at ``HOST:PORT``.

    Raises:
        ClusterError: the TCP connection is refused or times out.
    """
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=defaults.RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"--ray {address}: nothing answers there ({exc.strerror or exc}); start the head with "
                           "`ray start --head --port=PORT` and pass its HOST:PORT") from exc


def _alive_nodes() -> dict[str, dict]:
    return {node["NodeID"]: node for node in ray.nodes() if node.get("Alive")}


def group_by_device(workers: list) -> list[list]:
    """Split workers by ``worker.device.key``: the largest group first, then by key; order kept inside a group."""
    by_key: dict[str, list] = {}
    for worker in workers:
        by_key.setdefault(worker.device.key, []).append(worker)
    return [by_key[key] for key in sorted(by_key, key=lambda key: (-len(by_key[key]), key))]


class _Actor:
    """Body of an actor: one isolated worker process (:class:`autotune.tuning.worker.Worker`) and where it runs."""

    def __init__(self, interpreter: bool, gpu: int | None, start_timeout_s: float) -> None:
        # gpu None: the child inherits the CUDA_VISIBLE_DEVICES Ray gave this actor (evaluation actors); an index:
        # that GPU of the node (compile actors, which hold no GPU resource but need a CUDA context to compile)
        self.worker = Worker(gpu, interpreter=interpreter, start_timeout_s=start_timeout_s)

    def start(self) -> dict[str, Any]:
        """Start the worker process; returns the node id, host name, GPU index (None without one), device."""
        self.worker.start()
        gpus = ray.get_gpu_ids()
        return {"node_id": ray.get_runtime_context().get_node_id(), "node": socket.gethostname(),
                "gpu": int(gpus[0]) if gpus else self.worker.gpu, "device": self.worker.device, "pid": os.getpid()}

    def evaluate(self, job: Job, timeout_s: float) -> Result:
        """:meth:`Worker.evaluate` (restarting the child process after a crash, a hang or a sticky error)."""
        return self.worker.evaluate(job, timeout_s)

    def stop(self) -> None:
        """Stop the worker process."""
        self.worker.stop()


_RemoteActor = ray.remote(max_restarts=0, max_concurrency=1)(_Actor)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class RayWorker:
    """Driver-side proxy of one evaluation actor, with the interface of :class:`autotune.tuning.worker.Worker`
    the tuner uses (``evaluate``, ``device``, ``retired``).

    Args:
        index: its number in the pool (recorded as the trial's ``worker``).
        options: ``ray.remote`` options placing it (resources, scheduling strategy).
        interpreter: run the Triton interpreter instead of a GPU.
        start_timeout_s: seconds for placement and start.
        runtime_env: the actors' ``runtime_env``.
    """

    def __init__(self, index: int, options: dict[str, Any], *, interpreter: bool, start_timeout_s: float,
                 runtime_env: dict[str, Any], gpu: int | None = None) -> None:
        self.index = index
        self.options = {**options, "runtime_env": runtime_env}
        self.interpreter = interpreter
        self.start_timeout_s = start_timeout_s
        self.child_gpu = gpu
        self.retired = False
        self.restarts = 0
        self.info: dict[str, Any] = {}
        self.device = None
        self.actor = None
        self._closed = False

    def launch(self):
        """Create the actor; returns the reference its start-up answers on (see :meth:`started`)."""
        self.actor = _RemoteActor.options(**self.options).remote(self.interpreter, self.child_gpu,
                                                                 self.start_timeout_s)
        return self.actor.start.remote()

    def started(self, info: dict[str, Any]) -> None:
        """Record what the actor reported and pin any later restart to its node."""
        self.info = info
        self.device = info["device"]
        self.options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(info["node_id"], soft=False)

    def start(self) -> None:
        """Create the actor and wait for it.

        Raises:
            ClusterError: not placed or not started within ``start_timeout_s``.
        """
        ref = self.launch()
        try:
            self.started(ray.get(ref, timeout=self.start_timeout_s))
        except (GetTimeoutError, RayError) as exc:
            self.kill()
            raise ClusterError(f"Ray actor {self.index} did not start within {self.start_timeout_s:.0f} s "
                               f"({_first_line(exc)})") from exc

    @property
    def where(self) -> dict[str, Any]:
        """The placement stored on each trial."""
        return {"node": self.info.get("node"), "node_id": self.info.get("node_id"), "gpu": self.info.get("gpu"),
                "device_key": self.device.key if self.device is not None else None, "worker": self.index}

    def evaluate(self, job: Job, timeout_s: float) -> Result:
        """Run one job on the actor.

        Returns:
            The actor's result with :attr:`Result.where`; or, when the actor or its node went away, a ``lost``
            result of kind ``worker_died`` or ``node_lost`` (the actor is restarted on its node, or this proxy
            retires when the node is gone).
        """
        # the actor's worker restarts its child after a timeout before answering: allow a start-up on top
        limit_s = timeout_s + self.start_timeout_s + defaults.RAY_ANSWER_MARGIN_S
        try:
            result = ray.get(self.actor.evaluate.remote(job, timeout_s), timeout=limit_s)
        except GetTimeoutError:
            reason = f"the Ray actor gave no answer within {limit_s:.0f} s"
        except RayActorError as exc:
            reason = f"the Ray actor died mid-trial: {_first_line(exc)}"
        else:
            return replace(result, where=self.where)
        if self._closed:  # killed by interrupt(): the run is stopping, nothing to recover
            return Result(kind=Kind.INTERRUPTED, error="the run is stopping", where=self.where)
        kind = self._recover()
        where = self.where
        if kind is Kind.NODE_LOST:
            reason = f"node {where['node']} ({where['node_id'][:12]}) left the Ray cluster mid-trial; {reason}"
        return Result(kind=kind, error=reason[:1000], lost=True, where=where)

    def _recover(self) -> Kind:
        """After a dead or silent actor: restart it on its node, else retire. Returns the kind for the trial."""
        self.kill()
        node_id = self.info.get("node_id")
        deadline = time.monotonic() + defaults.RAY_NODE_DEATH_WAIT_S
        while time.monotonic() < deadline and node_id in _alive_nodes():
            time.sleep(0.5)  # a node that is going away is marked dead within seconds (graceful) or a health check
        if node_id in _alive_nodes():
            try:
                self.restarts += 1
                self.start()
                _log(f"ray: actor {self.index} on {self.info.get('node')} restarted")
                return Kind.WORKER_DIED
            except ClusterError as exc:
                _log(f"ray: actor {self.index} could not be restarted: {exc}")
        self.retired = True
        lost_node = node_id not in _alive_nodes()
        _log(f"ray: actor {self.index} ({self.info.get('node')}, GPU {self.info.get('gpu')}) retired"
             + ("; its node left the cluster" if lost_node else ""))
        return Kind.NODE_LOST if lost_node else Kind.WORKER_DIED

    def interrupt(self) -> None:
        """End the actor now, for good (Ctrl-C or SIGTERM of the driver): a job in flight returns an ``interrupted``
        result at once and nothing is restarted; the storage keeps its trial RUNNING for the next run to re-queue,
        as with a local worker (:meth:`autotune.tuning.worker.Worker.interrupt`)."""
        self._closed = True
        self.kill()

    def kill(self) -> None:
        """End the actor (its worker process follows: it watches its parent)."""
        if self.actor is not None:
            try:
                ray.kill(self.actor, no_restart=True)
            except (RayError, ValueError):
                pass
            self.actor = None

    def stop(self) -> None:
        """Stop the worker process politely, then the actor."""
        if self.actor is not None and not self.retired:
            try:
                ray.get(self.actor.stop.remote(), timeout=10)
            except (GetTimeoutError, RayError):
                pass
        self.kill()


class RayCompileSlot:
    """One compile-ahead slot of a device group: a CPU actor on every node of the group; :meth:`evaluate` compiles
    a ``compile_only`` job on all of them at once, so each node's Triton cache holds it before a GPU needs it.

    Args:
        proxies: one compile :class:`RayWorker` per node.
    """

    retired = False

    def __init__(self, proxies: list[RayWorker]) -> None:
        self.proxies = proxies

    def evaluate(self, job: Job, timeout_s: float) -> Result:
        """Compile on every node; returns the first node's result (a failure resurfaces in the evaluation)."""
        live = [proxy for proxy in self.proxies if proxy.actor is not None]
        if not live:
            return Result(kind=Kind.WORKER_DIED, phase="compile", error="no compile actor left")
        refs = [proxy.actor.evaluate.remote(job, timeout_s) for proxy in live]
        results = []
        for proxy, ref in zip(live, refs, strict=True):
            try:
                results.append(ray.get(ref, timeout=timeout_s + proxy.start_timeout_s))
            except (GetTimeoutError, RayError) as exc:  # compile-ahead is an optimization: drop the actor
                proxy.kill()
                results.append(Result(kind=Kind.WORKER_DIED, phase="compile", error=_first_line(exc)))
        return results[0]

    def stop(self) -> None:
        """Stop every compile actor."""
        for proxy in self.proxies:
            proxy.stop()


class RayPool:
    """The Ray counterpart of :class:`autotune.tuning.pool.WorkerPool`.

    Args:
        settings: the cluster address and actor count.
        interpreter: the cluster has no GPU: actors run kernels under ``TRITON_INTERPRET=1``.
        compile_workers: compile-ahead slots per device group (GPU clusters only).

    Raises:
        ClusterError: from :meth:`start`: the cluster cannot be joined, has fewer GPUs than ``--ray-actors``, or
            cannot place or start the actors.
    """

    def __init__(self, settings: RaySettings, *, interpreter: bool, compile_workers: int = 0) -> None:
        self.settings = settings
        self.interpreter = interpreter
        self.compile_workers = 0 if interpreter else compile_workers
        self.workers: list[RayWorker] = []
        self._groups: list[DeviceGroup] = []

    def _runtime_env(self) -> dict[str, Any]:
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        return {"env_vars": env} if env else {}

    def _plan(self) -> tuple[int, dict[str, Any]]:
        nodes = _alive_nodes()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.interpreter:
            count = self.settings.actors or len(nodes)
            return count, {"num_cpus": 1, "num_gpus": 0, "scheduling_strategy": "SPREAD"}
        if gpus == 0:
            raise ClusterError("the Ray cluster has no GPU")  # cmd_run chose GPU mode from the same cluster
        count = self.settings.actors or gpus
        if count > gpus:
            raise ClusterError(f"--ray-actors {count}: the Ray cluster has {gpus} GPU(s)")
        return count, {"num_cpus": 0, "num_gpus": 1, "scheduling_strategy": "SPREAD"}

    def _start_all(self, proxies: list[RayWorker]) -> list[RayWorker]:
        """Launch every actor at once and wait for all; returns those that started (the others are killed)."""
        refs = [proxy.launch() for proxy in proxies]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.settings.start_timeout_s)
        started = []
        for proxy, ref in zip(proxies, refs, strict=True):
            try:
                if ref not in ready:
                    raise GetTimeoutError("not placed or not started in time")
                proxy.started(ray.get(ref))
                started.append(proxy)
            except (GetTimeoutError, RayError) as exc:
                _log(f"ray: actor {proxy.index} did not start: {_first_line(exc)}")
                proxy.kill()
        return started

    def start(self):
        """Join the cluster, place and start the evaluation actors (and compile actors), group them by device key.

        Returns:
            The device profile of the first group (the largest).
        """
        connect(self.settings)
        count, options = self._plan()
        env = self._runtime_env()
        proxies = [RayWorker(i, dict(options), interpreter=self.interpreter,
                             start_timeout_s=self.settings.start_timeout_s, runtime_env=env) for i in range(count)]
        self.workers = self._start_all(proxies)
        if len(self.workers) < count:
            self.close()
            raise ClusterError(f"only {len(self.workers)} of {count} Ray actors started within "
                               f"{self.settings.start_timeout_s:.0f} s (cluster resources: "
                               f"{ray.cluster_resources() if ray.is_initialized() else 'gone'})")
        self._groups = [DeviceGroup(group[0].device, group, self._compile_slots(group, env))
                        for group in group_by_device(self.workers)]
        for group in self._groups:
            nodes = {worker.info["node_id"] for worker in group.workers}
            _log(f"ray: {len(group.workers)} {'interpreter' if self.interpreter else 'GPU'} actor(s) of "
                 f"{group.device.key} on {len(nodes)} node(s); {len(group.compilers)} compile slot(s)")
        if len(self._groups) > 1:
            _log(f"ray: {len(self._groups)} kinds of device in the cluster: their studies are tuned one kind after "
                 "the other, each on its own GPUs")
        return self._groups[0].device

    def _compile_slots(self, group: list[RayWorker], env: dict[str, Any]) -> list[RayCompileSlot]:
        if not self.compile_workers:
            return []
        first_gpu: dict[str, int] = {}
        for worker in group:
            first_gpu.setdefault(worker.info["node_id"], worker.info["gpu"])
        slots = []
        for slot in range(self.compile_workers):
            proxies = [RayWorker(1000 * (slot + 1) + i, {"num_cpus": 1, "num_gpus": 0,
                                                         "scheduling_strategy": NodeAffinitySchedulingStrategy(
                                                             node_id, soft=False)},
                                 interpreter=False, start_timeout_s=self.settings.start_timeout_s, runtime_env=env,
                                 gpu=gpu)
                       for i, (node_id, gpu) in enumerate(first_gpu.items())]
            started = self._start_all(proxies)
            if len(started) < len(proxies):  # too few CPUs: compile-ahead is an optimization, go without the rest
                for proxy in started:
                    proxy.stop()
                _log(f"ray: {slot} compile slot(s) fit in the cluster's CPUs (asked for {self.compile_workers})")
                break
            slots.append(RayCompileSlot(started))
        return slots

    def groups(self) -> list[DeviceGroup]:
        """One group per device key, the largest first."""
        return list(self._groups)

    def close(self) -> None:
        """Stop every actor; disconnect from the cluster if :func:`connect` joined it (a ``local`` one ends)."""
        everyone = list(self.workers) + [slot for group in self._groups for slot in group.compilers]
        if everyone and ray.is_initialized():
            with ThreadPoolExecutor(max_workers=min(16, len(everyone))) as executor:
                list(executor.map(lambda member: member.stop(), everyone))
        global _CONNECTED_HERE
        if _CONNECTED_HERE and ray.is_initialized():
            ray.shutdown()
            _CONNECTED_HERE = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

