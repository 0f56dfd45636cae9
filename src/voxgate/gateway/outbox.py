"""Everything the gateway sends to one `/ws` client goes through its `Outbox`.

Why a queue and not direct sends: a client that stops reading must not stall the engine (and
through it the provider socket). Audio is bounded by seconds of audio; when a client falls
further behind, the oldest queued audio is dropped (and counted) instead of growing memory,
and the client is told once (`backpressure` paused true, a non-fatal `rate_limited`), then
`backpressure` paused false when it has caught up. Control messages are never dropped, but
a client that lets thousands pile up is closed. Below this queue the server's transport
stops taking frames at its write high-water mark (uvicorn: 64 KiB), so the queue is the
only place a slow client's backlog can grow.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.websockets import WebSocket

from voxgate import protocol as P

#: One queued frame: (is_audio, payload, audio bytes, item id or transcript key). The payload
#: is encoded text, raw bytes, or a one-element list holding a transcript still open to merging.
#: A plain tuple, read by unpacking: audio frames are queued 50 times a second per session, and
#: building a NamedTuple costs six times as much as a tuple.
Entry = tuple[bool, Any, int, str]


class SlowClient(Exception):
    """The client lets control messages pile up unread: its session must end."""


class Outbox:
    """The bounded queue in front of one client socket, and the task that drains it."""

    MAX_CONTROL = 5000

    def __init__(self, websocket: WebSocket, max_audio_bytes: int) -> None:
        self._ws = websocket
        self._queue: deque[Entry] = deque()
        self._open_transcripts: dict[str, list[P.TranscriptMessage]] = {}
        self._wake = asyncio.Event()
        self.max_audio_bytes = max_audio_bytes
        self.audio_bytes = 0
        self.control_count = 0
        self.dropped_audio_bytes = 0
        #: Audio had to be dropped and the backlog has not drained yet. The session tells the
        #: client (`backpressure` paused true); `run()` says paused false once it caught up.
        self.congested = False
        self._closed = False
        #: When the send in progress began (None when idle): how long the client has not read.
        self._sending_since: float | None = None

    def put(self, message: Mapping[str, Any]) -> None:
        if self._closed:
            return
        self._queue.append((False, orjson.dumps(message).decode(), 0, ""))
        self._control_queued()

    def put_transcript(self, message: P.TranscriptMessage) -> None:
        """Queue a `transcript`, merged into one of the same item still waiting to be sent.

        Each transcript carries all text so far, so for a client that reads slowly the queued
        ones would grow with the square of the answer; merging keeps the backlog linear and
        loses nothing: `text` is the newest, `delta` the concatenation of the merged deltas.
        """
        if self._closed:
            return
        key = f"{message['role']}:{message['itemId']}"
        holder = self._open_transcripts.get(key)
        if holder is not None:
            previous = holder[0]
            if message["text"].startswith(previous["text"]):
                message["delta"] = previous["delta"] + message["delta"]
            holder[0] = message
            return
        holder = [message]
        self._open_transcripts[key] = holder
        self._queue.append((False, holder, 0, key))
        self._control_queued()

    def _control_queued(self) -> None:
        self.control_count += 1
        if self.control_count > self.MAX_CONTROL:
            raise SlowClient("the client is not reading messages")
        self._wake.set()

    def put_audio(self, payload: str | bytes, nbytes: int, item_id: str) -> int:
        """Queue one audio frame; returns bytes of older audio dropped to make room."""
        if self._closed:
            return 0
        self._queue.append((True, payload, nbytes, item_id))
        self.audio_bytes += nbytes
        dropped = 0
        if self.audio_bytes > self.max_audio_bytes:
            dropped = self._drop_oldest_audio(self.audio_bytes - self.max_audio_bytes)
        self._wake.set()
        return dropped

    def _drop_oldest_audio(self, need: int) -> int:
        dropped = 0
        kept: deque[Entry] = deque()
        queue = self._queue
        while queue and dropped < need:
            entry = queue.popleft()
            is_audio, _, nbytes, _ = entry
            if is_audio:
                dropped += nbytes
            else:
                kept.append(entry)
        kept.extend(queue)
        self._replace_queue(kept)
        self.audio_bytes -= dropped
        self.dropped_audio_bytes += dropped
        return dropped

    def _replace_queue(self, kept: deque[Entry]) -> None:
        # In place: `run()` holds this deque; a new object would leave it sending dropped
        # audio from the old one and never see anything queued after the drop.
        self._queue.clear()
        self._queue.extend(kept)

    def drop_audio(self, item_id: str | None = None) -> int:
        """Drop queued audio (of one item, or all): an interrupt must silence the client now."""
        if not self.audio_bytes:
            return 0
        dropped = 0
        kept: deque[Entry] = deque()
        for entry in self._queue:
            is_audio, _, nbytes, key = entry
            if is_audio and (item_id is None or key == item_id):
                dropped += nbytes
            else:
                kept.append(entry)
        self._replace_queue(kept)
        self.audio_bytes -= dropped
        return dropped

    def pending_control(self) -> list[str]:
        """The control messages still queued, encoded: a session's last words include them."""
        return [self._encoded(payload, key) for is_audio, payload, _, key in self._queue if not is_audio]

    def _encoded(self, payload: Any, key: str) -> Any:
        if isinstance(payload, list):  # a transcript: closed to merging once it leaves
            self._open_transcripts.pop(key, None)
            return P.encode(payload[0])
        return payload

    def close(self) -> None:
        self._closed = True
        self._queue.clear()
        self._open_transcripts.clear()

    async def run(self) -> None:
        ws_send = self._ws.send
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            is_audio, payload, nbytes, key = queue.popleft()
            if is_audio:
                self.audio_bytes -= nbytes
                if self.congested and self.audio_bytes <= self.max_audio_bytes // 4:
                    # Caught up: say so next, ahead of the audio still queued.
                    self.congested = False
                    queue.appendleft((False, P.encode(P.backpressure_message(False)), 0, ""))
                    self.control_count += 1
            else:
                self.control_count -= 1
                if isinstance(payload, list):
                    payload = self._encoded(payload, key)
            self._sending_since = time.monotonic()
            if isinstance(payload, bytes):
                await ws_send({"type": "websocket.send", "bytes": payload})
            else:
                await ws_send({"type": "websocket.send", "text": payload})
            self._sending_since = None

    def stalled_s(self) -> float:
        """Seconds the current send has been waiting for the client to read (0 when idle)."""
        since = self._sending_since
        return 0.0 if since is None else time.monotonic() - since


#: Builds a session's outbox from (socket, max audio bytes); a benchmark passes a variant.
OutboxFactory = Callable[[WebSocket, int], Outbox]


def abort_connection(websocket: WebSocket) -> bool:
    """Drop the TCP connection under `websocket` at once; False when no transport was found.

    For a client that does not take a session's last words: a graceful close would wait for
    the write buffer to drain, which never happens while the peer keeps acknowledging a zero
    window, so the server would hold the connection and its buffers long after the session
    ended. The server's ASGI `send` is a bound method of its protocol object (uvicorn:
    websockets, wsproto), which owns the transport (Starlette may wrap it in a closure); under
    a server without one this does nothing.
    """
    transport = _server_transport(getattr(websocket, "_send", None))
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    return True


def _server_transport(send: Any) -> Any:
    """The asyncio transport behind an ASGI `send`: the server's protocol is the bound method's
    owner, possibly behind a few wrapping closures (Starlette's exception handling)."""
    pending = [send]
    for _ in range(8):
        if not pending:
            break
        fn = pending.pop()
        transport = getattr(getattr(fn, "__self__", None), "transport", None)
        if transport is not None:
            return transport
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if callable(value):
                pending.append(value)
    return None


__all__ = ["Entry", "Outbox", "OutboxFactory", "SlowClient", "abort_connection"]
