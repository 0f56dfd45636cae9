"""The per-client outbound queue: bounded audio, in-place drops, coalesced transcripts."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from voxgate import protocol as P
from voxgate.gateway.outbox import Outbox


class RecordingSocket:
    """Stands in for the ASGI send side of a client socket: records what would go out."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message.get("text") or message.get("bytes"))


def _transcript(text: str, delta: str, final: bool = False, item: str = "item_1") -> dict[str, Any]:
    return P.transcript_message("assistant", item, text, delta, final)


async def test_queued_transcripts_of_one_item_merge_without_losing_text() -> None:
    outbox = Outbox(RecordingSocket(), max_audio_bytes=48000)  # type: ignore[arg-type]
    outbox.put_transcript(_transcript("Hello", "Hello"))
    outbox.put_transcript(_transcript("Hello there", " there"))
    outbox.put_audio(b"\0\0" * 480, 960, "item_1")
    outbox.put_transcript(_transcript("Hello there, friend.", ", friend.", final=True))
    outbox.put_transcript(_transcript("Other", "Other", item="item_2"))
    pending = [orjson.loads(text) for text in outbox.pending_control()]
    assert [(m["itemId"], m["text"], m["delta"], m["final"]) for m in pending] == [
        ("item_1", "Hello there, friend.", "Hello there, friend.", True),
        ("item_2", "Other", "Other", False),
    ]
    assert outbox.control_count == 2


async def test_a_sent_transcript_is_not_rewritten_and_revisions_keep_their_delta() -> None:
    socket = RecordingSocket()
    outbox = Outbox(socket, max_audio_bytes=48000)  # type: ignore[arg-type]
    sender = asyncio.create_task(outbox.run())
    try:
        outbox.put_transcript(_transcript("what on", "what on"))
        async with asyncio.timeout(5):
            while not socket.sent:
                await asyncio.sleep(0.01)
        # The recogniser revised its guess: the new delta is the whole new text.
        outbox.put_transcript(_transcript("what time", "what time"))
        outbox.put_transcript(_transcript("what time is it", " is it", final=True))
        async with asyncio.timeout(5):
            while len(socket.sent) < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    finally:
        sender.cancel()
    sent = [orjson.loads(text) for text in socket.sent]
    assert [(m["text"], m["delta"], m["final"]) for m in sent] == [
        ("what on", "what on", False),
        ("what time is it", "what time is it", True),
    ]


async def test_dropping_audio_keeps_the_sender_working() -> None:
    socket = RecordingSocket()
    outbox = Outbox(socket, max_audio_bytes=1920)  # type: ignore[arg-type]
    for _ in range(5):
        outbox.put_audio(b"\1\0" * 480, 960, "item_1")
    assert outbox.audio_bytes <= 1920 and outbox.dropped_audio_bytes == 3 * 960
    assert outbox.drop_audio("item_1") == 1920
    sender = asyncio.create_task(outbox.run())
    try:
        outbox.put(P.pong_message("after"))
        async with asyncio.timeout(5):
            while not socket.sent:
                await asyncio.sleep(0.01)
    finally:
        sender.cancel()
    assert orjson.loads(socket.sent[0]) == {"type": "pong", "id": "after"}
