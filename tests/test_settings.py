"""Each setting is defined once (mailglass_pipeline/settings.py), read one way, refused in one line; README agrees."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mailglass_pipeline import settings
from mailglass_pipeline.errors import ConfigurationError
from mailglass_pipeline.setting import Setting

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mailglass_pipeline"
README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_row(setting: Setting) -> str:
    return f"| `{setting.env}` | {setting.description} | {setting.shown_default()} |"


def test_the_readme_table_is_the_settings_module() -> None:
    """Every variable once, with its help and its default; a new variable fails here until listed."""
    listed = [line for line in README.splitlines() if line.startswith("| `MAILGLASS_")]
    expected = [readme_row(setting) for setting in settings.ENVIRONMENT]
    assert sorted(listed) == sorted(expected), "README.md's table should hold these rows:\n" + "\n".join(expected)


def test_every_variable_the_package_names_is_defined_in_the_settings_module() -> None:
    """No other module spells a MAILGLASS_* name (so none reads one past Setting.read)."""
    defined = {setting.env for setting in settings.ENVIRONMENT}
    assert len(defined) == len(settings.ENVIRONMENT)
    spelled: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "settings.py" or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in re.findall(r"^MAILGLASS_[A-Z_]+$", node.value):
                    spelled.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert spelled == {}, spelled
    source = (PACKAGE / "settings.py").read_text(encoding="utf-8")
    assert set(re.findall(r'"(MAILGLASS_[A-Z_]+)"', source)) == defined  # ENVIRONMENT misses none


@pytest.mark.parametrize("setting", settings.ENVIRONMENT, ids=lambda s: s.env)
def test_unset_or_blank_is_the_default_and_a_bad_value_is_one_line(setting: Setting) -> None:
    assert setting.read({}) == setting.default
    assert setting.read({setting.env: "  "}) == setting.default
    if setting.type is str:
        assert setting.read({setting.env: "x"}) == "x"
        return
    good = setting.minimum if setting.minimum is not None else setting.default
    assert setting.read({setting.env: f" {good} "}) == good
    for bad in ("ten", "nan", "inf", "1e999"):
        with pytest.raises(ConfigurationError) as refused:
            setting.read({setting.env: bad})
        assert str(refused.value) == f"{setting.env} must be {setting.accepts()}, got {bad!r}"
    if setting.minimum is not None:
        below = str(setting.minimum - 1)
        with pytest.raises(ConfigurationError, match=f"^{setting.env} must be .*, got '{below}'$"):
            setting.read({setting.env: below})


def test_what_a_setting_accepts_in_words() -> None:
    assert settings.CONNECT_TIMEOUT.accepts() == "a whole number of seconds >= 1"
    assert settings.LIMIT.accepts() == "a whole number from 1 to 100000"
    assert settings.BUDGET_SECONDS.accepts() == "a number of seconds from 0.001 to 3600"
    assert settings.RETRY_ALL.accepts() == "true or false"
    with pytest.raises(ConfigurationError, match=r"^limit must be a whole number from 1 to 100000, got True$"):
        settings.LIMIT.check(True)  # bool is an int subclass; True as a limit is a bug, not a 1


def test_the_stale_message_follows_max_age() -> None:
    assert settings.stale_message() == "older than 7 days, unlikely to reconcile"  # Mailglass's admin wording
    assert settings.stale_message(90) == "older than 90 minutes, unlikely to reconcile"
    assert settings.stale_message(120) == "older than 2 hours, unlikely to reconcile"
    assert settings.stale_message(24 * 60) == "older than 1 day, unlikely to reconcile"


def test_the_readme_states_the_sweep_defaults() -> None:
    limit, cap = settings.LIMIT.default, settings.MAX_TOTAL.default
    assert f"at most `limit` ({limit}) per tenant and `max_total` ({cap:,}) in all" in README
