"""The page at `/` in real Chromium against the offline default as shipped: Silero VAD, Whisper
`tiny.en` and Piper from their packages, no grammar.

The fake microphone says two sentences (about six seconds of espeak-ng speech), long enough
for Whisper to re-decode the growing utterance while it is still being spoken. What the test
reads is what the page itself showed: a MutationObserver, installed before Start, records every
state of the user's line in the transcript (its text, and whether it was final).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, expect

from tests.support.browser import (
    PageSession,
    ServerProcess,
    gateway_env,
    launch_chromium,
    start_gateway,
)

pytestmark = pytest.mark.browser

SPOKEN = "hello, what is the weather like today? and what should i wear if i go out this afternoon?"
TRANSCRIPT = '[data-testid="transcript"]'
USER_FINAL = f'{TRANSCRIPT} [data-role="user"][data-final="true"] .text'
ASSISTANT_FINAL = f'{TRANSCRIPT} [data-role="assistant"][data-final="true"] .text'

#: Records each state the page gives the user's transcript line, in order.
OBSERVE = """
() => {
  window.userLineStates = [];
  const note = () => {
    const li = document.querySelector('[data-testid="transcript"] [data-role="user"]');
    if (!li) return;
    const text = (li.querySelector('.text') || li).textContent.trim();
    const last = window.userLineStates[window.userLineStates.length - 1];
    const state = { text, final: li.dataset.final === 'true' };
    if (!last || last.text !== state.text || last.final !== state.final) {
      window.userLineStates.push(state);
    }
  };
  new MutationObserver(note).observe(document.body,
    { subtree: true, childList: true, characterData: true, attributes: true });
}
"""


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module")
def whisper_mic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup.sh")
    folder = tmp_path_factory.mktemp("whisper-mic")
    raw, mic = folder / "spoken.wav", folder / "mic.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), "--", SPOKEN], check=True, timeout=60)
    # 44.1 kHz, the fake capture device's rate (see tests/support/browser.py); silence after the
    # words lets the server's VAD end the turn.
    subprocess.run(
        ["sox", str(raw), "-r", "44100", "-c", "1", "-b", "16", str(mic), "pad", "0.3", "2.5"],
        check=True,
        timeout=60,
    )
    return mic


@pytest.fixture(scope="module")
def whisper_browser(playwright_instance: Playwright, whisper_mic: Path) -> Iterator[Browser]:
    browser = launch_chromium(playwright_instance, whisper_mic)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The offline engine with its defaults: no grammar, so `auto` picks Whisper."""
    workdir = tmp_path_factory.mktemp("whisper-gateway")
    env = gateway_env(workdir, workdir / "unused.jsgf")
    del env["VOXGATE_STT_GRAMMAR"]
    server = start_gateway(workdir, env)
    try:
        server.wait_for_line(r"cascade stt: whisper", timeout=120)
        server.wait_for_line(r"cascade tts: piper", timeout=120)
        yield server
    finally:
        server.stop()


def test_the_page_shows_partial_transcripts_while_the_user_speaks(
    open_page, whisper_browser: Browser, default_gateway: ServerProcess
) -> None:
    ps: PageSession = open_page(default_gateway.url, in_browser=whisper_browser)
    page = ps.page
    page.evaluate(OBSERVE)
    page.click('[data-testid="start"]')
    expect(page.locator('[data-testid="status"]')).to_have_attribute(
        "data-status", "connected", timeout=60_000
    )
    expect(page.locator(USER_FINAL)).to_have_count(1, timeout=90_000)
    final_text = page.locator(USER_FINAL).text_content() or ""
    # What was said (tiny.en may mishear a word of espeak-ng's voice: the exact-words check is
    # the CLI test's, with a steadier voice; this one is about the partials).
    heard = set(words(final_text))
    assert {"hello", "weather", "wear", "afternoon"} <= heard, final_text

    states = page.evaluate("window.userLineStates")
    # (An empty line shows "…" until the first words arrive.)
    partials = [s for s in states if not s["final"] and words(s["text"])]
    # Words were on the page before the turn ended, and they were the start of what was said.
    assert partials, states
    assert states.index(partials[0]) < next(i for i, s in enumerate(states) if s["final"])
    first = words(partials[0]["text"])
    assert first and first[0] == "hello", states
    # The same line became final (one line per turn), and the reply answered it aloud.
    expect(page.locator(ASSISTANT_FINAL)).to_contain_text("you said", timeout=90_000)
    ps.wait_for("d.playback.samplesPlayed > 0", 60_000)
    assert page.locator(f'{TRANSCRIPT} [data-role="user"]').count() == 1
    assert ps.errors == []
