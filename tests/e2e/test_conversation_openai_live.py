"""A spoken conversation through the gateway with the `openai-live` engine, against the GPT-Live
simulator: two spoken turns, a typed message and an interrupt; transcripts stored; usage
metered; the API key never reaches a client. The engine's keepalive runs at four times real
time (`timeline_pace`), as the other engines' simulators run at `pace=4.0`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import clean_env, free_port, talk, voxgate_processes, wait_http
from voxgate.audio import write_wav
from voxgate.client import VoxgateClient
from voxgate.engines.openai_live.engine import OpenAILiveEngine
from voxgate.testing.openai_live_sim import OpenAILiveSimulator
from voxgate.testing.speech import silence, synthesize

KEY = "sk-live-DO-NOT-LEAK-0123456789abcdef"
LONG = "please read this long sentence aloud so that the reply lasts for several seconds at least"


@pytest.fixture(autouse=True)
def fast_timeline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(OpenAILiveEngine, "timeline_pace", 4.0)
    yield


async def speak(client: VoxgateClient, text: str) -> None:
    rate = client.input_rate
    await client.stream_audio(silence(200, rate) + synthesize(text, rate) + silence(900, rate), speed=4.0)


def billed(metrics_text: str, engine: str) -> float:
    match = re.search(rf'^voxgate_billed_seconds_total{{engine="{engine}"}} (\S+)$', metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_spoken_conversation_with_typed_message_and_interrupt(make_settings, gateway_factory) -> None:
    async with OpenAILiveSimulator(
        keys=[KEY], transcript=["hello there", "what time is it"], usage_interval_s=1.0
    ) as sim:
        settings = make_settings(engine="openai-live", openai_api_key=KEY, openai_live_url=sim.url)
        async with gateway_factory(settings) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                ready = await client.start(binary=True, instructions="Be brief.", personality={"humor": 90})
                assert ready["engine"] == "openai-live"
                caps = ready["capabilities"]
                assert caps["manualTurns"] is False and caps["interrupt"] == "advisory"
                assert caps["serverVad"] is True
                # Two spoken turns: the model decides when each one ends.
                await speak(client, "hello there")
                first = await client.collect_reply(timeout=30)
                assert first.user_text == "hello there"
                assert "hello there" in first.assistant_text.lower()
                assert first.audio and first.response_status == "completed"
                # The stream is continuous, silence included; the client gets the speech
                # (with its pauses), not the silence around it.
                spoken = len(synthesize("You said: hello there.", 24000))
                assert spoken * 0.8 <= len(first.audio) <= spoken + 0.5 * 48000
                done = [m for m in first.events if m["type"] == "response_done"][-1]
                assert done["usage"]["type"] == "duration"
                await speak(client, "what time is it")
                second = await client.collect_reply(timeout=30)
                assert second.user_text == "what time is it" and second.audio
                # A typed message: no audio from the client at all, the keepalive moves time.
                await client.user_message("and a typed question")
                typed = await client.collect_reply(timeout=30)
                assert "typed question" in typed.assistant_text.lower() and typed.audio
                # An interrupt mid-answer: advisory, but the client hears nothing more of it.
                await client.user_message(LONG)
                speaking = await client.wait_for("speaking", where=lambda m: m["isSpeaking"], timeout=30)
                await client.wait_for("audio", timeout=10)
                await client.interrupt(400)
                interrupted = await client.wait_for("interrupted", timeout=10)
                assert interrupted["itemId"] == speaking["itemId"]
                assert 0 < interrupted["playedMs"] <= 400
                cancelled = await client.wait_for("response_done", timeout=10)
                assert cancelled["status"] == "cancelled"
                cut_at = client.received.index(interrupted)
                # The model goes on speaking upstream until it pauses; none of it may arrive.
                sent_before = len(sim.accepted[-1].sent)
                await client.user_message("hello again")
                after = await client.collect_reply(timeout=30)
                assert after.response_status == "completed" and after.audio
                assert "hello again" in after.assistant_text.lower()
                assert len(sim.accepted[-1].sent) > sent_before
                # Neither under the cut item nor as a "new" answer: the rest of LONG is dropped.
                late = [
                    m for m in client.received[cut_at + 1 :]
                    if (m["type"] == "audio" and m.get("itemId") == speaking["itemId"])
                    or (m["type"] == "transcript" and "several seconds" in m["text"])
                ]  # fmt: skip
                assert late == []
                conversation_id = ready["conversationId"]
                await client.stop()
                assert [m for m in client.received if KEY in repr(m)] == []

            await gw.wait_idle()
            conn = sim.accepted[-1]
            assert conn.headers.get("authorization") == f"Bearer {KEY}"
            start = next(e for e in conn.received if e.get("type") == "session.start")
            assert start["session"]["model"] == "gpt-live-1"
            assert "Be brief." in start["session"]["instructions"]
            assert "humor" in start["session"]["instructions"]
            types = conn.received_types()
            assert types[0] == "session.start"
            assert types.count("session.commentary.append") == 3  # the three typed messages
            assert "session.input_audio.append" in types and types[-1] == "session.close"
            assert conn.closed_reason == "close_requested"

            record = await gw.state.store.get_conversation(conversation_id)
            assert record is not None
            users = [t.text for t in record.turns if t.role == "user"]
            assert "hello there" in users and "what time is it" in users
            assert "and a typed question" in users
            assistants = [t for t in record.turns if t.role == "assistant"]
            assert len(assistants) >= 4
            cut = [t for t in assistants if t.interrupted]
            assert len(cut) == 1 and cut[0].heard_text is not None

            # Usage is metered: exactly the final cumulative seconds GPT-Live reported.
            final_usage = next(e for e in conn.sent if e["type"] == "session.closed")["usage"]
            assert final_usage["seconds"] > 0
            async with httpx.AsyncClient(base_url=gw.http_url) as http:
                metrics = (await http.get("/metrics")).text
                assert billed(metrics, "openai-live") == pytest.approx(final_usage["seconds"])
                for path in ("/health", "/ws/status", "/api/config", "/metrics",
                             f"/api/conversations/{conversation_id}", "/"):
                    response = await http.get(path)
                    assert response.status_code < 500, path
                    assert KEY not in response.text, path


def test_cli_simulate_serve_talk(tmp_path: Path) -> None:
    """The README flow with GPT-Live, as a new user runs it: three real processes, at real time."""
    sim_port, gw_port = free_port(), free_port()
    env = clean_env(
        VOXGATE_ENGINE="openai-live",
        OPENAI_API_KEY="sk-test",
        VOXGATE_OPENAI_LIVE_URL=f"ws://127.0.0.1:{sim_port}/v1/live/sessions",
        VOXGATE_PORT=str(gw_port),
        VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/cli.db",
    )
    hello = tmp_path / "hello.wav"
    write_wav(hello, synthesize("hello can you hear me", 16000), 16000)
    simulate = ["simulate", "openai-live", "--port", str(sim_port), "--transcript", "hello can you hear me"]
    with voxgate_processes(simulate, ["serve"], env=env):
        wait_http(f"http://127.0.0.1:{sim_port}/_sim/faults")
        wait_http(f"http://127.0.0.1:{gw_port}/health")
        url = f"ws://127.0.0.1:{gw_port}/ws"
        spoken = talk(url, "--wav", str(hello), "--manual", "--fast", env=env)
        typed = talk(url, "--text", "a typed hello", env=env)
    assert spoken.returncode == 0, spoken.stderr
    assert "you: hello can you hear me" in spoken.stdout
    assert "You said: hello can you hear me" in spoken.stdout
    assert "ends turns itself" in spoken.stderr  # --manual: no commit for this engine
    assert typed.returncode == 0, typed.stderr
    assert "You said: a typed hello" in typed.stdout
