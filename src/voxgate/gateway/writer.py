"""Store writes off the audio path: one task per session drains a bounded queue, in order.

Why a task and not inline awaits: a slow database must never delay the frames of a live
conversation. Why in order: a later write may depend on an earlier one (marking a turn
interrupted needs the id its insert returned). Why bounded with retries: a store hiccup is
retried a few times, and a store that is down cannot grow memory without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from voxgate.store.base import ConversationStore

log = logging.getLogger("voxgate.store.writer")

Write = Callable[[], Awaitable[None]]


class StoredTurn(Protocol):
    #: Set by the turn's insert once it has run (None before).
    stored_id: int | None


class StoreWriter:
    ATTEMPTS = 3

    def __init__(self, label: str, maxsize: int = 10_000) -> None:
        self.label = label
        self._queue: asyncio.Queue[Write | None] = asyncio.Queue(maxsize)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"writer-{self.label}")

    def enqueue(self, write: Write) -> None:
        try:
            self._queue.put_nowait(write)
        except asyncio.QueueFull:
            log.error("%s: store write queue full; a turn was not stored", self.label)

    def mark_interrupted(
        self, store: ConversationStore, turn: StoredTurn, heard: str, audio_ms: int | None
    ) -> None:
        """A turn already queued for insert turned out to be cut short. Queued behind its
        insert, so by the time this runs the insert has set `turn.stored_id`."""

        async def write() -> None:
            if turn.stored_id is not None:
                await store.mark_interrupted(turn.stored_id, heard, audio_ms)

        self.enqueue(write)

    async def finish(self, deadline_s: float) -> None:
        """Write everything queued so far (bounded by `deadline_s`), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(self._task, deadline_s)
        except (TimeoutError, Exception):
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            write = await self._queue.get()
            if write is None:
                return
            for attempt in range(1, self.ATTEMPTS + 1):
                try:
                    await write()
                    break
                except Exception:
                    log.exception("%s: a store write failed (attempt %d)", self.label, attempt)
                    await asyncio.sleep(0.2 * attempt)
