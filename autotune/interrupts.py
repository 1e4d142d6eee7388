"""How a command stops when it is asked to: Ctrl-C (SIGINT) and SIGTERM end it the same way.

Python turns SIGINT into :class:`KeyboardInterrupt`; :func:`stop_on_sigterm` makes SIGTERM raise
:class:`Terminated`, a subclass, so that every ``except KeyboardInterrupt`` / ``finally`` on the way (the tuner
ending its workers, atomic table writes, the CLI's one-line message) runs for both. The exit codes follow the shell's
128 + signal number convention: 130 after SIGINT, 143 after SIGTERM.
"""

from __future__ import annotations

import signal
import threading

EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


def stop_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (a no-op outside the main thread, where Python
    cannot install handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by ``interrupt``: 143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_SIGTERM if isinstance(interrupt, Terminated) else EXIT_SIGINT
