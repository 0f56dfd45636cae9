"""The real-browser fixtures (Chromium, gateways, pages) for the tests in this folder."""

from tests.support.browser import (  # noqa: F401  (fixtures are found by name)
    artifacts,
    browser,
    browser_assets,
    cascade_gateway,
    denying_browser,
    gateway_starter,
    open_page,
    openai_sim,
    playwright_instance,
)
