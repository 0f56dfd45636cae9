"""What a live session remembers of its conversation's turns, and how they reach the store.

Both endpoints keep the same record: one `Turn` per item (the newest 64: an item older than
that finished long ago), when the user's turn ended (to time the first assistant audio and
text of the answer), and a `StoreWriter` that inserts finished turns in order, off the audio
path, so a slow database never delays a frame and a dying session still stores its turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from voxgate.engines.base import Role, ToolExchange
from voxgate.gateway.metrics import Metrics
from voxgate.gateway.writer import StoreWriter
from voxgate.store.base import ConversationStore, TurnRecord
from voxgate.turns import heard_prefix


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Turn:
    role: Role
    item_id: str | None
    started_at: datetime = field(default_factory=now_utc)
    text: str = ""
    #: Assistant audio so far, in bytes at the session's `TurnLog.out_bytes_per_s`.
    audio_bytes: int = 0
    stored: bool = False
    #: Set by the turn's insert once it has run (None before).
    stored_id: int | None = None
    interrupted: bool = False
    #: How much of the audio the listener heard, when the turn was cut short.
    played_ms: int | None = None
    #: The provider finished this turn's audio (so `audio_bytes` is its whole length).
    audio_done: bool = False
    #: The turn's audio for the audio log (None when audio logs are off).
    audio: bytearray | None = None


class TurnLog:
    """The turns of one session: a capped record, latency marks, and their persistence."""

    MAX_TURNS = 64
    #: Longest user turn kept for the audio log: a runaway turn must not grow memory.
    MAX_USER_AUDIO_S = 60

    def __init__(
        self,
        store: ConversationStore,
        metrics: Metrics,
        label: str,
        *,
        engine: str | None = None,
        audio_log: Any = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.writer = StoreWriter(label)
        #: The engine label of the latency metrics.
        self.engine = engine
        self.conversation_id: str | None = None
        self.stored_count = 0
        #: Assistant audio rate (bytes/s) as the turns count it: for `audio_ms` and heard text.
        self.out_bytes_per_s = 48000
        #: The user's audio rate (samples/s) as the audio log records it.
        self.in_rate = 24000
        #: Turns by item id, oldest first; read directly on the audio path.
        self.by_item: dict[str, Turn] = {}
        self._order: deque[str] = deque()
        self._mark: float | None = None  # end of user speech / commit / typed message
        #: The answer to the turn marked last has not produced audio / text yet.
        self.awaiting_audio = False
        self.awaiting_transcript = False
        self.audio_log = audio_log
        self._user_audio = bytearray()

    # --- conversation -------------------------------------------------------------------------

    async def open_conversation(self, user_id: str, engine: str, metadata: dict[str, Any]) -> None:
        record = await self.store.create_conversation(user_id, engine, metadata)
        self.conversation_id = record.id

    def open_conversation_later(self, user_id: str, engine: str, metadata: dict[str, Any]) -> None:
        """Create the conversation as the writer's first job: the caller never waits for the
        database, and every turn written after it has a conversation to attach to."""
        self.writer.enqueue(lambda: self.open_conversation(user_id, engine, metadata))

    def start(self) -> None:
        self.writer.start()

    async def close(self, deadline_s: float) -> None:
        """Write what is queued (within `deadline_s`), then mark the conversation ended."""
        await self.writer.finish(deadline_s)
        if self.conversation_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.end_conversation(self.conversation_id), 5.0)

    # --- the record ---------------------------------------------------------------------------

    def turn(self, role: Role, item_id: str) -> Turn:
        """The turn of `item_id`, created on first sight (forgetting the oldest beyond 64)."""
        turn = self.by_item.get(item_id)
        if turn is None:
            turn = Turn(role, item_id)
            if self.audio_log is not None:
                turn.audio = bytearray()
            self.by_item[item_id] = turn
            order = self._order
            order.append(item_id)
            while len(order) > self.MAX_TURNS:
                self.by_item.pop(order.popleft(), None)
        return turn

    def log_user_audio(self, pcm: bytes) -> None:
        buf = self._user_audio
        if len(buf) < self.MAX_USER_AUDIO_S * self.in_rate * 2:
            buf.extend(pcm)

    # --- latency marks ------------------------------------------------------------------------

    def mark(self) -> None:
        """The user's turn ended (speech stopped, commit, typed message): the answer's clock starts."""
        self._mark = time.monotonic()
        self.awaiting_audio = True
        self.awaiting_transcript = True

    def first_audio(self) -> None:
        self.awaiting_audio = False
        if self._mark is not None:
            self.metrics.turn_first_audio_seconds.labels(self.engine).observe(
                time.monotonic() - self._mark
            )

    def first_transcript(self) -> None:
        self.awaiting_transcript = False
        if self._mark is not None:
            self.metrics.turn_first_transcript_seconds.labels(self.engine).observe(
                time.monotonic() - self._mark
            )

    # --- storing ------------------------------------------------------------------------------

    def heard(self, turn: Turn) -> str:
        """An estimate of what the listener heard of a turn cut short (see `heard_prefix`)."""
        total_ms = turn.audio_bytes / self.out_bytes_per_s * 1000.0
        return heard_prefix(turn.text, turn.played_ms or 0, total_ms)

    def store_text(self, role: Role, item_id: str | None, text: str) -> None:
        """Store a turn that arrives whole (a typed message); it is not kept in the record."""
        self.store_turn(Turn(role, item_id, text=text))

    def store_tool(self, exchange: ToolExchange, status: str, error: str | None = None) -> None:
        """Store one tool call and its result as a `tool` turn (the call id is its item id)."""
        from voxgate.tools.record import tool_turn_text

        record = TurnRecord(
            role="tool",
            text=tool_turn_text(exchange, status, error),
            item_id=exchange.call_id,
            ended_at=now_utc(),
        )
        self.stored_count += 1
        self.metrics.turns_total.labels("tool").inc()
        self.writer.enqueue(lambda: self._write_record(record))

    async def _write_record(self, record: TurnRecord) -> None:
        if self.conversation_id is not None:
            await self.store.add_turn(self.conversation_id, record)

    def cut_short(
        self, turn: Turn, played_ms: int, heard: str | None = None, *, store_now: bool = True
    ) -> None:
        """The listener heard only `played_ms` of `turn`'s audio (`heard`, when known exactly).

        Nothing happens when the turn's audio is complete and `played_ms` reaches its end.

        A turn already stored is marked after its insert. One not stored yet is stored now, or
        with `store_now` false when its final text arrives, still marked interrupted.
        """
        if turn.audio_done and played_ms * self.out_bytes_per_s >= (turn.audio_bytes - 2) * 1000 - (
            self.out_bytes_per_s  # a millisecond of rounding: `played_ms` is whole milliseconds
        ):
            # A cut at (or past) the end of the audio cuts nothing: players report the full
            # length routinely once playback ends. The turn completed.
            return
        turn.interrupted = True
        turn.played_ms = played_ms
        if turn.stored:
            text = heard if heard is not None else self.heard(turn)
            self.writer.mark_interrupted(self.store, turn, text, played_ms)
        elif store_now:
            self.store_turn(turn, heard)

    def store_cut_off(self, *, truncated_only: bool) -> None:
        """Store assistant turns cut off before their final transcript, marked interrupted: the
        client already saw that text. With `truncated_only`, only those the listener cut short."""
        for turn in list(self.by_item.values()):
            if turn.role != "assistant" or turn.stored or not turn.text:
                continue
            if truncated_only and turn.played_ms is None:
                continue
            turn.interrupted = True
            self.store_turn(turn)

    def store_turn(self, turn: Turn, heard: str | None = None) -> None:
        """Queue `turn`'s insert; `heard` defaults to the estimate for a turn cut short."""
        turn.stored = True
        played = turn.played_ms
        if heard is None and played is not None:
            heard = self.heard(turn)
        audio_ms = played
        if played is None and turn.audio_bytes:
            audio_ms = int(turn.audio_bytes / self.out_bytes_per_s * 1000)
        record = TurnRecord(
            role=turn.role,
            text=turn.text,
            item_id=turn.item_id,
            started_at=turn.started_at,
            ended_at=now_utc(),
            interrupted=turn.interrupted,
            heard_text=heard,
            audio_ms=audio_ms,
        )
        self.stored_count += 1
        self.metrics.turns_total.labels(turn.role).inc()
        audio = self._take_audio(turn)
        self.writer.enqueue(lambda: self._write(turn, record, audio))

    def _take_audio(self, turn: Turn) -> bytes | None:
        """The audio the audio log keeps with this turn (and a fresh buffer for what follows)."""
        if self.audio_log is None:
            return None
        if turn.role == "user":
            spoken = bytes(self._user_audio)
            self._user_audio.clear()
            return spoken or None
        audio = bytes(turn.audio) if turn.audio else None
        turn.audio = bytearray()
        return audio

    async def _write(self, turn: Turn, record: TurnRecord, audio: bytes | None) -> None:
        conversation_id = self.conversation_id
        if conversation_id is None:
            return  # the conversation could not be created: nothing to attach turns to
        saved = await self.store.add_turn(conversation_id, record)
        turn.stored_id = saved.id
        if audio and self.audio_log is not None:
            rate = self.in_rate if turn.role == "user" else self.out_bytes_per_s // 2
            await asyncio.to_thread(
                self.audio_log.write, conversation_id, saved.turn_index or 0, turn.role, audio, rate
            )


__all__ = ["Turn", "TurnLog", "now_utc"]
