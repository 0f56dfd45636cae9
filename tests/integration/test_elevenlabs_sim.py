"""The ElevenLabs simulator, checked against the official `elevenlabs` Python SDK (2.78.0) and a
raw WebSocket client following the protocol reference.

If the real SDK can hold a conversation with the simulator (signed URL, audio both ways,
transcripts, tools, ping/pong, interruptions with stale audio dropped), the simulator speaks the
provider's protocol, and tests of our engine against it mean something.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from elevenlabs.client import ElevenLabs
from elevenlabs.conversational_ai.conversation import (
    AsyncAudioInterface,
    AsyncConversation,
    ClientTools,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voxgate.audio import pcm16_to_ulaw
from voxgate.testing.elevenlabs_sim import ElevenLabsSim, SimAgent, SimFault
from voxgate.testing.speech import silence, synthesize

KEY = "xi-sim-test-key-77"
LONG_REPLY = (
    "Here is a rather long answer that keeps talking for quite a while so that there is "
    "plenty of time to interrupt it somewhere in the middle of a sentence."
)


class ScriptedMic(AsyncAudioInterface):
    """An SDK audio interface: plays scripted utterances into the conversation, records output.

    The SDK contract is PCM16 mono 16 kHz both ways, 4000-sample input chunks."""

    def __init__(self) -> None:
        self.output_audio = bytearray()
        self.interrupts = 0
        self._callback: Any = None
        self._ready = asyncio.Event()

    async def start(self, input_callback: Any) -> None:
        self._callback = input_callback
        self._ready.set()

    async def say(self, text: str, trailing_ms: int = 700) -> None:
        await asyncio.wait_for(self._ready.wait(), 10)
        pcm = synthesize(text, 16000) + silence(trailing_ms, 16000)
        for i in range(0, len(pcm), 8000):
            await self._callback(pcm[i : i + 8000])

    async def stop(self) -> None:
        self._callback = None

    async def output(self, audio: bytes) -> None:
        self.output_audio += audio

    async def interrupt(self) -> None:
        self.interrupts += 1


async def until(predicate: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.fixture
async def sdk_session() -> AsyncIterator[Any]:
    """`conv = await sdk_session(sim, mic=..., **kwargs)`: an official SDK conversation."""
    live: list[AsyncConversation] = []

    async def open_session(sim: ElevenLabsSim, agent_id: str, **kwargs: Any) -> AsyncConversation:
        client = ElevenLabs(api_key=sim.api_key, base_url=f"http://127.0.0.1:{sim.port}")
        conv = AsyncConversation(client, agent_id, **kwargs)
        live.append(conv)
        await conv.start_session()
        return conv

    yield open_session
    for conv in live:
        await conv.end_session()
        await asyncio.wait_for(conv.wait_for_session_end(), 10)


async def test_official_sdk_spoken_turn_tool_and_ping(sdk_session: Any) -> None:
    agent = SimAgent(
        agent_id="agent_sdk", tool_triggers={"weather": ("get_weather", {"city": "Paris"})}
    )
    async with ElevenLabsSim(
        api_key=KEY, agents=[agent], pace=8.0, ping_interval_s=0.2,
        transcripts=["what is the weather"],
    ) as sim:  # fmt: skip
        seen: dict[str, list[Any]] = {"agent": [], "user": [], "latency": [], "tool": []}

        async def on_agent(text: str) -> None:
            seen["agent"].append(text)

        async def on_user(text: str) -> None:
            seen["user"].append(text)

        async def on_latency(ms: int) -> None:
            seen["latency"].append(ms)

        def get_weather(params: dict[str, Any]) -> str:
            seen["tool"].append(params)
            return "sunny"

        tools = ClientTools(loop=asyncio.get_running_loop())
        tools.register("get_weather", get_weather)
        mic = ScriptedMic()
        await sdk_session(
            sim, "agent_sdk", requires_auth=True, audio_interface=mic, client_tools=tools,
            callback_agent_response=on_agent, callback_user_transcript=on_user,
            callback_latency_measurement=on_latency,
        )  # fmt: skip
        await mic.say("what is the weather")
        reply = "The get_weather tool says: sunny"
        expected = await sim.synthesize(reply, 16000)
        await until(lambda: len(mic.output_audio) >= len(expected) and seen["latency"])

        conv = sim.conversations[-1]
        assert sim.rest_calls == [("/v1/convai/conversation/get-signed-url", "agent_sdk", 200)]
        assert conv.query["source"] == "python_sdk" and conv.query["conversation_signature"]
        assert conv.subprotocol is None  # the Python SDK offers none
        assert conv.init["type"] == "conversation_initiation_client_data"
        assert seen["user"] == ["what is the weather"]
        assert seen["agent"] == [reply]
        assert bytes(mic.output_audio) == expected
        assert seen["tool"][0]["city"] == "Paris"
        assert (
            conv.tool_results[0]["is_error"] is False and conv.tool_results[0]["result"] == "sunny"
        )
        assert (
            conv.pongs
            and conv.pongs[0]["event_id"] == conv.sent_of_type("ping")[0]["ping_event"]["event_id"]
        )


async def test_official_sdk_barge_in_drops_stale_audio(sdk_session: Any) -> None:
    async with ElevenLabsSim(
        api_key=KEY, agents=[SimAgent(agent_id="agent_sdk")], pace=1.0,
        transcripts=["tell me a long story", "stop"],
        reply=lambda t: LONG_REPLY if "long" in t else f"You said: {t}.",
        fault=SimFault(stale_audio_after_interrupt=2),
    ) as sim:  # fmt: skip
        corrections: list[tuple[str, str]] = []

        async def on_correction(original: str, corrected: str) -> None:
            corrections.append((original, corrected))

        mic = ScriptedMic()
        await sdk_session(
            sim, "agent_sdk", requires_auth=True, audio_interface=mic,
            callback_agent_response_correction=on_correction,
        )  # fmt: skip
        await mic.say("tell me a long story")
        await until(lambda: len(mic.output_audio) >= 16000)  # half a second of the answer
        await mic.say("stop please")
        short = await sim.synthesize("You said: stop.", 16000)
        conv = sim.conversations[-1]
        await until(lambda: conv.interrupted_turns)
        sent_before = conv.interrupted_turns[0][1]
        await until(lambda: len(mic.output_audio) >= sent_before + len(short))
        await asyncio.sleep(0.3)

        assert mic.interrupts == 1
        assert corrections and corrections[0][0] == LONG_REPLY
        assert LONG_REPLY.startswith(corrections[0][1]) and corrections[0][1] != LONG_REPLY
        # The SDK played what was sent before the interruption, then the new answer; the two
        # stale chunks (event_id <= the interruption's) were dropped, as the protocol requires.
        interruption = conv.interruptions[0]
        last_real = max(i for i in conv.audio_event_ids if i < interruption)
        assert conv.audio_event_ids.count(last_real) == 3  # the real chunk + 2 stale repeats
        assert len(mic.output_audio) == sent_before + len(short)


async def test_official_sdk_text_only_public_agent(sdk_session: Any) -> None:
    async with ElevenLabsSim(
        api_key=KEY, agents=[SimAgent(agent_id="pub", requires_auth=False)], pace=8.0
    ) as sim:
        replies: list[str] = []

        async def on_agent(text: str) -> None:
            replies.append(text)

        conv = await sdk_session(sim, "pub", requires_auth=False, callback_agent_response=on_agent)
        record = await sim.wait_for_conversation()
        await conv.send_user_message("hello")
        await conv.send_contextual_update("the user is on the pricing page")
        await conv.register_user_activity()
        await until(lambda: replies == ["You said: hello."])
        await until(lambda: record.user_activity == 1)
        assert record.init["conversation_config_override"] == {"text_only": True}
        assert record.contextual_updates == ["the user is on the pricing page"]
        assert record.audio_event_ids == []  # text-only: no audio
        assert sim.rest_calls == []


# --- the REST call and the socket handshake, with raw clients ----------------------------------


async def test_signed_url_contract() -> None:
    async with ElevenLabsSim(api_key=KEY, agents=[SimAgent(agent_id="priv")]) as sim:
        url = f"{sim.api_base}/convai/conversation/get-signed-url"
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(url, params={"agent_id": "priv"}, headers={"xi-api-key": "nope"})
            assert r.status_code == 401 and r.json()["detail"]["status"] == "invalid_api_key"
            r = await http.get(url, params={"agent_id": "priv"})
            assert r.status_code == 401
            r = await http.get(url, params={"agent_id": "ghost"}, headers={"xi-api-key": KEY})
            assert r.status_code == 404 and "ghost" in r.json()["detail"]["message"]
            r = await http.get(url, params={"agent_id": "priv"}, headers={"xi-api-key": KEY})
            assert r.status_code == 200
            signed = r.json()["signed_url"]
        assert signed.startswith(sim.ws_url + "?agent_id=priv&conversation_signature=")
        assert [c[2] for c in sim.rest_calls] == [401, 401, 404, 200]

        # A signed URL works, and the `convai` subprotocol is selected when a browser offers it.
        async with websockets.connect(signed, subprotocols=["convai"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "convai"
            await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            meta = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert meta["type"] == "conversation_initiation_metadata"
        event = meta["conversation_initiation_metadata_event"]
        assert event["conversation_id"].startswith("conv_")
        assert (event["user_input_audio_format"], event["agent_output_audio_format"]) == (
            "pcm_16000",
            "pcm_16000",
        )

        # Without a signature (or with a forged one) a private agent is refused: error, then 1008.
        for query in ("agent_id=priv", "agent_id=priv&conversation_signature=forged"):
            async with websockets.connect(f"{sim.ws_url}?{query}") as ws:
                error = json.loads(await asyncio.wait_for(ws.recv(), 10))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
            assert (
                error["error_event"]["code"] == 1008
                and "signed URL" in error["error_event"]["message"]
            )
            assert ws.close_code == 1008


async def test_expired_signature_is_refused() -> None:
    async with ElevenLabsSim(
        api_key=KEY, agents=[SimAgent(agent_id="priv")], signed_url_ttl_s=0.0
    ) as sim:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(
                f"{sim.api_base}/convai/conversation/get-signed-url",
                params={"agent_id": "priv"},
                headers={"xi-api-key": KEY},
            )
        async with websockets.connect(r.json()["signed_url"]) as ws:
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1008


async def test_override_not_allowed_is_an_override_error() -> None:
    agent = SimAgent(
        agent_id="pub", requires_auth=False, allowed_overrides=frozenset({"tts.voice_id"})
    )
    async with (
        ElevenLabsSim(agents=[agent]) as sim,
        websockets.connect(f"{sim.ws_url}?agent_id=pub") as ws,
    ):
        override = {"tts": {"voice_id": "v1"}, "agent": {"prompt": {"prompt": "be a pirate"}}}
        await ws.send(
            json.dumps(
                {
                    "type": "conversation_initiation_client_data",
                    "conversation_config_override": override,
                }
            )
        )
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert error == {
        "type": "error",
        "error_event": {
            "code": 1008,
            "error_type": "override_error",
            "message": "Override for field 'agent.prompt.prompt' is not allowed by config.",
        },
    }
    assert ws.close_code == 1008


async def test_ulaw_agent_and_invalid_client_message() -> None:
    agent = SimAgent(
        agent_id="pub", requires_auth=False, input_format="ulaw_8000", output_format="ulaw_8000"
    )
    async with (
        ElevenLabsSim(agents=[agent], pace=8.0) as sim,
        websockets.connect(f"{sim.ws_url}?agent_id=pub") as ws,
    ):
        await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        meta = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert (
            meta["conversation_initiation_metadata_event"]["agent_output_audio_format"]
            == "ulaw_8000"
        )
        await ws.send(json.dumps({"type": "user_message", "text": "hi"}))
        audio = bytearray()
        while len(audio) < 8000:  # a second of 8 kHz mu-law
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if msg["type"] == "audio":
                audio += base64.b64decode(msg["audio_event"]["audio_base_64"])
        expected = pcm16_to_ulaw(await sim.synthesize("You said: hi.", 8000))
        assert bytes(audio) == expected[: len(audio)]
        # Something the service does not understand ends the conversation with 1008.
        await ws.send(json.dumps({"type": "no_such_message"}))
        with pytest.raises(ConnectionClosed):
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg["type"] == "error":
                    assert msg["error_event"]["error_type"] == "invalid_message"
    assert ws.close_code == 1008


async def test_refuse_fault_fails_the_handshake() -> None:
    async with ElevenLabsSim(agents=[SimAgent(agent_id="pub", requires_auth=False)]) as sim:
        sim.fault.refuse = True
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(f"{sim.ws_url}?agent_id=pub", open_timeout=10)
        assert info.value.response.status_code == 403
