"""A bad Launchpad value is refused at launch in one line naming the field and its bound.

Both jobs an operator launches from the Launchpad: the per-tenant ``reconcile_orphans`` and the
all-tenant ``reconcile_due_tenants`` (the schedule's job).

Through the route the UI takes: the GraphQL mutation the Launchpad's Launch button sends,
answered by the real code location running in its own code server (``workspace.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, instance_for_test
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from mailglass_pipeline.defs.scheduled_sweep.jobs import SWEEP_JOB_NAME
from mailglass_pipeline.defs.tenant_reconciliation.jobs import RECONCILE_JOB_NAME

REPO = Path(__file__).resolve().parents[2]
#: Each job's Launchpad node, the tags a launch from its page carries, and the one line's prefix.
JOBS = {
    RECONCILE_JOB_NAME: ("mailglass__webhook_reconciliation", {"dagster/partition": "t1"}, "invalid reconcile config"),
    SWEEP_JOB_NAME: ("mailglass__reconciliation_sweep", {}, "invalid sweep config"),
}

LAUNCH = """
mutation($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on PythonError { message stack causes { message } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on LaunchRunSuccess { run { runId } }
  }
}
"""


@pytest.fixture(scope="module")
def launchpad(admin_url: str) -> Iterator[tuple[Any, DagsterInstance]]:
    """The code location in its own code server; a URL so loading it starts no embedded server.

    A refused launch never connects to it.
    """
    with pytest.MonkeyPatch.context() as patch, instance_for_test() as instance:
        patch.setenv("MAILGLASS_DATABASE_URL", admin_url)
        with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
            yield context, instance


def launch(context: Any, config: dict[str, Any], job: str = RECONCILE_JOB_NAME) -> dict[str, Any]:
    node, tags, _ = JOBS[job]
    result = execute_dagster_graphql(
        context,
        LAUNCH,
        variables={
            "executionParams": {
                "selector": {
                    "repositoryLocationName": "mailglass_pipeline",
                    "repositoryName": "__repository__",
                    "jobName": job,
                },
                "runConfigData": {"ops": {node: {"config": config}}},
                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
            }
        },
    )
    return result.data["launchPipelineExecution"]


@pytest.mark.parametrize("job", list(JOBS))
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"limit": 0}, "limit must be >= 1 (got 0)"),
        ({"limit": 100_001}, "limit must be <= 100000 (got 100001)"),
        ({"grace_seconds": -1}, "grace_seconds must be >= 0 (got -1)"),
    ],
)
def test_an_out_of_bounds_value_is_one_line_naming_field_and_bound(launchpad, job, config, expected) -> None:
    context, instance = launchpad
    answer = launch(context, config, job)
    assert answer["__typename"] == "PythonError"
    message = answer["message"].strip()
    assert "\n" not in message, message
    assert message.endswith(f"{JOBS[job][2]}: {expected}"), message
    assert "DagsterConfigMappingFunctionError" not in message and answer["causes"] == []
    assert instance.get_runs() == []  # refused before any run exists


def test_every_bad_field_is_named_in_the_same_line(launchpad) -> None:
    context, _ = launchpad
    message = launch(context, {"limit": 0, "max_age_minutes": 0})["message"].strip()
    assert "\n" not in message
    assert "limit must be >= 1 (got 0)" in message and "max_age_minutes must be >= 1 (got 0)" in message


def test_the_sweep_budget_is_checked_at_launch_too(launchpad) -> None:
    """A bound pydantic cannot see (the budget's) is refused by the same mapping, before any run."""
    context, instance = launchpad
    answer = launch(context, {"budget_seconds": -5.0}, SWEEP_JOB_NAME)
    assert answer["__typename"] == "PythonError", answer
    message = answer["message"].strip()
    assert "\n" not in message and "invalid sweep config" in message and "budget" in message, message
    assert instance.get_runs() == []


def test_only_a_wrong_type_is_refused_without_a_stack(launchpad) -> None:
    """What docs/operating.md says Dagster decides: a type error is a plain list, a bound a PythonError with a stack."""
    context, instance = launchpad
    typed = launch(context, {"limit": "abc"})
    assert typed["__typename"] == "RunConfigValidationInvalid" and len(typed["errors"]) == 1, typed
    bounded = launch(context, {"limit": 0})
    assert bounded["__typename"] == "PythonError" and bounded["stack"], bounded  # the code server's frames
    assert "\n" not in bounded["message"].strip()  # the first line stays one line naming the field and bound
    assert instance.get_runs() == []


SCAFFOLD = """
query($selector: PipelineSelector!) {
  runConfigSchemaOrError(selector: $selector) { __typename ... on RunConfigSchema { rootDefaultYaml } }
}
"""


@pytest.mark.parametrize("job", list(JOBS))
def test_the_launchpad_scaffolds_the_one_default_of_each_setting(launchpad, job) -> None:
    """Deliver 5 through the UI's route: the default YAML the Launchpad scaffolds, from the code server."""
    import yaml

    from mailglass_pipeline import settings

    context, _ = launchpad
    selector = {"repositoryLocationName": "mailglass_pipeline", "repositoryName": "__repository__", "pipelineName": job}
    answer = execute_dagster_graphql(context, SCAFFOLD, variables={"selector": selector}).data
    scaffold = yaml.safe_load(answer["runConfigSchemaOrError"]["rootDefaultYaml"])
    config = scaffold["ops"][JOBS[job][0]]["config"]
    for setting in (settings.LIMIT, settings.MAX_AGE_MINUTES, settings.GRACE_SECONDS, settings.RETRY_ALL):
        assert config[setting.name] == setting.default, (setting.name, config)
    if job == SWEEP_JOB_NAME:
        assert config["max_total"] == settings.MAX_TOTAL.default == 10_000, config
