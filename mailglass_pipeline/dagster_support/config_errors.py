"""A bad Launchpad value, refused at launch in one line that names the field and its bound.

Dagster's config schema has types but no bounds, so the pydantic bounds of a ``Config`` class
are checked in Python. Where that happens decides what the operator reads:

* a ``Config``-annotated ``@config_mapping`` builds the class inside Dagster's
  ``user_code_error_boundary``, which wraps pydantic's ``ValidationError`` in a
  ``DagsterConfigMappingFunctionError``: the launch answers with a generic message, the
  pydantic report as its cause and both stack traces (about 40 lines);
* that boundary re-raises a ``DagsterError`` unchanged. So the mapping takes the plain
  config dictionary (same schema, ``Config.to_config_schema()``) and builds the class through
  :func:`parse_launchpad_config`, which raises :class:`LaunchpadConfigError` with one line such
  as ``invalid reconcile config: limit must be >= 1 (got 0)`` and no cause. The launch
  (GraphQL ``launchPipelineExecution``, what the Launchpad calls) returns it as the error's message.

An asset's own config has no config mapping, and Dagster builds a ``Config``-annotated argument
before the body runs: a bad value would fail the run's first step (four times, with a retry
policy). So both launchable assets are graph-backed with a mapping (``webhook_reconciliation``,
``reconciliation_sweep``): every bad value is refused at launch, before any run exists.

What remains beyond our reach: the Launchpad editor validates against the schema snapshot
only (``dagster_graphql``'s ``resolve_is_run_config_valid`` calls ``validate_config_from_snap``
and nothing else), so it still says "No errors" for ``limit: 0``; the refusal comes when Launch is pressed,
before any run exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from dagster import Config, DagsterError
from pydantic import ValidationError

ConfigT = TypeVar("ConfigT", bound=Config)

#: pydantic's bound checks, said the way the Launchpad's reader thinks of them.
BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


class LaunchpadConfigError(DagsterError):
    """A Launchpad value outside its bounds (a ``DagsterError``: Dagster reports it as it is)."""


def describe_validation_error(exc: ValidationError) -> str:
    """One clause per bad field: ``limit must be >= 1 (got 0)``; other errors keep pydantic's wording."""
    clauses = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "config"
        bounds = [f"{BOUND_WORDS[k]} {v}" for k, v in (error.get("ctx") or {}).items() if k in BOUND_WORDS]
        reason = f"must be {' and '.join(bounds)}" if bounds else error["msg"][:1].lower() + error["msg"][1:]
        clauses.append(f"{field} {reason} (got {error.get('input')!r})")
    return "; ".join(clauses)


def parse_launchpad_config(config_cls: type[ConfigT], values: Mapping[str, Any], what: str) -> ConfigT:
    """``config_cls(**values)``, or :class:`LaunchpadConfigError` in one line naming each bad field and bound."""
    try:
        return config_cls(**values)
    except ValidationError as exc:
        raise LaunchpadConfigError(f"invalid {what}: {describe_validation_error(exc)}") from None
