"""Make each test's call report visible to its fixtures, so the browser fixture saves artifacts only on failure.

A ``pytest_runtest_makereport`` hook only takes effect from a conftest (or plugin), not from a test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
