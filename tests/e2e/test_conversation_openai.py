"""A spoken conversation through the gateway with the OpenAI engine, against the GA simulator.

Covers a whole spoken conversation: two server-VAD turns, a manual commit, a typed message and an
interrupt mid-response whose truncate (with the played milliseconds) reaches the simulator; the
API key never reaches a client; and the CLI flow (simulate, serve, talk) as real subprocesses.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.support.procs import clean_env, free_port, talk, voxgate_processes, wait_http
from voxgate.audio import read_wav, write_wav
from voxgate.client import ProtocolFailure, VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator
from voxgate.testing.speech import silence, synthesize

KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"
LONG = "please read this long sentence aloud so that the reply lasts for several seconds at least"


async def speak(client: VoxgateClient, text: str) -> None:
    rate = client.input_rate
    await client.stream_audio(silence(200, rate) + synthesize(text, rate) + silence(900, rate), speed=4.0)


def leaks(messages: list[dict], key: str) -> list[dict]:
    return [m for m in messages if key in repr(m)]


async def test_spoken_conversation_with_interrupt(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0, transcript=["hello there", "what time is it"]) as sim:
        settings = make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url)
        async with gateway_factory(settings) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                ready = await client.start(binary=True, instructions="Be brief.", personality={"humor": 90})
                assert ready["engine"] == "openai"
                # Two turns with server VAD.
                await speak(client, "hello there")
                first = await client.collect_reply(timeout=30)
                assert first.user_text == "hello there" or "hello there" in first.assistant_text.lower()
                assert first.audio and first.response_status == "completed"
                await speak(client, "what time is it")
                second = await client.collect_reply(timeout=30)
                assert second.assistant_text and second.audio
                # A typed message.
                await client.user_message("and a typed question")
                typed = await client.collect_reply(timeout=30)
                assert "typed question" in typed.assistant_text.lower()
                # An interrupt mid-response.
                await client.user_message(LONG)
                speaking = await client.wait_for("speaking", where=lambda m: m["isSpeaking"], timeout=30)
                await asyncio.sleep(0.2)
                await client.interrupt(400)
                interrupted = await client.wait_for("interrupted", timeout=10)
                assert interrupted["itemId"] == speaking["itemId"]
                assert 0 < interrupted["playedMs"] <= 400
                await client.wait_for("response_done", timeout=10)
                cut_at = client.received.index(interrupted)
                await asyncio.sleep(0.5)
                await client.ping("after")
                await client.wait_for("pong", timeout=5)
                late_audio = [m for m in client.received[cut_at + 1 :] if m["type"] == "audio"]
                assert late_audio == []
                conversation_id = ready["conversationId"]
                await client.stop()
                assert leaks(client.received, KEY) == []

            await gw.wait_idle()
            conn = sim.accepted[-1]
            assert conn.headers.get("authorization") == f"Bearer {KEY}"
            sent_types = conn.received_types()
            assert "session.update" in sent_types and "input_audio_buffer.append" in sent_types
            truncates = [e for e in conn.received if e.get("type") == "conversation.item.truncate"]
            assert truncates and truncates[-1]["item_id"] == speaking["itemId"]
            assert 0 < truncates[-1]["audio_end_ms"] <= 400
            assert "response.cancel" in sent_types
            update = next(e for e in conn.received if e.get("type") == "session.update")
            assert update["session"]["type"] == "realtime"
            assert "Be brief." in update["session"]["instructions"]
            assert "humor" in update["session"]["instructions"]

            record = await gw.state.store.get_conversation(conversation_id)
            assert record is not None
            roles = [t.role for t in record.turns]
            assert roles.count("user") >= 3 and roles.count("assistant") >= 4
            cut = [t for t in record.turns if t.interrupted]
            assert len(cut) == 1 and cut[0].heard_text is not None

            # No HTTP response a client can reach carries the key.
            async with httpx.AsyncClient(base_url=gw.http_url) as http:
                for path in ("/health", "/ws/status", "/api/config", "/api/realtime/sessions",
                             "/api/realtime/metrics", "/metrics", "/api/conversations",
                             f"/api/conversations/{conversation_id}", "/api/openapi.json", "/"):
                    response = await http.get(path)
                    assert response.status_code < 500, path
                    assert KEY not in response.text, path
                    assert KEY not in str(response.headers), path


async def test_manual_commit_turn(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0, transcript="manual words") as sim:
        settings = make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url)
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start(turnDetection={"mode": "manual"})
            await client.stream_audio(synthesize("manual words", client.input_rate), speed=4.0)
            await client.commit()
            reply = await client.collect_reply(timeout=30)
            assert reply.user_text == "manual words"
            assert reply.audio
            update = next(e for e in sim.accepted[-1].received if e.get("type") == "session.update")
            assert update["session"]["audio"]["input"]["turn_detection"] is None
            types = sim.accepted[-1].received_types()
            assert types.index("input_audio_buffer.commit") < types.index("response.create")


async def test_upstream_rejects_key_is_fatal_and_clear(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=["sk-the-right-one"], pace=4.0) as sim:
        settings = make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url)
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            await client.send({"type": "start"})
            error = await client.wait_for("error", timeout=15, fail_on_fatal=False)
            assert error["code"] == "upstream_unavailable" and error["fatal"] is True
            assert "OPENAI_API_KEY" in error["message"]
            assert KEY not in error["message"]
            with pytest.raises(ProtocolFailure):
                while True:
                    await client.recv(5)
            # Not a code that official SDKs auto-reconnect on.
            assert client.close_code == 4502


async def test_upstream_error_event_is_forwarded_non_fatal(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        settings = make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url)
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            sim.inject_error("server_busy", "The server is busy right now.", type_="server_error")
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "upstream_error" and error["fatal"] is False
            assert "busy" in error["message"]
            await client.user_message("still there?")
            reply = await client.collect_reply(timeout=30)
            assert reply.response_status == "completed"


async def test_upstream_closing_mid_response_is_reported_promptly(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=1.0) as sim:
        settings = make_settings(
            engine="openai", openai_api_key=KEY, openai_url=sim.url,
            reconnect_attempts=1, reconnect_base_s=0.05, reconnect_max_s=0.1,
        )
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            await client.user_message(LONG)
            await client.wait_for("audio", timeout=15)
            sim.faults.refuse_status = 503  # the reconnect will fail too
            sim.inject_error("server_error", "gone", close=1011)
            started = time.monotonic()
            error = await client.wait_for("error", timeout=15, fail_on_fatal=False)
            assert error["code"] in ("upstream_error", "upstream_unavailable")
            await client.wait_for(
                "status", where=lambda m: m["status"] in ("reconnecting", "disconnected"), timeout=15,
                fail_on_fatal=False,
            )
            with pytest.raises(ProtocolFailure):
                while True:
                    message = await client.recv(15)
                    if message["type"] == "error" and message["fatal"]:
                        assert message["code"] == "upstream_unavailable"
            assert time.monotonic() - started < 15
            assert client.close_code == 4502


def test_cli_simulate_serve_talk(tmp_path: Path) -> None:
    """The README flow, as a new user runs it: three real processes."""
    sim_port, gw_port = free_port(), free_port()
    env = clean_env(
        VOXGATE_ENGINE="openai",
        OPENAI_API_KEY="sk-test",
        VOXGATE_OPENAI_URL=f"ws://127.0.0.1:{sim_port}/v1/realtime",
        VOXGATE_PORT=str(gw_port),
        VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/cli.db",
    )
    hello = tmp_path / "hello.wav"
    write_wav(hello, synthesize("hello can you hear me", 16000), 16000)
    simulate = ["simulate", "openai", "--port", str(sim_port), "--pace", "4",
                "--transcript", "hello can you hear me"]  # fmt: skip
    with voxgate_processes(simulate, ["serve"], env=env):
        wait_http(f"http://127.0.0.1:{gw_port}/health")
        reply = tmp_path / "reply.wav"
        result = talk(f"ws://127.0.0.1:{gw_port}/ws", "--wav", str(hello), "--out", str(reply),
                      "--fast", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "you: hello can you hear me" in result.stdout
    assert "assistant:" in result.stdout
    pcm, rate = read_wav(reply)
    assert rate == 24000 and len(pcm) / 2 / rate > 0.5
    assert "sk-test" not in result.stdout + result.stderr


async def test_silent_upstream_hits_first_byte_timeout_then_recovers(make_settings, gateway_factory) -> None:
    """A provider that holds the socket open but never answers (pings unanswered too, yet the
    ping interval is long) is detected by the first-byte timeout; the engine reconnects,
    restores the conversation and asks again, and the client gets its answer."""
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        settings = make_settings(
            engine="openai", openai_api_key=KEY, openai_url=sim.url,
            first_byte_timeout_s=1.0, upstream_ping_interval_s=60.0,
            reconnect_base_s=0.3, reconnect_max_s=0.5,
        )
        async with gateway_factory(settings) as gw, VoxgateClient(gw.ws_url) as client:
            await client.start()
            await client.user_message("my name is Ada")
            await client.collect_reply(timeout=30)
            sim.faults.blackhole = True
            await client.user_message("what is my name")
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "timeout" and error["fatal"] is False
            sim.faults.blackhole = False
            await client.wait_for("status", where=lambda m: m["status"] == "connected", timeout=15)
            reply = await client.collect_reply(timeout=30)
            assert reply.response_status == "completed"
            # The new upstream session got the earlier turns back before the question.
            replayed = [
                e["item"]["content"][0].get("text", "")
                for e in sim.accepted[-1].received
                if e.get("type") == "conversation.item.create"
            ]
            assert "my name is Ada" in replayed and "what is my name" in replayed
