"""Turn-taking on the page at `/` in a real Chromium: the floor state, the hold toggle, and
playback that pauses while the gateway judges sound over the assistant and resumes after it.

As in the other browser tests, what is read comes from the page: the DOM (`data-testid` hooks)
and `window.voxgateDebug` (the client, its worklet counters, server events, sent messages).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Playwright, expect

from tests.support.browser import SPOKEN, ServerProcess, gateway_env, launch_chromium, start_gateway
from voxgate.audio import write_wav

pytestmark = pytest.mark.browser

TRANSCRIPT = '[data-testid="transcript"]'
ASSISTANT_FINAL = f'{TRANSCRIPT} [data-role="assistant"][data-final="true"] .text'
FLOOR = '[data-testid="floor"]'
HOLD = '[data-testid="hold"]'
LONG_TEXT = (
    "please tell me a long story about a lighthouse keeper who lived alone on a small island "
    "far away from the coast and kept the light burning every single night for forty years "
    "while the ships went by in the dark and the storms came and went"
)


def test_hold_toggle_keeps_the_assistant_quiet_until_released(open_page, cascade_gateway) -> None:
    ps = open_page(cascade_gateway.url)
    page = ps.page
    page.click('[data-testid="start"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "connected", timeout=30_000)
    # The microphone's sentence is answered as usual; the floor follows it and goes back to open.
    expect(page.locator(ASSISTANT_FINAL).first).to_contain_text(f"you said {SPOKEN}", timeout=30_000)
    ps.wait_for("d.events.some(e => e.type === 'turn' && e.event === 'assistant_turn_started')")
    expect(page.locator(FLOOR)).to_have_attribute("data-floor", "idle", timeout=30_000)

    expect(page.locator(HOLD)).to_be_enabled(timeout=15_000)
    page.click(HOLD)
    expect(page.locator(FLOOR)).to_have_attribute("data-held", "true", timeout=15_000)
    expect(page.locator(HOLD)).to_have_attribute("aria-pressed", "true", timeout=15_000)
    page.fill('[data-testid="text-input"]', "what time is it")
    page.click('[data-testid="send"]')
    # Heard, not answered (a reply the gateway wrongly started would show within this settle).
    page.wait_for_timeout(2000)
    expect(page.locator(ASSISTANT_FINAL)).to_have_count(1)

    page.click(HOLD)  # release: answer now what was said while held
    expect(page.locator(FLOOR)).to_have_attribute("data-held", "false", timeout=15_000)
    expect(page.locator(ASSISTANT_FINAL)).to_have_count(2, timeout=30_000)
    expect(page.locator(ASSISTANT_FINAL).nth(1)).to_contain_text("you said what time is it", timeout=15_000)
    sent = ps.debug("d.sent.filter(m => m.type === 'hold' || m.type === 'allow_next')")
    assert sent == [
        {"type": "hold", "t": sent[0]["t"]},
        {"type": "allow_next", "respond": True, "t": sent[1]["t"]},
    ], sent
    assert ps.errors == []


# --- playback pauses for a noise over the reply, and resumes -----------------------------------


@pytest.fixture(scope="module")
def noisy_browser(playwright_instance: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """A Chromium whose microphone is quiet for 6 s, then bumps (700 ms of loud noise), then
    stays quiet: a sound over the reply that has no words."""
    folder = tmp_path_factory.mktemp("noisy-mic")
    rate = 44100  # the fake capture device's rate (see `browser_assets`)
    rng = np.random.default_rng(3)
    bump = np.clip(rng.normal(0, 0.15 * 32768, rate * 7 // 10), -32768, 32767).astype("<i2")
    pcm = b"\0\0" * (rate * 6) + bump.tobytes() + b"\0\0" * (rate * 6)
    mic = folder / "bump.wav"
    write_wav(mic, pcm, rate)
    browser = launch_chromium(playwright_instance, mic)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def judging_gateway(tmp_path_factory: pytest.TempPathFactory, browser_assets: dict[str, Path],
                    openai_sim: ServerProcess) -> Iterator[ServerProcess]:  # fmt: skip
    """An OpenAI-engine gateway whose operator asks for judged interruptions."""
    workdir = tmp_path_factory.mktemp("judging-gateway")
    env = gateway_env(
        workdir,
        browser_assets["grammar"],
        VOXGATE_ENGINE="openai",
        VOXGATE_OPENAI_URL=f"ws://127.0.0.1:{openai_sim.port}/v1/realtime",
        OPENAI_API_KEY="sk-browser",
        VOXGATE_TURN_INTERRUPT_MIN_MS="250",
        VOXGATE_TURN_INTERRUPT_MIN_WORDS="1",
    )
    server = start_gateway(workdir, env)
    try:
        yield server
    finally:
        server.stop()


def test_playback_pauses_for_a_bump_and_resumes_where_it_was(
    open_page, noisy_browser, judging_gateway
) -> None:
    ps = open_page(f"{judging_gateway.url}/?prebufferMs=200", in_browser=noisy_browser)
    page = ps.page
    page.click('[data-testid="start"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "connected", timeout=30_000)
    assert ps.debug("d.client.turnTaking.interruption") == "gateway"
    page.fill('[data-testid="text-input"]', LONG_TEXT)
    page.click('[data-testid="send"]')
    # The bump comes while the long reply plays: the gateway pauses it, the worklet holds.
    ps.wait_for("d.playback.paused", 30_000)
    expect(page.locator(FLOOR)).to_have_attribute("data-floor", "paused", timeout=15_000)
    held_at = ps.debug("d.playback.samplesPlayed")
    page.wait_for_timeout(300)
    if ps.debug("d.playback.paused"):
        # Still paused: nothing was taken from the buffer meanwhile (beyond the 5 ms fade and
        # the 50 ms the counters lag).
        rate = ps.debug("d.playback.sampleRate")
        assert ps.debug("d.playback.samplesPlayed") - held_at < rate * 0.06
    # No words come: it resumes, and the whole reply is played, nothing dropped.
    ps.wait_for("d.events.some(e => e.type === 'turn' && e.event === 'assistant_resumed')", 15_000)
    ps.wait_for("!d.playback.paused && !d.playback.isPlaying && d.playback.buffered === 0", 60_000)
    assert ps.debug("d.events.filter(e => e.type === 'interrupted').length") == 0
    received_ms = ps.debug("d.client.debug.audioReceivedBytes") / 2 / 24000 * 1000
    played_ms = ps.debug("d.playback.samplesPlayed / d.playback.sampleRate * 1000")
    assert received_ms > 5000 and abs(played_ms - received_ms) < 50, (played_ms, received_ms)
    assert ps.errors == []
