"""How the `soundscape` command reports what went wrong.

A user's mistake is one sentence on stderr and exit code 2, never a traceback: a
`runtime.errors.UserError` (every layer's user-facing errors derive from it), or an OS error about
a path the user named, whose message already says which path and why. Anything else is a bug and
keeps its traceback (exit code 1), a bare ValueError included."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from runtime.errors import UserError

# OS errors whose message names the user's path: a file that is not there, or already is.
PATH_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, FileExistsError)
USER_ERRORS: tuple[type[Exception], ...] = (UserError, *PATH_ERRORS)


def run_reporting_errors(command: str, handler: Callable[[], int | None]) -> int:
    """Run a subcommand's handler; its exit code, or 2 (130 when interrupted) after one sentence."""
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
    except KeyboardInterrupt:
        print(f"soundscape {command}: interrupted", file=sys.stderr)
        return 130
