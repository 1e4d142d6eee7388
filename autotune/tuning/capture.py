"""Worker output of one job, kept off the user's terminal: MLIR dumps, ptxas messages and warnings.

Triton's compiler writes its diagnostics from C++ straight to file descriptor 2 (a crash in an MLIR pass prints the
whole module: ~850 lines for one prefill config on the H200, Triton 3.6, 2026-12-02), so redirecting Python's
``sys.stderr`` is not enough: :func:`capture_fds` points descriptors 1 and 2 of the worker process at a temporary
file for the duration of a job. The tuner stores an :func:`excerpt` in the trial's ``error`` and appends the whole
text to a log file under the storage folder (:func:`append_log`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

MAX_OUTPUT_BYTES = 256 * 1024
"""Output of one job kept for the log (the last bytes: a crash's message comes last)."""

EXCERPT_LINES = 40
EXCERPT_BYTES = 8 * 1024
"""A trial's ``error`` gets at most this many lines / bytes of worker output (its first and last lines)."""


class Captured:
    """The text a job wrote to descriptors 1 and 2 (set when the ``with`` block ends)."""

    text: str = ""
    truncated_bytes: int = 0


@contextlib.contextmanager
def capture_fds() -> Iterator[Captured]:
    """Redirect file descriptors 1 and 2 of this process into a temporary file while the block runs.

    Yields:
        A :class:`Captured` whose ``text`` holds the last :data:`MAX_OUTPUT_BYTES` of the output (decoded as UTF-8
        with replacement) after the block, and ``truncated_bytes`` what was dropped before them.
    """
    captured = Captured()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            size = sink.seek(0, os.SEEK_END)
            captured.truncated_bytes = max(0, size - MAX_OUTPUT_BYTES)
            sink.seek(captured.truncated_bytes)
            captured.text = sink.read().decode("utf-8", errors="replace")


def excerpt(text: str, max_lines: int = EXCERPT_LINES, max_bytes: int = EXCERPT_BYTES) -> str:
    """The first and last lines of a long output, within ``max_lines`` lines and about ``max_bytes`` bytes.

    Args:
        text: the output.
        max_lines: lines kept (half from the start, half from the end), plus one line saying how many were left out.
        max_bytes: each kept line is cut to ``max_bytes // max_lines`` characters.

    Returns:
        The excerpt; ``text`` itself (stripped) when it fits.
    """
    lines = text.strip("\n").splitlines()
    width = max(16, max_bytes // max_lines)
    cut = [line if len(line) <= width else line[:width] + " ..." for line in lines]
    if len(cut) <= max_lines:
        return "\n".join(cut)
    head, tail = cut[: max_lines // 2], cut[-(max_lines - max_lines // 2):]
    return "\n".join([*head, f"[... {len(lines) - len(head) - len(tail)} lines left out ...]", *tail])


def append_log(path: Path, header: str, text: str) -> None:
    """Append one job's output to a log file (created with its folder if missing), under a dated header line.

    The whole record is written with one ``write`` call on a file opened for appending, so records of concurrent
    tuners do not interleave.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    record = f"===== {stamp} {header}\n{text.rstrip()}\n"
    with open(path, "a", encoding="utf-8") as log:
        log.write(record)
