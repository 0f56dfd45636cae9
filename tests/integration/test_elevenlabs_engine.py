"""The ElevenLabs engine, driven directly against the shipped simulator (no gateway).

Real sockets on ephemeral ports, real espeak-ng speech; the simulator's records are the ground
truth of what reached "ElevenLabs", and its synthesiser tells us exactly what audio it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from voxgate.audio import pcm16_to_ulaw, ulaw_to_pcm16
from voxgate.config import Settings
from voxgate.engines.base import (
    AssistantSpeaking,
    AudioOut,
    EngineError,
    EngineEvent,
    EngineUnavailable,
    HistoryTurn,
    Interrupted,
    ResponseDone,
    StartOptions,
    StatusChanged,
    ToolCall,
    Transcript,
)
from voxgate.engines.elevenlabs import ElevenLabsConfig, ElevenLabsEngine, fetch_signed_url
from voxgate.testing.elevenlabs_sim import (
    DEFAULT_CLIENT_EVENTS,
    MALFORMED_MESSAGES,
    ElevenLabsSim,
    SimAgent,
    SimFault,
)
from voxgate.testing.speech import silence, synthesize

KEY = "xi-test-key-5f3a9c"
AGENT = "agent_test"
PHRASE = "what is the weather like today"
LONG_REPLY = (
    "Here is a rather long answer that keeps talking for quite a while so that there is "
    "plenty of time to interrupt it somewhere in the middle of a sentence."
)


def _reply(text: str) -> str:
    return LONG_REPLY if "long" in text.lower() else f"You said: {text}."


class Recorder:
    """Consumes `engine.events()` in the background, so tests can wait for conditions."""

    def __init__(self, engine: ElevenLabsEngine) -> None:
        self.events: list[EngineEvent] = []
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(engine))

    async def _run(self, engine: ElevenLabsEngine) -> None:
        async for event in engine.events():
            self.events.append(event)
            self._changed.set()
        self.ended.set()
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                self._changed.clear()
                # Also poll: some conditions read the engine or the simulator, not events.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def done(self, status: str | None = None) -> list[ResponseDone]:
        return [e for e in self.of(ResponseDone) if status is None or e.status == status]

    def final(self, role: str) -> list[Transcript]:
        return [e for e in self.of(Transcript) if e.role == role and e.final]

    def audio(self, item_id: str | None = None) -> bytes:
        return b"".join(
            e.pcm16 for e in self.of(AudioOut) if item_id is None or e.item_id == item_id
        )

    async def close(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


@pytest.fixture
def sim_options() -> dict[str, Any]:
    """Tests tweak these before the `sim` fixture starts the simulator."""
    return {}


@pytest.fixture
async def sim(sim_options: dict[str, Any]) -> AsyncIterator[ElevenLabsSim]:
    options: dict[str, Any] = {
        "api_key": KEY,
        "agents": [SimAgent(agent_id=AGENT)],
        "pace": 6.0,
        "ping_interval_s": 60.0,
        "reply": _reply,
    }
    options.update(sim_options)
    async with ElevenLabsSim(**options) as s:
        yield s


@pytest.fixture
def settings(make_settings: Callable[..., Settings], sim: ElevenLabsSim) -> Callable[..., Settings]:
    def factory(**kw: Any) -> Settings:
        base: dict[str, Any] = {
            "elevenlabs_api_key": KEY,
            "elevenlabs_agent_id": AGENT,
            "elevenlabs_url": sim.ws_url,
            "elevenlabs_api_base": sim.api_base,
            "start_timeout_s": 10.0,
        }
        base.update(kw)
        return make_settings(**base)

    return factory


@pytest.fixture
async def started(
    settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    """`engine, rec = await started(options?, **settings)`; stopped at teardown."""
    live: list[tuple[ElevenLabsEngine, Recorder]] = []

    async def start(
        options: StartOptions | None = None, **kw: Any
    ) -> tuple[ElevenLabsEngine, Recorder]:
        engine = ElevenLabsEngine.from_settings(settings(**kw))
        engine.response_idle_s = 0.4
        rec = Recorder(engine)
        live.append((engine, rec))
        await engine.start(options or StartOptions())
        return engine, rec

    yield start
    for engine, rec in live:
        await asyncio.wait_for(engine.stop(), 10)
        await asyncio.wait_for(rec.ended.wait(), 10)


async def speak(engine: ElevenLabsEngine, text: str, trailing_ms: int = 700) -> None:
    """Send espeak-ng speech in 20 ms chunks at the engine's input rate (faster than real time:
    the simulator's VAD runs in audio time)."""
    rate = engine.capabilities.input_rate
    pcm = synthesize(text, rate) + silence(trailing_ms, rate)
    step = rate // 50 * 2
    for i in range(0, len(pcm), step):
        await engine.send_audio(pcm[i : i + step])


# --- the happy paths ----------------------------------------------------------------------------


async def test_spoken_turn(started: Callable[..., Any], sim: ElevenLabsSim) -> None:
    sim.transcripts.append(PHRASE)
    engine, rec = await started()
    assert engine.status == "connected"
    assert (engine.capabilities.input_rate, engine.capabilities.output_rate) == (16000, 16000)
    await speak(engine, PHRASE)
    done = await rec.wait_for(lambda: rec.done("completed"))
    item = done[0].response_id
    reply = f"You said: {PHRASE}."

    assert [t.text for t in rec.final("user")] == [PHRASE]
    assert [t.text for t in rec.final("assistant")] == [reply]
    # Exactly the simulator's speech arrived, at the metadata's rate.
    assert rec.audio(item) == await sim.synthesize(reply, 16000)
    # Order: speaking on, text shown as the audio starts, audio, speaking off, final, done.
    kinds = [
        (type(e).__name__, getattr(e, "is_speaking", getattr(e, "final", None)))
        for e in rec.events
        if isinstance(e, AssistantSpeaking | Transcript | AudioOut | ResponseDone)
        and getattr(e, "role", "assistant") == "assistant"
    ]
    first_audio = kinds.index(("AudioOut", None))
    assert kinds[first_audio - 2 : first_audio] == [
        ("AssistantSpeaking", True),
        ("Transcript", False),
    ]
    assert kinds[-3:] == [
        ("AssistantSpeaking", False),
        ("Transcript", True),
        ("ResponseDone", None),
    ]
    conv = sim.conversations[-1]
    assert conv.query["conversation_signature"]  # a signed URL was used
    assert len(conv.audio_in) > 16000  # the user audio reached the simulator


async def test_typed_message_context_update_and_history(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    history = [HistoryTurn("user", "my name is Ada"), HistoryTurn("assistant", "Hello Ada.")]
    engine, rec = await started(StartOptions(history=history))
    await engine.send_context_update({"page": "checkout", "items": 3})
    await engine.send_user_message("hello there")
    await rec.wait_for(lambda: rec.done("completed"))
    assert [t.text for t in rec.final("assistant")] == ["You said: hello there."]
    conv = sim.conversations[-1]
    assert conv.user_messages == ["hello there"]
    resumed, update = conv.contextual_updates
    assert "user: my name is Ada" in resumed and "assistant: Hello Ada." in resumed
    assert json.loads(update) == {"page": "checkout", "items": 3}


async def test_overrides_and_first_message(started: Callable[..., Any], sim: ElevenLabsSim) -> None:
    options = StartOptions(
        instructions="You are a pirate.",
        personality={"humor": 90},
        voice="voice_123",
        metadata={"firstMessage": "Ahoy there."},
    )
    engine, rec = await started(options)
    await rec.wait_for(lambda: rec.done("completed"))
    override = sim.conversations[-1].init["conversation_config_override"]
    assert override == {
        "agent": {"prompt": {"prompt": options.system_prompt()}, "first_message": "Ahoy there."},
        "tts": {"voice_id": "voice_123"},
    }
    assert [t.text for t in rec.final("assistant")] == ["Ahoy there."]


@pytest.mark.parametrize(
    "sim_options", [{"agents": [SimAgent(agent_id=AGENT, allowed_overrides=frozenset())]}]
)
async def test_override_not_allowed_falls_back_to_agent_settings(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started(StartOptions(voice="voice_123"))
    assert engine.status == "connected"
    warning = await rec.wait_for(lambda: rec.of(EngineError))
    assert not warning[0].fatal and "tts.voice_id" in warning[0].message
    first, second = sim.conversations
    assert first.close_code == 1008
    assert second.init["conversation_config_override"] == {}


@pytest.mark.parametrize(
    "sim_options",
    [{"agents": [SimAgent(agent_id=AGENT, send_response_complete=True)]}],
)
async def test_agent_response_complete_ends_the_turn(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started()
    engine.response_idle_s = 600.0  # only the explicit completion event can end this turn
    await engine.send_user_message("hi")
    await rec.wait_for(lambda: rec.done("completed"))
    assert [t.text for t in rec.final("assistant")] == ["You said: hi."]
    assert not engine.is_speaking


# --- interruptions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sim_options", [{"pace": 1.0, "fault": SimFault(stale_audio_after_interrupt=3)}]
)
async def test_server_interruption_drops_stale_audio_and_takes_the_correction(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started()
    await engine.send_user_message("please give a long answer")
    await rec.wait_for(lambda: len(rec.of(AudioOut)) >= 6)
    item = rec.of(AudioOut)[0].item_id
    sim.transcripts.append("stop")
    await speak(engine, "stop please")  # a barge-in: the simulator's VAD hears it

    interrupted = await rec.wait_for(lambda: rec.of(Interrupted))
    cancelled = await rec.wait_for(lambda: rec.done("cancelled"))
    conv = sim.conversations[-1]
    assert interrupted[0].item_id == item == cancelled[0].response_id
    # The stale in-flight chunks (event_id <= the interruption's) were dropped, not played.
    assert engine.dropped_stale_audio == 3
    received = rec.audio(item)
    stale_index = rec.events.index(interrupted[0])
    assert not [
        e for e in rec.events[stale_index:] if isinstance(e, AudioOut) and e.item_id == item
    ]
    assert interrupted[0].played_ms == pytest.approx(len(received) / 32, abs=1)
    # The provider's correction is the final text of the interrupted turn.
    original, corrected = conv.corrections[0]
    assert original == LONG_REPLY and corrected and corrected != LONG_REPLY
    final = [t for t in rec.final("assistant") if t.item_id == item]
    assert [t.text for t in final] == [corrected]
    assert interrupted[0].heard_text == corrected  # what the session stores as heard
    # The conversation goes on: the barge-in gets its own answer.
    await rec.wait_for(lambda: rec.done("completed"))
    assert rec.final("assistant")[-1].text == "You said: stop."


@pytest.mark.parametrize(
    "sim_options",
    [
        {
            "pace": 2.0,
            "agents": [
                SimAgent(
                    agent_id=AGENT,
                    client_events=DEFAULT_CLIENT_EVENTS,  # corrections not enabled on the agent
                )
            ],
        }
    ],
)
async def test_server_interruption_without_correction_estimates_heard_text(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started()
    await engine.send_user_message("please give a long answer")
    await rec.wait_for(lambda: len(rec.of(AudioOut)) >= 12)
    sim.transcripts.append("stop")
    await speak(engine, "stop please")
    (interrupted,) = await rec.wait_for(lambda: rec.of(Interrupted))
    await rec.wait_for(lambda: rec.done("cancelled"))
    assert not sim.conversations[-1].sent_of_type("agent_response_correction")
    heard = interrupted.heard_text
    assert heard and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY)
    assert LONG_REPLY[len(heard)] in " ,."  # cut at a word boundary
    assert rec.final("assistant")[0].text == heard


@pytest.mark.parametrize("sim_options", [{"pace": 2.0}])
async def test_client_interrupt_drops_the_rest_of_the_turn(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started()
    await engine.send_user_message("a long answer please")
    await rec.wait_for(lambda: len(rec.of(AudioOut)) >= 16)
    item = rec.of(AudioOut)[0].item_id
    await engine.interrupt(played_ms=1500)
    await rec.wait_for(lambda: rec.done())
    interrupted = rec.of(Interrupted)
    assert [(i.item_id, i.played_ms) for i in interrupted] == [(item, 1500)]
    heard = interrupted[0].heard_text
    assert heard and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY) / 2
    assert not engine.is_speaking
    assert [t.text for t in rec.final("assistant")] == [heard]
    assert [d.status for d in rec.done()] == ["cancelled"]
    count = len(rec.of(AudioOut))
    # The simulator keeps streaming that turn (user_activity does not stop it): dropped here.
    conv = sim.conversations[-1]
    await rec.wait_for(lambda: conv.user_activity == 1 and engine.dropped_stale_audio >= 3)
    assert len(rec.of(AudioOut)) == count
    # The next turn is heard again.
    await engine.send_user_message("hi")
    await rec.wait_for(lambda: rec.done("completed"))
    assert rec.final("assistant")[-1].text == "You said: hi."


# --- ping, tools --------------------------------------------------------------------------------


@pytest.mark.parametrize("sim_options", [{"ping_interval_s": 0.15}])
async def test_ping_is_answered_with_pong(started: Callable[..., Any], sim: ElevenLabsSim) -> None:
    engine, rec = await started()
    conv = sim.conversations[-1]
    await rec.wait_for(lambda: len(conv.pongs) >= 3 and engine.last_ping_ms is not None)
    pings = [m["ping_event"]["event_id"] for m in conv.sent_of_type("ping")]
    assert [p["event_id"] for p in conv.pongs] == pings[: len(conv.pongs)]
    assert engine.last_ping_ms is not None and engine.last_ping_ms >= 1


@pytest.mark.parametrize(
    "sim_options",
    [
        {
            "agents": [
                SimAgent(
                    agent_id=AGENT, tool_triggers={"weather": ("get_weather", {"city": "Paris"})}
                )
            ]
        }
    ],
)
async def test_client_tool_call_becomes_a_tool_call_and_its_result_reaches_the_agent(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started()
    await engine.send_user_message("what is the weather in Paris")
    call = await rec.wait_for(lambda: next((e for e in rec.events if isinstance(e, ToolCall)), None))
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    await engine.send_tool_result(call.call_id, '{"sky":"sunny"}')
    await rec.wait_for(lambda: rec.done("completed"))
    conv = sim.conversations[-1]
    (result,) = conv.tool_results
    assert result["tool_call_id"] == call.call_id
    assert result["is_error"] is False and result["result"] == '{"sky":"sunny"}'
    assert rec.final("assistant")[-1].text == 'The get_weather tool says: {"sky":"sunny"}'


# --- audio formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sim_options", "rates"),
    [
        ({"agents": [SimAgent(agent_id=AGENT, output_format="pcm_44100")]}, (16000, 44100)),
        (
            {
                "agents": [
                    SimAgent(agent_id=AGENT, input_format="ulaw_8000", output_format="ulaw_8000")
                ]
            },
            (8000, 8000),
        ),
    ],
    ids=["pcm_44100", "ulaw_8000"],
)
async def test_agent_audio_formats(
    started: Callable[..., Any], sim: ElevenLabsSim, rates: tuple[int, int]
) -> None:
    sim.transcripts.append(PHRASE)
    engine, rec = await started()
    assert (engine.capabilities.input_rate, engine.capabilities.output_rate) == rates
    await speak(engine, PHRASE)
    done = await rec.wait_for(lambda: rec.done("completed"))
    reply = f"You said: {PHRASE}."
    expected = await sim.synthesize(reply, rates[1])
    agent = sim.conversations[-1].agent
    if agent.output_format == "ulaw_8000":
        expected = ulaw_to_pcm16(pcm16_to_ulaw(expected))
    assert rec.audio(done[0].response_id) == expected
    assert [t.text for t in rec.final("user")] == [PHRASE]
    if agent.input_format == "ulaw_8000":
        sent = synthesize(PHRASE, 8000) + silence(700, 8000)
        assert bytes(sim.conversations[-1].audio_in) == ulaw_to_pcm16(pcm16_to_ulaw(sent))


@pytest.mark.parametrize("sim_options", [{"turn_timeout_s": 60.0}])
async def test_commit_ends_the_user_turn(started: Callable[..., Any], sim: ElevenLabsSim) -> None:
    sim.transcripts.append(PHRASE)
    engine, rec = await started()
    await speak(engine, PHRASE, trailing_ms=0)  # no trailing silence: the turn stays open
    await asyncio.sleep(0.3)
    assert not sim.conversations[-1].user_transcripts
    await engine.commit()
    await rec.wait_for(lambda: rec.done("completed"))
    assert [t.text for t in rec.final("user")] == [PHRASE]


# --- bad input and faults -----------------------------------------------------------------------


async def test_invalid_key_is_a_clear_unretryable_error(
    settings: Callable[..., Settings], sim: ElevenLabsSim
) -> None:
    bad = "xi-wrong-key-0000"
    engine = ElevenLabsEngine.from_settings(settings(elevenlabs_api_key=bad))
    outcomes: list[bool] = []
    engine.connect_observer = lambda ok, seconds: outcomes.append(ok)
    with pytest.raises(EngineUnavailable) as info:
        await engine.start(StartOptions())
    err = info.value
    assert err.upstream and not err.retryable
    assert "ELEVENLABS_API_KEY" in err.message and "401" in err.message
    assert bad not in err.message and KEY not in err.message
    assert outcomes == [False]
    assert sim.rest_calls == [("/v1/convai/conversation/get-signed-url", AGENT, 401)]
    await engine.stop()


async def test_unknown_agent(settings: Callable[..., Settings], sim: ElevenLabsSim) -> None:
    with pytest.raises(EngineUnavailable) as info:
        await fetch_signed_url(
            ElevenLabsConfig.from_settings(settings(elevenlabs_agent_id="agent_nope"))
        )
    assert (
        "agent_nope" in info.value.message and "VOXGATE_ELEVENLABS_AGENT_ID" in info.value.message
    )
    assert not info.value.retryable
    # A public connect to an unknown agent fails at the socket with the provider's sentence.
    engine = ElevenLabsEngine.from_settings(
        settings(elevenlabs_api_key=None, elevenlabs_agent_id="agent_nope")
    )
    with pytest.raises(EngineUnavailable) as info:
        await engine.start(StartOptions())
    assert "agent_nope" in info.value.message and "1008" in info.value.message
    await engine.stop()


async def test_no_agent_configured(make_settings: Callable[..., Settings]) -> None:
    engine = ElevenLabsEngine.from_settings(make_settings(elevenlabs_api_key="k"))
    with pytest.raises(EngineUnavailable) as info:
        await engine.start(StartOptions())
    assert "VOXGATE_ELEVENLABS_AGENT_ID" in info.value.message and not info.value.retryable


@pytest.mark.parametrize(
    "sim_options",
    [{"agents": [SimAgent(agent_id=AGENT), SimAgent(agent_id="agent_pub", requires_auth=False)]}],
)
async def test_public_agent_needs_no_key_private_agent_does(
    started: Callable[..., Any], settings: Callable[..., Settings], sim: ElevenLabsSim
) -> None:
    engine, rec = await started(elevenlabs_api_key=None, elevenlabs_agent_id="agent_pub")
    assert engine.status == "connected" and sim.rest_calls == []
    assert "conversation_signature" not in sim.conversations[-1].query
    private = ElevenLabsEngine.from_settings(settings(elevenlabs_api_key=None))
    with pytest.raises(EngineUnavailable) as info:
        await private.start(StartOptions())
    assert "signed URL" in info.value.message
    await private.stop()


@pytest.mark.parametrize("code", [1011, 1002, 1000])
async def test_socket_closing_mid_response(
    started: Callable[..., Any], sim: ElevenLabsSim, code: int
) -> None:
    sim.fault.close_mid_response = code
    engine, rec = await started()
    await engine.send_user_message("hi")
    await asyncio.wait_for(rec.ended.wait(), 10)  # events() ends: no hang
    assert not engine.is_speaking
    statuses = rec.of(StatusChanged)
    assert engine.status == "disconnected"
    if code == 1000:
        assert statuses[-1].status == "disconnected"
        assert not rec.of(EngineError)
        assert "ended the conversation" in (statuses[-1].reason or "")
        assert [d.status for d in rec.done()] == ["completed"]
    else:
        (error,) = rec.of(EngineError)
        assert error.fatal and str(code) in error.message
        assert statuses[-1].status != "disconnected"  # the error carries the ending
        assert "Simulated failure in the middle of a response" in error.message
        assert error.code == ("upstream_error" if code == 1002 else "upstream_unavailable")
        assert [d.status for d in rec.done()] == ["failed"]


async def test_dropped_connection_reconnects_with_history(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started(reconnect_base_s=0.05, reconnect_attempts=3)
    await engine.send_user_message("hi")
    await rec.wait_for(lambda: rec.done("completed"))
    sim.fault.close_mid_response = 1012  # "service restart": a transport drop, not a decision
    await engine.send_user_message("again")
    await rec.wait_for(lambda: [s for s in rec.of(StatusChanged) if s.status == "reconnecting"])
    sim.fault.close_mid_response = None
    await rec.wait_for(
        lambda: rec.of(StatusChanged)[-1].status == "connected" and len(sim.conversations) == 2
    )
    assert [d.status for d in rec.done()] == ["completed", "failed"]
    new = sim.conversations[-1]
    await rec.wait_for(lambda: new.contextual_updates)
    briefing = new.contextual_updates[0]
    assert "user: hi\nassistant: You said: hi.\nuser: again" in briefing
    await engine.send_user_message("third")
    await rec.wait_for(lambda: len(rec.done("completed")) == 2)
    assert rec.final("assistant")[-1].text == "You said: third."
    assert not rec.of(EngineError)


async def test_reconnect_gives_up_with_a_fatal_error(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started(reconnect_base_s=0.05, reconnect_attempts=2)
    sim.fault.close_mid_response = 1012
    sim.fault.refuse = True  # every new socket is refused
    await engine.send_user_message("hi")
    await asyncio.wait_for(rec.ended.wait(), 15)
    (error,) = rec.of(EngineError)
    assert error.fatal and error.code == "upstream_unavailable"
    assert "could not be restored" in error.message and "1012" in error.message
    # The fatal error ends the stream on its own (a `disconnected` status before it would
    # make the gateway close normally and hide the reason).
    assert [s.status for s in rec.of(StatusChanged)][-1] == "reconnecting"
    assert engine.status == "disconnected"


@pytest.mark.parametrize("sim_options", [{"fault": SimFault(malformed=True)}])
async def test_malformed_server_messages_are_skipped(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started()
    await engine.send_user_message("hi")
    await rec.wait_for(lambda: rec.done("completed"))
    assert engine.skipped_messages == len(MALFORMED_MESSAGES)
    assert engine.status == "connected" and not rec.of(EngineError)
    assert [t.text for t in rec.final("assistant")] == ["You said: hi."]
    # Still alive for the next turn (each turn brings another malformed burst).
    await engine.send_user_message("again")
    await rec.wait_for(lambda: len(rec.done("completed")) == 2)
    assert engine.skipped_messages == 2 * len(MALFORMED_MESSAGES)


async def test_stop_is_idempotent_and_ends_events(
    started: Callable[..., Any], sim: ElevenLabsSim
) -> None:
    engine, rec = await started()
    await engine.stop()
    await engine.stop()
    await asyncio.wait_for(rec.ended.wait(), 5)
    assert rec.of(StatusChanged)[-1].status == "disconnected"
    conv = sim.conversations[-1]
    await asyncio.wait_for(conv.ended.wait(), 5)
    assert conv.close_code == 1000
