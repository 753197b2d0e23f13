"""A command stopping on Ctrl-C (SIGINT) or SIGTERM stays calm until its process has exited.

A second Ctrl-C while a stopping command joins its threads and exits raised KeyboardInterrupt
there (a traceback from threading's shutdown after the command's own sentence), and one in the
last milliseconds of the exit ended the process by SIGINT (exit status -2 to its parent, not
130): the interpreter's finalisation puts every signal with a Python handler back to the
default. So once a command stops on a signal, later ones are told it is stopping already, and
from the exit's hooks on they are ignored. kill -9 still ends it at once."""

from __future__ import annotations

import atexit
import os
import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def say(command: str, text: str) -> None:
    """One line on stderr; os.write, as print() may be interrupted inside another print to stderr."""
    os.write(2, f"\nsoundscape {command}: {text}\n".encode())


def stay_calm(command: str) -> None:
    """From now until the process exits, SIGINT and SIGTERM are answered "already stopping"."""
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        return

    told = set()  # each signal said once: a key held down repeats it tens of times a second

    def handle(signum: int, frame: FrameType | None) -> None:
        if signum not in told:
            told.add(signum)
            say(command, f"{signal.Signals(signum).name} again: already stopping")

    for s in SIGNALS:
        signal.signal(s, handle)
    ignore_at_exit()


def interrupt_once(command: str) -> None:
    """SIGINT raises KeyboardInterrupt once, then stay_calm: for a command run by a library that
    catches SIGINT itself and raises it again once it has stopped (uvicorn), so that of a Ctrl-C
    held down one stops the command and the rest are told it is stopping."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stay_calm(command)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handle)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`docker stop`, `kill`), raised as Ctrl-C's KeyboardInterrupt is, so a command it
    stops unwinds the same way: files being written removed unfinished, one sentence, exit 143
    rather than the silent death by SIGTERM of Python's default."""


def terminate_like_interrupt() -> None:
    """SIGTERM raises Terminated in the main thread from now on (a library that handles SIGTERM
    itself, as uvicorn and Ray do, replaces this while it runs)."""
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, handle)


def ignore_at_exit() -> None:
    """SIGINT and SIGTERM ignored from the process's exit hooks on (registered once)."""
    atexit.unregister(_ignore)
    atexit.register(_ignore)


def _ignore() -> None:
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
