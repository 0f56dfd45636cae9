"""The GPT-Live simulator behaves like the real service where clients can tell.

The official SDK's `client.live.connect()` drives it, and every event it sends validates against
the SDK's `ServerEvent` models (strictly, with pydantic: the SDK itself parses without
validation, so a missing field would otherwise go unnoticed).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.live.server_event import ServerEvent
from pydantic import TypeAdapter

from voxgate.testing.openai_live_sim import LiveConnection, OpenAILiveSimulator
from voxgate.testing.speech import silence, synthesize

KEY = "sk-live-sim-key-123456"
PHRASE = "what is the weather like today"
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(ServerEvent)


def validate_all(conn: LiveConnection) -> None:
    """Every event the simulator sent on `conn` is a valid SDK `ServerEvent` of its type."""
    assert conn.sent
    for event in conn.sent:
        parsed = SERVER_EVENT.validate_python(event)
        assert parsed.type == event["type"]


@pytest.fixture
async def sim() -> AsyncIterator[OpenAILiveSimulator]:
    async with OpenAILiveSimulator(keys={KEY}, transcript=PHRASE, usage_interval_s=1.0) as s:
        yield s


def sdk(sim: OpenAILiveSimulator, key: str = KEY) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=sim.base_url, max_retries=0)


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


async def stream(conn: Any, pcm: bytes, frame_ms: int = 100) -> None:
    """Append `pcm` (24 kHz) in frames, as fast as the socket takes them: the simulator's
    timeline is the audio, so this fast-forwards the conversation."""
    step = frame_ms * 48
    for i in range(0, len(pcm), step):
        await conn.session.input_audio.append(audio=b64(pcm[i : i + step]))


async def eventually(condition: Any, timeout: float = 20) -> None:
    """Wait until `condition()` holds (the simulator works through what was sent)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def said(conn: LiveConnection) -> str:
    return "".join(e["delta"] for e in conn.sent if e["type"] == "session.output_transcript.delta")


async def until(conn: Any, etype: str, timeout: float = 20) -> list[Any]:
    """Every event up to and including the first of type `etype`."""
    seen = []
    async with asyncio.timeout(timeout):
        async for event in conn:
            seen.append(event)
            if event.type == etype:
                return seen
    raise AssertionError(f"the connection ended before {etype}; got {[e.type for e in seen]}")


async def test_sdk_session_start_spoken_turn_usage_and_close(sim: OpenAILiveSimulator) -> None:
    async with sdk(sim).live.connect() as conn:
        await conn.session.start(
            session={"model": "gpt-live-1", "instructions": "Be brief.",
                     "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi, I'm Ada"}]}]},
            event_id="evt_start",
        )  # fmt: skip
        started = (await until(conn, "session.started"))[-1]
        assert started.client_event_id == "evt_start"
        assert started.session.id.startswith("live_") and started.session.status == "active"
        assert started.session.audio.format.rate == 24000
        assert started.session.audio.output.voice == "marin"
        await stream(conn, silence(300, 24000) + synthesize(PHRASE, 24000) + silence(4500, 24000))
        await conn.session.close(event_id="evt_close")
        events = await until(conn, "session.closed")
        # The socket then closes 1000: the SDK's iterator ends cleanly.
        async with asyncio.timeout(10):
            rest = [event async for event in conn]
        assert rest == []
    conn_rec = sim.accepted[-1]
    validate_all(conn_rec)
    heard = "".join(e.delta for e in events if e.type == "session.input_transcript.delta")
    said = "".join(e.delta for e in events if e.type == "session.output_transcript.delta")
    assert heard.strip() == PHRASE and said.strip() == f"You said: {PHRASE}."
    fragments = [e for e in events if e.type.endswith("_transcript.delta")]
    assert all(e.event_id and 0 <= e.start_ms <= e.end_ms and e.delta.startswith(" ") for e in fragments)
    # No item ids, no done events: only timed fragments and a continuous audio stream.
    assert not [e for e in conn_rec.sent if e["type"].endswith(".done")]
    audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == "session.output_audio.delta")
    assert abs(len(audio) - conn_rec.timeline_ms * 48) <= 100 * 48  # silence included
    usage = [e.usage.seconds for e in events if e.type == "session.usage.updated"]
    assert usage == sorted(usage) and len(usage) >= 3  # cumulative, never summed
    closed = events[-1]
    assert closed.reason == "close_requested" and closed.client_event_id == "evt_close"
    assert closed.usage.seconds == conn_rec.timeline_ms // 1000
    assert conn_rec.close_code == 1000
    assert conn_rec.history[0] == {"role": "user", "text": "hi, I'm Ada"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong-key-0000000"}])
async def test_handshake_needs_the_bearer_key(sim: OpenAILiveSimulator, headers: dict) -> None:
    with pytest.raises(websockets.InvalidStatus) as caught:
        await websockets.connect(sim.url, additional_headers=headers, open_timeout=5)
    assert caught.value.response.status_code == 401
    assert b"invalid_api_key" in caught.value.response.body
    assert sim.connections[-1].rejected_status == 401


async def test_start_is_strict_and_errors_have_the_real_shape(sim: OpenAILiveSimulator) -> None:
    async with sdk(sim).live.connect() as conn:
        await conn.session.input_audio.append(audio=b64(silence(100, 24000)))
        before = (await until(conn, "error"))[-1]
        assert before.error.code == "session_not_started"
        await conn.send({"type": "session.start", "event_id": "e1",  # type: ignore[arg-type]
                         "session": {"model": "gpt-live-1", "voice": "marin"}})  # fmt: skip
        error = (await until(conn, "error"))[-1]
        assert error.error.code == "unknown_parameter" and error.error.param == "session.voice"
        assert error.error.type == "invalid_request_error" and error.error.client_event_id == "e1"
        await conn.session.start(session={"model": "gpt-realtime"})
        wrong = (await until(conn, "error"))[-1]
        assert wrong.error.code == "invalid_model" and wrong.error.param == "session.model"
        await conn.session.start(session={"model": "gpt-live-1.1", "audio": {"format": {"type": "audio/pcm", "rate": 16000}}})
        started = (await until(conn, "session.started"))[-1]
        assert started.session.model == "gpt-live-1.1"
        await conn.session.start(session={"model": "gpt-live-1"})
        assert (await until(conn, "error"))[-1].error.code == "session_already_started"
        await conn.send({"type": "input_audio_buffer.commit"})  # type: ignore[arg-type]
        unknown = (await until(conn, "error"))[-1]
        assert unknown.error.code == "invalid_value" and "session.input_audio.append" in unknown.error.message
        await conn.send_raw("{not json")  # type: ignore[attr-defined]
        assert (await until(conn, "error"))[-1].error.code == "invalid_json"
        await conn.session.update(session={"delegation": {"type": "responses", "responses": {"model": "gpt-5"}}})
        assert (await until(conn, "error"))[-1].error.code == "immutable_field_update"
        await conn.session.update(session={"triggers": []})
        assert (await until(conn, "session.updated"))[-1].session.triggers == []
        await conn.response.create()
        assert "Responses delegation" in (await until(conn, "error"))[-1].error.message
        # 16 kHz in, 16 kHz out: 100 ms is 3,200 bytes.
        await conn.session.input_audio.append(audio=b64(silence(100, 16000)))
        delta = (await until(conn, "session.output_audio.delta"))[-1]
        pcm16k = base64.b64decode(delta.delta)
        assert len(pcm16k) % 2 == 0 and 2400 <= len(pcm16k) <= 3200  # (less: resampler delay)
    validate_all(sim.accepted[-1])


async def test_appends_wait_for_the_timeline_and_commentary_is_spoken(sim: OpenAILiveSimulator) -> None:
    async with sdk(sim).live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1"})
        await until(conn, "session.started")
        await conn.session.thinking.append(content="The user likes tea.", delegation_id=None, event_id="t1")
        await conn.session.commentary.append(content="Your tea is ready.", delegation_id=None, event_id="c1")
        await conn.session.input_audio.mute(event_id="m1")
        muted = (await until(conn, "session.input_audio.muted"))[-1]
        assert muted.client_event_id == "m1"
        # Nothing lands while no audio flows.
        assert not [e for e in sim.accepted[-1].sent if e["type"].endswith(".appended")]
        await stream(conn, silence(100, 24000))
        thinking = (await until(conn, "session.thinking.appended"))[-1]
        assert thinking.client_event_id == "t1" and thinking.start_ms == thinking.end_ms == 100
        await until(conn, "session.commentary.appended")
        await stream(conn, silence(4000, 24000))  # muted: the model speaks regardless
        rec = sim.accepted[-1]
        await eventually(lambda: rec.timeline_ms >= 4100)
        await conn.session.close()
        await until(conn, "session.closed")  # (reads what is queued: the close is then quick)
    assert said(rec).strip() == "Your tea is ready."
    validate_all(rec)


async def test_close_without_audio_reports_context_injection_incomplete(sim: OpenAILiveSimulator) -> None:
    async with sdk(sim).live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1"})
        await until(conn, "session.started")
        await conn.session.instructions.append(content="Always be polite.", delegation_id=None)
        await conn.session.close()
        events = await until(conn, "session.closed")
    assert [e.error.code for e in events if e.type == "error"] == ["context_injection_incomplete"]


async def test_delegation_and_barge_in() -> None:
    async with OpenAILiveSimulator(keys={KEY}, transcript=["check the weather", "stop please"],
                                   delegate_on=["weather"]) as sim:  # fmt: skip
        async with sdk(sim).live.connect() as conn:
            await conn.session.start(session={"model": "gpt-live-1"})
            await until(conn, "session.started")
            speech = silence(200, 24000) + synthesize("check the weather", 24000) + silence(800, 24000)
            await stream(conn, speech)
            created = (await until(conn, "session.delegation.created"))[-1]
            assert created.delegation.target == "client" and created.delegation.id.startswith("item_")
            assert created.offset_ms > 0
            await conn.session.commentary.append(
                content="It is sunny and twenty degrees in Paris today, with a light breeze from the west.",
                delegation_id=created.delegation.id,
            )
            await stream(conn, silence(3000, 24000))
            rec = sim.accepted[-1]
            await eventually(lambda: "sunny" in said(rec).lower())
            assert "let me check" in said(rec).lower()
            # Talk over the model: it yields within a moment; the rest is never said.
            interjection = synthesize("stop please", 24000) + silence(600, 24000) + silence(6000, 24000)
            await stream(conn, interjection)
            end = rec.timeline_ms + len(interjection) // 48 - 100
            await eventually(lambda: rec.timeline_ms >= end)
            assert "breeze" not in said(rec)
            assert {"role": "user", "text": "stop please"} in rec.history
            await conn.session.close()
            await until(conn, "session.closed")
        validate_all(sim.accepted[-1])


async def test_no_audio_expires_the_session() -> None:
    async with OpenAILiveSimulator(keys={KEY}, idle_close_s=0.5) as sim:
        async with sdk(sim).live.connect() as conn:
            await conn.session.start(session={"model": "gpt-live-1"})
            events = await until(conn, "session.closed")
        assert events[-1].reason == "expired"
        assert sim.accepted[-1].close_code == 1000


async def test_faults_admission_error_and_drop(sim: OpenAILiveSimulator) -> None:
    sim.faults.admission_error = "insufficient_quota"
    async with sdk(sim).live.connect() as conn:
        error = (await until(conn, "error"))[-1]
        assert error.error.code == "insufficient_quota"
    sim.faults.admission_error = None
    async with sdk(sim).live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1"})
        await until(conn, "session.started")
        sim.drop_connections(0)
        with pytest.raises(websockets.ConnectionClosedError):
            await until(conn, "never")
    assert sim.accepted[-1].closed_reason is None  # no session.closed: not finalized
