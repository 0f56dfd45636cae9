"""Recognition accuracy of the cascade's offline recognisers: word error rate of pocketsphinx
(open vocabulary) and Whisper tiny.en on 40 everyday requests, each spoken by three espeak-ng
voices that are not the reply voice, clean and with white noise at 10 dB SNR.

Each recogniser gets the utterance as the engine would (16 kHz PCM16, 300 ms of lead-in
silence) through the same `begin` / `feed` / `finish` calls the engine makes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from typing import Any

import numpy as np
import psutil

from voxgate.audio import read_wav, resample
from voxgate.benchmarking.wer import wer, word_errors
from voxgate.testing.speech import silence

SENTENCES = [
    "hello what is the weather like today",
    "what time is it",
    "set a timer for ten minutes",
    "turn on the kitchen lights",
    "play some relaxing music",
    "remind me to call my mother tomorrow",
    "what is the capital of france",
    "how far away is the moon",
    "read me the latest news",
    "where is the nearest train station",
    "please add milk to my shopping list",
    "how long does it take to boil an egg",
    "wake me up at seven in the morning",
    "what is on my calendar this afternoon",
    "send a message to john saying i am late",
    "how do i get to the airport",
    "turn the volume down a little",
    "what should i cook for dinner tonight",
    "is it going to rain this weekend",
    "tell me a funny joke",
    "how many days until christmas",
    "call the dentist and book an appointment",
    "what is the score of the football game",
    "open the garage door",
    "translate good morning into spanish",
    "find a coffee shop near me",
    "how tall is the eiffel tower",
    "stop the music please",
    "what is twenty times three",
    "who wrote the book pride and prejudice",
    "lock the front door",
    "how much does a new phone cost",
    "book a table for two at eight",
    "what is the population of canada",
    "switch off the bedroom fan",
    "when does the library close today",
    "give me a recipe for pancakes",
    "what movies are playing tonight",
    "change the temperature to twenty degrees",
    "thank you that is all for now",
]
VOICES = ["en-us", "en+f3", "en-gb-x-rp"]
RATE = 16000
SNR_DB = 10.0


def _speak(text: str, voice: str) -> bytes:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed")
    out = subprocess.run(
        [binary, "--stdout", "-v", voice, "--", text], capture_output=True, check=True, timeout=60
    ).stdout
    pcm, src = read_wav(out)
    return resample(pcm, src, RATE)


def _with_noise(pcm: bytes, snr_db: float, seed: int) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    voiced = x[np.abs(x) > 300]
    power = float(np.mean(voiced**2)) if len(voiced) else 1.0
    noise = np.random.default_rng(seed).normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(x))
    return np.clip(x + noise, -32768, 32767).astype("<i2").tobytes()


async def _recognise(recognizer: Any, pcm: bytes) -> tuple[str, float]:
    recognizer.begin()
    for i in range(0, len(pcm), 640):
        recognizer.feed(pcm[i : i + 640])
    t = time.perf_counter()
    text = await recognizer.finish()
    return text, time.perf_counter() - t


async def _measure(sentences: int) -> dict[str, Any]:
    from voxgate.engines.cascade.models import inference_pool, packaged_whisper_model
    from voxgate.engines.cascade.stt import PocketSphinxRecognizer, WhisperRecognizer

    process = psutil.Process(os.getpid())
    rss0 = process.memory_info().rss
    recognizers: dict[str, Any] = {"pocketsphinx": PocketSphinxRecognizer(None)}
    model = packaged_whisper_model()
    if model is not None:
        recognizers["whisper tiny.en"] = WhisperRecognizer(str(model), inference_pool())
    rss: dict[str, float] = {}
    for name, rec in recognizers.items():
        before = process.memory_info().rss
        await rec.prepare()
        rss[name] = round((process.memory_info().rss - before) / 2**20, 1)
    cases = []
    for i, text in enumerate(SENTENCES[:sentences]):
        for voice in VOICES:
            clean = silence(300, RATE) + _speak(text, voice) + silence(200, RATE)
            cases.append((text, voice, "clean", clean))
            cases.append((text, voice, "noise 10 dB", _with_noise(clean, SNR_DB, i)))
    results: dict[str, Any] = {}
    for name, rec in recognizers.items():
        by_condition: dict[str, list[tuple[str, str]]] = {}
        seconds: list[float] = []
        examples: list[dict[str, str]] = []
        for text, voice, condition, pcm in cases:
            hyp, took = await _recognise(rec, pcm)
            seconds.append(took)
            by_condition.setdefault(condition, []).append((text, hyp))
            if condition == "clean" and len(examples) < 4 and word_errors(text, hyp)[0]:
                examples.append({"voice": voice, "said": text, "heard": hyp})
        results[name] = {
            "wer": {c: round(wer(pairs), 3) for c, pairs in by_condition.items()},
            "decode_s_p50": round(float(np.median(seconds)), 3),
            "model_rss_mib": rss[name],
            "clean_mistakes": examples,
        }
        rec.close()
    whisper: dict[str, Any] = results.get("whisper tiny.en") or {}
    return {
        "sentences": sentences,
        "voices": VOICES,
        "utterances_per_recogniser": len(cases),
        "process_rss_mib": round(process.memory_info().rss / 2**20, 1),
        "rss_before_models_mib": round(rss0 / 2**20, 1),
        "recognisers": results,
        "targets": {
            "whisper_clean_wer_below_10pct": bool(whisper) and whisper["wer"]["clean"] < 0.10,
        },
    }


def wer_benchmark(sentences: int = 40) -> dict[str, Any]:
    return asyncio.run(_measure(max(1, min(sentences, len(SENTENCES)))))
