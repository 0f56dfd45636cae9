"""The same page, unchanged, against the ElevenLabs engine (the shipped simulator, started
with the real `voxgate simulate elevenlabs` command). The agent speaks 44.1 kHz PCM; the gateway
resamples it to the page's 24 kHz, and the page cannot tell the engines apart."""

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
KEY = "xi-browser"
AGENT = "agent_browser"


@pytest.fixture(scope="module")
def elevenlabs_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("elevenlabs-sim")
    port = free_port()
    command = [
        *_voxgate_command(), "simulate", "elevenlabs", "--port", str(port), "--api-key", KEY,
        "--agent-id", AGENT, "--pace", "4", "--transcript", SPOKEN, "--output-format", "pcm_44100",
    ]  # fmt: skip
    sim = _spawn("elevenlabs-sim", command, _clean_env(), workdir)
    try:
        sim.wait_for_line(r"ElevenLabs simulator: REST http://127\.0\.0\.1:\d+", timeout=45)
        sim.port = port
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def elevenlabs_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    browser_assets: dict[str, Path],
    elevenlabs_sim: ServerProcess,
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("elevenlabs-gateway")
    env = gateway_env(
        workdir,
        browser_assets["grammar"],
        VOXGATE_ENGINE="elevenlabs",
        ELEVENLABS_API_KEY=KEY,
        VOXGATE_ELEVENLABS_AGENT_ID=AGENT,
        VOXGATE_ELEVENLABS_API_BASE=f"http://127.0.0.1:{elevenlabs_sim.port}/v1",
        VOXGATE_ELEVENLABS_URL=f"ws://127.0.0.1:{elevenlabs_sim.port}/v1/convai/conversation",
    )
    server = start_gateway(workdir, env)
    try:
        yield server
    finally:
        server.stop()


def test_spoken_and_typed_turns_over_the_elevenlabs_engine(open_page, elevenlabs_gateway) -> None:
    ps = open_page(f"{elevenlabs_gateway.url}/?prebufferMs=200")
    page = ps.page
    page.click('[data-testid="start"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "connected")
    assert ps.debug("d.client.session.engine") == "elevenlabs"

    user = page.locator(f'{TRANSCRIPT} [data-role="user"][data-final="true"] .text')
    assistant = page.locator(f'{TRANSCRIPT} [data-role="assistant"][data-final="true"] .text')
    expect(user.first).to_have_text(SPOKEN, timeout=30_000)
    expect(assistant.first).to_contain_text(f"You said: {SPOKEN}", timeout=30_000)
    ps.wait_for("d.playback.samplesPlayed > d.playback.sampleRate / 2", 30_000)

    # The text box works the same way with this engine.
    page.fill('[data-testid="text-input"]', "typed words")
    page.click('[data-testid="send"]')
    expect(assistant.nth(1)).to_contain_text("You said: typed words", timeout=30_000)
    ps.wait_for("!d.playback.isPlaying && d.playback.buffered === 0", 30_000)
    stats = ps.debug("JSON.parse(JSON.stringify(d.playback))")
    assert stats["underruns"] == 0, stats
    assert ps.errors == []
