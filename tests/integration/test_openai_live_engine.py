"""The `openai-live` engine through `/ws` when things go wrong: refused keys, models and fields,
errors mid-session, the two ways a session ends upstream, a silent client, delegation.

Each runs a real gateway and the shipped GPT-Live simulator; the engine's keepalive runs faster
than real time (`timeline_pace`) where a test needs the model's clock to pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.config import Settings
from voxgate.engines.openai_live.engine import OpenAILiveEngine
from voxgate.testing.openai_live_sim import SESSION_KEYS, OpenAILiveSimulator
from voxgate.testing.speech import silence, synthesize

KEY = "sk-live-engine-key-0123456789"


@pytest.fixture(autouse=True)
def fast_timeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpenAILiveEngine, "timeline_pace", 4.0)


def _settings(make_settings: Callable[..., Settings], sim: OpenAILiveSimulator, **kw: Any) -> Settings:
    kw.setdefault("reconnect_base_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.2)
    return make_settings(engine="openai-live", openai_api_key=KEY, openai_live_url=sim.url, **kw)


async def speak(client: VoxgateClient, text: str) -> None:
    rate = client.input_rate
    await client.stream_audio(silence(200, rate) + synthesize(text, rate) + silence(900, rate), speed=4.0)


async def fatal_start(client: VoxgateClient) -> dict[str, Any]:
    """Send `start`; -> the fatal error that ends the session (after which it closes)."""
    await client.send({"type": "start"})
    error = await client.wait_for("error", timeout=20, fail_on_fatal=False)
    assert error["fatal"] is True
    with pytest.raises(ProtocolFailure):
        while True:
            await client.recv(5)
    return error


async def eventually(condition: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_rejected_key_is_fatal_with_a_sentence_and_never_retried(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(keys=["sk-the-right-one"]) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw, VoxgateClient(gw.ws_url) as client:
            error = await fatal_start(client)
            assert error["code"] == "upstream_unavailable"
            assert "OPENAI_API_KEY" in error["message"] and KEY not in error["message"]
            assert client.close_code == 4502  # not a code SDKs auto-reconnect on
        assert [c.rejected_status for c in sim.connections] == [401]


async def test_a_key_revoked_mid_session_ends_it_after_one_attempt(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(keys=[KEY]) as sim:
        settings = _settings(make_settings, sim, reconnect_attempts=5)
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            sim.faults.invalid_key = True
            sim.drop_connections(0)
            await client.wait_for("status", where=lambda m: m["status"] == "reconnecting", timeout=15)
            error = await client.wait_for("error", where=lambda m: m["fatal"], timeout=20, fail_on_fatal=False)
            assert error["code"] == "upstream_unavailable" and "OPENAI_API_KEY" in error["message"]
        # The first session, then one refused attempt: no loop of five against a dead key.
        assert [c.rejected_status for c in sim.connections] == [None, 401]


async def test_a_model_the_route_rejects_fails_the_start_clearly(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(keys=[KEY]) as sim:
        settings = _settings(make_settings, sim, openai_live_model="gpt-realtime")
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            error = await fatal_start(client)
            assert "invalid_model" in error["message"] and "gpt-realtime" in error["message"]
        assert len(sim.connections) == 1  # a configuration problem is not retried


async def test_session_start_refused_for_an_unknown_field(make_settings, gateway_factory) -> None:
    # A service revision that does not know `instructions`: GPT-Live's config is strict.
    async with OpenAILiveSimulator(keys=[KEY], session_keys=SESSION_KEYS - {"instructions"}) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw, VoxgateClient(gw.ws_url) as client:
            error = await fatal_start(client)
            assert "unknown_parameter" in error["message"] and "session.instructions" in error["message"]
        assert len(sim.connections) == 1


async def test_an_error_event_mid_session_is_forwarded_and_not_fatal(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(keys=[KEY]) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            sim.inject_error("server_busy", "The server is busy right now.")
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "upstream_error" and error["fatal"] is False
            assert "busy" in error["message"]
            await client.user_message("still there?")
            reply = await client.collect_reply(timeout=30)
            assert reply.response_status == "completed" and "still there" in reply.assistant_text
        assert len(sim.connections) == 1


async def test_session_closed_upstream_is_a_clean_end(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(keys=[KEY]) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            await client.user_message("hello")
            await client.collect_reply(timeout=30)
            sim.end_sessions("remote_hangup")
            status = await client.wait_for("status", where=lambda m: m["status"] == "disconnected", timeout=15)
            assert "remote_hangup" in status["reason"]
            with pytest.raises(ProtocolFailure):
                while True:
                    await client.recv(5)
            assert client.close_code == 1000
        assert len(sim.connections) == 1  # never reconnected
        assert not [m for m in client.received if m["type"] == "status" and m["status"] == "reconnecting"]


async def test_a_dropped_connection_reconnects_with_the_history(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(keys=[KEY], transcript=["my name is ada", "what is my name"]) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            await speak(client, "my name is ada")
            first = await client.collect_reply(timeout=30)
            assert first.user_text == "my name is ada"
            await client.user_message("remember that")
            await client.collect_reply(timeout=30)
            sim.drop_connections(0)  # TCP gone, no session.closed
            await client.wait_for("status", where=lambda m: m["status"] == "reconnecting", timeout=15)
            # Spoken while the engine reconnects: kept, and heard by the new session.
            await speak(client, "what is my name")
            await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=20)
            reply = await client.collect_reply(timeout=30)
            assert reply.user_text == "what is my name" and reply.response_status == "completed"
        assert len(sim.accepted) == 2
        start = next(e for e in sim.accepted[1].received if e.get("type") == "session.start")
        history = [(i["role"], i["content"][0]["text"]) for i in start["session"]["input"]]
        assert ("user", "my name is ada") in history
        assert ("assistant", first.assistant_text) in history
        assert ("user", "remember that") in history
        assert sim.accepted[1].history[-2] == {"role": "user", "text": "what is my name"}


async def test_a_drop_mid_answer_fails_that_answer_and_reconnects(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(keys=[KEY]) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            sim.faults.drop_mid_answer = 0
            await client.user_message("please tell me a rather long story about a lighthouse keeper")
            failed = await client.wait_for("response_done", timeout=30)
            assert failed["status"] == "failed"
            await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=20)
            await client.user_message("are you back?")
            reply = await client.collect_reply(timeout=30)
            assert reply.response_status == "completed" and "are you back" in reply.assistant_text
        assert len(sim.accepted) == 2


async def test_a_client_silent_for_a_minute_stays_alive(make_settings, gateway_factory, monkeypatch) -> None:
    # GPT-Live expires a session whose timeline stops (here after 2 s without input audio);
    # the keepalive, twenty times faster than real time, carries a silent client through a
    # minute of the model's timeline in a few seconds.
    monkeypatch.setattr(OpenAILiveEngine, "timeline_pace", 20.0)
    async with OpenAILiveSimulator(keys=[KEY], idle_close_s=2.0) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            upstream = sim.accepted[-1]
            await eventually(lambda: upstream.timeline_ms >= 60_000 or upstream.closed_reason is not None)
            assert upstream.closed_reason is None and upstream.timeline_ms >= 60_000
            # Silence only: nothing reached the client as speech.
            assert not [m for m in client.received if m["type"] in ("audio", "speaking")]
            await client.ping("alive")
            await client.wait_for("pong", timeout=10)
            await client.user_message("still here")
            reply = await client.collect_reply(timeout=30)
            assert reply.response_status == "completed"


async def test_client_delegation_is_answered_without_tools(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(keys=[KEY], transcript="check the weather", delegate_on=["weather"]) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            await speak(client, "check the weather")
            replies = [await client.collect_reply(timeout=30), await client.collect_reply(timeout=30)]
            spoken = " ".join(r.assistant_text for r in replies).lower()
            assert "let me check" in spoken and "no tools" in spoken
        created = next(e for e in sim.accepted[-1].sent if e["type"] == "session.delegation.created")
        answers = [e for e in sim.accepted[-1].received if e.get("type") == "session.commentary.append"]
        assert answers and answers[-1]["delegation_id"] == created["delegation"]["id"]
