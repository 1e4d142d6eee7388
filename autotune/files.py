"""Files the user names (tables, ``config.json``, safetensors headers): bounded reads and path checks.

Every read of such a file goes through :func:`read_bounded`, which opens it without blocking (a FIFO or a device
named as a table must not hang or stream forever), refuses anything but a regular file and never reads more than a
fixed number of bytes. :func:`check_output_file` checks a file that a command will write, before any work starts.
Errors are the caller's :class:`autotune.errors.UserError` subclass, one line naming the path.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import time
from pathlib import Path

from autotune.errors import UserError


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _size_text(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count} B"


def read_bounded(path: str | os.PathLike[str], limit: int, *, what: str, error: type[UserError] = UserError,
                 prefix: bool = False) -> bytes:
    """Read a regular file of at most ``limit`` bytes (or, with ``prefix``, its first ``limit`` bytes).

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` before any read, so a FIFO, a socket or a
    device (``/dev/zero``, ``/dev/full``) is refused at once instead of blocking or reading without end; the read
    itself stops after ``limit + 1`` bytes, so a file that grows while it is read cannot exceed the bound either.

    Args:
        path: The file.
        limit: Most bytes read (a non-negative integer).
        what: What the file is, for messages (e.g. ``"table"``).
        error: The :class:`UserError` subclass raised.
        prefix: Return the first ``limit`` bytes of a longer file instead of refusing it.

    Returns:
        The bytes read.

    Raises:
        FileNotFoundError: The file does not exist (callers decide whether that is an error).
        UserError: (``error``) not a regular file, larger than ``limit`` bytes (without ``prefix``), or unreadable;
            the message starts with the path.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise error(f"{path}: cannot read {what}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: cannot read {what}: {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit and not prefix:
            raise error(f"{path}: {what} is {_size_text(info.st_size)}, larger than the limit of {_size_text(limit)}")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as err:
        raise error(f"{path}: cannot read {what}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        if not prefix:
            raise error(f"{path}: {what} grew past the limit of {_size_text(limit)} while it was read")
        data = data[:limit]
    return data


def check_output_file(path: str | os.PathLike[str], limit: int, *, what: str,
                      error: type[UserError] = UserError) -> None:
    """Check, before any work starts, that ``path`` can be read and then replaced by an atomic write.

    The path must be a regular file of at most ``limit`` bytes that this process may write, or absent; its nearest
    existing ancestor must be a directory that this process may write into (missing folders are created at write
    time). Nothing is created or changed.

    Args:
        path: The file a command will update (e.g. the table).
        limit: Largest acceptable current size in bytes (the same bound its reader uses).
        what: What the file is, for messages.
        error: The :class:`UserError` subclass raised.

    Raises:
        UserError: (``error``) one line naming the path and the problem: a directory, FIFO or device; too large; not
            writable; a parent that is a file; a folder that cannot be written.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        info = None  # a parent is a file: reported below, by name
    except OSError as err:
        raise error(f"{path}: cannot use as {what}: {err.strerror or err}") from None
    if info is not None:
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: cannot use as {what}: {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise error(f"{path}: {what} is {_size_text(info.st_size)}, larger than the limit of {_size_text(limit)}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise error(f"{path}: cannot use as {what}: the file is not readable and writable by this user")
    folder = path.parent
    while True:
        try:
            folder_info = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            folder_info = None
        except OSError as err:
            raise error(f"{path}: cannot use as {what}: {folder}: {err.strerror or err}") from None
        if folder_info is not None:
            break
        if folder.parent == folder:
            raise error(f"{path}: cannot use as {what}: no existing folder above it")
        folder = folder.parent
    if not stat.S_ISDIR(folder_info.st_mode):
        raise error(f"{path}: cannot use as {what}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{path}: cannot use as {what}: the folder {folder} is not writable")


def remove_stale_temp_files(path: str | os.PathLike[str], *, older_than_s: float) -> list[Path]:
    """Remove the temp files that an atomic write of ``path`` left behind when it was killed.

    Atomic writes of ``path`` use temp files named ``.<name>.*.tmp`` in the same folder (see
    :meth:`autotune.table.store.ConfigTable.save`); a write that is killed between creating and renaming one leaves
    it there. Only files of that pattern, regular, and not modified for ``older_than_s`` seconds are removed (a
    concurrent writer's fresh temp file is left alone).

    Args:
        path: The file whose leftovers to remove.
        older_than_s: Minimum age in seconds (modification time).

    Returns:
        The removed files.
    """
    path = Path(path)
    removed = []
    now = time.time()
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for candidate in candidates:
        with contextlib.suppress(OSError):
            info = os.lstat(candidate)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= older_than_s:
                os.unlink(candidate)
                removed.append(candidate)
    return removed
