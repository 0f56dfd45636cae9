"""`ConversationEngine.audio_sink`: audio skips the event queue only when that keeps the order.

The `/ws` session takes assistant audio straight from the engine's task (one task switch less
per frame). Every other event, and audio behind any event still queued, goes through
`events()`, so the consumer sees everything in the order it was emitted; a sink that fails hands
its event to the queue, where the consumer meets the failure in its own task.
"""

from __future__ import annotations

from typing import Any

from voxgate.engines.base import AssistantSpeaking, AudioOut, ConversationEngine, StartOptions


class _Engine(ConversationEngine):
    name = "sink-test"

    async def start(self, options: StartOptions) -> None: ...
    async def stop(self) -> None:
        self._finish_events()

    async def send_audio(self, pcm16: bytes) -> None: ...
    async def commit(self) -> None: ...
    async def send_user_message(self, text: str) -> None: ...
    async def send_context_update(self, payload: dict[str, Any]) -> None: ...
    async def interrupt(self, played_ms: int | None) -> None: ...


async def _drain(engine: ConversationEngine) -> list[object]:
    await engine.stop()
    return [event async for event in engine.events()]


async def test_audio_goes_to_the_sink_only_behind_an_empty_queue() -> None:
    engine = _Engine()
    order: list[object] = []
    engine.audio_sink = order.append
    first, second, third = AudioOut(b"\0\0", "a"), AudioOut(b"\1\1", "a"), AudioOut(b"\2\2", "a")
    await engine.emit(first)  # nothing queued: straight to the sink
    await engine.emit(AssistantSpeaking(False))  # not audio: queued
    await engine.emit(second)  # behind a queued event: queued too, to keep the order
    assert order == [first]
    queued = []
    while not engine._events.empty():
        queued.append(engine._events.get_nowait())
    assert queued == [AssistantSpeaking(False), second]
    await engine.emit(third)  # the queue is empty again
    assert order == [first, third]
    assert await _drain(engine) == []


async def test_without_a_sink_everything_is_queued() -> None:
    engine = _Engine()
    audio = AudioOut(b"\0\0", "a")
    await engine.emit(audio)
    assert await _drain(engine) == [audio]


async def test_a_failing_sink_hands_its_event_to_the_queue_and_is_dropped() -> None:
    engine = _Engine()

    def broken(event: AudioOut) -> None:
        raise RuntimeError("bug in the consumer")

    engine.audio_sink = broken
    audio = AudioOut(b"\0\0", "a")
    await engine.emit(audio)
    assert engine.audio_sink is None
    assert await _drain(engine) == [audio]
