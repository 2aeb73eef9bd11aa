"""The sweep's settings, each defined once: default, bounds and description.

Everything that accepts a sweep setting derives from these definitions: the
core's :class:`SweepConfig`, the Launchpad configs of both Dagster jobs
(``ReconcileConfig``, ``SweepDueConfig``: ``Field(**setting.field_kwargs())``)
and the options of ``mailglass reconcile``. Changing a default or a bound is a
one-line change here.

The retry backoff (decision D4) lives here too. The sweep binds it into its
write statement; migration ``0003_due_orphans`` is frozen and keeps its own
copy, which a test holds equal to this one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mailglass_pipeline.errors import ConfigurationError

_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Setting:
    """One setting: its name (the keyword everywhere), default, inclusive bounds and what it means."""

    name: str
    default: Any
    minimum: int | float | None = None
    maximum: int | float | None = None
    description: str = ""

    def field_kwargs(self) -> dict[str, Any]:
        """The arguments of a pydantic ``Field`` for this setting (bounds only where set)."""
        kwargs: dict[str, Any] = {"default": self.default, "description": self.description}
        if self.minimum is not None:
            kwargs["ge"] = self.minimum
        if self.maximum is not None:
            kwargs["le"] = self.maximum
        return kwargs

    def check(self, value: object) -> Any:
        """``value`` if it has this setting's type and bounds; else ``ConfigurationError`` (a ``ValueError``)."""
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{self.name} must be a boolean, got {value!r}")
            return value
        # bool is an int subclass; True as a limit is a bug, not a 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{self.name} must be an integer, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigurationError(f"{self.name} must be >= {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigurationError(f"{self.name} must be <= {self.maximum}, got {value}")
        return value


LIMIT = Setting("limit", 1000, 1, 100_000, "At most this many due orphans are examined per tenant per run.")
MAX_AGE_MINUTES = Setting(
    "max_age_minutes",
    7 * 24 * 60,
    1,
    366 * 24 * 60,
    "Orphans older than this many minutes fall out of the scan and are reported as stale.",
)
GRACE_SECONDS = Setting(
    "grace_seconds",
    60,
    0,
    24 * 60 * 60,
    "Orphans younger than this many seconds are left for a later sweep (their delivery may still commit).",
)
MAX_TOTAL = Setting(
    "max_total",
    20_000,
    1,
    1_000_000,
    "At most this many orphans are examined in one sweep transaction (which holds their locks), "
    "fairly shared among the tenants, linkable ones first.",
)
#: The scheduled run's cap per transaction: about 1 to 2 s of work (docs/performance.md).
TRANSACTION_CAP = Setting(
    "max_total",
    10_000,
    MAX_TOTAL.minimum,
    MAX_TOTAL.maximum,
    MAX_TOTAL.description + " A run loops over such transactions until its budget is spent.",
)
RETRY_ALL = Setting("retry_all", False, description="Retry every pending orphan now, ignoring the backoff.")
#: A delivery row locked elsewhere must not hang a minute-scheduled job.
LOCK_TIMEOUT_MS = Setting("lock_timeout_ms", 5_000, 1, None, "Longest wait for a row lock, in milliseconds.")
STATEMENT_TIMEOUT_MS = Setting("statement_timeout_ms", 120_000, 1, None, "Longest statement, in milliseconds.")

#: The settings of one sweep, in :class:`SweepConfig`'s field order.
SWEEP_SETTINGS = (LIMIT, MAX_AGE_MINUTES, GRACE_SECONDS, LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS, MAX_TOTAL, RETRY_ALL)

DEFAULT_LIMIT: int = LIMIT.default
DEFAULT_MAX_AGE_MINUTES: int = MAX_AGE_MINUTES.default
DEFAULT_GRACE_SECONDS: int = GRACE_SECONDS.default
DEFAULT_MAX_TOTAL: int = MAX_TOTAL.default
DEFAULT_TRANSACTION_CAP: int = TRANSACTION_CAP.default

#: Minutes an orphan waits after its n-th unmatched examination (n = 1..5), then BACKOFF_CAP_MINUTES.
BACKOFF_MINUTES = (1, 2, 4, 8, 16)
BACKOFF_CAP_MINUTES = 30

#: Seconds of sweeping per scheduled run (of a 60 s tick: start-up and event writes need the rest).
DEFAULT_BUDGET_SECONDS = 30.0
#: Longest budget accepted: a run must never outlive the statement timeout by much, nor hide for an hour.
MAX_BUDGET_SECONDS = 3600.0
BUDGET_ENV = "MAILGLASS_SWEEP_BUDGET_SECONDS"
BUDGET_DESCRIPTION = (
    f"Seconds of sweeping per run; unset: ${BUDGET_ENV}, else {DEFAULT_BUDGET_SECONDS:.0f}. "
    f"At most {MAX_BUDGET_SECONDS:.0f}."
)

STALE_MESSAGE = "older than 7 days, unlikely to reconcile"


@dataclass(frozen=True)
class SweepConfig:
    """What one sweep may do (fields and defaults: :data:`SWEEP_SETTINGS`). Invalid values raise ``ValueError``.

    ``limit``: most due orphans per tenant per sweep. ``max_total``: most
    orphans one sweep transaction examines in all. ``retry_all``: ignore the
    backoff and retry every pending orphan (an operator's manual sweep).
    """

    limit: int = LIMIT.default
    max_age_minutes: int = MAX_AGE_MINUTES.default
    grace_seconds: int = GRACE_SECONDS.default
    lock_timeout_ms: int = LOCK_TIMEOUT_MS.default
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS.default
    max_total: int = MAX_TOTAL.default
    retry_all: bool = RETRY_ALL.default

    def __post_init__(self) -> None:
        for setting in SWEEP_SETTINGS:
            setting.check(getattr(self, setting.name))
        if self.grace_seconds >= self.max_age_minutes * 60:
            raise ConfigurationError("grace_seconds must be shorter than max_age_minutes")


def validate_tenant_id(tenant_id: object) -> str | None:
    """``None`` (every tenant) or a non-empty tenant id PostgreSQL can store; else ``ConfigurationError``."""
    if tenant_id is None:
        return None
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ConfigurationError(f"tenant_id must be a non-empty string, got {tenant_id!r}")
    if "\x00" in tenant_id:
        # PostgreSQL text cannot hold NUL: refuse it as a bad argument, not a database error.
        raise ConfigurationError("tenant_id must not contain NUL characters")
    return tenant_id


def validate_budget(value: object, source: str = "budget_seconds") -> float:
    """A budget in seconds: a finite number in (0, MAX_BUDGET_SECONDS]; else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{source} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or not 0 < value <= MAX_BUDGET_SECONDS:
        raise ConfigurationError(f"{source} must be > 0 and <= {MAX_BUDGET_SECONDS:.0f} seconds, got {value}")
    return float(value)


def _number_from_env(name: str, read: Callable[[str], _N], what: str, environ: Mapping[str, str] | None) -> _N | None:
    # An operator's numeric setting: None when unset or blank, text that does not read is a one-line error.
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return None
    try:
        return read(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be {what}, got {raw!r}") from None


def whole_number_from_env(name: str, default: int, minimum: int, unit: str) -> int:
    """An operator's whole-number setting from the environment: ``default`` when unset, else validated."""
    value = _number_from_env(name, int, f"a whole number of {unit}", None)
    if value is None:
        return default
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def budget_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``MAILGLASS_SWEEP_BUDGET_SECONDS`` if set (validated), else ``DEFAULT_BUDGET_SECONDS``."""
    value = _number_from_env(BUDGET_ENV, float, "a number of seconds", environ)
    return DEFAULT_BUDGET_SECONDS if value is None else validate_budget(value, BUDGET_ENV)
