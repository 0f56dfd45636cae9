"""examples/vite-react, built with `vite build` from the PACKED packages, in real Chromium
against a live offline (cascade) gateway: a spoken turn, both transcripts, an interrupt, and
leaving the conversation releases the microphone, the socket and the AudioContext."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import ServerProcess, free_port
from tests.support.node import install_example, run
from tests.support.webapps import open_app, spawn_app, spoken_turn_interrupt_and_leave, wait_http

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def vite_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = install_example("vite-react")
    run(["npm", "run", "build"], cwd=folder, timeout=300)  # tsc --noEmit, then vite build
    port = free_port()
    server = spawn_app(
        "vite-preview",
        [
            "node_modules/.bin/vite",
            "preview",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--strictPort",
        ],
        folder,
        tmp_path_factory.mktemp("vite-app"),
    )
    server.port = port
    try:
        wait_http(server, server.url)
        yield server
    finally:
        server.stop()


def test_vite_app_talks_interrupts_and_releases_everything_on_leave(
    vite_app: ServerProcess, cascade_gateway: ServerProcess, browser, artifacts: Path
) -> None:
    gateway_ws = cascade_gateway.url.replace("http://", "ws://") + "/ws"
    page, errors = open_app(browser, f"{vite_app.url}/?gateway={gateway_ws}")
    try:
        spoken_turn_interrupt_and_leave(
            page, leave_selector='[data-testid="toggle"]', left_selector='[data-testid="left"]'
        )
    finally:
        page.screenshot(path=str(artifacts / "example-vite-react.png"))
    assert errors == []
