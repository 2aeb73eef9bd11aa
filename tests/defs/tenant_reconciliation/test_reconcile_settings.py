"""Each sweep setting is defined once: the Launchpad configs and the CLI read it from mailglass_pipeline.settings."""

from __future__ import annotations

import inspect

import pytest
from click.testing import CliRunner

from mailglass_pipeline import settings
from mailglass_pipeline.cli import cli
from mailglass_pipeline.defs.scheduled_sweep.assets import SweepDueConfig
from mailglass_pipeline.defs.tenant_reconciliation.ops import ReconcileConfig
from mailglass_pipeline.reconciliation.sweep import reconcile as reconcile_api
from mailglass_pipeline.setting import Setting


def _bounds(model: type, name: str) -> tuple[object, object | None, object | None]:
    field = model.model_fields[name]
    ge = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), None)
    le = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
    return field.default, ge, le


@pytest.mark.parametrize("model", [ReconcileConfig, SweepDueConfig])
@pytest.mark.parametrize("setting", [settings.LIMIT, settings.MAX_AGE_MINUTES, settings.GRACE_SECONDS])
def test_dagster_configs_take_default_and_bounds_from_the_setting(model: type, setting: Setting) -> None:
    assert _bounds(model, setting.name) == (setting.default, setting.minimum, setting.maximum)
    assert model.model_fields[setting.name].description == setting.description


def test_one_max_total_on_every_path() -> None:
    """The CLI, the API, the core and the scheduled job's Launchpad share max_total's one default and bounds."""
    cap = settings.MAX_TOTAL
    assert _bounds(SweepDueConfig, "max_total") == (cap.default, cap.minimum, cap.maximum)
    assert settings.SweepConfig().max_total == cap.default
    assert inspect.signature(reconcile_api).parameters["max_total"].default == cap.default


def test_core_and_launchpad_refuse_the_same_values() -> None:
    too_big = settings.LIMIT.maximum + 1
    with pytest.raises(ValueError, match=f"limit must be a whole number from 1 to {settings.LIMIT.maximum}, got"):
        settings.SweepConfig(limit=too_big)
    with pytest.raises(ValueError):
        ReconcileConfig(limit=too_big)


def test_cli_options_show_the_settings_values() -> None:
    result = CliRunner().invoke(cli, ["reconcile", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for setting in (settings.LIMIT, settings.MAX_AGE_MINUTES, settings.GRACE_SECONDS, settings.MAX_TOTAL):
        assert f"[default: {setting.default};" in result.output
    assert "DEFAULT_MAX_TOTAL" not in result.output
    refused = CliRunner().invoke(cli, ["reconcile", "--batch-size", str(settings.LIMIT.maximum + 1)])
    assert refused.exit_code == 2 and "--batch-size" in refused.output
