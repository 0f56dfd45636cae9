"""Provider keys and the JWT secret appear in no client frame, HTTP response, log line or error
sentence.

Two full runs with recognizable fake secrets:

- in process: every log record at DEBUG from every logger (raw, before the scrubbing log
  handler even sees it), every frame two clients receive in real conversations with the OpenAI
  and ElevenLabs engines (against the shipped simulators), every HTTP response body and header of
  the public, admin, token and error routes; then the same with wrong keys, whose refusals must
  explain themselves without quoting the key;
- as `voxgate serve` in a subprocess: its whole stderr at DEBUG, including uvicorn's own lines,
  where a `?token=` in the WebSocket path must come out redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from voxgate.client import VoxgateClient
from voxgate.config import Settings
from voxgate.logs import ScrubFilter, TextFormatter
from voxgate.testing.elevenlabs_sim import ElevenLabsSim
from voxgate.testing.openai_sim import OpenAISimulator

JWT_SECRET = "jwt-0000-SECRET-jwtsecret-marker-3b7e"
OPENAI_KEY = "sk-test-0000-SECRET-openai-marker-9f2c"
XI_KEY = "xi-0000-SECRET-elevenlabs-marker-4d1a"
WRONG_OPENAI_KEY = "sk-test-0000-SECRET-wrongopenai-marker-77aa"
WRONG_XI_KEY = "xi-0000-SECRET-wrongxi-marker-55bb"
SECRETS = [JWT_SECRET, OPENAI_KEY, XI_KEY, WRONG_OPENAI_KEY, WRONG_XI_KEY]
#: The distinctive middle of each secret: a partial leak (say, a key with its prefix masked)
#: is a leak too.
MARKERS = [s.split("SECRET-", 1)[1] for s in SECRETS]


def leaks(text: str) -> list[str]:
    return [m for m in SECRETS + MARKERS if m in text]


def emitted(records: list[logging.LogRecord]) -> list[str]:
    """The records as `configure_logging`'s handler writes them: scrub filter, then format."""
    scrub_filter = ScrubFilter()
    formatter = TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    out = []
    for record in records:
        scrub_filter.filter(record)
        out.append(formatter.format(record))
    return out


def token(sub: str, **claims: Any) -> str:
    return jwt.encode(
        {"sub": sub, "exp": int(time.time()) + 600, **claims}, JWT_SECRET, algorithm="HS256"
    )


class Transcript:
    """Everything a client or an operator could see, as text."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def http(self, resp: httpx.Response) -> httpx.Response:
        self.parts.append(f"{resp.request.method} {resp.request.url} -> {resp.status_code}")
        self.parts.extend(f"{k}: {v}" for k, v in resp.headers.items())
        self.parts.append(resp.text)
        return resp

    def frames(self, client: VoxgateClient) -> None:
        for message in client.received:
            self.parts.append(repr({k: v for k, v in message.items() if k != "pcm16"}))
        self.parts.append(f"close {client.close_code} {client.close_reason}")

    def text(self) -> str:
        return "\n".join(self.parts)


@pytest.fixture
async def sims() -> AsyncIterator[tuple[OpenAISimulator, ElevenLabsSim]]:
    async with (
        OpenAISimulator(keys={OPENAI_KEY}, pace=8.0, transcript="hello") as openai_sim,
        ElevenLabsSim(api_key=XI_KEY, pace=8.0) as xi_sim,
    ):
        yield openai_sim, xi_sim


@pytest.fixture
def secret_settings(
    make_settings: Callable[..., Settings], sims: tuple[OpenAISimulator, ElevenLabsSim]
) -> Callable[..., Settings]:
    openai_sim, xi_sim = sims

    def factory(**kw: Any) -> Settings:
        base: dict[str, Any] = {
            "auth": "jwt",
            "jwt_secret": JWT_SECRET,
            "admin_users": ["root"],
            "engine": "openai",
            "allowed_engines": ["elevenlabs"],
            "openai_api_key": OPENAI_KEY,
            "openai_url": openai_sim.url,
            "openai_api_base": openai_sim.api_base,
            "elevenlabs_api_key": XI_KEY,
            "elevenlabs_agent_id": "agent_sim",
            "elevenlabs_url": xi_sim.ws_url,
            "elevenlabs_api_base": xi_sim.api_base,
            "reconnect_attempts": 1,
            "reconnect_base_s": 0.05,
            "openai_session_recycle_s": 0.0,
        }
        base.update(kw)
        return make_settings(**base)

    return factory


async def _converse(url: str, jwt_token: str, engine: str, seen: Transcript) -> None:
    client = VoxgateClient(url, jwt_token, token_via="query")
    try:
        await client.connect()
        await client.start(engine=engine, turnDetection={"mode": "manual"})
        await client.user_message("hello there")
        reply = await client.collect_reply(timeout=30)
        assert reply.assistant_text, f"{engine}: no reply text"
        await client.stop()
        with contextlib.suppress(Exception):  # read until the gateway closes
            while True:
                await client.recv(5)
    finally:
        await client.close()
        seen.frames(client)


async def test_no_secret_in_frames_responses_or_logs(
    secret_settings, gateway_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger that propagates
    # The websockets library logs handshake headers only at DEBUG: say so explicitly, whatever
    # another test in this process left its loggers at.
    caplog.set_level(logging.DEBUG, logger="websockets")
    caplog.set_level(logging.DEBUG, logger="websockets.client")
    seen = Transcript()
    async with gateway_factory(secret_settings()) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=15) as http:
            admin = {"Authorization": f"Bearer {token('root')}"}
            user = {"Authorization": f"Bearer {token('alice')}"}
            for path in ("/health", "/api/config", "/ws/status", "/api/realtime/metrics",
                         "/metrics", "/api/openapi.json", "/api/docs", "/no/such/path"):  # fmt: skip
                seen.http(await http.get(path))
            seen.http(await http.get("/api/realtime/sessions"))  # 401
            seen.http(await http.post("/api/realtime/session", json={"direct": "openai"}))  # 401
            minted = seen.http(await http.post("/api/realtime/session", headers=user)).json()
            for direct in ("openai", "elevenlabs"):
                resp = seen.http(
                    await http.post("/api/realtime/session", headers=user, json={"direct": direct})
                )
                assert resp.status_code == 200, resp.text
            # Real conversations with both engines; one opened with a session token.
            await _converse(gw.ws_url, token("alice"), "openai", seen)
            await _converse(gw.ws_url, token("bob"), "elevenlabs", seen)
            async with VoxgateClient(gw.ws_url, minted["token"], token_via="subprotocol") as c:
                await c.start()
                seen.http(await http.get("/api/realtime/sessions", headers=admin))
                seen.http(
                    await http.get(f"/api/realtime/sessions/{minted['sessionId']}", headers=admin)
                )
                await c.stop()
            seen.frames(c)
            seen.http(await http.get("/api/conversations", headers=admin))
            seen.http(await http.get("/api/realtime/metrics"))
            seen.http(await http.get("/metrics"))
    # Wrong keys: the refusals explain themselves without quoting the key.
    wrong = secret_settings(openai_api_key=WRONG_OPENAI_KEY, elevenlabs_api_key=WRONG_XI_KEY)
    async with gateway_factory(wrong) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=15) as http:
            user = {"Authorization": f"Bearer {token('alice')}"}
            for direct in ("openai", "elevenlabs"):
                resp = seen.http(
                    await http.post("/api/realtime/session", headers=user, json={"direct": direct})
                )
                assert resp.status_code == 502 and "API key" in resp.json()["detail"]
            for engine, hint in (
                ("openai", "OPENAI_API_KEY"),
                ("elevenlabs", "ELEVENLABS_API_KEY"),
            ):
                async with VoxgateClient(gw.ws_url, token("alice")) as client:
                    await client.send({"type": "start", "engine": engine})
                    err = await client.wait_for(
                        "error", timeout=30, where=lambda m: m.get("fatal"), fail_on_fatal=False
                    )
                    assert hint in err["message"], err
                    with contextlib.suppress(Exception):
                        while True:
                            await client.recv(5)
                seen.frames(client)
            seen.http(await http.get("/health"))
    assert not leaks(seen.text()), leaks(seen.text())
    # Our own code never logs a secret, not even before the scrubber sees the record.
    ours = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.name.startswith("voxgate")
    )
    assert "session" in ours and "started" in ours  # the run really logged
    assert not leaks(ours), [line for line in ours.splitlines() if leaks(line)][:5]
    # Every line as voxgate's log handler writes it (third-party DEBUG lines included, e.g. the
    # websockets library logging the upstream handshake's Authorization header).
    lines = emitted(caplog.records)
    assert any("Authorization: Bearer ***" in line for line in lines)  # that case was exercised
    assert not [line for line in lines if leaks(line)][:5]


async def test_serve_subprocess_logs_no_secret_and_redacts_query_tokens(
    sims: tuple[OpenAISimulator, ElevenLabsSim], tmp_path: Path
) -> None:
    openai_sim, xi_sim = sims
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VOXGATE_", "OPENAI_", "ELEVENLABS_"))
    }
    env.update(
        {
            "VOXGATE_AUTH": "jwt",
            "VOXGATE_JWT_SECRET": JWT_SECRET,
            "VOXGATE_ENGINE": "openai",
            "VOXGATE_ALLOWED_ENGINES": "elevenlabs",
            "OPENAI_API_KEY": OPENAI_KEY,
            "VOXGATE_OPENAI_URL": openai_sim.url,
            "VOXGATE_OPENAI_API_BASE": openai_sim.api_base,
            "ELEVENLABS_API_KEY": XI_KEY,
            "VOXGATE_ELEVENLABS_AGENT_ID": "agent_sim",
            "VOXGATE_ELEVENLABS_URL": xi_sim.ws_url,
            "VOXGATE_ELEVENLABS_API_BASE": xi_sim.api_base,
            "VOXGATE_OPENAI_SESSION_RECYCLE_S": "0",
            "VOXGATE_LOG_LEVEL": "debug",
            "VOXGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
            "VOXGATE_SHUTDOWN_DEADLINE_S": "3",
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxgate", "serve", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    lines: list[str] = []
    port_found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def pump() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            match = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if match and not port_found.done():
                port_found.set_result(int(match.group(1)))

    reader = asyncio.create_task(pump())
    seen = Transcript()
    query_jwt = token("alice")
    try:
        port = await asyncio.wait_for(port_found, 60)
        url = f"ws://127.0.0.1:{port}/ws"
        await _converse(url, query_jwt, "openai", seen)
        await _converse(url, token("bob"), "elevenlabs", seen)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as http:
            user = {"Authorization": f"Bearer {token('carol')}"}
            seen.http(await http.get("/health"))
            seen.http(
                await http.post("/api/realtime/session", headers=user, json={"direct": "openai"})
            )
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 10)
        reader.cancel()
    stderr = "".join(lines)
    assert "session" in stderr and "WebSocket /ws?token=***" in stderr, stderr[-2000:]
    assert query_jwt not in stderr  # `?token=` is redacted in every log line
    assert not leaks(stderr), [line for line in stderr.splitlines() if leaks(line)][:5]
    assert not leaks(seen.text()), leaks(seen.text())
