"""The budgeted drain's public names, kept where callers import them: see :mod:`mailglass_pipeline.reconcile.drain`."""

from mailglass_pipeline.reconcile.drain import sweep_until, tenant_changed
from mailglass_pipeline.reconcile.results import BUDGET, DRAINED, QUOTA, DrainResult
from mailglass_pipeline.reconcile.settings import (
    BUDGET_ENV,
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_TRANSACTION_CAP,
    MAX_BUDGET_SECONDS,
    budget_from_env,
    validate_budget,
)

__all__ = [
    "BUDGET",
    "BUDGET_ENV",
    "DEFAULT_BUDGET_SECONDS",
    "DEFAULT_TRANSACTION_CAP",
    "DRAINED",
    "MAX_BUDGET_SECONDS",
    "QUOTA",
    "DrainResult",
    "budget_from_env",
    "sweep_until",
    "tenant_changed",
    "validate_budget",
]
