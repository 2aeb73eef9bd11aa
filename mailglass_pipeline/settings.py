"""Every setting of mailglass, each defined once: name, type, default, bounds and one line of help.

Two kinds share the one :class:`Setting` class (``setting.py``: its checks and its one way of reading):

* the environment variables (``env`` set), read with :meth:`Setting.read` and nowhere with ``os.environ``;
  the README's configuration table lists every one of them, and a test keeps it complete;
* the sweep's settings (``limit``, ``max_age_minutes``, ...): the core's :class:`SweepConfig`, the
  Launchpad configs of both Dagster jobs (``Field(**setting.field_kwargs())``) and the options of
  ``mailglass reconcile`` (:meth:`Setting.option`) take their default, bounds and help from here.

A bad value is refused with one line naming the setting and what it accepts
(:class:`ConfigurationError`, a ``ValueError``); the CLI prints it and exits 2.

The retry backoff (decision D4) lives here too. The sweep binds it into its write statement;
migration ``0003_due_orphans`` is frozen and keeps its own copy, which a test holds equal to this one.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailglass_pipeline.errors import ConfigurationError
from mailglass_pipeline.setting import Setting

# -- the sweep ---------------------------------------------------------------------------------------------

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
#: One default for every path (CLI, API, both jobs): about 1 to 2 s of row locks per transaction (docs/scale.md).
MAX_TOTAL = Setting(
    "max_total",
    10_000,
    1,
    1_000_000,
    "At most this many orphans are examined in one sweep transaction (which holds their locks), "
    "fairly shared among the tenants, linkable ones first; a scheduled run loops over such transactions.",
)
RETRY_ALL = Setting("retry_all", False, description="Retry every pending orphan now, ignoring the backoff.")
#: A delivery row locked elsewhere must not hang a minute-scheduled job.
LOCK_TIMEOUT_MS = Setting("lock_timeout_ms", 5_000, 1, None, "Longest wait for a row lock, in milliseconds.")
STATEMENT_TIMEOUT_MS = Setting("statement_timeout_ms", 120_000, 1, None, "Longest statement, in milliseconds.")
#: Of a 60 s tick: start-up and event writes need the rest; never much past the statement timeout.
BUDGET_SECONDS = Setting(
    "budget_seconds",
    30.0,
    0.001,
    3600.0,
    "seconds of sweeping per scheduled run (the job's `budget_seconds` overrides it for one run)",
    env="MAILGLASS_SWEEP_BUDGET_SECONDS",
    unit="seconds",
)

#: Most rows ``mailglass orphans`` (``orphans.list_orphans``) lists.
LIST_LIMIT = Setting("limit", 50, 1, 10_000, "Most rows listed.")

#: The settings of one sweep, in :class:`SweepConfig`'s field order.
SWEEP_SETTINGS = (LIMIT, MAX_AGE_MINUTES, GRACE_SECONDS, LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS, MAX_TOTAL, RETRY_ALL)

DEFAULT_LIMIT: int = LIMIT.default
DEFAULT_MAX_AGE_MINUTES: int = MAX_AGE_MINUTES.default
DEFAULT_GRACE_SECONDS: int = GRACE_SECONDS.default
DEFAULT_MAX_TOTAL: int = MAX_TOTAL.default
DEFAULT_BUDGET_SECONDS: float = BUDGET_SECONDS.default

#: Minutes an orphan waits after its n-th unmatched examination (n = 1..5), then BACKOFF_CAP_MINUTES.
BACKOFF_MINUTES = (1, 2, 4, 8, 16)
BACKOFF_CAP_MINUTES = 30


def stale_message(max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES) -> str:
    """Mailglass's words for an orphan past max age: ``older than 7 days, unlikely to reconcile`` by default."""
    unit, size = next((u, s) for u, s in (("day", 24 * 60), ("hour", 60), ("minute", 1)) if max_age_minutes % s == 0)
    count = max_age_minutes // size
    return f"older than {count} {unit}{'s' if count != 1 else ''}, unlikely to reconcile"


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


# -- the environment: every MAILGLASS_* variable the product reads -----------------------------------------

DATABASE_URL = Setting(
    "database_url",
    None,
    description="application database (SQLAlchemy URL; psycopg 3 is used)",
    env="MAILGLASS_DATABASE_URL",
    default_text="embedded PostgreSQL under `MAILGLASS_HOME`",
)
HOME = Setting(
    "home",
    ".mailglass",
    description="where the embedded server keeps its data",
    env="MAILGLASS_HOME",
    default_text="`.mailglass` in the working directory",
)
DB_SCHEMA = Setting(
    "db_schema",
    "public",
    description="PostgreSQL schema of Mailglass's tables (its `prefix:`): any name Mailglass accepts, case-sensitive",
    env="MAILGLASS_DB_SCHEMA",
    # Mailglass.Identifier's rule for its prefix (decision D19); used quoted, so case counts.
    pattern="[a-zA-Z_][a-zA-Z0-9_]{0,62}",
)
CONNECT_TIMEOUT = Setting(
    "connect_timeout",
    10,
    1,
    None,
    "seconds before an unreachable database fails the command",
    env="MAILGLASS_CONNECT_TIMEOUT",
    unit="seconds",
)
DAGSTER_DATABASE_URL = Setting(
    "dagster_database_url",
    None,
    description="Dagster's storage (`dagster.yaml`; name `+psycopg2`), also for `mailglass dev` and `run`",
    env="MAILGLASS_DAGSTER_DATABASE_URL",
    default_text="a `dagster` database beside the application database",
)
DEV_LOG_LEVEL = Setting(
    "dev_log_level",
    "INFO",
    description="lowest level of the Dagster lines `mailglass dev` writes to a log file (`DEBUG`: every run event)",
    env="MAILGLASS_DEV_LOG_LEVEL",
)
LAG_THRESHOLD_SECONDS = Setting(
    "threshold_seconds",
    300,
    0,
    None,
    "seconds a linkable orphan may wait before the `reconciliation_lag` check warns",
    env="MAILGLASS_LAG_THRESHOLD_SECONDS",
    unit="seconds",
)
PARKED_RETENTION_DAYS = Setting(
    "retention_days",
    30,
    1,
    3650,
    "days a parked queue row (stale, malformed) is kept before the daily retention job deletes it "
    "(the ledger keeps the event)",
    env="MAILGLASS_PARKED_RETENTION_DAYS",
    unit="days",
)


def _secret(variable: str, what: str) -> Setting:
    # Provider secrets: a tenant's own entry in MAILGLASS_WEBHOOK_SECRETS overrides them (lower-case key).
    name = variable.removeprefix("MAILGLASS_").lower()
    return Setting(name, None, description=what, env=variable, default_text="unset: its webhooks are refused")


POSTMARK_WEBHOOK_AUTH = _secret("MAILGLASS_POSTMARK_WEBHOOK_AUTH", "Postmark webhooks' basic auth, `user:password`")
SENDGRID_VERIFICATION_KEY = _secret(
    "MAILGLASS_SENDGRID_VERIFICATION_KEY", "SendGrid's signed-webhook public key (base64 DER)"
)
MAILGUN_SIGNING_KEY = _secret("MAILGLASS_MAILGUN_SIGNING_KEY", "Mailgun's webhook signing key")
RESEND_WEBHOOK_SECRET = _secret("MAILGLASS_RESEND_WEBHOOK_SECRET", "Resend's webhook secret (`whsec_...`)")
SES_TOPIC_ARNS = _secret("MAILGLASS_SES_TOPIC_ARNS", "SNS topics whose SES messages are accepted (comma-separated)")
SNS_CERT_DIR = _secret("MAILGLASS_SNS_CERT_DIR", "folder of trusted SNS signing certificates (PEM), for SES")
WEBHOOK_SECRETS = Setting(
    "webhook_secrets",
    None,
    description="TOML file of per-tenant provider secrets (docs/ingest.md)",
    env="MAILGLASS_WEBHOOK_SECRETS",
    default_text="unset: the variables above for every tenant",
)
INGEST_MAX_BODY_BYTES = Setting(
    "max_body_bytes",
    1024 * 1024,
    1,
    None,
    "largest webhook body accepted, in bytes (larger: refused before parsing)",
    env="MAILGLASS_INGEST_MAX_BODY_BYTES",
    unit="bytes",
)
SERVE_THREADS = Setting(
    "threads",
    8,
    1,
    256,
    "ingest threads per `mailglass serve` worker (set from its `--threads`)",
    env="MAILGLASS_SERVE_THREADS",
)
SERVE_BODY_TIMEOUT = Setting(
    "body_timeout",
    10.0,
    0.1,
    600.0,
    "seconds a client has to send the whole body to `mailglass serve` (set from its `--body-timeout`)",
    env="MAILGLASS_SERVE_BODY_TIMEOUT",
    unit="seconds",
)
SERVE_LOCK_WAIT = Setting(
    "lock_wait",
    2.0,
    0.0,
    60.0,
    "seconds `mailglass serve` retries a webhook whose delivery row another transaction holds locked, "
    "before answering 503 with Retry-After",
    env="MAILGLASS_SERVE_LOCK_WAIT",
    unit="seconds",
)
SERVE_STATE_DIR = Setting(
    "state_dir",
    None,
    description="set by `mailglass serve` for its workers, not by hand: where they share the last good "
    "`MAILGLASS_WEBHOOK_SECRETS`",
    env="MAILGLASS_SERVE_STATE_DIR",
    default_text="a fresh temporary folder per `mailglass serve`",
)

SERVE_HEADER_TIMEOUT = Setting(
    "header_timeout",
    10.0,
    0.1,
    600.0,
    "seconds a client has to send a request's headers to `mailglass serve`, from connecting (408 or closed after)",
    env="MAILGLASS_SERVE_HEADER_TIMEOUT",
    unit="seconds",
)
SERVE_MAX_HEADER_BYTES = Setting(
    "max_header_bytes",
    16 * 1024,
    1024,
    1024 * 1024,
    "largest request line and headers `mailglass serve` reads, in bytes (431 beyond)",
    env="MAILGLASS_SERVE_MAX_HEADER_BYTES",
    unit="bytes",
)
SERVE_MAX_CONNECTIONS = Setting(
    "max_connections",
    4096,
    2,
    1_000_000,
    "open connections per `mailglass serve` worker; beyond, the longest-idle one is closed",
    env="MAILGLASS_SERVE_MAX_CONNECTIONS",
)
SERVE_LIMIT_CONCURRENCY = Setting(
    "limit_concurrency",
    1000,
    1,
    1_000_000,
    "requests in progress per `mailglass serve` worker; beyond, 503 JSON with Retry-After",
    env="MAILGLASS_SERVE_LIMIT_CONCURRENCY",
)
SERVE_METRICS_PORT = Setting(
    "metrics_port",
    None,
    1,
    65535,
    "port of a separate `/metrics` listener of `mailglass serve` (then not served on the webhook port)",
    env="MAILGLASS_SERVE_METRICS_PORT",
    kind=int,
    default_text="unset: `/metrics` on the webhook port",
)
SERVE_AUTH_FAILURE_DELAY = Setting(
    "auth_failure_delay",
    1.0,
    0.0,
    30.0,
    "seconds `mailglass serve` holds a 401 (forged, stale or replayed webhook) before answering and closing "
    "(set from its `--auth-failure-delay`)",
    env="MAILGLASS_SERVE_AUTH_FAILURE_DELAY",
    unit="seconds",
)

#: Every environment variable, in the order defined here (the README's table: tests/test_settings.py).
ENVIRONMENT = tuple(value for value in list(globals().values()) if isinstance(value, Setting) and value.env)
