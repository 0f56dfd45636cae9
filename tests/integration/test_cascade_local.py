"""The cascade's default local models, for real: Silero VAD, Whisper tiny.en and the Piper
voice from their packages, driven through the public seam with espeak-ng speech (a voice that
is not the reply voice), plus the bad inputs a real microphone and a real install produce.

The models load once per test process and are shared, as in the gateway."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voxgate.audio import StreamResampler, chunks, duration_ms, read_wav, resample, rms_dbfs
from voxgate.benchmarking.wer import word_errors
from voxgate.config import Settings
from voxgate.engines import create_engine
from voxgate.engines.base import (
    AudioOut,
    EngineError,
    EngineUnavailable,
    Interrupted,
    ResponseDone,
    StartOptions,
    Transcript,
    UserSpeaking,
)
from voxgate.engines.cascade.engine import CascadeEngine
from voxgate.engines.cascade.models import (
    InferenceBusy,
    InferencePool,
    inference_pool,
    packaged_piper_voice,
    packaged_whisper_model,
)
from voxgate.engines.cascade.stt import WhisperRecognizer
from voxgate.engines.cascade.tts import PiperSynthesizer
from voxgate.testing.llm_sim import LLMSimulator
from voxgate.testing.speech import silence, synthesize

from .test_cascade import Recorder, done, final, speak, utterance

IN_RATE = 16000
SENTENCE = "hello, what is the weather like today"

def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
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


def espeak(text: str, voice: str, rate: int = IN_RATE) -> bytes:
    binary = shutil.which("espeak-ng")
    assert binary is not None
    out = subprocess.run(
        [binary, "--stdout", "-v", voice, "--", text], capture_output=True, check=True, timeout=60
    ).stdout
    pcm, src = read_wav(out)
    return resample(pcm, src, rate)


def user_events(rec: Recorder) -> list[Transcript]:
    return [e for e in rec.events if isinstance(e, Transcript) and e.role == "user"]


# --- the default parts -----------------------------------------------------------------------


async def test_defaults_are_the_packaged_models_and_hear_the_exact_words(engine_factory):
    engine, rec = await engine_factory()
    assert engine.parts["vad"].startswith("silero ") and "packaged model" in engine.parts["vad"]
    assert engine.parts["stt"].startswith("whisper ") and "packaged tiny.en" in engine.parts["stt"]
    assert engine.parts["tts"].startswith("piper ") and "en_US-joe-medium" in engine.parts["tts"]
    # The words in real time, and no pause yet: the user is still mid-turn, so a partial
    # transcript that arrives now arrived while they spoke, however slow the decode is.
    await speak(engine, silence(300, IN_RATE) + synthesize(SENTENCE, IN_RATE), pace_s=0.02)
    partial = await rec.wait_for(
        lambda e: isinstance(e, Transcript) and e.role == "user" and not e.final, timeout=60
    )
    assert not any(isinstance(e, UserSpeaking) and not e.is_speaking for e in rec.events)
    assert isinstance(partial, Transcript) and partial.text
    # The pause ends the turn with the exact words.
    await speak(engine, silence(1200, IN_RATE), pace_s=0.02)
    user = await rec.wait_for(final("user"), timeout=60)
    assert isinstance(user, Transcript) and words(user.text) == words(SENTENCE), user.text
    assert rec.events.index(partial) < rec.events.index(user)

    await rec.wait_for(done("completed"), timeout=60)
    reply = [e for e in rec.events if isinstance(e, Transcript) and e.role == "assistant"]
    assert reply[-1].text == f"Echo: you said {user.text}"
    pcm = b"".join(e.pcm16 for e in rec.events if isinstance(e, AudioOut))
    assert rms_dbfs(pcm) > -35.0
    # Spoken by Piper: about as long as Piper's own rendering of the reply (its durations
    # vary a little from one rendering to the next).
    assert isinstance(engine._tts, PiperSynthesizer) and engine._tts.sentences == 1
    again = b"".join([pcm async for pcm in engine._tts.speak(reply[-1].text)])
    assert abs(len(pcm) - len(again)) / len(again) < 0.15


async def test_the_final_transcript_reuses_the_decode_started_at_the_pause() -> None:
    """At the pause the recogniser starts decoding; at the end of the turn it takes that
    decode instead of starting another, unless audio came after it."""
    model = packaged_whisper_model()
    assert model is not None
    stt = WhisperRecognizer(str(model), inference_pool())
    await stt.prepare()
    spoken = espeak(SENTENCE, "en-us")
    stt.begin()
    stt.feed(spoken)
    stt.prefetch()  # the pause
    started = stt.decodes
    text = await stt.finish()  # the end of the turn, before or after that decode completes
    assert stt.final_reused and stt.decodes == started
    assert words(text) == words(SENTENCE), text
    # Audio after the pause: the pause's decode no longer covers the turn, so it is redone.
    stt.begin()
    stt.feed(spoken)
    stt.prefetch()
    stt.feed(silence(200, IN_RATE) + spoken)
    started = stt.decodes
    await stt.finish()
    assert not stt.final_reused and stt.decodes == started + 1
    stt.close()


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
async def test_audio_at_any_client_rate_is_heard(engine_factory, rate):
    """The session resamples client audio to the engine's 16 kHz (as here): 8 kHz telephone
    audio and 44.1 / 48 kHz microphones all reach Whisper intact (16 kHz is the test above)."""
    engine, rec = await engine_factory()
    resampler = StreamResampler(rate, engine.capabilities.input_rate)
    audio = silence(300, rate) + espeak(SENTENCE, "en-us", rate) + silence(1200, rate)
    for frame in chunks(audio, rate, 20):
        await engine.send_audio(resampler.process(frame))
        await asyncio.sleep(0.002)
    user = await rec.wait_for(final("user"), timeout=60)
    assert isinstance(user, Transcript)
    errors, _ = word_errors(SENTENCE, user.text)
    # Telephone audio has nothing above 4 kHz: one word may go; wideband audio is exact.
    assert errors <= (1 if rate == 8000 else 0), user.text


def _music(ms: int) -> bytes:
    """Chords with harmonics and a beat: what a radio in the room sounds like to a VAD."""
    t = np.arange(IN_RATE * ms // 1000) / IN_RATE
    notes = [220.0, 277.2, 329.6, 440.0]
    x = sum(np.sin(2 * np.pi * f * t) + 0.5 * np.sin(4 * np.pi * f * t) for f in notes)
    beat = 0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0)
    return (x / 6 * beat * 8000).astype("<i2").tobytes()


def _noise(ms: int, dbfs: float) -> bytes:
    rng = np.random.default_rng(3)
    n = IN_RATE * ms // 1000
    return (rng.normal(0, 32768 * 10 ** (dbfs / 20), n)).clip(-32768, 32767).astype("<i2").tobytes()


async def test_silence_music_and_noise_make_no_turn(engine_factory):
    engine, rec = await engine_factory()
    await speak(engine, silence(1500, IN_RATE), pace_s=0)
    await speak(engine, _music(4000), pace_s=0.001)
    await speak(engine, _noise(4000, -25.0), pace_s=0.001)
    await speak(engine, silence(1500, IN_RATE), pace_s=0)
    await asyncio.sleep(3.0)  # any decode of a phantom turn would have finished by now
    phantom = [e for e in rec.events if isinstance(e, Transcript | AudioOut | ResponseDone)]
    assert phantom == [], phantom
    # The session still hears the next real turn.
    await speak(engine, utterance("what time is it", tail_ms=1200))
    user = await rec.wait_for(final("user"), timeout=60)
    assert isinstance(user, Transcript) and words(user.text) == ["what", "time", "is", "it"]


async def test_a_breath_inside_a_sentence_does_not_end_the_turn(engine_factory):
    engine, rec = await engine_factory()
    audio = (
        silence(300, IN_RATE)
        + synthesize("what time is it", IN_RATE)
        + silence(250, IN_RATE)  # a short breath: well under the 500 ms pause
        + synthesize("in london", IN_RATE)
        + silence(1200, IN_RATE)
    )
    await speak(engine, audio)
    user = await rec.wait_for(final("user"), timeout=60)
    assert isinstance(user, Transcript) and words(user.text)[-2:] == ["in", "london"]
    speaking = [e.is_speaking for e in rec.events if isinstance(e, UserSpeaking)]
    assert speaking == [True, False], speaking


async def test_echo_guard_holds_with_silero_and_piper(engine_factory):
    engine, rec = await engine_factory(echo_guard_ms=5000)
    await engine.send_user_message("A fairly long sentence to speak back. " * 3)
    await rec.wait_for(done("completed"), timeout=60)  # seconds of audio still "playing"
    n = len(rec.events)
    await speak(engine, utterance("hello can you hear me"), pace_s=0)
    await asyncio.sleep(1.0)
    assert [e for e in rec.events[n:]] == []


async def test_a_language_the_model_does_not_know_gives_some_text_and_no_crash(engine_factory):
    engine, rec = await engine_factory()
    german = espeak("guten Morgen, wie geht es dir heute, mein Freund", "de")
    await speak(engine, silence(300, IN_RATE) + german + silence(1200, IN_RATE))
    await rec.wait_for(lambda e: isinstance(e, UserSpeaking) and not e.is_speaking, timeout=60)
    await asyncio.sleep(0.1)
    await engine.send_user_message("still there?")
    await rec.wait_for(done("completed"), timeout=60)
    assert not [e for e in rec.events if isinstance(e, EngineError)]
    assert engine.status == "connected"


async def test_a_sixty_second_monologue_is_bounded_and_ends_in_a_turn(engine_factory):
    engine, rec = await engine_factory()
    sentence = synthesize("and then we walked down to the river and looked at the boats", IN_RATE)
    piece = sentence + silence(150, IN_RATE)  # a breath between sentences, never a pause
    count = int(60_000 / duration_ms(piece, IN_RATE)) + 1
    largest = 0
    for frame in chunks(
        silence(300, IN_RATE) + piece * count + silence(1500, IN_RATE), IN_RATE, 20
    ):
        await engine.send_audio(frame)
        assert isinstance(engine._stt, WhisperRecognizer)
        largest = max(largest, len(engine._stt._audio))
        await asyncio.sleep(0)
    # The turn ends when the speaker stops (or at the 60 s limit), with the words of it.
    await rec.wait_for(lambda e: isinstance(e, UserSpeaking) and not e.is_speaking, after=3)
    async with asyncio.timeout(120):
        while engine._user_item is not None or engine._tasks:
            await asyncio.sleep(0.2)
    finals = [e for e in user_events(rec) if e.final]
    assert finals and all(words(e.text) for e in finals)
    heard = sum(words(e.text).count("river") for e in finals)
    assert heard >= count * 0.7, (heard, count, [e.text for e in finals])
    assert not [e for e in rec.events if isinstance(e, EngineError)]
    # Memory is bounded by the turn limit, however long the speaker goes on.
    assert duration_ms(largest, IN_RATE) <= CascadeEngine.MAX_TURN_MS + 1000


# --- assistant speech ------------------------------------------------------------------------


async def test_piper_speaks_the_first_sentence_while_later_ones_are_made(engine_factory):
    reply = "The first sentence is short. " + " ".join(
        f"Then comes sentence number {n}, a little longer than the first one." for n in range(2, 7)
    )
    async with LLMSimulator(reply=reply, token_delay_s=0.02) as sim:
        engine, rec = await engine_factory(llm_url=sim.base_url)
        await engine.send_user_message("talk to me")
        first = await rec.wait_for(lambda e: isinstance(e, AudioOut), timeout=60)
        # The reply is still being written and synthesised when its first audio leaves.
        assert not any(isinstance(e, ResponseDone) for e in rec.events)
        assert isinstance(engine._tts, PiperSynthesizer) and engine._tts.sentences < 6
        await engine.interrupt(300)
        cut = await rec.wait_for(lambda e: isinstance(e, Interrupted), timeout=30)
        assert isinstance(cut, Interrupted) and cut.item_id == first.item_id  # type: ignore[union-attr]
        await rec.wait_for(done("cancelled"), timeout=30)
        made = engine._tts.sentences
        await asyncio.sleep(1.0)
        # Interrupt stopped synthesis, not just playback: no sentence was started after it.
        assert engine._tts.sentences == made < 6
        i_cut = rec.events.index(cut)
        assert not [e for e in rec.events[i_cut:] if isinstance(e, AudioOut)]


# --- shared models, bounded work -----------------------------------------------------------------


async def test_sessions_share_one_model_per_process(engine_factory):
    a, _ = await engine_factory()
    b, _ = await engine_factory()
    assert isinstance(a._stt, WhisperRecognizer) and isinstance(b._stt, WhisperRecognizer)
    assert a._stt._model is b._stt._model
    assert isinstance(a._tts, PiperSynthesizer) and isinstance(b._tts, PiperSynthesizer)
    assert a._tts._voice is b._tts._voice


async def test_a_saturated_pool_refuses_at_once():
    pool = InferencePool(workers=1, max_waiting=1)
    release = threading.Event()
    busy = [asyncio.ensure_future(pool.run(release.wait, 10)) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(InferenceBusy, match="1 local inference workers are busy"):
        await pool.run(sum, [1, 2])
    # Nice-to-have work (partials) is refused as soon as the workers are busy.
    release.set()
    await asyncio.gather(*busy)
    assert await pool.run(sum, [1, 2]) == 3 and pool.in_flight == 0


async def test_a_turn_when_the_pool_is_saturated_is_rate_limited_not_stalled(engine_factory):
    engine, rec = await engine_factory()
    pool = inference_pool()
    release = threading.Event()
    hogs = []
    try:
        for _ in range(pool.workers + pool.max_waiting):
            hogs.append(asyncio.ensure_future(pool.run(release.wait, 30)))
        await asyncio.sleep(0.05)
        await speak(engine, utterance("what time is it", tail_ms=1200))
        err = await rec.wait_for(lambda e: isinstance(e, EngineError), timeout=20)
        assert isinstance(err, EngineError) and err.code == "rate_limited" and not err.fatal
        assert "say it again" in err.message
    finally:
        release.set()
        await asyncio.gather(*hogs)
    n = len(rec.events)
    await speak(engine, utterance("what time is it", tail_ms=1200))
    user = await rec.wait_for(final("user"), after=n, timeout=60)
    assert isinstance(user, Transcript) and words(user.text) == ["what", "time", "is", "it"]


# --- bad model files -----------------------------------------------------------------------------


def _corrupt_whisper(tmp_path: Path) -> Path:
    folder = tmp_path / "broken-whisper"
    shutil.copytree(str(packaged_whisper_model()), folder)
    (folder / "model.bin").write_bytes(b"not a model" * 100)
    return folder


def _corrupt_onnx(path: Path) -> Path:
    path.write_bytes(b"\x08\x01garbage" * 64)
    Path(f"{path}.json").write_text(Path(f"{packaged_piper_voice()}.json").read_text())
    return path


async def test_missing_model_files_fall_back_and_say_which_file(make_settings, tmp_path, caplog):
    from voxgate.engines.cascade.config import CascadeConfig

    missing = tmp_path / "nowhere"
    settings = make_settings(
        whisper_model_path=str(missing / "whisper"),
        piper_voice_path=str(missing / "voice.onnx"),
        silero_model_path=str(missing / "silero.onnx"),
    )
    parts = CascadeConfig.from_settings(settings).describe_parts()
    assert (
        parts["stt"].startswith("pocketsphinx")
        and f"{missing}/whisper does not exist" in parts["stt"]
    )
    assert (
        parts["tts"].startswith("espeak-ng")
        and f"{missing}/voice.onnx does not exist" in parts["tts"]
    )
    assert (
        parts["vad"].startswith("webrtcvad")
        and f"{missing}/silero.onnx does not exist" in parts["vad"]
    )
    assert CascadeEngine.availability(settings) is None  # the fallbacks run
    # Asked for by name, the same file is a clear error instead.
    strict = make_settings(stt="whisper", whisper_model_path=str(missing / "whisper"))
    assert f"the Whisper model {missing}/whisper does not exist" in (
        CascadeEngine.availability(strict) or ""
    )
    engine = create_engine("cascade", strict)
    with pytest.raises(EngineUnavailable, match="VOXGATE_WHISPER_MODEL"):
        await engine.start(StartOptions())
    await engine.stop()


async def test_corrupt_model_files_fall_back_at_load_naming_the_file(
    engine_factory, make_settings, tmp_path, caplog
):
    whisper = _corrupt_whisper(tmp_path)
    voice = _corrupt_onnx(tmp_path / "voice.onnx")
    silero = _corrupt_onnx(tmp_path / "silero.onnx")
    caplog.set_level("WARNING", logger="voxgate.cascade")
    engine, rec = await engine_factory(
        whisper_model_path=str(whisper), piper_voice_path=str(voice), silero_model_path=str(silero)
    )
    assert engine.parts["stt"].startswith("pocketsphinx") and str(whisper) in engine.parts["stt"]
    assert engine.parts["tts"].startswith("espeak-ng") and str(voice) in engine.parts["tts"]
    assert engine.parts["vad"].startswith("webrtcvad") and str(silero) in engine.parts["vad"]
    logged = caplog.text
    assert f"the whisper model {whisper} could not be loaded" in logged
    assert "using pocketsphinx instead" in logged and "using espeak-ng instead" in logged
    assert "using webrtcvad instead" in logged
    # The session works on the fallbacks.
    await engine.send_user_message("still speaking")
    await rec.wait_for(done("completed"), timeout=60)
    assert rms_dbfs(b"".join(e.pcm16 for e in rec.events if isinstance(e, AudioOut))) > -35.0
    # Asked for by name, the corrupt file fails the start with its name.
    for part, key, path in (
        ("stt", "whisper_model_path", whisper),
        ("tts", "piper_voice_path", voice),
        ("vad", "silero_model_path", silero),
    ):
        strict = create_engine(
            "cascade",
            make_settings(
                **{part: {"stt": "whisper", "tts": "piper", "vad": "silero"}[part], key: str(path)}
            ),
        )
        with pytest.raises(EngineUnavailable, match=re.escape(str(path))):
            await strict.start(StartOptions())
        await strict.stop()
