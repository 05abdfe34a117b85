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


def divergence_advice(grad_clip: float | None, amp: bool) -> str:
    """What a run whose loss or weights stopped being finite can change: the learning rate;
    gradient clipping unless it clips already; mixed precision only where it is on."""
    hints = ["lower the learning rate (optim.lr)"]
    if grad_clip is None:
        hints.append("add grad clipping (optim.grad_clip)")
    if amp:
        hints.append("turn mixed precision off (amp: false)")
    return hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])} or {hints[-1]}"
