"""One `/v1/realtime` session: an OpenAI Realtime (GA) client relayed to OpenAI, both ways.

Why a relay and not the engine seam: a compat client already speaks OpenAI's protocol, so
translating it to the neutral protocol and back would cost CPU on every audio frame and lose
features (tools, custom session fields) the client relies on. The relay therefore does as
little as possible on the hot path:

- client -> upstream: `input_audio_buffer.append` frames are recognised by a prefix check on
  the raw text (compact JSON from browsers, `json.dumps` spacing from the Python SDK) and
  forwarded untouched; only their length is counted (audio rate limit, metrics).
- upstream -> client: `response.output_audio.delta` frames are recognised the same way and
  forwarded untouched; the item id is read with one bounded `str.find` so the audio heard per
  item is known for truncation.
- Everything else is rare (a few events per turn) and is parsed with orjson to read
  transcripts, errors and turn boundaries. Parsed frames are still forwarded as the original
  text, so the client sees exactly what OpenAI sent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, assert_never

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voxgate.engines.upstream import close_quietly
from voxgate.gateway.auth import Identity
from voxgate.gateway.compat.handshake import ENGINE_NAME, SERVER_ERROR, openai_error
from voxgate.gateway.limits import TokenBucket
from voxgate.gateway.live import Ending, LiveSessionBase, SessionEnded
from voxgate.gateway.state import GatewayState
from voxgate.protocol import CloseCode

#: PCM16 mono at 24 kHz, the only PCM rate GA allows.
BYTES_PER_S = 48000

# Hot-path prefixes. Browsers (`JSON.stringify`) send compact JSON, the Python SDK sends
# `json.dumps` output with ", " / ": " separators; OpenAI sends compact JSON with `type` first.
_APPEND_PREFIXES = (
    '{"type":"input_audio_buffer.append"',
    '{"type": "input_audio_buffer.append"',
)
_APPEND_OVERHEAD = 48  # `{"type": "input_audio_buffer.append", "audio": "` + `"}`
_DELTA_PREFIX = '{"type":"response.output_audio.delta"'
_DELTA_MARK = '"type":"response.output_audio.delta"'
_DELTA_OVERHEAD = 200  # everything in a delta event that is not base64 audio, roughly
_ITEM_ID_MARK = '"item_id":"'

_CLIENT_GONE = (OSError, RuntimeError, WebSocketDisconnect)


class CompatSession(LiveSessionBase):
    """One OpenAI-protocol client relayed to one upstream OpenAI session.

    Two relay loops (client->upstream, upstream->client) share the task group with the
    watchdog. The conversation is created as the turn writer's first job, so the relay never
    waits on the database.
    """

    label = "compat session"

    def __init__(
        self,
        state: GatewayState,
        websocket: WebSocket,
        upstream: ClientConnection,
        identity: Identity,
        model: str,
    ) -> None:
        super().__init__(state, websocket, identity, engine_name=ENGINE_NAME)
        self.upstream = upstream
        self.model = model
        s = self.settings
        self._control_bucket = TokenBucket.per_minute(s.control_messages_per_min)
        rate_cap = BYTES_PER_S * s.audio_rate_multiple
        # Measured in base64 characters' worth of PCM; a two-second burst like the neutral session.
        self._audio_bucket = TokenBucket(capacity=rate_cap * 2, rate=rate_cap)
        self._last_rate_error = 0.0
        self.turns.out_bytes_per_s = BYTES_PER_S

    def info(self) -> dict[str, Any]:
        return {**super().info(), "model": self.model}

    # --- lifecycle hooks -----------------------------------------------------------------------

    def _start_loops(self, group: asyncio.TaskGroup) -> None:
        self._count_start()
        self.turns.open_conversation_later(
            self.user_id, ENGINE_NAME, {"model": self.model, "sessionId": self.id}
        )
        group.create_task(self._client_to_upstream(), name="compat-in")
        group.create_task(self._upstream_to_client(), name="compat-out")

    def _end(
        self, close_code: int, reason: str, code: str, message: str, type_: str = "invalid_request_error"
    ) -> SessionEnded:
        """An end the client reads about first, as an OpenAI error event."""
        self.state.metrics.errors_total.labels(code).inc()
        return SessionEnded(close_code, reason, [openai_error(code, message, type_=type_)])

    def _ending(self, why: Ending) -> SessionEnded:
        s = self.settings
        match why:
            case Ending.SHUTDOWN:
                reason = self.shutdown_reason
                return self._end(
                    CloseCode.GOING_AWAY, reason, reason,
                    "the gateway is restarting; reconnect to continue", SERVER_ERROR,
                )  # fmt: skip
            case Ending.IDLE | Ending.STALLED:  # (stalled needs an outbox; the relay has none)
                return self._end(
                    CloseCode.IDLE_TIMEOUT, "idle timeout", "idle_timeout",
                    f"closing an idle session: nothing received for {s.idle_timeout_s:.0f} s",
                )  # fmt: skip
            case Ending.EXPIRED:
                return self._end(
                    CloseCode.IDLE_TIMEOUT, "session expired", "session_expired",
                    f"the session reached the gateway's maximum duration of {s.max_session_s:.0f} s",
                )  # fmt: skip
            case Ending.INTERNAL:
                return self._end(
                    CloseCode.INTERNAL, "internal error", "internal",
                    "internal error in the gateway", SERVER_ERROR,
                )  # fmt: skip
            case _:
                assert_never(why)

    async def _stop_upstream(self) -> None:
        await close_quietly(self.upstream, 2.0)

    def _store_cut_off(self, ended: SessionEnded) -> None:
        # Turns the listener cut short but that never got a final transcript: keep what we have.
        self.turns.store_cut_off(truncated_only=True)

    # --- client -> upstream --------------------------------------------------------------------

    async def _client_to_upstream(self) -> None:
        receive = self.ws.receive
        send_up = self.upstream.send
        max_frame = self.settings.max_frame_bytes
        audio_take = self._audio_bucket.take
        try:
            while True:
                message = await receive()
                text = message.get("text")
                if text is None:
                    if message["type"] == "websocket.disconnect":
                        raise SessionEnded(
                            message.get("code") or CloseCode.NORMAL,
                            "client closed",
                            client_gone=True,
                        )
                    data = message.get("bytes") or b""
                    if len(data) > max_frame:
                        self._too_big(len(data))
                    text = data.decode("utf-8", "replace")  # OpenAI reads binary frames as JSON too
                self.last_activity = time.monotonic()
                n = len(text)
                if n > max_frame // 4 and len(text.encode()) > max_frame:
                    self._too_big(len(text.encode()))
                if text.startswith(_APPEND_PREFIXES):
                    # Hot path: forwarded untouched, only its length counted.
                    nbytes = (n - _APPEND_OVERHEAD) * 3 >> 2
                    if not audio_take(nbytes):
                        await self._audio_rate_error()
                        continue
                    self.audio_in_bytes += nbytes
                    await send_up(text)
                    continue
                if not await self._client_event(text):
                    continue
                await send_up(text)
        except ConnectionClosed as exc:
            raise self._upstream_closed(exc) from None

    async def _client_event(self, text: str) -> bool:
        """A rare client event: rate-limit it and read what the store needs. -> forward?"""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            event = None
        etype = event.get("type") if event is not None else None
        if etype == "input_audio_buffer.append":  # an append with other key order or spacing
            assert event is not None
            return await self._odd_append(event)
        if not self._control_bucket.take():
            await self._send_error(
                "rate_limited",
                f"too many events: the gateway allows {self.settings.control_messages_per_min} "
                "non-audio events per minute; this event was dropped",
                event_id=event.get("event_id") if event is not None else None,
            )
            return False
        if event is None:
            return True  # malformed: OpenAI answers with its own error event
        if etype == "conversation.item.create":
            self._on_item_create(event)
        elif etype == "conversation.item.truncate":
            self._on_truncate(event)
        elif etype in ("response.create", "input_audio_buffer.commit"):
            self.turns.mark()
        return True

    async def _odd_append(self, event: dict[str, Any]) -> bool:
        audio = event.get("audio")
        nbytes = len(audio) * 3 >> 2 if isinstance(audio, str) else 0
        if not self._audio_bucket.take(nbytes):
            await self._audio_rate_error()
            return False
        self.audio_in_bytes += nbytes
        return True

    def _too_big(self, n: int) -> None:
        raise self._end(
            CloseCode.MESSAGE_TOO_BIG,
            "message too big",
            "payload_too_large",
            f"an event of {n} bytes exceeds the gateway's limit of {self.settings.max_frame_bytes} "
            "bytes (VOXGATE_MAX_FRAME_BYTES); send audio in smaller chunks",
        )

    async def _audio_rate_error(self) -> None:
        now = time.monotonic()
        if now - self._last_rate_error > 1.0:  # one sentence a second is enough
            self._last_rate_error = now
            await self._send_error(
                "rate_limited",
                f"audio arrives faster than {self.settings.audio_rate_multiple:g}x real time; "
                "audio events are being dropped",
            )

    async def _send_error(self, code: str, message: str, *, event_id: str | None = None) -> None:
        """A non-fatal error event, sent at once: rare, and nothing else queues on this side."""
        self.state.metrics.errors_total.labels(code).inc()
        event = openai_error(code, message, event_id=event_id)
        try:
            await self.ws.send({"type": "websocket.send", "text": orjson.dumps(event).decode()})
        except _CLIENT_GONE:
            raise SessionEnded(CloseCode.NORMAL, "client went away", client_gone=True) from None

    def _on_item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if (
            not isinstance(item, dict)
            or item.get("type") != "message"
            or item.get("role") != "user"
        ):
            return
        parts = item.get("content") or []
        text = " ".join(
            str(p.get("text") or "")
            for p in parts
            if isinstance(p, dict) and p.get("type") == "input_text"
        ).strip()
        if not text:
            return
        self.turns.mark()
        item_id = item.get("id")
        self.turns.store_text("user", str(item_id) if item_id else None, text)

    def _on_truncate(self, event: dict[str, Any]) -> None:
        """The client says the listener heard only `audio_end_ms` of an assistant item."""
        item_id = event.get("item_id")
        played = event.get("audio_end_ms")
        if not isinstance(item_id, str) or not isinstance(played, int):
            return
        turn = self.turns.by_item.get(item_id)
        if turn is None or turn.role != "assistant":
            return
        # Not stored yet: it is stored, marked interrupted, when its transcript is final.
        self.turns.cut_short(turn, played, store_now=False)

    # --- upstream -> client --------------------------------------------------------------------

    async def _upstream_to_client(self) -> None:
        recv = self.upstream.recv
        ws_send = self.ws.send
        turnlog = self.turns
        by_item = turnlog.by_item
        while True:
            try:
                frame = await recv()
            except ConnectionClosed as exc:
                raise self._upstream_closed(exc) from None
            if isinstance(frame, bytes):
                frame = frame.decode("utf-8", "replace")
            if frame.startswith(_DELTA_PREFIX) or _DELTA_MARK in frame[:160]:
                # Hot path: assistant audio, forwarded untouched.
                nbytes = (len(frame) - _DELTA_OVERHEAD) * 3 >> 2
                self.audio_out_bytes += nbytes
                start = frame.find(_ITEM_ID_MARK, 0, 300)
                if start >= 0:
                    start += len(_ITEM_ID_MARK)
                    end = frame.find('"', start, start + 80)
                    if end > start:
                        item_id = frame[start:end]
                        turn = by_item.get(item_id)
                        if turn is None:
                            turn = turnlog.turn("assistant", item_id)
                        turn.audio_bytes += nbytes
                if turnlog.awaiting_audio:
                    turnlog.first_audio()
            else:
                self._server_event(frame)
            try:
                await ws_send({"type": "websocket.send", "text": frame})
            except _CLIENT_GONE:
                raise SessionEnded(CloseCode.NORMAL, "client went away", client_gone=True) from None

    def _upstream_closed(self, exc: ConnectionClosed) -> SessionEnded:
        """Mirror OpenAI's close to the client (1000 normal, 4000 rejection, 1001 expiry...)."""
        rcvd = exc.rcvd
        if rcvd is not None and rcvd.code not in (1005, 1006, 1015) and 1000 <= rcvd.code < 5000:
            return SessionEnded(rcvd.code, rcvd.reason or "upstream closed")
        return self._end(
            CloseCode.UPSTREAM_FAILED,
            "upstream connection lost",
            "upstream_error",
            "the gateway lost its connection to OpenAI; start a new session",
            SERVER_ERROR,
        )

    def _server_event(self, frame: str) -> None:
        """A rare upstream event: read transcripts, errors and turn boundaries from it."""
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        turns = self.turns
        etype = event.get("type")
        item_id = str(event.get("item_id") or "")
        if etype == "conversation.item.input_audio_transcription.completed":
            turn = turns.turn("user", item_id)
            turn.text = str(event.get("transcript") or "")
            if turn.text.strip() and not turn.stored:
                turns.store_turn(turn)
        elif etype in ("response.output_audio_transcript.delta", "response.output_text.delta"):
            if turns.awaiting_transcript:
                turns.first_transcript()
            if etype == "response.output_audio_transcript.delta":
                turns.turn("assistant", item_id).text += str(event.get("delta") or "")
        elif etype in ("response.output_audio_transcript.done", "response.output_text.done"):
            turn = turns.turn("assistant", item_id)
            text = event.get("transcript") if etype.endswith("transcript.done") else event.get("text")
            turn.text = str(text or "")
            if not turn.stored and turn.text:
                turns.store_turn(turn)
        elif etype == "input_audio_buffer.speech_stopped":
            turns.mark()
        elif etype == "error":
            err = event.get("error") or {}
            code = err.get("code") if isinstance(err, dict) else None
            self.state.metrics.errors_total.labels(f"upstream:{code or 'unknown'}").inc()


__all__ = ["BYTES_PER_S", "CompatSession"]
