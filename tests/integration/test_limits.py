"""Limits: session caps, frame size, control-message and audio rates, idle and maximum
duration, the upstream start timeout, and invalid-input floods. Every limit answers with a clear
`error` and close code, and the server stays healthy for everyone else.

Sessions that need a started engine use the OpenAI engine against the shipped simulator (in
this event loop, nothing paid, no pocketsphinx), because it starts in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.config import Settings
from voxgate.testing.openai_sim import OpenAISimulator

SECRET = "limits-test-jwt-secret-0123456789abcdef"
OPENAI_KEY = "sk-test-limits-key-0123456789"


def user_token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


async def refusal(url: str, **connect_kw: Any) -> tuple[dict[str, Any], int | None]:
    """Open a handshake that the gateway refuses: -> (the fatal error, the close code)."""
    async with connect(url, open_timeout=10, **connect_kw) as ws:
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return error, ws.close_code


async def drain_until_closed(ws: ClientConnection, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every message until the gateway closes the socket."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                raw = await ws.recv()
                if isinstance(raw, str):
                    messages.append(orjson.loads(raw))
        except ConnectionClosed:
            pass
    return messages


async def healthy(http_url: str) -> bool:
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as http:
        return (await http.get("/health")).status_code == 200


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys={OPENAI_KEY}, pace=8.0, transcript="hello") as s:
        yield s


@pytest.fixture
def openai_settings(
    make_settings: Callable[..., Settings], sim: OpenAISimulator
) -> Callable[..., Settings]:
    def factory(**kw: Any) -> Settings:
        base: dict[str, Any] = {
            "engine": "openai",
            "openai_api_key": OPENAI_KEY,
            "openai_url": sim.url,
            "openai_api_base": sim.api_base,
            "start_timeout_s": 10.0,
            "reconnect_attempts": 1,
            "reconnect_base_s": 0.05,
            "openai_session_recycle_s": 0.0,
        }
        base.update(kw)
        return make_settings(**base)

    return factory


# --- session caps ---------------------------------------------------------------------------


async def test_fourth_session_of_one_user_is_refused(make_settings, gateway_factory) -> None:
    settings = make_settings(auth="jwt", jwt_secret=SECRET)
    async with gateway_factory(settings) as gw:
        alice = user_token("alice")
        clients = [await VoxgateClient(gw.ws_url, alice).connect() for _ in range(3)]
        try:
            error, code = await refusal(
                gw.ws_url, additional_headers={"Authorization": f"Bearer {alice}"}
            )
            assert code == 4429
            assert error["code"] == "session_limit" and error["fatal"] is True
            assert "3 open sessions" in error["message"]
            # Another user is not affected by alice's cap.
            async with VoxgateClient(gw.ws_url, user_token("bob")) as bob:
                await bob.ping("b")
                assert (await bob.wait_for("pong", timeout=10))["id"] == "b"
            # Closing one of alice's sessions frees a slot.
            await clients.pop().close()
            async with asyncio.timeout(10):
                while gw.state.limiter.count_for("alice") > 2:
                    await asyncio.sleep(0.02)
            async with VoxgateClient(gw.ws_url, alice) as again:
                await again.ping("a")
                assert (await again.wait_for("pong", timeout=10))["id"] == "a"
        finally:
            for client in clients:
                await client.close()


async def test_global_cap_applies_to_anonymous_users(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings(max_sessions=2)) as gw:
        # Auth off: every connection is its own user, so only the global cap can refuse.
        first = await VoxgateClient(gw.ws_url).connect()
        second = await VoxgateClient(gw.ws_url).connect()
        try:
            error, code = await refusal(gw.ws_url)
            assert code == 4429 and error["code"] == "session_limit"
            assert "limit of 2 concurrent sessions" in error["message"]
        finally:
            await first.close()
            await second.close()
        assert await healthy(gw.http_url)


# --- frame size -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_one_mebibyte_frame_is_refused_with_1009(
    make_settings, gateway_factory, kind: str
) -> None:
    async with gateway_factory(make_settings()) as gw:
        async with connect(gw.ws_url, max_size=None) as ws:
            if kind == "text":
                frame: str | bytes = '{"type":"user_message","text":"' + "a" * (1 << 20) + '"}'
            else:
                frame = b"\0" * (1 << 20)
            await ws.send(frame)
            messages = await drain_until_closed(ws)
            assert ws.close_code == 1009
            assert messages[-1]["code"] == "payload_too_large" and messages[-1]["fatal"] is True
            assert "262144" in messages[-1]["message"]
        assert await healthy(gw.http_url)


# --- rates ----------------------------------------------------------------------------------


async def test_burst_of_1000_messages_is_rate_limited_and_survives(
    make_settings, gateway_factory
) -> None:
    async with gateway_factory(make_settings()) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            for i in range(1000):
                await client.send({"type": "ping", "id": i})
            await client.ping("last")
            pongs = errors = 0
            async with asyncio.timeout(30):
                while True:
                    msg = await client.recv()
                    if msg["type"] == "pong":
                        pongs += 1
                    elif msg["type"] == "error":
                        assert msg["code"] == "rate_limited" and msg["fatal"] is False
                        assert "100 per minute" in msg["message"]
                        errors += 1
                    if pongs + errors == 1001:
                        break
            # The whole minute's allowance may go at once; a little refills during the burst.
            assert 100 <= pongs < 200 and errors == 1001 - pongs
            # Still open: the bucket refills (100/min) and a later ping gets its pong.
            async with asyncio.timeout(15):
                while True:
                    await client.ping("again")
                    try:
                        msg = await client.wait_for(
                            "pong", timeout=1.0, where=lambda m: m.get("id") == "again"
                        )
                        break
                    except TimeoutError:
                        continue
            assert msg["id"] == "again"
        assert await healthy(gw.http_url)


async def test_started_session_limits_control_audio_and_frame_size(
    openai_settings, gateway_factory
) -> None:
    settings = openai_settings(control_messages_per_min=20, audio_rate_multiple=2.0)
    async with gateway_factory(settings) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.start(binary=True, turnDetection={"mode": "manual"})
            # Control messages: `start` took one token of 20; 50 pings -> 19 pongs, 31 refusals.
            for i in range(50):
                await client.ping(i)
            pongs = errors = 0
            async with asyncio.timeout(20):
                while pongs + errors < 50:
                    msg = await client.recv()
                    if msg["type"] == "pong":
                        pongs += 1
                    elif msg["type"] == "error":
                        assert msg["code"] == "rate_limited" and not msg["fatal"]
                        errors += 1
            assert 19 <= pongs <= 22 and errors == 50 - pongs
            # Audio: 2x real time with a 2 s burst allowance (4 s of audio at 24 kHz), so ten
            # seconds of audio sent at once must be refused in part, without ending the session.
            second = b"\0\0" * 24000
            for _ in range(10):
                await client.send_audio(second)
            err = await client.wait_for(
                "error", timeout=20, where=lambda m: "real time" in m.get("message", "")
            )
            assert err["code"] == "rate_limited" and err["fatal"] is False
            assert gw.state.sessions, "the session must survive an audio flood"
            # Over the frame limit after start: fatal, 1009.
            await client.send_raw(b"\0" * (1 << 20))
            with pytest.raises(ProtocolFailure):
                await client.wait_for("never", timeout=20, fail_on_fatal=False)
            assert client.close_code == 1009
            fatal = [m for m in client.received if m.get("type") == "error" and m.get("fatal")]
            assert fatal and fatal[-1]["code"] == "payload_too_large"
        assert await healthy(gw.http_url)


async def test_invalid_json_flood_after_start_closes_only_that_session(
    openai_settings, gateway_factory
) -> None:
    settings = openai_settings(control_messages_per_min=1000)
    async with gateway_factory(settings) as gw:
        bystander = await VoxgateClient(gw.ws_url).connect()
        try:
            async with connect(gw.ws_url) as ws:
                await ws.send(
                    orjson.dumps({"type": "start", "turnDetection": {"mode": "manual"}}).decode()
                )
                async with asyncio.timeout(20):
                    while orjson.loads(await ws.recv())["type"] != "session_ready":
                        pass
                # Mixed garbage; the unknown type is long and non-ASCII, so the closing
                # sentence quoting it must still fit the close frame (1008, never 1006).
                garbage = ["{not json", '{"type": 42}', orjson.dumps({"type": "😀" * 40}).decode()]
                for i in range(300):
                    await ws.send(garbage[i % 3])
                messages = await drain_until_closed(ws)
                assert ws.close_code == 1008
                errors = [m for m in messages if m["type"] == "error"]
                assert errors[-1]["fatal"] is True and "invalid frames" in errors[-1]["message"]
                codes = {m["code"] for m in errors[:-1]}
                assert codes <= {"invalid_json", "bad_request", "unknown_type"}
                assert 20 <= len(errors) <= 22
            await bystander.ping("still-here")
            assert (await bystander.wait_for("pong", timeout=10))["id"] == "still-here"
        finally:
            await bystander.close()
        assert await healthy(gw.http_url)


# --- time limits ----------------------------------------------------------------------------


async def test_idle_client_is_closed_with_4408(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings(idle_timeout_s=1.0)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            err = await client.wait_for("error", timeout=20, fail_on_fatal=False)
            assert err["code"] == "timeout" and err["fatal"] is True
            assert "idle" in err["message"]
            with pytest.raises(ProtocolFailure):
                await client.recv(10)
            assert client.close_code == 4408
        assert await healthy(gw.http_url)


async def test_maximum_session_duration_closes_an_active_session(
    make_settings, gateway_factory
) -> None:
    settings = make_settings(idle_timeout_s=600.0, max_session_s=2.0)
    async with gateway_factory(settings) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            error = None
            async with asyncio.timeout(20):
                while error is None:  # keep the session busy: it is not idle, just too long
                    await client.ping()
                    try:
                        msg = await client.wait_for("error", timeout=0.3, fail_on_fatal=False)
                    except TimeoutError:
                        continue
                    error = msg
            assert error["code"] == "session_expired" and error["fatal"] is True
            assert "maximum duration of 2 s" in error["message"]
            with pytest.raises(ProtocolFailure):
                await client.recv(10)
            assert client.close_code == 4409


async def test_silent_upstream_hits_the_start_timeout(
    openai_settings, gateway_factory, sim: OpenAISimulator
) -> None:
    sim.faults.blackhole = True  # accepts the socket, then never says a word
    async with gateway_factory(openai_settings(start_timeout_s=1.0)) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start"})
            err = await client.wait_for(
                "error", timeout=30, where=lambda m: m.get("fatal"), fail_on_fatal=False
            )
            assert err["code"] in ("timeout", "upstream_unavailable")
            with pytest.raises(ProtocolFailure):
                await client.recv(10)
            assert client.close_code == 4502
        # The process is fine; only the engine's breaker counts the failure.
        assert await healthy(gw.http_url)


async def test_abrupt_disconnects_release_their_slots(make_settings, gateway_factory) -> None:
    """Clients that vanish (TCP reset, mid-handshake or mid-session) must not leak slots."""
    async with gateway_factory(make_settings(max_sessions=3)) as gw:
        for i in range(12):
            ws = await connect(gw.ws_url)
            if i % 2:
                await ws.send('{"type":"ping"}')
            ws.transport.abort()  # no close frame: the TCP connection just dies
        raw = []
        for _ in range(6):  # half-open handshakes that never finish
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            raw.append(writer)
        for writer in raw:
            writer.transport.abort()
        async with asyncio.timeout(20):
            while gw.state.limiter.total or gw.state.websockets_open:
                await asyncio.sleep(0.05)
        clients = [await VoxgateClient(gw.ws_url).connect() for _ in range(3)]
        try:
            for client in clients:
                await client.ping("ok")
                assert (await client.wait_for("pong", timeout=10))["id"] == "ok"
        finally:
            for client in clients:
                await client.close()
        assert await healthy(gw.http_url)


async def test_floods_end_with_a_limit_never_an_internal_error(
    make_settings, gateway_factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Floods that would make the gateway queue a reply per frame are closed by a limit.

    Binary audio before `start` counts as invalid input (1008 after 20 frames). A control
    flood sent faster than the gateway can answer (30 000 pings, nothing read meanwhile) piles
    up replies; past the outbound cap the session closes with 4429 and `rate_limited`. Either
    way it is never the 1011 `internal` of a gateway fault, and nothing is logged as an error.
    """
    async with gateway_factory(make_settings()) as gw:
        async with connect(gw.ws_url) as ws:
            for _ in range(200):
                await ws.send(b"\0\0" * 480)
            messages = await drain_until_closed(ws)
            assert ws.close_code == 1008
            assert [m["code"] for m in messages] == ["not_started"] * 21
            assert (
                messages[-1]["fatal"] is True
                and "too many invalid frames" in messages[-1]["message"]
            )
        async with connect(gw.ws_url, max_queue=None) as ws:
            ping = '{"type":"ping","id":"' + "x" * 200 + '"}'
            for _ in range(30_000):
                await ws.send(ping)
            try:
                async with asyncio.timeout(15):
                    messages = await drain_until_closed(ws)
            except TimeoutError:
                messages = []  # the gateway kept up and the session is still open: fine too
            if ws.close_code is not None:
                assert ws.close_code == 4429, ws.close_code
                assert messages[-1]["code"] == "rate_limited" and messages[-1]["fatal"] is True
        async with asyncio.timeout(20):
            while gw.state.limiter.total or gw.state.websockets_open:
                await asyncio.sleep(0.05)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, errors
        prom = gw.state.metrics.prometheus_text().decode()
        assert 'code="internal"' not in prom
        assert await healthy(gw.http_url)
