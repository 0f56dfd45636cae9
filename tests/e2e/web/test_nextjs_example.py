"""examples/nextjs (App Router), built once with `next build` from the PACKED packages and run
with `next start`, in real Chromium against a live cascade gateway with auth on.

The browser gets single-use session tokens from the example's server route, which holds the
gateway's JWT secret; the test checks the secret and the JWT never reach the page. Then the
same scenario as the Vite app: spoken turn, both transcripts, interrupt, and navigating away
(a client-side route change unmounts the component) leaves no microphone, socket or audio open.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.browser import ServerProcess, free_port, gateway_env, start_gateway
from tests.support.node import install_example, run
from tests.support.webapps import open_app, spawn_app, spoken_turn_interrupt_and_leave, wait_http

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

JWT_SECRET = secrets.token_urlsafe(48)


@pytest.fixture(scope="module")
def next_build() -> Path:
    """One `next build` per test run (this module runs on one worker)."""
    folder = install_example("nextjs")
    run(["node_modules/.bin/next", "build"], cwd=folder, timeout=600)
    return folder


@pytest.fixture(scope="module")
def next_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def auth_gateway(
    tmp_path_factory: pytest.TempPathFactory, browser_assets: dict[str, Path], next_port: int
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("nextjs-gateway")
    env = gateway_env(
        workdir,
        browser_assets["grammar"],
        VOXGATE_AUTH="jwt",
        VOXGATE_JWT_SECRET=JWT_SECRET,
        VOXGATE_ALLOWED_ORIGINS=f"http://127.0.0.1:{next_port}",
    )
    server = start_gateway(workdir, env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def next_app(
    next_build: Path,
    next_port: int,
    auth_gateway: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    server = spawn_app(
        "next-start",
        ["node_modules/.bin/next", "start", "-H", "127.0.0.1", "-p", str(next_port)],
        next_build,
        tmp_path_factory.mktemp("next-app"),
        VOXGATE_URL=auth_gateway.url,
        VOXGATE_JWT_SECRET=JWT_SECRET,
        VOXGATE_PUBLIC_WS_URL=auth_gateway.url.replace("http://", "ws://") + "/ws",
    )
    server.port = next_port
    try:
        wait_http(server, server.url)
        yield server
    finally:
        server.stop()


def test_the_page_is_server_rendered_and_the_gateway_requires_the_token(
    next_app: ServerProcess, auth_gateway: ServerProcess
) -> None:
    html = httpx.get(next_app.url, timeout=30).text
    # The hook rendered on the server (idle state), with no browser globals there.
    assert 'data-status="disconnected"' in html, html[:2000]
    # Auth is really on: without the route's JWT the gateway refuses to mint a token...
    assert httpx.post(f"{auth_gateway.url}/api/realtime/session", timeout=10).status_code == 401
    # ...and the route mints a single-use token with the secret it holds.
    minted = httpx.post(f"{next_app.url}/api/voxgate/session", timeout=30)
    assert minted.status_code == 200, minted.text
    assert minted.json()["token"].startswith("vxs_")


def test_nextjs_app_talks_interrupts_and_releases_everything_on_navigation(
    next_app: ServerProcess, browser, artifacts: Path
) -> None:
    page, errors = open_app(browser, next_app.url)
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    try:
        spoken_turn_interrupt_and_leave(
            page, leave_selector='[data-testid="leave"]', left_selector='[data-testid="left"]'
        )
    finally:
        page.screenshot(path=str(artifacts / "example-nextjs.png"))
    # The browser asked its own server for tokens, never the gateway's token endpoint...
    assert any(url.endswith("/api/voxgate/session") for url in seen), seen
    assert not any("/api/realtime/session" in url for url in seen), seen
    # ...and every connection presented a single-use session token, not the JWT.
    offered = page.evaluate("() => window.__probe.protocols")
    assert offered and all(p[1].startswith("voxgate.bearer.vxs_") for p in offered), offered
    content = page.content()
    assert JWT_SECRET not in content and "eyJ" not in content
    # A client-side navigation: the probe (made once per document) still saw the sockets.
    assert page.url.endswith("/about")
    assert errors == []
