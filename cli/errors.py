"""How the `soundscape` command reports what went wrong.

A user's mistake is one sentence on stderr and exit code 2, never a traceback: a
`runtime.errors.UserError` (every layer's user-facing errors derive from it), or an OS error about
a path the user named, whose message already says which path and why (a file where a folder
belongs, a full or read-only disk: said in a sentence too). Anything else is a bug and keeps its
traceback (exit code 1), a bare ValueError included."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

from runtime.errors import UserError
from runtime.interrupts import Terminated, stay_calm, terminate_like_interrupt

# OS errors whose message names the user's path: a file that is not there, or already is.
PATH_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, FileExistsError)
USER_ERRORS: tuple[type[Exception], ...] = (UserError, *PATH_ERRORS)


def run_reporting_errors(command: str, handler: Callable[[], int | None], resumes: bool = False) -> int:
    """Run a subcommand's handler; its exit code, or 2 (130 when interrupted, 143 when stopped by
    SIGTERM) after one sentence. `resumes`: the command continues where it stopped when run again,
    which the sentence of a stop says."""
    terminate_like_interrupt()
    try:
        return int(handler() or 0)
    except USER_ERRORS as exc:
        print(f"soundscape {command}: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # e.g. a data folder (a container's bind mount) owned by another user
        print(
            f"soundscape {command}: permission denied on {exc.filename} (running as uid {os.getuid()}, "
            "which cannot write there)",
            file=sys.stderr,
        )
        return 2
    except NotADirectoryError as exc:  # e.g. --out below a file
        print(f"soundscape {command}: {exc.filename}: part of this path is a file, not a folder", file=sys.stderr)
        return 2
    except IsADirectoryError as exc:  # e.g. --config naming a folder
        print(f"soundscape {command}: {exc.filename} is a folder, not a file", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`soundscape store info S | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        print(f"soundscape {command}: cannot write {exc.filename or 'its output'}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        stay_calm(command)  # a Ctrl-C held down, while the threads join and the process exits
        stopped, code = ("stopped by SIGTERM", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        again = "; run the same command again to resume where it stopped" if resumes else ""
        print(f"soundscape {command}: {stopped}{again}", file=sys.stderr)
        return code
