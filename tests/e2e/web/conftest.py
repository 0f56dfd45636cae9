"""Real-browser fixtures for the example web apps (the same Chromium and gateways as e2e/browser)."""

from tests.support.browser import (  # noqa: F401  (fixtures are found by name)
    artifacts,
    browser,
    browser_assets,
    cascade_gateway,
    playwright_instance,
)
