"""The offline cascade engine, driven through the public seam with real espeak-ng speech, real
pocketsphinx, real webrtcvad and a real local OpenAI-compatible server (`LLMSimulator`).

These are the fallback parts (what runs where the `local` extra is not installed), pinned here
so the engine's turn logic is tested with exact, grammar-constrained transcripts; the default
local models (Silero, Whisper, Piper) are tested in `test_cascade_local.py`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from voxgate.audio import StreamResampler, chunks, duration_ms, parse_wav_bytes, rms_dbfs
from voxgate.config import Settings
from voxgate.engines import create_engine
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
    Transcript,
    TurnDetectionOptions,
    UserSpeaking,
)
from voxgate.engines.cascade.engine import CascadeEngine
from voxgate.engines.cascade.tts import EspeakSynthesizer
from voxgate.testing.llm_sim import LLMSimulator
from voxgate.testing.speech import silence, synthesize

IN_RATE = 16000
PHRASES = ["hello can you hear me", "what time is it"]
WAIT_S = 20.0

#: Short names for the event types, so the expected event orders below read as sequences.
KINDS: dict[type, str] = {
    StatusChanged: "status",
    AssistantSpeaking: "speaking",
    UserSpeaking: "user_speaking",
    Transcript: "transcript",
    AudioOut: "audio",
    ResponseDone: "response_done",
    Interrupted: "interrupted",
    EngineError: "error",
}


def kind(event: EngineEvent) -> str:
    return KINDS[type(event)]


@pytest.fixture
def grammar(tmp_path: Path) -> str:
    path = tmp_path / "phrases.jsgf"
    path.write_text(
        "#JSGF V1.0;\ngrammar phrases;\npublic <phrase> = " + " | ".join(PHRASES) + ";\n"
    )
    return str(path)


class Recorder:
    """Reads an engine's events in the background; tests wait for conditions on them."""

    def __init__(self, engine: CascadeEngine) -> None:
        self.engine = engine
        self.events: list[EngineEvent] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.engine.events():
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[EngineEvent], bool], *, after: int = 0, timeout: float = WAIT_S
    ) -> EngineEvent:
        """The first event at index >= `after` that matches."""

        def find() -> EngineEvent | None:
            return next((e for e in self.events[after:] if predicate(e)), None)

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: find() is not None)
        found = find()
        assert found is not None
        return found

    def kinds(self, start: int = 0) -> list[str]:
        """Event kinds, without the status changes of start-up."""
        return [kind(e) for e in self.events[start:] if kind(e) != "status"]

    async def close(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


def done(status: str | None = None) -> Callable[[EngineEvent], bool]:
    return lambda e: isinstance(e, ResponseDone) and (status is None or e.status == status)


def final(role: str) -> Callable[[EngineEvent], bool]:
    return lambda e: isinstance(e, Transcript) and e.role == role and e.final


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings from explicit values only: no developer environment, no `.env`."""
    for name in list(os.environ):
        if name.startswith(("VOXGATE_", "OPENAI_", "ELEVENLABS_")):
            monkeypatch.delenv(name, raising=False)

    def factory(**overrides: Any) -> Settings:
        return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]

    return factory


@pytest.fixture
async def engine_factory(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[CascadeEngine, Recorder]] = []

    async def factory(
        options: StartOptions | None = None, **overrides: Any
    ) -> tuple[CascadeEngine, Recorder]:
        for part, fallback in (("vad", "webrtc"), ("stt", "pocketsphinx"), ("tts", "espeak")):
            overrides.setdefault(part, fallback)
        engine = create_engine("cascade", make_settings(**overrides))
        assert isinstance(engine, CascadeEngine)
        await engine.start(options or StartOptions())
        rec = Recorder(engine)
        made.append((engine, rec))
        return engine, rec

    yield factory
    for engine, rec in made:
        await engine.stop()
        await rec.close()


async def speak(
    engine: CascadeEngine, pcm: bytes, rate: int = IN_RATE, pace_s: float = 0.002
) -> None:
    """Send audio in 20 ms frames, yielding between frames (faster than real time) so the
    engine's background work (partial transcripts) interleaves as it would live."""
    for frame in chunks(pcm, rate, 20):
        await engine.send_audio(frame)
        await asyncio.sleep(pace_s)


def utterance(text: str, rate: int = IN_RATE, tail_ms: int = 700) -> bytes:
    return silence(300, rate) + synthesize(text, rate) + silence(tail_ms, rate)


def audio_of(rec: Recorder, item_id: str) -> bytes:
    return b"".join(e.pcm16 for e in rec.events if isinstance(e, AudioOut) and e.item_id == item_id)


# --- spoken turns ----------------------------------------------------------------------------


async def test_spoken_turn_gives_exact_transcript_and_spoken_echo(engine_factory, grammar):
    engine, rec = await engine_factory(stt_grammar=grammar)
    assert engine.capabilities.input_rate == IN_RATE
    out_rate = engine.capabilities.output_rate
    await speak(engine, utterance("hello can you hear me"))
    user = await rec.wait_for(final("user"))
    assert isinstance(user, Transcript) and user.text == "hello can you hear me"
    assert user.item_id.startswith("item_")
    resp = await rec.wait_for(done())
    assert isinstance(resp, ResponseDone) and resp.status == "completed"
    assert resp.response_id.startswith("resp_")

    kinds = rec.kinds()
    # Same event order as the OpenAI engine.
    assert kinds[0] == "user_speaking"
    assert kinds.index("user_speaking") < kinds.index("transcript")
    first_speaking = kinds.index("speaking")
    assert first_speaking < kinds.index("audio") < len(kinds) - 1
    assert kinds[-2:] == ["speaking", "response_done"]
    assert [e.is_speaking for e in rec.events if kind(e) == "user_speaking"] == [True, False]
    # Partial user transcripts came first, growing towards the final.
    partials = [
        e for e in rec.events if isinstance(e, Transcript) and e.role == "user" and not e.final
    ]
    assert partials, "no partial user transcript"
    assert all("hello can you hear me".startswith(p.text) for p in partials)

    reply = [e for e in rec.events if isinstance(e, Transcript) and e.role == "assistant"]
    assert reply[-1].final and reply[-1].text == "Echo: you said hello can you hear me."
    assert "".join(e.delta for e in reply) == reply[-1].text
    item_id = reply[-1].item_id
    pcm = audio_of(rec, item_id)
    chunk_ms = [duration_ms(e.pcm16, out_rate) for e in rec.events if isinstance(e, AudioOut)]
    assert max(chunk_ms) <= 100
    assert rms_dbfs(pcm) > -35.0, "reply audio is silent"
    # Right rate: exactly as long as espeak-ng's own rendering of the reply, resampled.
    expected = synthesize(reply[-1].text, out_rate)
    assert abs(len(pcm) - len(expected)) / len(expected) < 0.02
    assert engine.history == [
        {"role": "user", "content": "hello can you hear me"},
        {"role": "assistant", "content": "Echo: you said hello can you hear me."},
    ]


async def test_audio_resampled_from_48k_is_recognised(engine_factory, grammar):
    """Clients at another rate are resampled (by the session with StreamResampler) to the
    engine's 16 kHz: the recogniser gets clean speech, not garbled audio."""
    engine, rec = await engine_factory(stt_grammar=grammar)
    resampler = StreamResampler(48000, engine.capabilities.input_rate)
    for frame in chunks(utterance("what time is it", 48000), 48000, 20):
        await engine.send_audio(resampler.process(frame))
        await asyncio.sleep(0.002)
    user = await rec.wait_for(final("user"))
    assert isinstance(user, Transcript) and user.text == "what time is it"


async def test_silence_and_hum_make_no_turn(engine_factory):
    import numpy as np

    engine, rec = await engine_factory()
    t = np.arange(IN_RATE * 2) / IN_RATE
    hum = (np.sin(2 * np.pi * 50 * t) * 40).astype("<i2").tobytes()  # faint mains hum
    await speak(engine, silence(1500, IN_RATE) + hum + silence(500, IN_RATE), pace_s=0)
    await asyncio.sleep(0.5)
    assert rec.kinds() == [], rec.events


async def test_manual_mode_commit_ends_the_turn(engine_factory, grammar):
    options = StartOptions(turn_detection=TurnDetectionOptions(mode="manual"))
    engine, rec = await engine_factory(options, stt_grammar=grammar)
    # No trailing silence: only the commit can end this turn.
    await speak(engine, silence(200, IN_RATE) + synthesize("what time is it", IN_RATE))
    await asyncio.sleep(0.3)
    assert not any(kind(e) == "transcript" and e.final for e in rec.events)
    await engine.commit()
    user = await rec.wait_for(final("user"))
    assert isinstance(user, Transcript) and user.text == "what time is it"
    await rec.wait_for(done("completed"))
    assert "user_speaking" not in rec.kinds()  # no VAD events in manual mode (as OpenAI)
    # Committing with nothing said is a clear, non-fatal error.
    n = len(rec.events)
    await engine.commit()
    err = await rec.wait_for(lambda e: isinstance(e, EngineError), after=n)
    assert isinstance(err, EngineError) and not err.fatal and "nothing to commit" in err.message


def room_noise(ms: int, dbfs: float = -55.0) -> bytes:
    """What a real microphone hears in a quiet room: faint noise, not digital zeros."""
    import numpy as np

    rng = np.random.default_rng(7)
    n = IN_RATE * ms // 1000
    amplitude = 32768 * 10 ** (dbfs / 20) * np.sqrt(3)
    return (rng.uniform(-amplitude, amplitude, n)).astype("<i2").tobytes()


async def test_push_to_talk_held_before_speaking_is_still_transcribed(engine_factory, grammar):
    """A button held 1.5 s before the first word (the microphone hearing a quiet room), and a
    pause inside a held turn: one commit, one exact transcript each time."""
    options = StartOptions(turn_detection=TurnDetectionOptions(mode="manual"))
    engine, rec = await engine_factory(options, stt_grammar=grammar)
    await speak(engine, room_noise(1500) + synthesize("hello can you hear me", IN_RATE))
    await engine.commit()
    user = await rec.wait_for(final("user"))
    assert isinstance(user, Transcript) and user.text == "hello can you hear me"
    # A pause inside the held turn is kept: two phrases, one commit.
    await rec.wait_for(done("completed"))
    n = len(rec.events)
    await speak(engine, synthesize("what time", IN_RATE) + silence(900, IN_RATE))
    await speak(engine, synthesize("is it", IN_RATE))
    await engine.commit()
    user = await rec.wait_for(final("user"), after=n)
    assert isinstance(user, Transcript) and user.text == "what time is it"


async def test_a_turn_without_pause_is_ended_at_the_turn_limit(engine_factory, grammar):
    engine, rec = await engine_factory(stt_grammar=grammar)
    engine.MAX_TURN_MS = 600  # the limit is 60 s; the behaviour is the same
    await speak(engine, utterance("hello can you hear me"))
    speaking = [e.is_speaking for e in rec.events if kind(e) == "user_speaking"]
    # Cut at the limit, then the rest of the speech is a turn of its own.
    assert speaking[:3] == [True, False, True], speaking


# --- interruption ------------------------------------------------------------------------------


async def test_barge_in_cancels_reply_and_starts_new_turn(engine_factory, grammar):
    long_reply = " ".join(["This is a long answer that keeps going for a while."] * 6)
    async with LLMSimulator(reply=long_reply, token_delay_s=0.03) as sim:
        engine, rec = await engine_factory(
            stt_grammar=grammar, llm_url=sim.base_url, echo_guard_ms=100
        )
        await engine.send_user_message("tell me a long story")
        first_audio = await rec.wait_for(lambda e: isinstance(e, AudioOut))
        item_id = first_audio.item_id  # type: ignore[union-attr]
        await asyncio.sleep(0.3)  # past the echo guard, reply still streaming
        await speak(engine, utterance("what time is it"))

        cut = await rec.wait_for(lambda e: isinstance(e, Interrupted))
        assert isinstance(cut, Interrupted) and cut.item_id == item_id
        cancelled = await rec.wait_for(done("cancelled"))
        i_cut = rec.events.index(cut)
        # Nothing of the interrupted item after `interrupted`.
        assert not [
            e for e in rec.events[i_cut:] if isinstance(e, AudioOut) and e.item_id == item_id
        ]
        emitted_ms = duration_ms(audio_of(rec, item_id), engine.capabilities.output_rate)
        assert 0 < cut.played_ms <= emitted_ms
        assert cut.heard_text and long_reply.startswith(cut.heard_text)
        assert rec.events.index(cancelled) > i_cut

        user = await rec.wait_for(final("user"), after=i_cut)
        assert isinstance(user, Transcript) and user.text == "what time is it"
        await rec.wait_for(done("completed"), after=rec.events.index(user))
        # The history keeps what was heard of the cut reply, then the new turn.
        roles = [(m["role"], m["content"]) for m in engine.history]
        assert ("assistant", cut.heard_text) in roles
        assert roles.index(("assistant", cut.heard_text)) < roles.index(("user", "what time is it"))
        # The streamed request for the cut reply was abandoned, the next turn asked again.
        assert len([r for r in sim.requests if r.path.endswith("/chat/completions")]) == 2


async def test_speech_inside_echo_guard_is_not_a_barge_in(engine_factory, grammar):
    engine, rec = await engine_factory(stt_grammar=grammar, echo_guard_ms=5000)
    await engine.send_user_message("A fairly long sentence to speak back. " * 4)
    await rec.wait_for(done("completed"))  # generated; several seconds of audio still "playing"
    n = len(rec.events)
    # Our own voice coming back through the speaker, all within the guard window.
    await speak(engine, utterance("hello can you hear me"), pace_s=0)
    await asyncio.sleep(0.3)
    assert rec.kinds(n) == []
    assert engine.history[-1]["role"] == "assistant"


async def test_interrupt_with_played_ms_records_heard_sentences(engine_factory):
    engine, rec = await engine_factory()
    await engine.send_user_message("One two three. Four five six seven. Eight nine ten.")
    # Echo of typed text: "Echo: you said One two three." "Four five six seven." "Eight nine ten."
    await rec.wait_for(done("completed"))
    deltas = [
        e for e in rec.events if isinstance(e, Transcript) and e.role == "assistant" and not e.final
    ]
    assert [d.delta.strip() for d in deltas] == [
        "Echo: you said One two three.",
        "Four five six seven.",
        "Eight nine ten.",
    ]
    # Audio emitted between the first and second sentence's transcript = first sentence.
    i1, i2 = rec.events.index(deltas[0]), rec.events.index(deltas[1])
    rate = engine.capabilities.output_rate
    first_ms = sum(duration_ms(e.pcm16, rate) for e in rec.events[i1:i2] if isinstance(e, AudioOut))
    await engine.interrupt(int(first_ms) + 20)
    cut = await rec.wait_for(lambda e: isinstance(e, Interrupted))
    assert isinstance(cut, Interrupted)
    assert cut.heard_text == "Echo: you said One two three."
    assert engine.history[-1] == {"role": "assistant", "content": cut.heard_text}
    # Typed text is not a transcript (parity with OpenAI).
    assert not [e for e in rec.events if isinstance(e, Transcript) and e.role == "user"]


# --- responder through an OpenAI-compatible server ---------------------------------------------


async def test_llm_streams_with_history_and_system_prompt(engine_factory):
    async with LLMSimulator(reply="Your name is Bob. Nice to meet you again!") as sim:
        options = StartOptions(
            instructions="You are Ada, a ship's computer.",
            personality={"humor": 90},
            history=[HistoryTurn("user", "My name is Bob."), HistoryTurn("assistant", "Hi Bob.")],
        )
        engine, rec = await engine_factory(
            options, llm_url=sim.base_url, llm_model="tiny-llm", llm_api_key="sk-local"
        )
        await engine.send_context_update({"location": "bridge"})
        await engine.send_user_message("What is my name?")
        await rec.wait_for(done("completed"))
        req = sim.requests[-1]
        assert req.authorization == "Bearer sk-local"
        assert (
            req.json is not None and req.json["model"] == "tiny-llm" and req.json["stream"] is True
        )
        msgs = req.messages
        assert msgs[0]["role"] == "system"
        assert "You are Ada, a ship's computer." in msgs[0]["content"]
        assert "humor 90/100" in msgs[0]["content"]
        assert msgs[1:] == [
            {"role": "user", "content": "My name is Bob."},
            {"role": "assistant", "content": "Hi Bob."},
            {"role": "system", "content": 'Context update (JSON): {"location": "bridge"}'},
            {"role": "user", "content": "What is my name?"},
        ]
        deltas = [e.delta for e in rec.events if isinstance(e, Transcript) and not e.final]
        assert deltas == ["Your name is Bob.", " Nice to meet you again!"]
        reply_item = next(e.item_id for e in rec.events if isinstance(e, Transcript))
        assert rms_dbfs(audio_of(rec, reply_item)) > -35.0

        # The next turn carries the reply in its history.
        n = len(rec.events)
        await engine.send_user_message("Thanks.")
        await rec.wait_for(done("completed"), after=n)
        assert sim.requests[-1].messages[-2:] == [
            {"role": "assistant", "content": "Your name is Bob. Nice to meet you again!"},
            {"role": "user", "content": "Thanks."},
        ]


async def test_llm_error_and_outage_are_non_fatal(engine_factory):
    async with LLMSimulator(reply="All good.") as sim:
        engine, rec = await engine_factory(llm_url=sim.base_url)
        sim.fault, sim.fault_count = "http_500", 1
        await engine.send_user_message("first")
        err = await rec.wait_for(lambda e: isinstance(e, EngineError))
        assert isinstance(err, EngineError)
        assert err.code == "upstream_unavailable" and not err.fatal and "500" in err.message
        await rec.wait_for(done("failed"))

        n = len(rec.events)
        await engine.send_user_message("second")
        await rec.wait_for(done("completed"), after=n)
        assert any(isinstance(e, AudioOut) for e in rec.events[n:])

        await sim.stop()  # connection refused from now on
        n = len(rec.events)
        await engine.send_user_message("third")
        err = await rec.wait_for(lambda e: isinstance(e, EngineError), after=n)
        assert isinstance(err, EngineError)
        assert err.code == "upstream_unavailable" and not err.fatal
        assert "unreachable" in err.message and "VOXGATE_LLM_URL" in err.message
        await rec.wait_for(done("failed"), after=n)
        assert engine.status == "connected"

        await sim.start()  # same port: the session recovers without a restart
        n = len(rec.events)
        await engine.send_user_message("fourth")
        await rec.wait_for(done("completed"), after=n)

        sim.fault, sim.fault_count = "http_401", 1
        n = len(rec.events)
        await engine.send_user_message("fifth")
        err = await rec.wait_for(lambda e: isinstance(e, EngineError), after=n)
        assert isinstance(err, EngineError) and not err.fatal
        assert "rejected the key" in err.message and "VOXGATE_LLM_API_KEY" in err.message
        await rec.wait_for(done("failed"), after=n)


async def test_llm_too_slow_is_a_non_fatal_timeout(engine_factory):
    async with LLMSimulator(reply="Late.", slow_s=1.0) as sim:
        engine, rec = await engine_factory(llm_url=sim.base_url, first_byte_timeout_s=0.3)
        sim.fault, sim.fault_count = "slow", 1
        await engine.send_user_message("hello?")
        err = await rec.wait_for(lambda e: isinstance(e, EngineError))
        assert isinstance(err, EngineError)
        assert err.code == "upstream_unavailable" and not err.fatal and "in time" in err.message
        await rec.wait_for(done("failed"))
        n = len(rec.events)
        await engine.send_user_message("and now?")
        await rec.wait_for(done("completed"), after=n)


# --- optional cloud parts against the simulator ----------------------------------------------------


async def test_openai_transcription_and_speech(engine_factory):
    async with LLMSimulator(transcript="what time is it") as sim:
        engine, rec = await engine_factory(
            stt="openai", tts="openai", openai_api_key="sk-cloud", openai_api_base=sim.base_url
        )
        await speak(engine, utterance("what time is it"))
        user = await rec.wait_for(final("user"))
        assert isinstance(user, Transcript) and user.text == "what time is it"
        await rec.wait_for(done("completed"))
        stt_req = next(r for r in sim.requests if r.path.endswith("/audio/transcriptions"))
        assert stt_req.authorization == "Bearer sk-cloud"
        assert stt_req.form["model"] == "gpt-4o-mini-transcribe"
        pcm, rate = parse_wav_bytes(stt_req.files["file"])
        assert rate == IN_RATE and duration_ms(pcm, rate) > 800
        tts_req = next(r for r in sim.requests if r.path.endswith("/audio/speech"))
        assert tts_req.json is not None
        assert tts_req.json["input"] == "Echo: you said what time is it."
        assert tts_req.json["response_format"] == "pcm"
        item = next(
            e.item_id for e in rec.events if isinstance(e, Transcript) and e.role == "assistant"
        )
        assert rms_dbfs(audio_of(rec, item)) > -35.0


async def test_voice_from_start_is_used_only_when_espeak_knows_it(engine_factory):
    engine, rec = await engine_factory(StartOptions(voice="alloy"))  # an OpenAI voice name
    await engine.send_user_message("Still speaking.")
    await rec.wait_for(done("completed"))
    item = next(e.item_id for e in rec.events if isinstance(e, Transcript))
    assert rms_dbfs(audio_of(rec, item)) > -35.0
    assert isinstance(engine._tts, EspeakSynthesizer) and engine._tts.voice == "en-us"
    engine2, _ = await engine_factory(StartOptions(voice="en-gb"))
    assert isinstance(engine2._tts, EspeakSynthesizer) and engine2._tts.voice == "en-gb"


async def test_stop_ends_the_event_stream(make_settings):
    engine = create_engine("cascade", make_settings())
    await engine.start(StartOptions())
    await engine.stop()
    await engine.stop()  # idempotent
    async with asyncio.timeout(5):
        kinds = [(kind(e), getattr(e, "status", None)) async for e in engine.events()]
    assert kinds == [("status", "connecting"), ("status", "connected"), ("status", "disconnected")]


# --- unavailable parts ---------------------------------------------------------------------------


async def test_missing_espeak_fails_start_with_install_sentence(make_settings, tmp_path):
    no_espeak = str(tmp_path / "no-espeak-ng")
    engine = create_engine("cascade", make_settings(tts="espeak", espeak_bin=no_espeak))
    with pytest.raises(EngineUnavailable) as info:
        await engine.start(StartOptions())
    assert "espeak-ng is not installed" in info.value.message
    assert "apt-get install espeak-ng" in info.value.message
    await engine.stop()
    # `voxgate serve` and /health see the same problem before any session starts.
    settings = make_settings(tts="espeak", espeak_bin=no_espeak)
    assert "apt-get install espeak-ng" in (CascadeEngine.availability(settings) or "")
    assert CascadeEngine.availability(make_settings()) is None
    assert "responder: echo (VOXGATE_LLM_URL unset)" in CascadeEngine.describe(make_settings())


async def test_silero_without_onnxruntime_says_how_to_install(make_settings, monkeypatch):
    # Hide the package: `import onnxruntime` then fails as it does where it is not installed.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    engine = create_engine("cascade", make_settings(vad="silero"))
    with pytest.raises(EngineUnavailable, match=r"onnxruntime.*voxgate\[local\]"):
        await engine.start(StartOptions())
    await engine.stop()


async def test_silero_without_a_model_file_says_where_to_put_it(make_settings, tmp_path):
    engine = create_engine(
        "cascade", make_settings(vad="silero", silero_model_path=str(tmp_path / "missing.onnx"))
    )
    with pytest.raises(EngineUnavailable, match=r"VOXGATE_SILERO_MODEL"):
        await engine.start(StartOptions())
    await engine.stop()


async def test_whisper_without_faster_whisper_says_how_to_install(
    make_settings, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    engine = create_engine(
        "cascade", make_settings(stt="whisper", whisper_model_path=str(tmp_path))
    )
    with pytest.raises(
        EngineUnavailable, match=r"faster-whisper is not installed.*voxgate\[local\]"
    ):
        await engine.start(StartOptions())
    await engine.stop()
