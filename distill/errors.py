"""The few error types a user sees.

Every error meant for a person is a :class:`DistillError`: the CLI prints its message on one
line and exits with code 2 (``--debug`` shows the traceback). Anything else is a bug.
"""

from __future__ import annotations


class DistillError(Exception):
    """A user-facing error: bad input, missing files, an impossible configuration.

    The message is one line that names the file, key or value at fault and, where there is
    one, the fix.
    """

    exit_code = 2


class RecipeError(DistillError):
    """An invalid recipe file, override or CLI value."""


class DataError(DistillError):
    """Missing, truncated or malformed data."""
