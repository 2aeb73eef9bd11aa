"""The reconcile package's SQL: its ``sql/*.sql`` files, registered once in :mod:`mailglass_pipeline.queries`.

Three fragments have their one home in Python and join the closed set here: the
projection rules and the notification (``projector``, decision D6/D7) and the
delivery lookup (``deliveries``, decision D8).
"""

from __future__ import annotations

import sqlalchemy as sa

from mailglass_pipeline import deliveries, projector, queries
from mailglass_pipeline.settings import BACKOFF_CAP_MINUTES, BACKOFF_MINUTES

STATEMENTS: dict[str, sa.TextClause] = queries.register(
    "mailglass_pipeline.reconciliation",
    extra={
        "projection": projector.projection_ctes("won"),
        "notify": projector.notify_select("latest"),
        "delivery_lookup": deliveries.lookup_lateral("k"),
    },
)

#: What every statement using the backoff fragment binds: the steps' one home is settings.py.
BACKOFF_PARAMS = {"backoff_steps": list(BACKOFF_MINUTES), "backoff_cap": BACKOFF_CAP_MINUTES}


def sql(name: str) -> sa.TextClause:
    """The reconcile statement ``name`` (see ``sql/*.sql``)."""
    return STATEMENTS[name]
