"""The cascade's parts on their own: the WAV stream reader against real espeak-ng output, the
sentence splitter, heard-text truncation and the VAD segmenter's hangover."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from voxgate.audio import bytes_for_ms
from voxgate.engines.cascade.text import SentenceSplitter, SpokenSentence, heard_text
from voxgate.engines.cascade.tts import WavStreamHeader
from voxgate.engines.cascade.vad import TurnSegmenter, WebRtcClassifier
from voxgate.testing.speech import silence, synthesize


def test_espeak_stream_header_with_bogus_sizes_read_in_small_pieces():
    binary = shutil.which("espeak-ng")
    assert binary is not None
    raw = subprocess.run(
        [binary, "--stdout", "--", "testing one two three"], capture_output=True, check=True
    ).stdout
    riff_size = int.from_bytes(raw[4:8], "little")
    assert riff_size in (0, 0xFFFFFFFF) or riff_size + 8 != len(raw)  # the lie we must survive
    header = WavStreamHeader()
    samples = b"".join(header.feed(raw[i : i + 7]) for i in range(0, len(raw), 7))
    assert header.rate == 22050 and header.channels == 1
    data_at = raw.index(b"data") + 8
    assert samples == raw[data_at:]


def test_sentence_splitter_cuts_at_sentence_ends_as_text_streams():
    splitter = SentenceSplitter(max_chars=60)
    out: list[str] = []
    for piece in ["Hel", "lo there. How", " are you", "? I am", " fine, 3.5 times", " better!"]:
        out += splitter.push(piece)
    assert out == ["Hello there.", "How are you?"]
    assert splitter.flush() == "I am fine, 3.5 times better!"
    long = SentenceSplitter(max_chars=30)
    cut = long.push("one two three four five, six seven eight nine ten eleven")
    assert cut == ["one two three four five,"]


def test_heard_text_keeps_played_sentences_and_the_played_words():
    sentences = [
        SpokenSentence("One two three.", 0, 1000),
        SpokenSentence("Four five six seven.", 1000, 2000),
    ]
    assert heard_text(sentences, 0) == ""
    assert heard_text(sentences, 1000) == "One two three."
    assert heard_text(sentences, 1500) == "One two three. Four five"
    assert heard_text(sentences, 5000) == "One two three. Four five six seven."
    # A sentence still being synthesised: 40 ms of audio so far is not the whole sentence.
    making = [SpokenSentence("Four five six seven.", 0, 40, complete=False)]
    assert heard_text(making, 40) == ""
    assert heard_text(making, 700) == "Four five"


def test_segmenter_hangover_is_the_configured_silence():
    seg = TurnSegmenter(WebRtcClassifier(2), silence_ms=400, prefix_ms=300)
    speech = synthesize("hello can you hear me", 16000)
    x = np.abs(np.frombuffer(speech, dtype="<i2"))
    last_voiced = int(np.nonzero(x > 300)[0][-1])
    audio = silence(500, 16000) + speech + silence(1000, 16000)
    events = []
    pos = 0
    for i in range(0, len(audio), 640):
        for ev in seg.feed(audio[i : i + 640]):
            events.append((ev.kind, pos + 640, len(ev.audio)))
        pos += 640
    kinds = [k for k, _, _ in events if k != "speech"]
    assert kinds == ["start", "end"]
    start = next(e for e in events if e[0] == "start")
    assert start[2] >= bytes_for_ms(300, 16000)  # the prefix padding came with the start
    end_at = next(p for k, p, _ in events if k == "end")
    hangover_ms = (end_at - (bytes_for_ms(500, 16000) + last_voiced * 2)) / 32
    assert 400 <= hangover_ms <= 440, hangover_ms


async def test_llm_simulator_speaks_openai_to_the_official_sdk():
    import openai

    from voxgate.audio import parse_wav_bytes, wav_bytes
    from voxgate.testing.llm_sim import LLMSimulator

    async with LLMSimulator(reply="One. Two three.", api_key="sk-sim") as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "count"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == "One. Two three." and len(pieces) > 2
        whole = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "count"}]
        )
        assert whole.choices[0].message.content == "One. Two three."
        sim.transcript = "scripted words"
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav_bytes(silence(100, 16000), 16000))
        )
        assert text.text == "scripted words"
        speech = await client.audio.speech.create(
            model="tts-1", voice="alloy", input="hello", response_format="wav"
        )
        pcm, rate = parse_wav_bytes(speech.content)
        assert rate == 24000 and len(pcm) > 24000  # over half a second of speech
        assert [r.path for r in sim.requests] == [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/audio/transcriptions",
            "/v1/audio/speech",
        ]
        assert {r.authorization for r in sim.requests} == {"Bearer sk-sim"}
        bad = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="m", messages=[])
        sim.fault = "http_500"
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=[])
