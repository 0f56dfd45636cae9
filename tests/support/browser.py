"""Real-browser fixtures and helpers: Debian's Chromium driven by Playwright (Python), real gateways.

- The browser is the system `chromium` (installed by `scripts/setup.sh`); Playwright never
  downloads one. It runs headless with a fake microphone that plays an espeak-ng WAV once.
- Gateways (and the OpenAI simulator) run as subprocesses on ephemeral ports, each with its own
  SQLite file and working directory, so tests are xdist-safe and a test can kill and restart
  a server exactly as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    sync_playwright,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = os.environ.get("VOXGATE_TEST_CHROMIUM", "/usr/bin/chromium")

#: What the fake microphone says, and the phrases pocketsphinx may hear (exact transcripts).
SPOKEN = "hello can you hear me"
PHRASES = [SPOKEN, "what time is it", "tell me a story"]

_ISOLATED_PREFIXES = ("VOXGATE_", "OPENAI_", "ELEVENLABS_")


# --------------------------------------------------------------------------------------------
# Test audio and grammar
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fake microphone WAV and a JSGF grammar, made once per test session (per worker)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup.sh")
    folder = tmp_path_factory.mktemp("browser-assets")
    raw = folder / "spoken.wav"
    mic = folder / "mic.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "--", SPOKEN], check=True, timeout=60)
    # 44.1 kHz: headless Chromium's fake capture device runs at 44.1 kHz and plays a file at
    # another rate too fast (a 48 kHz file comes out 9% short and pocketsphinx misses words).
    # 1.5 s of leading silence lets the page connect before the words; 2 s after lets the
    # server's VAD end the turn.
    subprocess.run(
        ["sox", str(raw), "-r", "44100", "-c", "1", "-b", "16", str(mic), "pad", "0.3", "2"],
        check=True,
        timeout=60,
    )
    grammar = folder / "phrases.jsgf"
    grammar.write_text(
        "#JSGF V1.0;\ngrammar phrases;\npublic <phrase> = " + " | ".join(PHRASES) + ";\n"
    )
    return {"mic": mic, "grammar": grammar}


# --------------------------------------------------------------------------------------------
# Servers as subprocesses
# --------------------------------------------------------------------------------------------


def _clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
    env.update(overrides)
    return env


def _voxgate_command() -> list[str]:
    script = Path(sys.executable).with_name("voxgate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from voxgate.cli import main; main()"]


@dataclass
class ServerProcess:
    """A server subprocess whose log is a file; stops itself in `stop()` (always called)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_line(self, pattern: str, timeout: float = 45.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited early (code {self.proc.returncode}):\n{self.log()}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not print {pattern!r} in {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _spawn(name: str, command: list[str], env: dict[str, str], workdir: Path) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,  # no stray .env file from the repository is read
            start_new_session=True,
        )
    return ServerProcess(name, proc, log_path, env=env)


def start_gateway(workdir: Path, env: dict[str, str], port: int = 0) -> ServerProcess:
    """`voxgate serve` on `port` (0 = ephemeral); returns once it accepts connections."""
    offset = len(_read(workdir / "gateway.log"))
    server = _spawn("gateway", [*_voxgate_command(), "serve", "--port", str(port)], env, workdir)
    match = server.wait_for_line(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", timeout=120)
    # The log may hold an earlier run's lines (restart test): take the newest announcement.
    ports = re.findall(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", server.log()[offset:])
    server.port = int(ports[-1] if ports else match.group(1))
    _wait_http(f"{server.url}/health", server)
    return server


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _wait_http(url: str, server: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log()}")
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def gateway_env(workdir: Path, grammar: Path, **overrides: str) -> dict[str, str]:
    return _clean_env(
        VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'voxgate.db'}",
        VOXGATE_STT_GRAMMAR=str(grammar),
        VOXGATE_SHUTDOWN_DEADLINE_S="3",
        VOXGATE_LOG_LEVEL="info",
        **overrides,
    )


@pytest.fixture(scope="module")
def cascade_gateway(
    tmp_path_factory: pytest.TempPathFactory, browser_assets: dict[str, Path]
) -> Iterator[ServerProcess]:
    """One offline (cascade) gateway for a test module."""
    workdir = tmp_path_factory.mktemp("cascade-gateway")
    server = start_gateway(workdir, gateway_env(workdir, browser_assets["grammar"]))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway_starter(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start (and restart) gateways for one test; every one is stopped at teardown."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str], port: int = 0) -> ServerProcess:
        server = start_gateway(tmp_path, env, port)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(signal.SIGKILL if server.proc.poll() is None else signal.SIGTERM)


@pytest.fixture(scope="module")
def openai_sim(
    tmp_path_factory: pytest.TempPathFactory, browser_assets: dict[str, Path]
) -> Iterator[ServerProcess]:
    """The shipped OpenAI Realtime GA simulator, hearing speech with pocketsphinx.

    Paced at 4x real time: the real service also sends audio faster than it plays.
    """
    workdir = tmp_path_factory.mktemp("openai-sim")
    command = [
        sys.executable, "-m", "voxgate.testing.openai_sim", "--port", "0", "--key", "sk-browser",
        "--pace", "4", "--grammar", str(browser_assets["grammar"]),
    ]  # fmt: skip
    sim = _spawn("openai-sim", command, _clean_env(), workdir)
    try:
        match = sim.wait_for_line(r"simulator on ws://127\.0\.0\.1:(\d+)(/\S*)", timeout=45)
        sim.port = int(match.group(1))
        yield sim
    finally:
        sim.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


def launch_chromium(pw: Playwright, mic: Path, *, deny_microphone: bool = False) -> Browser:
    """Headless Debian Chromium with a fake microphone that plays `mic` once.

    Playwright's `launch` always runs Chromium on a fresh temporary profile, which is the
    `--user-data-dir` isolation we want (the flag itself is reserved for persistent contexts).
    `--use-fake-ui-for-media-stream=deny` is the same switch answering "Block" instead of "Allow".
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (it apt-installs chromium)")
    fake_ui = "--use-fake-ui-for-media-stream" + ("=deny" if deny_microphone else "")
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            fake_ui,
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}%noloop",
            "--autoplay-policy=no-user-gesture-required",
        ],
        timeout=60_000,
    )


@pytest.fixture(scope="module")
def browser(playwright_instance: Playwright, browser_assets: dict[str, Path]) -> Iterator[Browser]:
    """One headless Chromium per module; each test opens its own context."""
    browser = launch_chromium(playwright_instance, browser_assets["mic"])
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def denying_browser(
    playwright_instance: Playwright, browser_assets: dict[str, Path]
) -> Iterator[Browser]:
    """A Chromium whose user blocks the microphone."""
    browser = launch_chromium(playwright_instance, browser_assets["mic"], deny_microphone=True)
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class PageSession:
    page: Page
    context: BrowserContext
    errors: list[str]

    def wait_for(self, condition: str, timeout_ms: int = 30_000) -> None:
        """Wait until the JS `condition` (with `d` = `window.voxgateDebug`) holds; on timeout,
        fail with what the page saw (its last server events and sent messages)."""
        try:
            self.page.wait_for_function(
                f"() => {{ const d = window.voxgateDebug; return !!({condition}); }}",
                timeout=timeout_ms,
            )
        except PlaywrightTimeoutError:
            seen = self.debug(
                "{events: d.events.slice(-25).map(e => [e.type, e.itemId || e.status || e.code || '',"
                " e.text || e.message || e.playedMs || e.isSpeaking]), sent: d.sent.slice(-10),"
                " playback: d.playback, status: d.client.status}"
            )
            raise AssertionError(
                f"timed out waiting for {condition!r}; page state: {seen}"
            ) from None

    def debug(self, expression: str) -> Any:
        """Evaluate `expression` with `d` bound to `window.voxgateDebug`."""
        return self.page.evaluate(
            f"(() => {{ const d = window.voxgateDebug; return {expression}; }})()"
        )


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., PageSession]]:
    """Open the voxgate page in a fresh context; page errors are collected and must stay empty."""
    contexts: list[BrowserContext] = []

    def open_(
        url: str,
        *,
        viewport: dict[str, int] | None = None,
        voice_processing: bool = False,
        in_browser: Browser | None = None,
    ) -> PageSession:
        context = (in_browser or browser).new_context(
            viewport=viewport or {"width": 1280, "height": 800}
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        if not voice_processing:
            # Chromium's automatic gain drives the synthetic voice into clipping, which the
            # recogniser cannot read; users switch processing off the same way, in the settings.
            page.click("details.settings summary")
            for box in ("#opt-echo", "#opt-noise", "#opt-gain"):
                page.uncheck(box)
        return PageSession(page, context, errors)

    try:
        yield open_
    finally:
        for context in contexts:
            with contextlib.suppress(Exception):
                context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
