"""Cascade latency: from the last voiced input sample to the first assistant audio byte.

Drives `CascadeEngine` directly (no gateway) with espeak-ng utterances sent in real time as
20 ms frames, like a microphone would, and reads the engine's events as a client would. For each
turn it records wall-clock (monotonic) times:

    last voiced sample sent -> VAD end-of-turn decision        (the silence hangover)
    VAD decision            -> speech-to-text final            (final decode; Whisper starts it
                                                                at the pause, so mostly done)
    STT final               -> first responder token
    first token             -> first TTS audio emitted         (first sentence synthesis)
    first audio emitted     -> first audio byte at the client  (event queue)

`processing` is everything after the end-of-turn decision; `total` is last voiced sample ->
first audio at the client (target p50 <= VAD hangover + 350 ms with the local models).

Run: `python benchmarks/cascade_latency.py [N] [sim]` (prints JSON and a table; `sim` streams
the reply from the bundled OpenAI-compatible simulator over HTTP), or `voxgate bench cascade`,
or `run(n_utterances=20)` from code.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from voxgate.audio import bytes_for_ms
from voxgate.config import Settings
from voxgate.engines.base import AudioOut, ResponseDone, StartOptions
from voxgate.engines.cascade.engine import CascadeEngine
from voxgate.testing.llm_sim import LLMSimulator
from voxgate.testing.speech import silence, synthesize

PHRASES = [
    "hello can you hear me",
    "what time is it",
    "please tell me a joke",
    "how is the weather today",
    "set a timer for ten minutes",
    "what is the capital of france",
    "turn on the kitchen lights",
    "play some relaxing music",
    "how far away is the moon",
    "remind me to call my mother",
    "what is two plus two",
    "read me the latest news",
    "good morning to you",
    "where is the nearest station",
    "can you spell the word necessary",
    "thank you very much",
    "open the front door please",
    "how tall is mount everest",
    "what day is it tomorrow",
    "goodbye and see you later",
]

FRAME_MS = 20
RATE = 16000


def _last_voiced_sample(pcm: bytes, threshold: int = 300) -> int:
    """Index of the last sample louder than `threshold` (espeak trails off into near-silence)."""
    x = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    idx = np.nonzero(x > threshold)[0]
    return int(idx[-1]) if len(idx) else 0


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def _run(n_utterances: int, settings: Settings | None, responder: str) -> dict[str, Any]:
    settings = settings or Settings(_env_file=None)  # type: ignore[call-arg]
    sim: LLMSimulator | None = None
    if responder == "sim":
        # The streaming chat path over real HTTP (the simulator shares this event loop).
        sim = await LLMSimulator(reply="Sure. Here is a short answer for you.").start()
        settings = settings.model_copy(update={"llm_url": sim.base_url})
    try:
        return await _measure(n_utterances, settings)
    finally:
        if sim is not None:
            await sim.stop()


async def _measure(n_utterances: int, settings: Settings) -> dict[str, Any]:
    engine = CascadeEngine.from_settings(settings)
    await engine.start(StartOptions())
    frame_bytes = bytes_for_ms(FRAME_MS, RATE)
    first_audio_seen: asyncio.Event = asyncio.Event()
    response_done: asyncio.Event = asyncio.Event()
    seen: dict[str, float] = {}

    async def read() -> None:
        async for event in engine.events():
            if isinstance(event, AudioOut) and "client_audio" not in seen:
                seen["client_audio"] = time.monotonic()
                first_audio_seen.set()
            elif isinstance(event, ResponseDone):
                response_done.set()

    reader = asyncio.create_task(read())
    turns: list[dict[str, float]] = []
    misses = 0
    try:
        for i in range(n_utterances):
            phrase = PHRASES[i % len(PHRASES)]
            speech = synthesize(phrase, RATE)
            last_voiced = _last_voiced_sample(speech)
            lead = silence(200, RATE)
            audio = lead + speech + silence(1500, RATE)
            last_voiced_byte = len(lead) + last_voiced * 2
            seen.clear()
            first_audio_seen.clear()
            response_done.clear()
            t_last_voiced: float | None = None
            start = time.monotonic()
            # Real time: frame k leaves at start + k * 20 ms, as a microphone delivers it.
            for k, off in enumerate(range(0, len(audio), frame_bytes)):
                due = start + k * FRAME_MS / 1000.0
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await engine.send_audio(audio[off : off + frame_bytes])
                if t_last_voiced is None and off + frame_bytes > last_voiced_byte:
                    t_last_voiced = time.monotonic()
                if first_audio_seen.is_set():
                    break
            try:
                await asyncio.wait_for(first_audio_seen.wait(), 10.0)
                await asyncio.wait_for(response_done.wait(), 10.0)
            except TimeoutError:
                misses += 1
                continue
            tm = engine.timings
            assert t_last_voiced is not None
            if None in (tm.speech_end_t, tm.stt_final_t, tm.first_token_t, tm.first_audio_t):
                misses += 1
                continue
            turns.append(
                {
                    "hangover_ms": (tm.speech_end_t - t_last_voiced) * 1000.0,  # type: ignore[operator]
                    "stt_final_ms": (tm.stt_final_t - tm.speech_end_t) * 1000.0,  # type: ignore[operator]
                    "first_token_ms": (tm.first_token_t - tm.stt_final_t) * 1000.0,  # type: ignore[operator]
                    "first_tts_audio_ms": (tm.first_audio_t - tm.first_token_t) * 1000.0,  # type: ignore[operator]
                    "to_client_ms": (seen["client_audio"] - tm.first_audio_t) * 1000.0,  # type: ignore[operator]
                    "processing_ms": (seen["client_audio"] - tm.speech_end_t) * 1000.0,  # type: ignore[operator]
                    "total_ms": (seen["client_audio"] - t_last_voiced) * 1000.0,
                }
            )
            # The reply was "played" in full: the next utterance is a new turn, not a barge-in.
            await engine.interrupt(10**9)
    finally:
        await engine.stop()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    keys = list(turns[0]) if turns else []
    summary = {
        key: {
            "p50": round(_pct([t[key] for t in turns], 0.5), 1),
            "p90": round(_pct([t[key] for t in turns], 0.9), 1),
            "mean": round(statistics.fmean(t[key] for t in turns), 1),
        }
        for key in keys
    }
    hangover = settings.vad_silence_ms
    return {
        "utterances": n_utterances,
        "measured": len(turns),
        "missed": misses,
        "vad_silence_ms": hangover,
        "parts": engine.parts,
        "summary_ms": summary,
        "targets": {
            "total_p50_le_hangover_plus_350ms": bool(turns)
            and summary["total_ms"]["p50"] <= hangover + 350.0,
        },
    }


def run(
    n_utterances: int = 20, settings: Settings | None = None, responder: str = "configured"
) -> dict[str, Any]:
    """Measure `n_utterances` real-time turns and return p50/p90/mean per stage (ms).

    `responder="sim"` puts the bundled OpenAI-compatible simulator behind the responder (the
    streaming HTTP path); otherwise the configured responder is used (echo by default).
    """
    return asyncio.run(_run(n_utterances, settings, responder))


def _table(result: dict[str, Any]) -> str:
    rows = [f"{'stage':<20}{'p50 ms':>10}{'p90 ms':>10}{'mean ms':>10}"]
    for key, s in result["summary_ms"].items():
        rows.append(f"{key:<20}{s['p50']:>10.1f}{s['p90']:>10.1f}{s['mean']:>10.1f}")
    return "\n".join(rows)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    result = run(n, responder=sys.argv[2] if len(sys.argv) > 2 else "configured")
    print(json.dumps(result, indent=2))
    print(_table(result))
