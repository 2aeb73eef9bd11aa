"""One default per setting on every path: the Launchpad's scaffold, the CLI's help and the README (issue 24).

The Launchpad scaffolds a job's config from the defaults in its config schema; ``mailglass reconcile --help``
prints the options' defaults; the README states them (tests/test_settings.py). All come from
``mailglass_pipeline.settings``.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mailglass_pipeline import settings
from mailglass_pipeline.cli import cli
from mailglass_pipeline.definitions import build_definitions
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.setting import Setting

NODES = {
    "reconcile_orphans": "mailglass__webhook_reconciliation",
    "reconcile_due_tenants": "mailglass__reconciliation_sweep",
}
SWEEP_SETTINGS = [
    settings.LIMIT,
    settings.MAX_AGE_MINUTES,
    settings.GRACE_SECONDS,
    settings.MAX_TOTAL,
    settings.RETRY_ALL,
]


def launchpad_defaults(job_name: str) -> dict[str, object]:
    """The defaults the Launchpad scaffolds for a job (its run config schema, as the UI reads it)."""
    job = build_definitions(MailglassDatabase(database_url="postgresql+psycopg://unused@127.0.0.1/none"))
    root = job.resolve_job_def(job_name).run_config_schema.config_type
    node = root.fields["ops"].config_type.fields[NODES[job_name]].config_type.fields["config"].config_type
    return {name: field.default_value for name, field in node.fields.items() if field.default_provided}


@pytest.mark.parametrize("setting", SWEEP_SETTINGS, ids=lambda s: s.name)
def test_every_path_has_the_settings_default(setting: Setting) -> None:
    scaffolds = [launchpad_defaults(job) for job in NODES]
    offered = [scaffold[setting.name] for scaffold in scaffolds if setting.name in scaffold]
    assert offered and all(value == setting.default for value in offered), (setting.name, offered)
    help_text = " ".join(CliRunner().invoke(cli, ["reconcile", "--help"]).output.split())
    if setting.type is not bool:
        flag = "--batch-size" if setting is settings.LIMIT else f"--{setting.name.replace('_', '-')}"
        assert flag in help_text and f"default: {setting.default}" in help_text.split(flag, 1)[1].split("--")[0]
