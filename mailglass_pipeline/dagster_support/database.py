"""How a run treats database trouble: retried a few times, reported in one line.

Shared by every op and asset that touches the application database (the
per-tenant ops, the scheduled sweep, the checks, the parked-row retention).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, Failure, RetryPolicy

from mailglass_pipeline.errors import DatabaseUnavailableError

#: Transient database trouble (restart, failover, connection reset) is retried
#: 1 s, 2 s, 4 s later; the next minute's run would retry anyway.
DATABASE_RETRY_POLICY = RetryPolicy(max_retries=3, delay=1, backoff=Backoff.EXPONENTIAL)


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn an unreachable database into a one-line step failure (still retried by the policy)."""
    try:
        yield
    except DatabaseUnavailableError as exc:
        raise Failure(description=str(exc), allow_retries=True) from exc
