"""Atomic file writes: the lookup table, bench JSON, compare CSV, plots, accuracy reports, benchmark caches.

One implementation for every file this tool writes: a crash at any moment leaves the old file or the new one, never
a partial one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from autotune.errors import UserError


def write_bytes(path: str | os.PathLike[str], data: bytes, *, error: type[UserError] = UserError,
                what: str = "cannot write") -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsynced, ``os.replace``, then the
    folder fsynced (best effort) so that the rename is durable.

    The parent folder is created if missing. The file keeps the mode of the file it replaces (a new file gets
    ``0o666`` minus the umask); the temp file is removed whatever fails.

    Args:
        path: the file to write.
        data: its new content.
        error: the :class:`autotune.errors.UserError` subclass raised on failure (``TableError`` for the table).
        what: the words after the path in the error message.

    Returns:
        The path written.

    Raises:
        UserError: (``error``) the folder or the file cannot be written; one line starting with the path.
    """
    target = Path(path)
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise error(f"{target}: cannot create directory {directory}: {err.strerror or err}") from err
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_current_umask()
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile("wb", dir=directory, prefix=f".{target.name}.", suffix=".tmp",
                                         delete=False) as tmp:
            tmp_name = tmp.name
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as err:
        raise error(f"{target}: {what}: {err.strerror or err}") from err
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    _fsync_dir(directory)
    return target


def write_text(path: str | os.PathLike[str], text: str, **kwargs) -> Path:
    """:func:`write_bytes` of UTF-8 text (``\\n`` line ends); keyword arguments as there."""
    return write_bytes(path, text.encode("utf-8"), **kwargs)


def _current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``; 0o022 where that is unavailable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename in it is durable; best effort (not every platform/filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
