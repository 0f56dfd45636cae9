"""Hardening of the neutral `/ws` surface and the HTTP routes: frame floods, cleanup of stored
audio, query bounds, log injection, who may read the operational routes.

Sessions that need a started engine use the OpenAI engine against the shipped simulator (it
starts in milliseconds, nothing paid).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from voxgate.cli import app as cli_app
from voxgate.cli import check_serve_settings
from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.config import Settings
from voxgate.gateway.app import create_app
from voxgate.gateway.auth import ConfigError
from voxgate.logs import configure_logging
from voxgate.testing.openai_sim import OpenAISimulator

KEY = "sk-hardening-test-key-0123456789"
SECRET = "hardening-test-jwt-secret-0123456789abcdef"


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys={KEY}, pace=8.0, transcript="hello") as s:
        yield s


@pytest.fixture
def openai_settings(
    make_settings: Callable[..., Settings], sim: OpenAISimulator
) -> Callable[..., Settings]:
    def factory(**kw: Any) -> Settings:
        base: dict[str, Any] = {
            "engine": "openai",
            "openai_api_key": KEY,
            "openai_url": sim.url,
            "openai_api_base": sim.api_base,
            "start_timeout_s": 10.0,
        }
        base.update(kw)
        return make_settings(**base)

    return factory


def _appends(sim: OpenAISimulator) -> list[dict[str, Any]]:
    return [e for e in sim.connections[-1].received if e.get("type") == "input_audio_buffer.append"]


async def test_empty_and_tiny_frames_are_bounded_and_never_amplified_upstream(
    openai_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    async with gateway_factory(openai_settings(audio_frames_per_s=600)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(binary=True, turnDetection={"mode": "manual"})
            # 40 ms of audio in two-byte frames (960 frames, within the frame burst): gathered
            # into 20 ms chunks before they go upstream, all of it delivered.
            for _ in range(960):
                await client.send_raw(b"\1\0")
            await client.ping("after-tiny")
            await client.wait_for("pong", timeout=10)
            tiny = _appends(sim)
            assert 1 <= len(tiny) <= 2
            # A flood of empty frames: none reaches the provider, the frame limit answers.
            for _ in range(5000):
                await client.send_raw(b"")
            err = await client.wait_for(
                "error", timeout=20, where=lambda m: "frames a second" in m.get("message", "")
            )
            assert err["code"] == "rate_limited" and err["fatal"] is False
            assert _appends(sim) == tiny
            # The session lives on: a full frame still goes through after the budget refills.
            await asyncio.sleep(2.5)
            await client.send_raw(b"\0\0" * 480)
            await client.ping("after-flood")
            await client.wait_for("pong", timeout=10, where=lambda m: m.get("id") == "after-flood")
            assert len(_appends(sim)) == len(tiny) + 1
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            assert (await http.get("/health")).status_code == 200
    pcm = b"".join(base64.b64decode(e["audio"]) for e in _appends(sim)[:-1])
    assert len(pcm) == 1920  # every tiny frame arrived


# --- a weak JWT secret ---------------------------------------------------------------------


def test_a_weak_jwt_secret_refuses_to_start(make_settings) -> None:
    for weak in ("secret", "s" * 40, "abcd" * 10):
        sentence = check_serve_settings(make_settings(auth="jwt", jwt_secret=weak))
        assert sentence is not None and "VOXGATE_JWT_SECRET" in sentence
        assert "secrets.token_urlsafe" in sentence  # how to make a good one
        with pytest.raises(ConfigError):
            create_app(make_settings(auth="jwt", jwt_secret=weak))
    assert check_serve_settings(make_settings(auth="jwt", jwt_secret=SECRET)) is None
    # `voxgate serve` itself: exit 2 with the sentence, nothing served.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXGATE_", "OPENAI_"))}
    env.update(VOXGATE_AUTH="jwt", VOXGATE_JWT_SECRET="secret", COLUMNS="500")
    proc = subprocess.run(
        [sys.executable, "-m", "voxgate", "serve", "--port", "0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    said = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, said
    assert "VOXGATE_JWT_SECRET is too short (6 bytes" in said
    # Nor does `voxgate token` sign with it.
    runner = CliRunner()
    minted = runner.invoke(cli_app, ["token", "--user", "root", "--admin"], env=env)
    assert minted.exit_code == 2 and "too short" in minted.output


# --- the conversations API ------------------------------------------------------------------


async def test_conversation_list_bounds_offset_and_page_bytes(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings()) as gw:
        store = gw.state.store
        for i in range(6):
            # Metadata stored before it was bounded: each conversation's JSON is ~300 KB.
            await store.create_conversation("alice", "cascade", {"blob": "x" * 300_000, "i": i})
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=30) as http:
            huge = await http.get("/api/conversations", params={"offset": "99999999999999999999"})
            assert huge.status_code == 422
            assert "offset" in json.dumps(huge.json()["detail"])
            page = await http.get("/api/conversations", params={"limit": 200})
            assert page.status_code == 200
            assert len(page.content) <= 1024 * 1024 + 4096
            body = page.json()
            assert body["total"] == 6 and 0 < len(body["items"]) < 6
            nxt = body["nextOffset"]
            assert nxt == len(body["items"])
            rest = (await http.get("/api/conversations", params={"offset": nxt})).json()
            seen = {c["metadata"]["i"] for c in body["items"] + rest["items"]}
            assert len(body["items"]) + len(rest["items"]) <= 6 and seen <= set(range(6))


# --- logs -----------------------------------------------------------------------------------

_QUIETED_LOGGERS = ("websockets", "websockets.client", "websockets.server")


async def test_client_values_cannot_forge_log_lines(
    make_settings, gateway_factory, capfd: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    # configure_logging also quiets the websockets loggers; later tests in this process rely
    # on their defaults, so they are put back too.
    quieted = {name: logging.getLogger(name).level for name in _QUIETED_LOGGERS}
    configure_logging("info", "text")
    try:
        async with gateway_factory(make_settings(invalid_frames_per_min=2)) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                forged = "x\n2030-01-01 INFO FORGED admin login"  # quoted up to 40 chars
                for _ in range(4):
                    await client.send({"type": forged})
                with pytest.raises(ProtocolFailure):
                    await client.wait_for("never", timeout=10)
            await gw.wait_idle()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)
    lines = capfd.readouterr().err.splitlines()
    assert any("FORGED" in line for line in lines), "the client's value is logged"
    assert not any(line.startswith("2030-01-01") for line in lines)
    assert all("\\n2030-01-01" in line for line in lines if "FORGED" in line)


# --- operational routes ---------------------------------------------------------------------


async def test_metrics_and_status_need_an_admin_or_the_metrics_token(
    make_settings, gateway_factory
) -> None:
    scrape = "prometheus-scrape-token-0123456789"
    settings = make_settings(
        auth="jwt", jwt_secret=SECRET, admin_users=["root"], metrics_token=scrape
    )
    async with gateway_factory(settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        auth = gw.state.authenticator
        user = {"Authorization": f"Bearer {auth.mint_jwt('alice')}"}
        admin = {"Authorization": f"Bearer {auth.mint_jwt('root')}"}
        scraper = {"Authorization": f"Bearer {scrape}"}
        for path in ("/metrics", "/api/realtime/metrics", "/ws/status"):
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, headers=user)).status_code == 403, path
            assert (await http.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await http.get(path, headers=admin)).status_code == 200, path
            assert (await http.get(path, headers=scraper)).status_code == 200, path
        assert "voxgate_active_sessions" in (await http.get("/metrics", headers=scraper)).text
        assert (await http.get("/health")).status_code == 200  # the load balancer's stays public
        # The metrics token opens nothing else.
        assert (await http.get("/api/realtime/sessions", headers=scraper)).status_code == 401
        assert (await http.get("/api/conversations", headers=scraper)).status_code == 401


# --- storage growth -------------------------------------------------------------------------


async def test_metadata_and_context_payloads_are_bounded(openai_settings, gateway_factory) -> None:
    async with gateway_factory(openai_settings()) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start", "metadata": {"blob": "x" * 5000}})
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "bad_request" and "4096 bytes" in error["message"]
            await client.start(metadata={"page": "checkout"}, turnDetection={"mode": "manual"})
            await client.send({"type": "context_update", "payload": {"doc": "y" * 20_000}})
            error = await client.wait_for("error", timeout=10)
            assert "16000 bytes" in error["message"] and error["fatal"] is False
            await client.ping("alive")
            await client.wait_for("pong", timeout=10)
        await gw.wait_idle()
        convs, _ = await gw.state.store.list_conversations()
        assert [c.metadata for c in convs] == [{"page": "checkout"}]


async def test_retention_sweeps_old_conversations_and_their_audio(
    make_settings, gateway_factory, tmp_path
) -> None:
    logs = tmp_path / "audio"
    settings = make_settings(retention_days=2 / 86400, audio_log_dir=str(logs))  # two seconds
    async with gateway_factory(settings) as gw:
        store, audio_log = gw.state.store, gw.state.audio_log
        old = await store.create_conversation("alice", "cascade")
        audio_log.write(old.id, 0, "user", b"\0\0" * 1600, 16000)
        await store.end_conversation(old.id)
        await asyncio.sleep(3.5)  # past the retention; the sweep runs every second here
        fresh = await store.create_conversation("alice", "cascade")
        audio_log.write(fresh.id, 0, "user", b"\0\0" * 1600, 16000)
        async with asyncio.timeout(5):
            while await store.get_conversation(old.id) is not None:
                await asyncio.sleep(0.1)
        assert not (logs / old.id).exists()
        assert await store.get_conversation(fresh.id) is not None
        assert audio_log.files(fresh.id)


async def test_a_user_at_the_conversation_quota_gets_no_new_session(
    openai_settings, gateway_factory
) -> None:
    settings = openai_settings(auth="jwt", jwt_secret=SECRET, max_conversations_per_user=2)
    async with gateway_factory(settings) as gw:
        token = gw.state.authenticator.mint_jwt("alice")
        for _ in range(2):
            async with VoxgateClient(gw.ws_url, token) as client:
                await client.start(turnDetection={"mode": "manual"})
                await client.stop()
            await gw.wait_idle()
        client = VoxgateClient(gw.ws_url, token)
        with pytest.raises(ProtocolFailure) as refused:
            await client.connect()
            await client.start(turnDetection={"mode": "manual"})
        assert refused.value.error is not None
        assert refused.value.error["code"] == "session_limit"
        assert "VOXGATE_MAX_CONVERSATIONS_PER_USER" in refused.value.error["message"]
        await client.close()
        # Deleting one makes room again.
        convs, _ = await gw.state.store.list_conversations("alice")
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            gone = await http.delete(
                f"/api/conversations/{convs[0].id}", headers={"Authorization": f"Bearer {token}"}
            )
            assert gone.status_code == 204
        async with VoxgateClient(gw.ws_url, token) as client:
            ready = await client.start(turnDetection={"mode": "manual"})
            assert ready["type"] == "session_ready"


# --- slow request headers -------------------------------------------------------------------


async def _half_sent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the blank line never comes
    await writer.drain()
    return reader, writer


async def test_slow_headers_are_cut_off_and_health_keeps_answering(
    make_settings, gateway_factory
) -> None:
    settings = make_settings(header_timeout_s=1.0, max_connections=64)
    async with gateway_factory(settings) as gw:
        held = [await _half_sent(gw.port) for _ in range(120)]  # more than the cap
        # A trickler: one byte every 0.3 s never finishes its head in time either.
        trickle_r, trickle_w = await asyncio.open_connection("127.0.0.1", gw.port)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
                    trickle_w.write(bytes([byte]))
                    await trickle_w.drain()
                    await asyncio.sleep(0.3)

        trickling = asyncio.create_task(trickle())
        # Every half-sent request is closed: at once past the cap, after 1 s otherwise.
        async with asyncio.timeout(5):
            answers = [await reader.read() for reader, _ in held]
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers)
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) >= 50
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionError):
                await trickle_r.read()
        assert loop.time() - started < 3.0  # cut at its 1 s deadline, not after 30 s of bytes
        trickling.cancel()
        for _, writer in held:
            writer.close()
        trickle_w.close()
        # Meanwhile, and after, /health answers; a steady flood of half-sent requests cannot
        # hold more than the cap.
        flood = [await _half_sent(gw.port) for _ in range(30)]
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=5) as http:
            assert (await http.get("/health")).status_code == 200
            await asyncio.sleep(1.5)
            # A kept-alive connection gets a fresh deadline per request and works as usual.
            for _ in range(3):
                assert (await http.get("/health")).status_code == 200
        for _, writer in flood:
            writer.close()
