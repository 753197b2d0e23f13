"""Usage errors: one sentence on stderr and exit code 2, never a traceback."""


class UsageError(Exception):
    """Bad input from the user: the message is the sentence they see."""
