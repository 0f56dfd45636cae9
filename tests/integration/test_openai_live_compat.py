"""The GPT-Live-compatible endpoint: the official SDK's `client.live.connect()` through voxgate.

Chain under test: SDK -> voxgate `/v1/live/sessions` -> the shipped GPT-Live simulator. The SDK
only ever holds a voxgate token; the simulator only ever sees the server's key. Every event the
client receives validates against the SDK's `ServerEvent` models, voxgate's own errors included.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.live.server_event import ServerEvent
from pydantic import TypeAdapter

from voxgate.config import Settings
from voxgate.testing.gateway import GatewayHandle
from voxgate.testing.openai_live_sim import OpenAILiveSimulator
from voxgate.testing.speech import silence, synthesize

SERVER_KEY = "sk-live-server-secret-0123456789"
JWT_SECRET = "live-compat-test-secret-0123456789abcdef"
PHRASE = "what is the weather like today"
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(ServerEvent)


@pytest.fixture
async def sim() -> AsyncIterator[OpenAILiveSimulator]:
    async with OpenAILiveSimulator(keys={SERVER_KEY}, transcript=PHRASE, usage_interval_s=1.0) as s:
        yield s


def _settings(make_settings: Callable[..., Settings], sim: OpenAILiveSimulator, **kw: Any) -> Settings:
    kw.setdefault("engine", "openai-live")  # the endpoint is open only with it enabled
    return make_settings(openai_api_key=SERVER_KEY, openai_live_url=sim.url, **kw)


def _sdk(gw: GatewayHandle, api_key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=f"{gw.http_url}/v1", max_retries=0)


class Received:
    """Every raw frame an SDK connection receives, validated with the SDK's models."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.raw: list[bytes] = []
        self.events: list[Any] = []

    async def until(self, etype: str, timeout: float = 20) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                data = await self.conn.recv_bytes()
                self.raw.append(data)
                event = SERVER_EVENT.validate_python(json.loads(data))
                self.events.append(event)
                if event.type == etype:
                    return event

    async def closed(self, timeout: float = 10) -> None:
        """Read to the end of the connection (the socket closes cleanly)."""
        async with asyncio.timeout(timeout):
            async for event in self.conn:
                self.events.append(event)

    def of(self, etype: str) -> list[Any]:
        return [e for e in self.events if e.type == etype]


async def _stream(conn: Any, pcm: bytes) -> None:
    for i in range(0, len(pcm), 4800):
        await conn.session.input_audio.append(audio=base64.b64encode(pcm[i : i + 4800]).decode())


def _billed(text: str, engine: str) -> float:
    match = re.search(rf'^voxgate_billed_seconds_total{{engine="{engine}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_official_sdk_completes_a_session_through_voxgate(
    sim: OpenAILiveSimulator, make_settings, gateway_factory
) -> None:
    settings = _settings(make_settings, sim, auth="jwt", jwt_secret=JWT_SECRET)
    async with gateway_factory(settings) as gw:
        token = gw.state.authenticator.mint_jwt("alice")
        async with _sdk(gw, token).live.connect() as conn:
            got = Received(conn)
            await conn.session.start(session={"model": "gpt-live-1", "instructions": "Be brief."},
                                     event_id="evt_1")  # fmt: skip
            started = await got.until("session.started")
            assert started.client_event_id == "evt_1" and started.session.model == "gpt-live-1"
            await _stream(conn, silence(300, 24000) + synthesize(PHRASE, 24000) + silence(3500, 24000))
            await got.until("session.output_transcript.delta")
            await conn.session.close()
            closed = await got.until("session.closed")
            assert closed.reason == "close_requested"
            await got.closed()
        heard = "".join(e.delta for e in got.of("session.input_transcript.delta")).strip()
        said = "".join(e.delta for e in got.of("session.output_transcript.delta")).strip()
        assert heard == PHRASE and said.startswith("You said")
        assert got.of("session.output_audio.delta") and got.of("session.usage.updated")
        # The server's key went upstream; the client never saw it.
        upstream = sim.accepted[-1]
        assert upstream.headers["authorization"] == f"Bearer {SERVER_KEY}"
        assert token not in json.dumps(upstream.headers)
        assert not [raw for raw in got.raw if SERVER_KEY.encode() in raw]
        await gw.wait_idle()
        listed, _ = await gw.state.store.list_conversations("alice")
        assert len(listed) == 1 and listed[0].engine == "openai-live-compat"
        record = await gw.state.store.get_conversation(listed[0].id)
        assert record is not None
        assert [(t.role, t.text) for t in record.turns] == [("user", PHRASE), ("assistant", said)]
        assert record.metadata["model"] == "gpt-live-1"
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {gw.state.authenticator.mint_jwt('ops', admin=True)}"})
            assert _billed(metrics.text, "openai-live-compat") == closed.usage.seconds > 0
            assert SERVER_KEY not in metrics.text


async def test_the_endpoint_is_closed_unless_openai_live_is_enabled(
    sim: OpenAILiveSimulator, make_settings, gateway_factory
) -> None:
    async with gateway_factory(_settings(make_settings, sim, engine="openai")) as gw:
        async with _sdk(gw, "unused").live.connect() as conn:
            got = Received(conn)
            error = await got.until("error")
            assert error.error.code == "engine_not_enabled"
            assert "VOXGATE_ALLOWED_ENGINES" in error.error.message
            with pytest.raises(websockets.ConnectionClosedError) as caught:
                await got.closed()
            assert caught.value.rcvd is not None and caught.value.rcvd.code == 4503
    assert sim.connections == []  # nothing was dialled


async def test_auth_is_required_and_a_browser_subprotocol_works(
    sim: OpenAILiveSimulator, make_settings, gateway_factory
) -> None:
    settings = _settings(make_settings, sim, auth="jwt", jwt_secret=JWT_SECRET)
    async with gateway_factory(settings) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/live/sessions"
        async with websockets.connect(url) as ws:
            error = json.loads(await ws.recv())
            SERVER_EVENT.validate_python(error)
            assert error["error"]["code"] == "unauthorized"
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 4401
        token = gw.state.authenticator.mint_jwt("bob")
        offered = ["voxgate.v1", f"voxgate.bearer.{token}"]
        async with websockets.connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "voxgate.v1"  # the token is never echoed back
            await ws.send(json.dumps({"type": "session.start", "session": {"model": "gpt-live-1"}}))
            assert json.loads(await ws.recv())["type"] == "session.started"


async def test_the_model_is_checked_on_this_route(
    sim: OpenAILiveSimulator, make_settings, gateway_factory
) -> None:
    async with gateway_factory(_settings(make_settings, sim)) as gw:
        async with _sdk(gw, "anonymous").live.connect() as conn:
            got = Received(conn)
            # A Realtime model is not one this gateway lets GPT-Live sessions use.
            await conn.session.start(session={"model": "gpt-realtime"}, event_id="s1")
            refused = await got.until("error")
            assert refused.error.code == "model_not_allowed" and refused.error.param == "session.model"
            assert refused.client_event_id == "s1" and "VOXGATE_ALLOWED_MODELS" in refused.error.message
            # Nor a Responses backend model the operator did not allow.
            await conn.session.start(session={"model": "gpt-live-1", "delegation": {
                "type": "responses", "responses": {"model": "gpt-5"}}})  # fmt: skip
            backend = await got.until("error")
            assert backend.error.param == "session.delegation.responses.model"
            assert sim.accepted[-1].received_types() == []  # neither went upstream
            # An unknown field: GPT-Live's strict refusal comes back as it was sent.
            await conn.send({"type": "session.start", "event_id": "s2",  # type: ignore[arg-type]
                             "session": {"model": "gpt-live-1", "voice": "marin"}})  # fmt: skip
            unknown = await got.until("error")
            assert unknown.error.code == "unknown_parameter" and unknown.error.param == "session.voice"
            assert unknown.error.client_event_id == "s2"
            await conn.session.start(session={"model": "gpt-live-1"})
            await got.until("session.started")
    # Allowed by the operator, but not a Live model: GPT-Live itself refuses it on this route.
    settings = _settings(make_settings, sim, allowed_models=["gpt-realtime", "gpt-live-1"])
    async with gateway_factory(settings) as gw:
        async with _sdk(gw, "anonymous").live.connect() as conn:
            got = Received(conn)
            await conn.session.start(session={"model": "gpt-realtime"})
            assert (await got.until("error")).error.code == "invalid_model"
            await conn.session.start(session={"model": "gpt-live-1"})  # a refused start may be retried
            await got.until("session.started")


async def test_bad_client_input_is_answered_and_the_session_survives(
    sim: OpenAILiveSimulator, make_settings, gateway_factory
) -> None:
    async with gateway_factory(_settings(make_settings, sim)) as gw:
        async with _sdk(gw, "anonymous").live.connect() as conn:
            got = Received(conn)
            await conn.session.start(session={"model": "gpt-live-1"})
            await got.until("session.started")
            # session.start twice: answered here, never forwarded.
            await conn.session.start(session={"model": "gpt-live-1"}, event_id="again")
            twice = await got.until("error")
            assert twice.error.code == "session_already_started" and twice.client_event_id == "again"
            # An unknown event type: GPT-Live's own answer comes back, listing what it supports.
            await conn.send({"type": "input_audio_buffer.commit"})  # type: ignore[arg-type]
            unknown = await got.until("error")
            assert unknown.error.code == "invalid_value" and "session.input_audio.append" in unknown.error.message
            # A malformed frame: answered by the gateway, not forwarded.
            await conn.send_raw("{this is not json")  # type: ignore[attr-defined]
            malformed = await got.until("error")
            assert malformed.error.code == "invalid_json"
            # Still a working session.
            await conn.session.commentary.append(content="Hello from the app.", delegation_id=None)
            await _stream(conn, silence(2500, 24000))
            await got.until("session.output_transcript.delta")
            await conn.session.close()
            await got.until("session.closed")
            await got.closed()
        received = sim.accepted[-1].received_types()
        assert received.count("session.start") == 1
        assert "input_audio_buffer.commit" in received
        assert not [r for r in sim.accepted[-1].received if isinstance(r, str)]  # no raw junk
