"""The same page against the `openai-live` engine, chosen in the page's engine picker (the
gateway's default is the cascade), with the GPT-Live simulator started by the real
`voxgate simulate openai-live` command. GPT-Live's model ends turns itself, so the page turns
push-to-talk off while it runs; everything else is the page as every engine gets it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.support.browser import (
    SPOKEN,
    ServerProcess,
    _clean_env,
    _spawn,
    _voxgate_command,
    free_port,
    gateway_env,
    start_gateway,
)

pytestmark = pytest.mark.browser

TRANSCRIPT = '[data-testid="transcript"]'
KEY = "sk-browser-live"


@pytest.fixture(scope="module")
def live_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("openai-live-sim")
    port = free_port()
    command = [*_voxgate_command(), "simulate", "openai-live", "--port", str(port), "--key", KEY,
               "--transcript", SPOKEN]  # fmt: skip
    sim = _spawn("openai-live-sim", command, _clean_env(), workdir)
    try:
        sim.wait_for_line(r"GPT-Live simulator on ws://127\.0\.0\.1:\d+", timeout=45)
        sim.port = port
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def live_gateway(
    tmp_path_factory: pytest.TempPathFactory, browser_assets: dict[str, Path], live_sim: ServerProcess
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("openai-live-gateway")
    env = gateway_env(
        workdir,
        browser_assets["grammar"],
        VOXGATE_ENGINE="cascade",
        VOXGATE_ALLOWED_ENGINES="cascade,openai-live",
        OPENAI_API_KEY=KEY,
        VOXGATE_OPENAI_LIVE_URL=f"ws://127.0.0.1:{live_sim.port}/v1/live/sessions",
    )
    server = start_gateway(workdir, env)
    try:
        yield server
    finally:
        server.stop()


def test_spoken_and_typed_turns_over_openai_live_picked_in_the_page(open_page, live_gateway) -> None:
    # GPT-Live streams audio without pause for the whole session (silence included), so any
    # stall of this shared 2-core machine longer than the jitter buffer shows up as an
    # underrun: 400 ms of it, as a deployment on a busy device would choose.
    ps = open_page(f"{live_gateway.url}/?prebufferMs=400")
    page = ps.page
    picker = page.locator("#engine")
    expect(picker.locator('option[value="openai-live"]')).to_have_text("OpenAI GPT-Live")
    picker.select_option("openai-live")
    page.click('[data-testid="start"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "connected")
    assert ps.debug("d.client.session.engine") == "openai-live"
    assert ps.debug("d.client.capabilities.manualTurns") is False
    expect(page.locator('#mode input[value="manual"]')).to_be_disabled()

    user = page.locator(f'{TRANSCRIPT} [data-role="user"][data-final="true"] .text')
    assistant = page.locator(f'{TRANSCRIPT} [data-role="assistant"][data-final="true"] .text')
    expect(user.first).to_have_text(SPOKEN, timeout=30_000)
    expect(assistant.first).to_contain_text(f"You said: {SPOKEN}", timeout=30_000)
    ps.wait_for("d.playback.samplesPlayed > d.playback.sampleRate / 2", 30_000)

    # Typed text reaches GPT-Live as commentary; the model answers it aloud.
    page.fill('[data-testid="text-input"]', "typed words")
    page.click('[data-testid="send"]')
    expect(assistant.nth(1)).to_contain_text("You said: typed words", timeout=30_000)
    ps.wait_for("!d.playback.isPlaying && d.playback.buffered === 0", 30_000)
    stats = ps.debug("JSON.parse(JSON.stringify(d.playback))")
    assert stats["underruns"] == 0, stats
    assert ps.errors == []
    page.click('[data-testid="stop"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "disconnected")
    expect(page.locator('#mode input[value="manual"]')).to_be_enabled()
