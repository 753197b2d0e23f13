"""The one base class for a user's mistake, so that every layer can say "this is not a bug".

A `UserError`'s message is the sentence the user sees: what is wrong and how to fix it. The
`soundscape` command prints it and exits with code 2 (cli/errors.py); the server answers such
input with a 4xx. Every other exception, a bare ValueError included, is a bug: the command lets
it through with its traceback (exit code 1)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config, a request); the message says why."""


class UsageError(UserError):
    """A command-line argument, or a combination of them, that cannot work."""
