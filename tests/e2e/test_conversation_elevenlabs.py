"""A conversation through the gateway with the ElevenLabs engine, against the shipped simulator:
the same client, unchanged, gets the same kind of conversation as with the other engines."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.procs import clean_env, free_port, talk, voxgate_processes, wait_http
from voxgate.audio import read_wav, write_wav
from voxgate.client import VoxgateClient
from voxgate.testing.elevenlabs_sim import ElevenLabsSim, SimAgent
from voxgate.testing.speech import silence, synthesize

KEY = "xi-DO-NOT-LEAK-42"
LONG = "please give me a long answer"
LONG_REPLY = (
    "Here is a rather long answer that keeps talking for quite a while so that there is "
    "plenty of time to interrupt it somewhere in the middle of a sentence."
)


async def speak(client: VoxgateClient, text: str) -> None:
    rate = client.input_rate
    await client.stream_audio(silence(200, rate) + synthesize(text, rate) + silence(900, rate), speed=4.0)


async def test_elevenlabs_through_gateway(make_settings, gateway_factory) -> None:
    async with ElevenLabsSim(
        api_key=KEY,
        agents=[SimAgent(agent_id="a1", output_format="pcm_44100")],
        pace=2.0,
        transcripts=["hello there", "stop"],
        reply=lambda t: LONG_REPLY if "long" in t else f"You said: {t}.",
    ) as sim:
        settings = make_settings(
            engine="elevenlabs",
            elevenlabs_api_key=KEY,
            elevenlabs_agent_id="a1",
            elevenlabs_url=sim.ws_url,
            elevenlabs_api_base=sim.api_base,
        )
        async with gateway_factory(settings) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                # The agent speaks 44.1 kHz; the client asked for 24 kHz: the gateway resamples.
                ready = await client.start(binary=True, instructions="Be brief.")
                assert ready["engine"] == "elevenlabs"
                assert ready["outputAudio"]["rate"] == 24000
                await speak(client, "hello there")
                first = await client.collect_reply(timeout=30)
                assert first.user_text == "hello there"
                assert first.assistant_text == "You said: hello there." and first.audio
                await client.user_message("typed question")
                typed = await client.collect_reply(timeout=30)
                assert typed.assistant_text == "You said: typed question."

                # A client interrupt drops the rest of the turn at the gateway at once.
                await client.user_message(LONG)
                speaking = await client.wait_for("speaking", where=lambda m: m["isSpeaking"], timeout=30)
                await asyncio.sleep(1.0)
                await client.interrupt(900)
                interrupted = await client.wait_for("interrupted", timeout=5)
                assert interrupted["itemId"] == speaking["itemId"]
                await client.wait_for("response_done", where=lambda m: m["status"] == "cancelled", timeout=10)
                cut_at = client.received.index(interrupted)
                await asyncio.sleep(0.6)
                assert [m for m in client.received[cut_at + 1 :] if m["type"] == "audio"] == []

                # A server-detected barge-in: the user talks over the agent.
                await client.user_message(LONG)
                speaking2 = await client.wait_for(
                    "speaking", where=lambda m: m["isSpeaking"] and m["itemId"] != speaking["itemId"], timeout=30
                )
                await asyncio.sleep(1.0)
                await speak(client, "stop")
                await client.wait_for("interrupted", where=lambda m: m["itemId"] == speaking2["itemId"], timeout=10)
                await client.collect_reply(timeout=30)
                conversation_id = ready["conversationId"]
                await client.stop()
                assert not [m for m in client.received if KEY in repr(m)]
            await gw.wait_idle()
            record = await gw.state.store.get_conversation(conversation_id)
            assert record is not None
            cut = [t for t in record.turns if t.interrupted]
            assert len(cut) == 2 and all(t.role == "assistant" for t in cut)
            # The server barge-in's heard text is the provider's own correction.
            conv = sim.conversations[-1]
            assert conv.user_activity  # the client interrupt told the provider
            assert any(c[1].strip() == (cut[1].heard_text or "").strip() for c in conv.corrections), (
                conv.corrections, cut[1].heard_text,
            )


async def test_provider_failure_reaches_the_client_as_a_fatal_error(make_settings, gateway_factory) -> None:
    """ElevenLabs closing with 1011 mid-answer: the client learns why (fatal error, 4502),
    not a quiet normal close."""
    from voxgate.client import ProtocolFailure

    async with ElevenLabsSim(api_key=KEY, agents=[SimAgent(agent_id="a1")], pace=4.0) as sim:
        settings = make_settings(
            engine="elevenlabs", elevenlabs_api_key=KEY, elevenlabs_agent_id="a1",
            elevenlabs_url=sim.ws_url, elevenlabs_api_base=sim.api_base,
        )
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            sim.fault.close_mid_response = 1011
            await client.user_message("hello")
            error = await client.wait_for("error", timeout=15, fail_on_fatal=False)
            assert error["fatal"] is True and error["code"] == "upstream_unavailable"
            assert "1011" in error["message"]
            try:
                while True:
                    await client.recv(10)
            except ProtocolFailure:
                pass
            assert client.close_code == 4502


def test_cli_talk_with_elevenlabs(tmp_path: Path) -> None:
    """`voxgate simulate elevenlabs`, `voxgate serve` with VOXGATE_ENGINE=elevenlabs and
    `voxgate talk`, as a user runs them: the CLI works unchanged with this engine."""
    sim_port, gw_port = free_port(), free_port()
    env = clean_env(
        VOXGATE_ENGINE="elevenlabs",
        ELEVENLABS_API_KEY="xi-cli",
        VOXGATE_ELEVENLABS_AGENT_ID="agent_cli",
        VOXGATE_ELEVENLABS_API_BASE=f"http://127.0.0.1:{sim_port}/v1",
        VOXGATE_ELEVENLABS_URL=f"ws://127.0.0.1:{sim_port}/v1/convai/conversation",
        VOXGATE_PORT=str(gw_port),
        VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/cli.db",
    )
    hello = tmp_path / "hello.wav"
    write_wav(hello, synthesize("hello can you hear me", 16000), 16000)
    simulate = ["simulate", "elevenlabs", "--port", str(sim_port), "--api-key", "xi-cli",
                "--agent-id", "agent_cli", "--pace", "4", "--transcript", "hello can you hear me"]  # fmt: skip
    with voxgate_processes(simulate, ["serve"], env=env):
        wait_http(f"http://127.0.0.1:{gw_port}/health")
        reply = tmp_path / "reply.wav"
        result = talk(f"ws://127.0.0.1:{gw_port}/ws", "--wav", str(hello), "--out", str(reply), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "you: hello can you hear me" in result.stdout
    assert "assistant: You said: hello can you hear me." in result.stdout
    pcm, rate = read_wav(reply)
    assert rate == 24000 and len(pcm) / 2 / rate > 0.5
    assert "xi-cli" not in result.stdout + result.stderr
