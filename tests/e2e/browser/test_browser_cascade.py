"""The page at `/` in a real Chromium against a real offline (cascade) gateway.

The fake microphone plays an espeak-ng WAV; the gateway hears it (webrtcvad + pocketsphinx with
a grammar, so the transcript is exact), answers with espeak-ng speech, and the page plays it
through its AudioWorklet. What the tests read comes from the page itself: the DOM (by the
`data-testid` hooks) and `window.voxgateDebug` (worklet counters, server events, sent messages).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.browser import SPOKEN, PageSession, gateway_env

pytestmark = pytest.mark.browser

TRANSCRIPT = '[data-testid="transcript"]'
USER_FINAL = f'{TRANSCRIPT} [data-role="user"][data-final="true"] .text'
ASSISTANT_FINAL = f'{TRANSCRIPT} [data-role="assistant"][data-final="true"] .text'
LONG_TEXT = (
    "please tell me a long story about a lighthouse keeper who lived alone on a small island "
    "far away from the coast and kept the light burning every single night for forty years "
    "while the ships went by in the dark"
)


def playback(ps: PageSession) -> dict:
    return ps.debug("JSON.parse(JSON.stringify(d.playback))")


def test_spoken_turn_is_transcribed_answered_and_played(
    open_page, cascade_gateway, artifacts: Path
) -> None:
    ps = open_page(cascade_gateway.url)
    page = ps.page
    page.click('[data-testid="start"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "connected")
    ps.wait_for("d.audioMode === 'full'", 15_000)  # "starting" while the mic comes up

    # The server's VAD hears the user: the indicator lights up while the words play.
    expect(page.locator('[data-testid="user-speaking"]')).to_have_attribute("data-active", "true")
    expect(page.locator(USER_FINAL)).to_have_text(SPOKEN, timeout=30_000)
    expect(page.locator(ASSISTANT_FINAL)).to_contain_text(f"you said {SPOKEN}", timeout=30_000)
    expect(page.locator('[data-testid="assistant-speaking"]')).to_have_attribute(
        "data-active", "true"
    )

    # Exactly one element per turn, user first.
    roles = page.locator(f"{TRANSCRIPT} > *").evaluate_all("els => els.map(e => e.dataset.role)")
    assert roles == ["user", "assistant"], roles

    # The reply really played: wait for the worklet to drain, then compare what it played with
    # what the server sent (24 kHz PCM16): gap-free means nothing lost and no underrun.
    ps.wait_for(
        "d.playback.samplesPlayed > 0 && !d.playback.isPlaying && d.playback.buffered === 0", 30_000
    )
    expect(page.locator('[data-testid="assistant-speaking"]')).to_have_attribute(
        "data-active", "false"
    )
    stats = playback(ps)
    received_ms = ps.debug("d.client.debug.audioReceivedBytes") / 2 / 24000 * 1000
    played_ms = stats["samplesPlayed"] / stats["sampleRate"] * 1000
    assert received_ms > 800, received_ms  # a sentence of speech, not a click
    assert stats["underruns"] == 0, stats
    assert abs(played_ms - received_ms) < 20, (played_ms, received_ms)
    assert ps.debug("d.capture.framesSent") > 50  # the microphone was streamed as 20 ms frames

    page.screenshot(path=str(artifacts / "browser-conversation-desktop.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(artifacts / "browser-conversation-phone.png"), full_page=True)
    assert ps.errors == []


def test_interrupt_stops_playback_at_once_and_the_gateway_gets_played_ms(
    open_page, cascade_gateway
) -> None:
    ps = open_page(cascade_gateway.url)
    page = ps.page
    # Typing while disconnected opens a session without the microphone (the fake one would
    # otherwise start a spoken turn of its own).
    page.fill('[data-testid="text-input"]', LONG_TEXT)
    page.click('[data-testid="send"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "connected")
    ps.wait_for("d.audioMode === 'playback'", 15_000)

    # Half a second still buffered: the click lands while audio plays, even when a loaded
    # machine makes the voice synthesise sentence by sentence only just ahead of playback
    # (a click into a gap between sentences has no stop latency to measure).
    ps.wait_for(
        "d.playback.isPlaying && d.playback.samplesPlayed > d.playback.sampleRate"
        " && d.playback.buffered > d.playback.sampleRate / 2",
        60_000,
    )
    interrupt = page.locator('[data-testid="interrupt"]')
    expect(interrupt).to_be_enabled()
    interrupt.click()
    ps.wait_for(
        "d.playback.lastFlushAt !== null && d.interruptRequestedAt !== null && d.playback.lastFlushAt >= d.interruptRequestedAt",
        10_000,
    )
    timing = ps.debug(
        "({requested: d.interruptRequestedAt, reported: d.playback.lastFlushAt,"
        " stop: d.playback.lastStopLatencyMs})"
    )
    # Measured in the page, on the audio clock: from the click handler to the first silent
    # output frame of the worklet (a 5 ms fade-out included).
    assert timing["stop"] is not None and 0 <= timing["stop"] < 100, timing
    assert timing["reported"] - timing["requested"] < 2000, timing  # and the page learnt it

    # Silence means silence: the counter stops and stale audio of the reply is dropped.
    before = playback(ps)
    page.wait_for_timeout(400)
    after = playback(ps)
    assert not after["isPlaying"]
    assert after["samplesPlayed"] == before["samplesPlayed"], (before, after)
    expect(page.locator('[data-testid="assistant-speaking"]')).to_have_attribute(
        "data-active", "false"
    )

    # The interrupt carried what was heard, and the gateway acted on exactly that value.
    sent = ps.debug("d.sent.filter(m => m.type === 'interrupt')")
    assert len(sent) == 1 and sent[0]["playedMs"] >= 1000, sent
    played_ms = sent[0]["playedMs"]
    ps.wait_for("d.events.some(e => e.type === 'interrupted')", 10_000)
    interrupted = ps.debug("d.events.filter(e => e.type === 'interrupted')")
    assert interrupted[-1]["playedMs"] == played_ms, (interrupted, played_ms)
    assistant = page.locator(f'{TRANSCRIPT} [data-role="assistant"]').last
    expect(assistant).to_have_attribute("data-interrupted", "true")

    conversation_id = ps.debug("d.client.conversationId")
    turns = _stored_turns(
        cascade_gateway.url,
        conversation_id,
        wait_for=lambda t: any(x.get("interrupted") for x in t),
    )
    cut = [t for t in turns if t["role"] == "assistant" and t.get("interrupted")]
    assert cut and cut[0]["audioMs"] == played_ms, turns
    assert ps.errors == []


def test_text_only_fallback_when_the_microphone_is_denied(
    open_page, denying_browser, cascade_gateway
) -> None:
    ps = open_page(cascade_gateway.url, in_browser=denying_browser)
    page = ps.page
    page.click('[data-testid="start"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute("data-status", "connected")
    error = page.locator('[data-testid="error"]')
    expect(error).to_be_visible()
    expect(error).to_contain_text("Microphone access was denied")
    expect(error).to_contain_text("text-only")
    ps.wait_for("d.audioMode === 'playback'", 15_000)  # replies are still heard
    assert ps.debug("d.capture.framesSent") == 0

    page.fill('[data-testid="text-input"]', "what time is it")
    page.press('[data-testid="text-input"]', "Enter")
    expect(page.locator(f'{TRANSCRIPT} [data-role="user"] .text')).to_have_text("what time is it")
    expect(page.locator(ASSISTANT_FINAL)).to_contain_text(
        "you said what time is it", timeout=30_000
    )

    # Mute silences the output but playback keeps its clock (played counts go on).
    page.fill('[data-testid="text-input"]', LONG_TEXT)
    page.click('[data-testid="send"]')
    ps.wait_for("d.playback.isPlaying && d.playback.level > 0.001", 30_000)
    page.click('[data-testid="mute"]')
    expect(page.locator('[data-testid="mute"]')).to_have_attribute("aria-pressed", "true")
    ps.wait_for("d.playback.isPlaying && d.playback.level === 0", 5_000)
    played = ps.debug("d.playback.samplesPlayed")
    ps.wait_for(f"d.playback.samplesPlayed > {played}", 5_000)
    assert ps.errors == []


def test_server_restart_mid_session_reconnects_and_resumes(
    open_page, gateway_starter, browser_assets, tmp_path: Path
) -> None:
    env = gateway_env(tmp_path, browser_assets["grammar"])
    server = gateway_starter(env)
    port = server.port
    ps = open_page(server.url)
    page = ps.page
    status = page.locator('[data-testid="status"]')

    page.fill('[data-testid="text-input"]', "what time is it")
    page.click('[data-testid="send"]')
    expect(page.locator(ASSISTANT_FINAL)).to_contain_text(
        "you said what time is it", timeout=30_000
    )
    first_id = ps.debug("d.client.conversationId")

    server.stop(signal.SIGTERM)  # graceful: status disconnected, close 1001
    expect(status).to_have_attribute("data-status", "reconnecting", timeout=15_000)
    expect(status).to_contain_text("Reconnecting")

    gateway_starter(env, port=port)  # same port, same database
    expect(status).to_have_attribute("data-status", "connected", timeout=45_000)
    readies = ps.debug(
        "d.events.filter(e => e.type === 'session_ready').map(e => e.conversationId)"
    )
    assert readies == [first_id, first_id], readies  # the conversation resumed

    page.fill('[data-testid="text-input"]', "tell me a story")
    page.click('[data-testid="send"]')
    expect(page.locator(ASSISTANT_FINAL).last).to_contain_text(
        "you said tell me a story", timeout=30_000
    )
    turns = _stored_turns(f"http://127.0.0.1:{port}", first_id, wait_for=lambda t: len(t) >= 4)
    assert [t["role"] for t in turns][:4] == ["user", "assistant", "user", "assistant"], turns
    assert ps.errors == []


def _stored_turns(
    base_url: str, conversation_id: str, wait_for, timeout: float = 15.0
) -> list[dict]:
    """The conversation's stored turns, once `wait_for(turns)` holds (writes are async)."""
    deadline = time.monotonic() + timeout
    turns: list[dict] = []
    while time.monotonic() < deadline:
        response = httpx.get(f"{base_url}/api/conversations/{conversation_id}", timeout=5.0)
        response.raise_for_status()
        turns = response.json().get("turns", [])
        if wait_for(turns):
            return turns
        time.sleep(0.2)
    raise AssertionError(f"stored turns never matched: {turns}")
