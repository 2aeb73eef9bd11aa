"""The browser tests' fixtures (defined in test_browser.py), shared with the other modules here."""

from tests.ui.test_browser import browser, dev_server  # noqa: F401 (fixtures)
