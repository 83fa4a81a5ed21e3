"""The two kinds of failure a user can meet, and how the CLI reports them (one line, no traceback)."""


class NtngError(Exception):
    """A failure with a one-line message meant for the user."""

    exit_code = 1


class UsageError(NtngError):
    """Bad input: caught before anything is written; exit code 2."""

    exit_code = 2


class RunError(NtngError):
    """A failure while doing the work (a fetch, a corrupt file...); exit code 1."""

    exit_code = 1
