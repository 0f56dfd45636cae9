"""The OpenAI Realtime engine, driven directly against the GA simulator (no gateway).

Real sockets, real espeak-ng speech, the simulator's records as the ground truth of what reached
"OpenAI".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from voxgate.config import Settings
from voxgate.engines.base import (
    AssistantSpeaking,
    AudioOut,
    EngineError,
    EngineUnavailable,
    HistoryTurn,
    Interrupted,
    ResponseDone,
    StartOptions,
    StatusChanged,
    Transcript,
    TurnDetectionOptions,
    UserSpeaking,
)
from voxgate.engines.openai.engine import OpenAIRealtimeEngine
from voxgate.engines.openai.rest import OpenAIRequestError, create_client_secret
from voxgate.testing.openai_sim import OpenAISimulator
from voxgate.testing.speech import silence, synthesize
from voxgate.turns import heard_prefix

KEY = "sk-engine-test-key-98765"
PHRASE = "what is the weather like today"
LONG_REPLY = (
    "Here is a rather long answer that keeps talking for quite a while so that there is "
    "plenty of time to interrupt it in the middle of a sentence."
)


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(keys={KEY}, pace=6.0, transcript=PHRASE) as s:
        yield s


@pytest.fixture
def engine_settings(
    make_settings: Callable[..., Settings], sim: OpenAISimulator
) -> Callable[..., Settings]:
    def factory(**kw: Any) -> Settings:
        base: dict[str, Any] = {
            "openai_api_key": KEY,
            "openai_url": sim.url,
            "openai_api_base": sim.api_base,
            "start_timeout_s": 10.0,
            "reconnect_attempts": 3,
            "reconnect_base_s": 0.05,
            "reconnect_max_s": 0.2,
            "upstream_ping_interval_s": 5.0,
            "openai_session_recycle_s": 0.0,
        }
        base.update(kw)
        return make_settings(**base)

    return factory


class Running:
    """A started engine plus everything it emitted (collected by a background task)."""

    def __init__(self, engine: OpenAIRealtimeEngine) -> None:
        self.engine = engine
        self.events: list[Any] = []
        self.ended = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for event in self.engine.events():
            self.events.append(event)
        self.ended.set()

    async def wait(self, pred: Callable[[Any], bool], timeout: float = 20.0, start: int = 0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[start:]:
                    if pred(event):
                        return event
                await asyncio.sleep(0.01)

    def pos(self, event: Any) -> int:
        """Index of this very event (events are dataclasses: equal is not the same)."""
        return next(i for i, e in enumerate(self.events) if e is event)

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    async def close(self) -> None:
        await self.engine.stop()
        await asyncio.wait_for(self._task, 5)


@pytest.fixture
async def run(engine_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Running] = []

    async def factory(options: StartOptions | None = None, **settings: Any) -> Running:
        engine = OpenAIRealtimeEngine.from_settings(engine_settings(**settings))
        running = Running(engine)
        started.append(running)
        await engine.start(options or StartOptions(instructions="Be brief."))
        return running

    yield factory
    for running in started:
        await running.close()
        assert running.ended.is_set()


def _done(status: str | None = None) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, ResponseDone) and (status is None or e.status == status)


def _final(role: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, Transcript) and e.role == role and e.final


def _items(sim: OpenAISimulator, conn: int = -1) -> list[tuple[str, str]]:
    """(role, text) of every `conversation.item.create` a connection received, in order."""
    out = []
    for event in sim.accepted[conn].received:
        if isinstance(event, dict) and event.get("type") == "conversation.item.create":
            item = event["item"]
            out.append((item["role"], item["content"][0]["text"]))
    return out


async def _speak(engine: OpenAIRealtimeEngine, text: str = PHRASE) -> None:
    pcm = silence(200, 24000) + synthesize(text, 24000) + silence(900, 24000)
    for i in range(0, len(pcm), 2400):  # 50 ms chunks, faster than real time
        await engine.send_audio(pcm[i : i + 2400])


async def test_spoken_turn_with_server_vad(run: Callable[..., Any], sim: OpenAISimulator) -> None:
    r = await run()
    assert r.engine.status == "connected"
    assert (r.engine.capabilities.input_rate, r.engine.capabilities.output_rate) == (24000, 24000)
    await _speak(r.engine)
    done = await r.wait(_done())
    assert done.status == "completed" and done.usage and done.usage["total_tokens"] > 0
    user = await r.wait(_final("user"))
    assistant = await r.wait(_final("assistant"))
    assert user.text == PHRASE
    assert assistant.text == f"You said: {PHRASE}."
    audio = b"".join(e.pcm16 for e in r.of(AudioOut))
    assert audio == synthesize(assistant.text, 24000)  # the 24 kHz speech, byte for byte
    assert [e.is_speaking for e in r.of(UserSpeaking)][:2] == [True, False]
    assert [e.is_speaking for e in r.of(AssistantSpeaking)] == [True, False]
    # What reached "OpenAI": a GA session.update, then raw appends.
    update = sim.accepted[-1].received[0]
    assert update["type"] == "session.update"
    session = update["session"]
    assert session["type"] == "realtime" and session["instructions"].startswith("Be brief.")
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["voice"] == "alloy"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert sim.accepted[-1].query["model"] == "gpt-realtime"
    assert sim.accepted[-1].headers["authorization"] == f"Bearer {KEY}"


async def test_manual_commit_and_typed_message_and_context(
    run: Callable[..., Any], sim: OpenAISimulator
) -> None:
    options = StartOptions(instructions="Be brief.", voice="marin",
                           turn_detection=TurnDetectionOptions(mode="manual"))  # fmt: skip
    r = await run(options)
    await _speak(r.engine)
    await asyncio.sleep(0.2)
    assert not r.of(ResponseDone)  # manual mode: nothing happens until commit
    await r.engine.commit()
    await r.wait(_done("completed"))
    n = len(r.events)
    await r.engine.send_context_update({"page": "checkout", "cart_total": 42})
    await r.engine.send_user_message("tell me a joke")
    await r.wait(_done("completed"), start=n)
    said = await r.wait(_final("assistant"), start=n)
    assert said.text == "You said: tell me a joke."
    rec = sim.accepted[-1]
    session = rec.received[0]["session"]
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["output"]["voice"] == "marin"
    types = rec.received_types()
    commit = types.index("input_audio_buffer.commit")
    assert types[commit + 1] == "response.create"
    system = [i for i in rec.items if i.get("role") == "system"]
    assert len(system) == 1
    assert json.loads(system[0]["content"][0]["text"].split(": ", 1)[1]) == {
        "page": "checkout", "cart_total": 42}  # fmt: skip
    assert not [e for e in rec.sent if e["type"] == "error"]


async def test_interrupt_truncates_to_what_was_played(
    run: Callable[..., Any], sim: OpenAISimulator
) -> None:
    sim.pace = 2.0
    sim.responder = lambda items: LONG_REPLY
    r = await run()
    await r.engine.send_user_message("talk for a while")
    await r.wait(lambda e: isinstance(e, Transcript) and e.role == "assistant" and len(e.text) > 30)
    await r.wait(lambda e: len(r.of(AudioOut)) >= 4)
    # The client says it played far more than we received: clamp to what was received.
    await r.engine.interrupt(10**6)
    cut = await r.wait(lambda e: isinstance(e, Interrupted))
    index = r.pos(cut)
    done = await r.wait(_done())
    assert done.status == "cancelled"
    received_ms = sum(len(e.pcm16) for e in r.events[:index] if isinstance(e, AudioOut)) // 48
    assert 0 < cut.played_ms <= received_ms + 1
    assert cut.heard_text and LONG_REPLY.startswith(cut.heard_text)
    assert not [e for e in r.events[index:] if isinstance(e, AudioOut)]  # no stale audio
    rec = sim.accepted[-1]
    truncs = [e for e in rec.received if e.get("type") == "conversation.item.truncate"]
    assert truncs == [{"type": "conversation.item.truncate", "item_id": cut.item_id,
                       "content_index": 0, "audio_end_ms": cut.played_ms}]  # fmt: skip
    assert "conversation.item.truncated" in rec.sent_types()
    assert "response.cancel" in rec.received_types()
    # Played nothing: cancel, but no truncate.
    n = len(r.events)
    await r.engine.send_user_message("again please")
    await r.wait(lambda e: isinstance(e, AudioOut), start=n)
    await r.engine.interrupt(0)
    second = await r.wait(lambda e: isinstance(e, Interrupted), start=n)
    assert second.played_ms == 0 and second.heard_text == ""
    await r.wait(_done("cancelled"), start=n)
    later = r.events[r.pos(second) :]
    assert not [e for e in later if isinstance(e, AudioOut)]
    assert len([e for e in rec.received if e.get("type") == "conversation.item.truncate"]) == 1
    assert not [e for e in rec.sent if e["type"] == "error"]


async def test_server_vad_barge_in_interrupts(
    run: Callable[..., Any], sim: OpenAISimulator
) -> None:
    sim.pace = 2.0
    sim.responder = lambda items: LONG_REPLY
    r = await run()
    await r.engine.send_user_message("talk for a while")
    await r.wait(lambda e: len(r.of(AudioOut)) >= 3)
    await _speak(r.engine, "stop")
    cut = await r.wait(lambda e: isinstance(e, Interrupted))
    index = r.pos(cut)
    assert any(isinstance(e, UserSpeaking) and e.is_speaking for e in r.events[: index + 1])
    cancelled = await r.wait(_done("cancelled"))
    assert not [e for e in r.events[index:] if isinstance(e, AudioOut) and e.item_id == cut.item_id]
    assert cut.played_ms > 0
    done = [e for e in sim.accepted[-1].sent if e["type"] == "response.done"]
    assert done[0]["response"]["id"] == cancelled.response_id
    assert done[0]["response"]["status_details"]["reason"] == "turn_detected"


async def test_invalid_or_missing_key_is_not_retryable_and_never_leaks(
    engine_settings: Callable[..., Settings],
) -> None:
    wrong = "sk-wrong-key-abcdef123456"
    attempts: list[bool] = []
    engine = OpenAIRealtimeEngine.from_settings(engine_settings(openai_api_key=wrong))
    engine.connect_observer = lambda ok, seconds: attempts.append(ok)
    with pytest.raises(EngineUnavailable) as info:
        await engine.start(StartOptions())
    assert "401" in info.value.message and "OPENAI_API_KEY" in info.value.message
    assert wrong not in info.value.message and wrong not in repr(info.value)
    assert info.value.retryable is False and info.value.upstream is True
    assert attempts == [False]
    await engine.stop()
    engine = OpenAIRealtimeEngine.from_settings(engine_settings(openai_api_key=None))
    with pytest.raises(EngineUnavailable) as info:
        await engine.start(StartOptions())
    assert info.value.retryable is False and "OPENAI_API_KEY" in info.value.message
    await engine.stop()


async def test_refused_handshake_is_retryable(
    engine_settings: Callable[..., Settings], sim: OpenAISimulator
) -> None:
    sim.faults.refuse_status = 503
    engine = OpenAIRealtimeEngine.from_settings(engine_settings())
    with pytest.raises(EngineUnavailable) as info:
        await engine.start(StartOptions())
    assert info.value.retryable is True and "503" in info.value.message
    await engine.stop()


async def test_history_is_replayed_on_start(run: Callable[..., Any], sim: OpenAISimulator) -> None:
    def remembers(items: list[dict[str, Any]]) -> str:
        texts = " ".join(str(p.get("text") or p.get("transcript") or "")
                         for i in items for p in i.get("content") or [])  # fmt: skip
        return "Your name is Ada." if "Ada" in texts else "I do not know your name."

    sim.responder = remembers
    history = [
        HistoryTurn("user", "My name is Ada."),
        HistoryTurn("assistant", "Nice to meet you."),
    ]
    r = await run(StartOptions(instructions="Be brief.", history=history))
    await r.engine.send_user_message("What is my name?")
    said = await r.wait(_final("assistant"))
    assert said.text == "Your name is Ada."
    assert _items(sim) == [("user", "My name is Ada."), ("assistant", "Nice to meet you."),
                           ("user", "What is my name?")]  # fmt: skip
    assert sim.accepted[-1].received_types()[0] == "session.update"


@pytest.mark.parametrize("close_code", [1011, 0], ids=["close-1011", "tcp-abort"])
async def test_upstream_drop_mid_response_reconnects_and_restores(
    run: Callable[..., Any], sim: OpenAISimulator, close_code: int
) -> None:
    r = await run()
    await r.engine.send_user_message("first question")
    await r.wait(_done("completed"))
    sim.faults.close_mid_response = close_code
    sim.faults.close_after_deltas = 2
    n = len(r.events)
    await r.engine.send_user_message("second question")
    failed = await r.wait(_done(), start=n)
    assert failed.status == "failed"
    await r.wait(lambda e: isinstance(e, StatusChanged) and e.status == "connected", start=n)
    statuses = [e.status for e in r.events[n:] if isinstance(e, StatusChanged)]
    assert statuses == ["reconnecting", "connected"]
    errors = [e for e in r.events[n:] if isinstance(e, EngineError)]
    assert [(e.code, e.fatal) for e in errors] == [("upstream_error", False)]
    assert len(sim.accepted) == 2
    assert _items(sim, -1) == [("user", "first question"),
                               ("assistant", "You said: first question."),
                               ("user", "second question")]  # fmt: skip
    assert sim.accepted[-1].received[0]["type"] == "session.update"
    m = len(r.events)
    await r.engine.send_user_message("third question")
    said = await r.wait(_final("assistant"), start=m)
    assert said.text == "You said: third question."
    await r.wait(_done("completed"), start=m)


async def test_every_reconnect_failing_is_fatal(
    run: Callable[..., Any], sim: OpenAISimulator
) -> None:
    r = await run()
    sim.faults.refuse_status = 503
    sim.faults.close_mid_response = 1011
    await r.engine.send_user_message("hello")
    fatal = await r.wait(lambda e: isinstance(e, EngineError) and e.fatal)
    assert fatal.code == "upstream_unavailable" and "OpenAI" in fatal.message
    await asyncio.wait_for(r.ended.wait(), 5)
    assert [c.rejected_status for c in sim.connections[1:]] == [503, 503, 503]


async def test_missed_pongs_trigger_reconnect(
    run: Callable[..., Any], sim: OpenAISimulator
) -> None:
    r = await run(upstream_ping_interval_s=0.3, start_timeout_s=3.0)
    sim.faults.blackhole = True
    lost = await r.wait(lambda e: isinstance(e, StatusChanged) and e.status == "reconnecting",
                        timeout=10)  # fmt: skip
    sim.faults.blackhole = False
    start = next(i for i, e in enumerate(r.events) if e is lost)
    await r.wait(lambda e: isinstance(e, StatusChanged) and e.status == "connected",
                 timeout=15, start=start)  # fmt: skip
    assert len(sim.accepted) >= 2
    n = len(r.events)
    await r.engine.send_user_message("are you there")
    assert (await r.wait(_final("assistant"), start=n)).text == "You said: are you there."


async def test_session_expiry_and_recycle_are_transparent(
    run: Callable[..., Any], sim: OpenAISimulator
) -> None:
    sim.faults.session_max_s = 0.5
    r = await run(openai_session_recycle_s=1.5)
    await r.engine.send_user_message("remember the colour blue")
    await r.wait(_done("completed"))
    sim.faults.session_max_s = None
    # Expiry (0.5 s) and then a recycle of the replacement session (1.5 s after it opened).
    async with asyncio.timeout(15):
        while len(sim.accepted) < 3:
            await asyncio.sleep(0.05)
    assert sim.accepted[0].close_code == 1001
    assert any(e.get("error", {}).get("code") == "session_expired" for e in sim.accepted[0].sent)
    assert [e.status for e in r.of(StatusChanged)] == ["connecting", "connected"]
    assert not r.of(EngineError)
    # The third connection is counted when it opens; the restored context follows it.
    async with asyncio.timeout(10):
        while len(_items(sim, 2)) < 2:
            await asyncio.sleep(0.05)
    assert _items(sim, 2)[:2] == [("user", "remember the colour blue"),
                                  ("assistant", "You said: remember the colour blue.")]  # fmt: skip
    n = len(r.events)
    await r.engine.send_user_message("still there")
    assert (await r.wait(_final("assistant"), start=n)).text == "You said: still there."


def test_heard_prefix_cuts_at_a_word_boundary() -> None:
    text = "one two three four"
    assert heard_prefix(text, 0, 1000) == ""
    assert heard_prefix(text, 1000, 1000) == text
    assert heard_prefix(text, 500, 1000) == "one two"
    assert heard_prefix(text, 400, 1000) == "one two"
    assert heard_prefix(text, 100, 1000) == ""


async def test_create_client_secret(
    engine_settings: Callable[..., Settings], sim: OpenAISimulator
) -> None:
    body = {"expires_after": {"anchor": "created_at", "seconds": 60},
            "session": {"type": "realtime", "model": "gpt-realtime"}}  # fmt: skip
    secret = await create_client_secret(engine_settings(), body)
    assert secret["value"].startswith("ek_") and secret["session"]["type"] == "realtime"
    wrong = "sk-not-a-valid-key-4242"
    with pytest.raises(OpenAIRequestError) as info:
        await create_client_secret(engine_settings(openai_api_key=wrong), body)
    assert info.value.status == 401 and "401" in info.value.message
    assert wrong not in str(info.value)


async def test_upstream_error_events(run: Callable[..., Any], sim: OpenAISimulator) -> None:
    r = await run()
    sim.inject_error("response_cancel_not_active", "Nothing to cancel.")  # harmless: swallowed
    sim.inject_error("rate_limit_exceeded", "Slow down.", type_="invalid_request_error")
    first = await r.wait(lambda e: isinstance(e, EngineError))
    assert (first.code, first.fatal) == ("upstream_error", False)
    assert "Slow down." in first.message and "rate_limit_exceeded" in first.message
    sim.inject_error("insufficient_quota", "You exceeded your current quota.")
    fatal = await r.wait(lambda e: isinstance(e, EngineError) and e.fatal)
    assert fatal.code == "upstream_unavailable" and "quota" in fatal.message
    await asyncio.wait_for(r.ended.wait(), 5)
    assert len(r.of(EngineError)) == 2
    assert len(sim.connections) == 1  # never retried
