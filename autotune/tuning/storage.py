"""Optuna storages and samplers, chosen by URL and by name; the only module that opens either.

The default storage is a SQLite file under ``studies/``: every ``tell`` is a committed transaction, so killing the
tuner at any moment loses at most the trials in flight (they are failed and re-queued on the next run, see
:func:`autotune.tuning.study.recover_interrupted`). Any URL Optuna accepts works (``postgresql://...``, ``mysql://...``),
as does a JournalStorage file given as ``journal:PATH``.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from autotune.errors import StorageError, UserError

SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc", "nsga2", "bruteforce")


def open_storage(url: str):
    """Open an Optuna storage.

    Args:
        url: ``sqlite:///PATH``, another SQLAlchemy URL, or ``journal:PATH`` for Optuna's JournalStorage.

    Returns:
        An ``optuna.storages.BaseStorage``.

    Raises:
        StorageError: if the URL is malformed or the storage cannot be opened (one line, names the URL); for
            ``sqlite:///`` and ``journal:`` also a path that is not a regular file or lies under a file or an
            unwritable folder. Missing folders of those paths are created, with one line on stderr saying so.
    """
    import optuna

    if url.startswith(("journal:", "sqlite:///")):
        _prepare_folder(url, Path(url[len("journal:"):] if url.startswith("journal:") else url[len("sqlite:///"):]))
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
        if "://" not in url:
            raise ValueError("not a storage URL (expected e.g. sqlite:///studies/autotune.db or journal:PATH)")
        with storage_lock(url):  # two runs creating one SQLite file at once race on its schema (alembic_version)
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many types for a bad URL
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open storage {url!r}: {first_line}") from exc


def _prepare_folder(url: str, path: Path) -> None:
    """Check a file storage's path (a regular file or absent, in a writable folder; see
    :func:`autotune.files.check_output_file`) and create its missing folders, saying so on stderr.

    Raises:
        StorageError: the path is a directory or device, a parent is a file, or the folder is not writable.
    """
    from autotune.files import check_output_file

    try:
        check_output_file(path, sys.maxsize, what="storage file", error=StorageError)
    except StorageError as exc:
        raise StorageError(f"cannot open storage {url!r}: {exc}") from None
    folder = path.parent
    if not folder.is_dir():
        print(f"autotune: storage folder {folder} does not exist: creating it for {url}", file=sys.stderr,
              flush=True)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot open storage {url!r}: cannot create {folder}: {exc.strerror or exc}") from exc


def make_sampler(name: str, seed: int, n_trials: int):
    """An Optuna sampler by name, seeded.

    ``tpe`` (default) is multivariate with grouping, so that conditional parameters are modelled jointly; its random
    start-up phase is a third of the budget (at most Optuna's default 10). The others are Optuna's own classes with
    their defaults (``gp`` needs scipy, ``cmaes`` needs the cmaes package).

    Raises:
        UserError: for an unknown name or a sampler whose optional dependency is missing.
    """
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    samplers = optuna.samplers
    if name == "tpe":
        return samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                   n_startup_trials=max(1, min(10, n_trials // 3)))
    factories = {
        "random": lambda: samplers.RandomSampler(seed=seed),
        "gp": lambda: samplers.GPSampler(seed=seed),
        "cmaes": lambda: samplers.CmaEsSampler(seed=seed),
        "qmc": lambda: samplers.QMCSampler(seed=seed),
        "nsga2": lambda: samplers.NSGAIISampler(seed=seed),
        "bruteforce": lambda: samplers.BruteForceSampler(seed=seed),
    }
    if name not in factories:
        raise UserError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    try:
        return factories[name]()
    except ImportError as exc:
        raise UserError(f"sampler {name!r} needs a package that is not installed: {exc}") from exc


def _file_of(url: str) -> Path | None:
    """The file behind a SQLite or journal URL, None for a database server."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def storage_folder(url: str) -> Path:
    """The folder of a file storage (SQLite, journal); ``studies/`` for a database server."""
    from autotune.defaults import STUDIES_DIR

    path = _file_of(url)
    return path.parent if path is not None else STUDIES_DIR


def worker_log_path(url: str) -> Path:
    """The log file that collects the worker output (compiler diagnostics) of every trial run on this storage."""
    path = _file_of(url)
    name = f"{path.name}.worker.log" if path is not None else "worker.log"
    return storage_folder(url) / name


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock shared by every tuner process on this host using the same file storage, while a
    check-then-write step runs (queueing the default config once). A database server gets no lock: the tuner's
    repeat check before dispatch still measures each config once there."""
    path = _file_of(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
