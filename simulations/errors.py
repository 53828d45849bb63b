"""The error vocabulary shared by every part of fleetpilot.

Three kinds, after kopf's temporary/permanent split plus the user's own mistakes:

* :class:`UserError` -- bad input (goal spec, trace, CLI flags). The CLI prints one line and exits 2.
* :class:`TemporaryError` -- may succeed if retried (409 conflict, 429, timeouts, Prometheus down).
* :class:`PermanentError` -- retrying will not help (403, 404, a corrupt artifact); report and fall back.
"""

from __future__ import annotations


class FleetpilotError(Exception):
    """Base class for every error fleetpilot raises on purpose."""


class UserError(FleetpilotError):
    """Bad input from the user: one line, exit code 2.

    ``where`` names the file (and line or field) so the message can point at it.
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class TemporaryError(FleetpilotError):
    """A failure that may go away if the same call is retried later (with backoff)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        self.delay = delay
        super().__init__(message)


class PermanentError(FleetpilotError):
    """A failure that retrying will not fix; the caller reports it and falls back."""
