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
from typing import Any, ClassVar, assert_never

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voxgate.engines.upstream import close_quietly
from voxgate.gateway.auth import Identity
from voxgate.gateway.compat.handshake import ENGINE_NAME, SERVER_ERROR, openai_error
from voxgate.gateway.compat.policy import Violation, check_client_event
from voxgate.gateway.limits import AudioBudget, TokenBucket
from voxgate.gateway.live import ENDED_BY_ADMIN, Ending, LiveSessionBase, SessionEnded
from voxgate.gateway.state import GatewayState
from voxgate.protocol import CloseCode

#: PCM16 mono at 24 kHz, the only PCM rate GA allows.
BYTES_PER_S = 48000

# Hot-path shapes. Browsers (`JSON.stringify`) send compact JSON, the Python SDK sends
# `json.dumps` output with ", " / ": " separators; OpenAI sends compact JSON with `type` first.
# Only an append of exactly this shape (type, then audio, nothing else) is forwarded unread: a
# second `type` key after the first would make any JSON parser read another event (the last
# duplicate wins), one that must be counted and stored like every other.
_APPEND_HEADS = (
    '{"type":"input_audio_buffer.append","audio":"',
    '{"type": "input_audio_buffer.append", "audio": "',
)
_DELTA_PREFIX = '{"type":"response.output_audio.delta"'
_DELTA_MARK = '"type":"response.output_audio.delta"'
_DELTA_OVERHEAD = 200  # everything in a delta event that is not base64 audio, roughly
_DELTA_KEY = '"delta":"'
_ITEM_ID_MARK = '"item_id":"'


def plain_append_bytes(text: str, heads: tuple[str, ...] = _APPEND_HEADS) -> int:
    """PCM bytes carried by a plain audio append frame, or -1 for any other.

    Plain: one of `heads` (the append event's two plain shapes), base64 with no quote in it,
    then `"}`. Anything else (another key order, an `event_id`, a duplicate key) takes the
    parsed path.
    """
    for head in heads:
        if text.startswith(head):
            start, end = len(head), len(text) - 2
            if (
                end >= start
                and text.endswith('"}')
                and text[end - 1] != "\\"
                and text.find('"', start, end) < 0
            ):
                return (end - start) * 3 >> 2
            return -1
    return -1


def delta_bytes(frame: str) -> int:
    """PCM bytes in a `response.output_audio.delta` frame: exact when its `delta` key is near
    the start or last (one C-speed scan for the closing quote), else an estimate; never < 0."""
    at = frame.find(_DELTA_KEY, 0, 600)
    if at < 0:
        at = frame.rfind(_DELTA_KEY, max(0, len(frame) - 8000))
    if at >= 0:
        start = at + len(_DELTA_KEY)
        end = frame.find('"', start)
        if end >= start:
            pad = 0
            if end - start >= 2:
                pad = (frame[end - 1] == "=") + (frame[end - 2] == "=")
            return max(0, ((end - start) * 3 >> 2) - pad)
    return max(0, (len(frame) - _DELTA_OVERHEAD) * 3 >> 2)


_CLIENT_GONE = (OSError, RuntimeError, WebSocketDisconnect)


class CompatSession(LiveSessionBase):
    """One OpenAI-protocol client relayed to one upstream OpenAI session.

    Two relay loops (client->upstream, upstream->client) share the task group with the
    watchdog. The conversation is created as the turn writer's first job, so the relay never
    waits on the database.

    The class attributes and the few hooks below (`_error_event`, `_check_event`,
    `_observe_client_event`, `_audio_out`, `_server_event`) are the protocol's dialect; the
    GPT-Live relay is this relay with another dialect.
    """

    label = "compat session"
    #: The engine name these sessions carry in metrics, `/ws/status` and stored conversations.
    engine_label: ClassVar[str] = ENGINE_NAME
    #: Who is upstream, in sentences.
    provider: ClassVar[str] = "OpenAI"
    #: The client's audio append event and its plain shapes (see `plain_append_bytes`).
    append_type: ClassVar[str] = "input_audio_buffer.append"
    append_heads: ClassVar[tuple[str, ...]] = _APPEND_HEADS
    #: How an upstream audio frame starts (or names its type near the start).
    delta_prefix: ClassVar[str] = _DELTA_PREFIX
    delta_mark: ClassVar[str] = _DELTA_MARK

    def __init__(
        self,
        state: GatewayState,
        websocket: WebSocket,
        upstream: ClientConnection,
        identity: Identity,
        model: str,
    ) -> None:
        super().__init__(state, websocket, identity, engine_name=self.engine_label)
        self.upstream = upstream
        self.model = model
        s = self.settings
        self._control_bucket = TokenBucket.per_minute(s.control_messages_per_min)
        # Paced, not dropped: OpenAI itself accepts audio faster than real time (a recording
        # sent in one go), and SDKs treat a `rate_limited` error as the end of the session.
        self._audio_budget = AudioBudget(
            BYTES_PER_S * s.audio_rate_multiple,
            BYTES_PER_S * s.compat_audio_burst_s,  # seconds of audio, whatever the pace
            s.audio_frames_per_s,
        )
        self._last_append_error = 0.0
        self.turns.out_bytes_per_s = BYTES_PER_S

    def info(self) -> dict[str, Any]:
        return {**super().info(), "model": self.model}

    # --- lifecycle hooks -----------------------------------------------------------------------

    def _start_loops(self, group: asyncio.TaskGroup) -> None:
        self._count_start()
        self.turns.open_conversation_later(
            self.user_id, self.engine_label, {"model": self.model, "sessionId": self.id}
        )
        group.create_task(self._client_to_upstream(), name="compat-in")
        group.create_task(self._upstream_to_client(), name="compat-out")

    def _end(
        self, close_code: int, reason: str, code: str, message: str, type_: str = "invalid_request_error"
    ) -> SessionEnded:
        """An end the client reads about first, as an OpenAI error event."""
        self.state.metrics.errors_total.labels(code).inc()
        return SessionEnded(close_code, reason, [self._error_event(code, message, type_=type_)])

    def _error_event(
        self,
        code: str,
        message: str,
        *,
        type_: str = "invalid_request_error",
        event_id: str | None = None,
        param: str | None = None,
    ) -> dict[str, Any]:
        """An error event in the protocol's shape."""
        return openai_error(code, message, type_=type_, event_id=event_id, param=param)

    def _check_event(self, event: dict[str, Any]) -> Violation | None:
        """Why a client event must not go upstream (the operator's bounds), or None."""
        return check_client_event(self.settings, event, self.identity.models)

    def _ending(self, why: Ending) -> SessionEnded:
        s = self.settings
        match why:
            case Ending.SHUTDOWN:
                reason = self.shutdown_reason
                if reason == ENDED_BY_ADMIN:
                    return self._end(
                        CloseCode.NORMAL, reason, reason, "an administrator ended this session"
                    )
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
                    CloseCode.SESSION_EXPIRED, "session expired", "session_expired",
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
        max_event = self.settings.compat_max_event_bytes
        charge = self._audio_budget.charge
        heads = self.append_heads
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
                    if len(data) > max_event:
                        self._too_big(len(data), max_event, "VOXGATE_COMPAT_MAX_EVENT_BYTES")
                    text = data.decode("utf-8", "replace")  # OpenAI reads binary frames as JSON too
                self.last_activity = time.monotonic()
                if len(text) > max_event // 4 and len(text.encode()) > max_event:
                    self._too_big(len(text.encode()), max_event, "VOXGATE_COMPAT_MAX_EVENT_BYTES")
                nbytes = plain_append_bytes(text, heads)
                if nbytes < 0:  # not a plain append: read it
                    read = await self._client_event(text)
                    if read is None:
                        continue
                    text, nbytes = read
                elif nbytes == 0:
                    continue  # an empty append: nothing to send, nothing to pay for
                if nbytes:
                    # Hot path: audio forwarded as it came; only its length is counted.
                    pause = charge(nbytes)
                    self.audio_in_bytes += nbytes
                    await send_up(text)
                    if pause > 0:
                        await asyncio.sleep(pause)  # the client's excess waits in its socket
                    continue
                await send_up(text)
        except ConnectionClosed as exc:
            raise self._upstream_closed(exc) from None

    async def _client_event(self, text: str) -> tuple[str, int] | None:
        """A client event off the hot path: -> (the text to forward, audio bytes in it), or None
        when it must not go upstream.

        What goes upstream is the event as parsed here, serialised again: OpenAI then reads
        exactly what was counted, checked and stored (a duplicate key cannot mean one thing here
        and another there), and a frame this side cannot read is not forwarded at all.
        """
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            if self._control_bucket.take():  # past the limit, unreadable frames go unanswered
                await self._send_error(
                    "invalid_json", "the event is not a JSON object with a 'type'; it was dropped"
                )
            return None
        if event["type"] == self.append_type:  # other key order, spacing, event_id
            return await self._odd_append(event)
        max_control = self.settings.max_frame_bytes
        if len(text) > max_control // 4 and len(text.encode()) > max_control:
            self._too_big(len(text.encode()), max_control, "VOXGATE_MAX_FRAME_BYTES")
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if not self._control_bucket.take():
            await self._send_error(
                "rate_limited",
                f"too many events: the gateway allows {self.settings.control_messages_per_min} "
                "non-audio events per minute; this event was dropped",
                event_id=event_id,
            )
            return None
        if (bad := self._check_event(event)) is not None:
            await self._send_error(bad.code, bad.message, event_id=event_id, param=bad.param)
            return None
        self._observe_client_event(event)
        return orjson.dumps(event).decode(), 0

    def _observe_client_event(self, event: dict[str, Any]) -> None:
        """What the store and the latency marks need from a client event."""
        etype = event["type"]
        if etype == "conversation.item.create":
            self._on_item_create(event)
        elif etype == "conversation.item.truncate":
            self._on_truncate(event)
        elif etype in ("response.create", "input_audio_buffer.commit"):
            self.turns.mark()

    async def _odd_append(self, event: dict[str, Any]) -> tuple[str, int] | None:
        audio = event.get("audio")
        if audio == "":
            return None  # empty: nothing to send
        if not isinstance(audio, str):
            now = time.monotonic()
            if now - self._last_append_error > 1.0:  # one sentence a second is enough
                self._last_append_error = now
                await self._send_error(
                    "missing_required_parameter",
                    f"{self.append_type} needs 'audio': base64 audio; the event was dropped",
                    event_id=event.get("event_id") if isinstance(event.get("event_id"), str) else None,
                    param="audio",
                )
            return None
        return orjson.dumps(event).decode(), max(1, len(audio) * 3 >> 2)

    def _too_big(self, n: int, limit: int, variable: str) -> None:
        raise self._end(
            CloseCode.MESSAGE_TOO_BIG,
            "message too big",
            "payload_too_large",
            f"an event of {n} bytes exceeds the gateway's limit of {limit} bytes ({variable}); "
            "send it in smaller parts",
        )

    async def _send_error(
        self, code: str, message: str, *, event_id: str | None = None, param: str | None = None
    ) -> None:
        """A non-fatal error event, sent at once: rare, and nothing else queues on this side."""
        self.state.metrics.errors_total.labels(code).inc()
        event = self._error_event(code, message, event_id=event_id, param=param)
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
        prefix, mark = self.delta_prefix, self.delta_mark
        while True:
            try:
                frame = await recv()
            except ConnectionClosed as exc:
                raise self._upstream_closed(exc) from None
            if isinstance(frame, bytes):
                frame = frame.decode("utf-8", "replace")
            if frame.startswith(prefix) or mark in frame[:160]:
                # Hot path: assistant audio, forwarded untouched.
                nbytes = delta_bytes(frame)
                self.audio_out_bytes += nbytes
                self._audio_out(frame, nbytes)
            else:
                self._server_event(frame)
            try:
                await ws_send({"type": "websocket.send", "text": frame})
            except _CLIENT_GONE:
                raise SessionEnded(CloseCode.NORMAL, "client went away", client_gone=True) from None

    def _audio_out(self, frame: str, nbytes: int) -> None:
        """An audio frame's bytes belong to its item (for truncation and the heard text)."""
        turnlog = self.turns
        start = frame.find(_ITEM_ID_MARK, 0, 300)
        if start >= 0:
            start += len(_ITEM_ID_MARK)
            end = frame.find('"', start, start + 80)
            if end > start:
                item_id = frame[start:end]
                turn = turnlog.by_item.get(item_id)
                if turn is None:
                    turn = turnlog.turn("assistant", item_id)
                turn.audio_bytes += nbytes
        if turnlog.awaiting_audio:
            turnlog.first_audio()

    def _upstream_closed(self, exc: ConnectionClosed) -> SessionEnded:
        """Mirror OpenAI's close to the client (1000 normal, 4000 rejection, 1001 expiry...)."""
        rcvd = exc.rcvd
        if rcvd is not None and rcvd.code not in (1005, 1006, 1015) and 1000 <= rcvd.code < 5000:
            return SessionEnded(rcvd.code, rcvd.reason or "upstream closed")
        return self._end(
            CloseCode.UPSTREAM_FAILED,
            "upstream connection lost",
            "upstream_error",
            f"the gateway lost its connection to {self.provider}; start a new session",
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
        elif etype == "response.output_audio.done":
            turns.turn("assistant", item_id).audio_done = True
        elif etype == "input_audio_buffer.speech_stopped":
            turns.mark()
        elif etype == "error":
            err = event.get("error") or {}
            code = err.get("code") if isinstance(err, dict) else None
            self.state.metrics.errors_total.labels(f"upstream:{code or 'unknown'}").inc()


__all__ = ["BYTES_PER_S", "CompatSession", "delta_bytes", "plain_append_bytes"]
