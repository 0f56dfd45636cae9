"""JSON (base64) audio on `/ws` passes through to OpenAI and back without being re-encoded.

At the engine's rate a client's `pcm16Base64` reaches the provider's `input_audio_buffer.append`
character for character, and the provider's `delta` reaches the client's `chunkBase64` the same
way; bad base64 is refused with a sentence naming the rule it broke, and nothing around it is
lost. Where the gateway needs the samples (another client rate, tiny frames gathered into one
upstream chunk) the audio still arrives whole.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable

import httpx

from voxgate.client import VoxgateClient
from voxgate.testing.openai_sim import OpenAISimulator, SimConnection

KEY = "sk-passthrough-test-0123456789"
MANUAL = {"mode": "manual"}
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _settings(make_settings, sim: OpenAISimulator):  # type: ignore[no-untyped-def]
    return make_settings(engine="openai", openai_api_key=KEY, openai_url=sim.url)


def _frame(i: int, nbytes: int = 960) -> bytes:
    """A distinct PCM16 frame (nothing a VAD hears: the turns are manual anyway)."""
    return bytes((i * 7 + k) & 0xFF for k in range(nbytes))


def _appended(conn: SimConnection) -> list[str]:
    return [e["audio"] for e in conn.received if e.get("type") == "input_audio_buffer.append"]


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_base64_passes_through_both_ways_unchanged(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw:
            async with VoxgateClient(gw.ws_url) as client, httpx.AsyncClient(base_url=gw.http_url) as http:
                ready = await client.start(turnDetection=MANUAL)
                sent = [base64.b64encode(_frame(i)).decode() for i in range(24)]
                # Base64 no encoder writes (the bits after the last byte are not zero) but any
                # decoder accepts: a decode and re-encode would change it, passing it on not.
                last = base64.b64encode(_frame(24, 962)).decode()
                sent.append(last[:-2] + _B64[_B64.index(last[-2]) | 3] + "=")
                assert base64.b64decode(sent[-1]) == _frame(24, 962) and sent[-1] != last
                for text in sent:
                    await client.send({"type": "audio_chunk", "pcm16Base64": text})
                conn = sim.accepted[-1]
                await _until(lambda: len(_appended(conn)) >= len(sent))
                assert _appended(conn) == sent  # the very same text, in order
                # Metering counts the decoded bytes: 24 x 960 + 962 bytes at 48000 a second.
                live = (await http.get(f"/api/realtime/sessions/{ready['sessionId']}")).json()
                assert live["audioInSeconds"] == round((24 * 960 + 962) / 48000, 3)
                await client.user_message("say something short")
                reply = await client.collect_reply(timeout=30)
                assert reply.response_status == "completed"
                audio = [m for m in reply.events if m["type"] == "audio"]
                deltas = [e["delta"] for e in conn.sent if e.get("type") == "response.output_audio.delta"]
                assert audio and [m["chunkBase64"] for m in audio] == deltas
                await client.stop()


async def test_bad_base64_is_refused_clearly_and_nothing_else_is_lost(
    make_settings, gateway_factory
) -> None:
    bad = [
        ("AAA-" * 240, "is not valid base64"),  # URL-safe alphabet
        ("AAAA" * 239 + "AAA", "is not valid base64"),  # length not a multiple of 4
        ("AA=A" * 240, "is not valid base64"),  # padding inside
        ("AAé=" * 240, "is not valid base64"),  # not ASCII
        (base64.b64encode(b"\1" * 959).decode(), "even number of bytes (2 per sample), got 959"),
        (960, "must be a base64 string"),
    ]
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw:
            async with VoxgateClient(gw.ws_url) as client:
                await client.start(turnDetection=MANUAL)
                good: list[str] = []
                for i, (text, sentence) in enumerate(bad):
                    frame = base64.b64encode(_frame(i)).decode()
                    good.append(frame)
                    await client.send({"type": "audio_chunk", "pcm16Base64": frame})
                    await client.send({"type": "audio_chunk", "pcm16Base64": text})
                    err = await client.wait_for("error")
                    assert err["code"] == "bad_request" and not err.get("fatal")
                    assert sentence in err["message"], err
                last = base64.b64encode(_frame(99)).decode()
                good.append(last)
                await client.send({"type": "audio_chunk", "pcm16Base64": last})
                conn = sim.accepted[-1]
                # In order: had any bad frame gone through, it would be here before the last.
                await _until(lambda: len(_appended(conn)) >= len(good))
                assert _appended(conn) == good
                await client.ping("still-here")
                assert (await client.wait_for("pong"))["id"] == "still-here"
                await client.stop()


async def test_other_rates_and_tiny_frames_still_arrive_whole(make_settings, gateway_factory) -> None:
    async with OpenAISimulator(keys=[KEY], pace=4.0) as sim:
        async with gateway_factory(_settings(make_settings, sim)) as gw:
            # 10 ms frames at 24 kHz are gathered into 20 ms upstream chunks (decoded for it).
            async with VoxgateClient(gw.ws_url) as client:
                await client.start(turnDetection=MANUAL)
                frames = [_frame(i, 480) for i in range(20)]
                for pcm in frames:
                    await client.send_audio(pcm)
                conn = sim.accepted[-1]
                joined = b"".join(frames)
                await _until(lambda: sum(len(base64.b64decode(a)) for a in _appended(conn)) >= len(joined))
                assert b"".join(base64.b64decode(a) for a in _appended(conn)) == joined
                await client.stop()
            # A JSON client at 16 kHz in, 48 kHz out: resampled both ways.
            async with VoxgateClient(gw.ws_url) as client:
                await client.start(inputRate=16000, outputRate=48000, turnDetection=MANUAL)
                sent = b"".join(_frame(i, 640) for i in range(25))  # 0.5 s at 16 kHz
                for i in range(25):
                    await client.send_audio(sent[i * 640 : (i + 1) * 640])
                conn = sim.accepted[-1]
                want = len(sent) * 3 // 2
                await _until(
                    lambda: sum(len(base64.b64decode(a)) for a in _appended(conn)) >= want - 24000 * 2 * 0.05
                )
                await client.user_message("say something short")
                reply = await client.collect_reply(timeout=30)
                deltas = [e["delta"] for e in conn.sent if e.get("type") == "response.output_audio.delta"]
                sent_out = sum(len(base64.b64decode(d)) for d in deltas)
                assert reply.audio and abs(len(reply.audio) - 2 * sent_out) < 48000 * 2 * 0.05
                await client.stop()
