"""The neutral `/ws` session's own duties, whatever the engine: rates, dialects, bookkeeping.

The engine here is OpenAI against its simulator (24 kHz native both ways); what is checked is
what the session adds around any engine: resampling between the client's rates and the
engine's, JSON and binary audio out, `speaking` announced with the item its audio belongs to,
the live-session record the admin API shows, and turns stored in order as they become final.
"""

from __future__ import annotations

import asyncio
import base64

import httpx

from voxgate.client import VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator
from voxgate.testing.speech import silence, synthesize

KEY = "sk-session-test-0123456789"


def _settings(make_settings, sim: OpenAISimulator):  # type: ignore[no-untyped-def]
    return make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url)


async def test_client_rates_are_resampled_both_ways(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0, transcript=["hello there"]) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                ready = await client.start(inputRate=16000, outputRate=48000, binary=True)
                assert ready["inputAudio"] == {"format": "pcm16", "rate": 16000}
                assert ready["outputAudio"] == {"format": "pcm16", "rate": 48000}
                client.input_rate = 16000
                spoken = silence(200, 16000) + synthesize("hello there", 16000) + silence(900, 16000)
                await client.stream_audio(spoken, speed=4.0)
                reply = await client.collect_reply(timeout=30)
                assert reply.response_status == "completed" and reply.audio
                await client.stop()
            await gw.wait_idle()
        conn = sim.accepted[-1]
        # The engine got 24 kHz audio: 1.5x the bytes the client sent at 16 kHz (within the
        # resampler's filter delay, a few ms).
        upstream = _decoded(conn.received, "input_audio_buffer.append", "audio")
        assert abs(upstream - len(spoken) * 1.5) < 24000 * 2 * 0.05
        # The client got 48 kHz audio: twice the simulator's 24 kHz bytes for the same reply.
        sent_out = _decoded(conn.sent, "response.output_audio.delta", "delta")
        assert abs(len(reply.audio) - 2 * sent_out) < 48000 * 2 * 0.05


def _decoded(events: list[dict], kind: str, field: str) -> int:
    """Bytes of PCM carried by the `kind` events (base64 in `field`)."""
    return sum(len(base64.b64decode(e[field])) for e in events if e.get("type") == kind)


async def test_json_and_binary_audio_carry_the_same_item(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw:
            for binary in (False, True):
                async with VoxgateClient(gw.ws_url) as client:
                    await client.start(binary=binary)
                    await client.user_message("say something short")
                    reply = await client.collect_reply(timeout=30)
                    audio = [m for m in reply.events if m["type"] == "audio"]
                    assert audio and all(m.get("binary", False) is binary for m in audio)
                    speaking = next(m for m in reply.events if m["type"] == "speaking")
                    # `speaking` comes first and names the item the (binary) frames belong to.
                    assert reply.events.index(speaking) < reply.events.index(audio[0])
                    assert speaking["isSpeaking"] is True and speaking["itemId"]
                    final = [m for m in reply.events if m["type"] == "transcript" and m["final"]]
                    assert final and final[-1]["itemId"] == speaking["itemId"]
                    if not binary:
                        assert {m["itemId"] for m in audio} == {speaking["itemId"]}
                    await client.stop()


async def test_live_record_and_stored_turns(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw:
            async with VoxgateClient(gw.ws_url) as client, httpx.AsyncClient(base_url=gw.http_url) as http:
                ready = await client.start(binary=True)
                await client.send_audio(silence(500, 24000))
                await client.user_message("first question")
                await client.collect_reply(timeout=30)
                await client.user_message("second question")
                await client.collect_reply(timeout=30)
                live = (await http.get(f"/api/realtime/sessions/{ready['sessionId']}")).json()
                assert live["engine"] == "openai" and live["started"] is True
                assert live["conversationId"] == ready["conversationId"]
                assert live["status"] == "connected"
                assert live["audioInSeconds"] >= 0.5 and live["audioOutSeconds"] > 0
                assert live["turns"] >= 4
                status = (await http.get("/ws/status")).json()
                assert status["sessions"] == 1 and status["byEngine"] == {"openai": 1}
                await client.stop()
            await gw.wait_idle()
            async with httpx.AsyncClient(base_url=gw.http_url) as http:
                gone = await http.get(f"/api/realtime/sessions/{ready['sessionId']}")
                assert gone.status_code == 404
                stored = (await http.get(f"/api/conversations/{ready['conversationId']}")).json()
        turns = [(t["role"], t["text"]) for t in stored["turns"]]
        assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant"]
        assert turns[0][1] == "first question" and turns[2][1] == "second question"
        assert all(t["endedAt"] for t in stored["turns"]) and stored["endedAt"]


async def test_start_twice_is_refused_and_the_session_goes_on(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                await client.start()
                await client.send({"type": "start"})
                error = await client.wait_for("error", timeout=10)
                assert error["code"] == "bad_request" and error["fatal"] is False
                assert "already started" in error["message"]
                await client.ping("still-here")
                pong = await client.wait_for("pong", timeout=10)
                assert pong["id"] == "still-here"
                await client.stop()
                await asyncio.wait_for(gw.wait_idle(), 15)
