"""The corpus's user-facing error (one sentence, exit code 2 from the CLI)."""

from runtime.errors import UserError


class CorpusError(UserError, ValueError):
    """A corpus cannot be built or read as asked; the message says why and what to do."""
