"""Exceptions the package raises on purpose.

Each one carries a message fit for a single line on stderr: the CLI prints
``str(exc)`` and nothing else, so messages never contain a traceback or a
password.
"""

from __future__ import annotations

#: SQLSTATE raised by the append-only trigger on ``mailglass_events``
#: (Mailglass v1.0.0 uses the same code, so either side recognises it).
LEDGER_IMMUTABLE_SQLSTATE = "45A01"
LEDGER_IMMUTABLE_MESSAGE = "mailglass_events is append-only; UPDATE and DELETE are forbidden"


class MailglassError(Exception):
    """Base class of every error this package raises deliberately."""


class EventLedgerImmutableError(MailglassError):
    """An UPDATE or DELETE hit the append-only event ledger (SQLSTATE 45A01)."""

    sqlstate = LEDGER_IMMUTABLE_SQLSTATE

    def __init__(self, operation: str | None = None) -> None:
        self.operation = operation
        suffix = f" (attempted {operation})" if operation else ""
        super().__init__(LEDGER_IMMUTABLE_MESSAGE + suffix)


class DatabaseUnavailableError(MailglassError):
    """The database could not be reached within the connect timeout."""


class ConfigurationError(MailglassError, ValueError):
    """A bad argument or setting, refused before anything is written."""
