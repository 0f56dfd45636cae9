"""One live conversation: the client socket on one side, a `ConversationEngine` on the other.

Shape (after Kyutai unmute's handler): a receive loop, an emit loop, an outbound sender and a
watchdog run in one `asyncio.TaskGroup`; whichever ends first ends the session and the group
cancels the rest. Turn writes go through a separate writer task that is drained (with a
deadline) after the group ends, so finished turns are stored even when the session dies.

The session knows nothing about providers: it speaks protocol v1 to the client and the engine
seam to the engine, resampling between the client's rates and the engine's native ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketState

from voxgate import protocol as P
from voxgate.audio import StreamResampler
from voxgate.engines import create_engine
from voxgate.engines.base import (
    AssistantSpeaking,
    AudioOut,
    ConversationEngine,
    EngineError,
    EngineUnavailable,
    HistoryTurn,
    Interrupted,
    ResponseDone,
    StartOptions,
    StatusChanged,
    Transcript,
    TurnDetectionOptions,
    UserSpeaking,
)
from voxgate.gateway.limits import TokenBucket, WindowCounter
from voxgate.gateway.outbox import Outbox, OutboxFactory, SlowClient, abort_connection
from voxgate.gateway.writer import StoreWriter
from voxgate.logs import session_id_var
from voxgate.protocol import CloseCode, ErrorCode, ProtocolError
from voxgate.store.base import TurnRecord, UserSettings
from voxgate.turns import heard_prefix

if TYPE_CHECKING:
    from voxgate.gateway.auth import Identity
    from voxgate.gateway.state import GatewayState

log = logging.getLogger("voxgate.session")


class SessionEnded(Exception):
    """Raised inside the task group to end the session; carries how to close the socket."""

    def __init__(
        self,
        close_code: int = CloseCode.NORMAL,
        reason: str = "",
        final: list[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason
        self.final = final or []


def now_utc() -> datetime:
    return datetime.now(UTC)


def close_reason(text: str, limit: int = 123) -> str:
    """`text` cut to fit a close frame (123 UTF-8 bytes), on a character boundary.

    Why bytes: a reason quoting client input (an origin, a message type) in non-ASCII letters
    overflows the frame even at 120 characters, the close fails, and the client sees 1006
    (which SDKs auto-reconnect on) instead of the code that says why.
    """
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


# --------------------------------------------------------------------------------------------
# Turn bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Turn:
    role: str
    item_id: str
    started_at: datetime = field(default_factory=now_utc)
    text: str = ""
    audio_bytes: int = 0  # at the engine's output rate
    stored: bool = False
    stored_id: int | None = None
    interrupted: bool = False
    audio: bytearray | None = None  # only when audio logs are on


class GatewaySession:
    def __init__(
        self,
        state: GatewayState,
        websocket: WebSocket,
        identity: Identity,
        outbox_factory: OutboxFactory = Outbox,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.ws = websocket
        self.identity = identity
        self.id = identity.session_id or uuid.uuid4().hex
        self.user_id = identity.user_id
        self.engine_name: str | None = None
        self.engine: ConversationEngine | None = None
        self.conversation_id: str | None = None
        self.started_at = time.time()
        self.started = False
        self.binary = False
        self.client_in_rate = 24000
        self.client_out_rate = 24000
        self._in_resampler: StreamResampler | None = None
        self._out_resampler: StreamResampler | None = None
        self._in_bytes_per_s = 48000
        self._out_bytes_per_s = 48000
        self.audio_in_bytes = 0
        self.audio_out_bytes = 0
        self.turns_stored = 0
        self.last_activity = time.monotonic()
        self.outbox = outbox_factory(websocket, int(self.settings.client_buffer_s * 48000))
        s = self.settings
        self._control_bucket = TokenBucket.per_minute(s.control_messages_per_min)
        self._audio_bucket: TokenBucket | None = None
        self._invalid = WindowCounter(60.0)
        self._last_rate_error = 0.0
        self._turns: dict[str, _Turn] = {}
        self._turn_order: deque[str] = deque()
        self._cancelled_items: deque[str] = deque(maxlen=32)
        self._announced_item: str | None = None
        self._audio_tail = ""  # of `_announced_item`'s JSON audio frames
        self._client_speaking = False
        self._turn_mark: float | None = None  # end of user speech / commit / typed message
        self._awaiting_audio = False
        self._awaiting_transcript = False
        self._writer = StoreWriter(f"session {self.id}")
        self._shutdown = asyncio.Event()
        self._shutdown_reason = "server_shutdown"
        self._audio_log = state.audio_log
        self._user_audio = bytearray()
        self._last_status = "disconnected"
        self._seen_status_change = False
        self._engine_out_bytes_per_s = 48000

    # ----------------------------------------------------------------------------------------
    # Entry point
    # ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the (already accepted) socket until it ends; never raises."""
        session_id_var.set(self.id)
        self._writer.start()
        ended = SessionEnded(CloseCode.NORMAL, "")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._sender_loop(), name="send")
                group.create_task(self._watchdog(), name="watchdog")
                group.create_task(self._main(group), name="receive")
        except* SessionEnded as eg:
            ended = eg.exceptions[0]  # type: ignore[assignment]
        except* SlowClient:
            # Not a gateway fault: the client floods requests without reading the answers.
            ended = self._fatal(
                ErrorCode.RATE_LIMITED,
                f"closing: more than {Outbox.MAX_CONTROL} messages are waiting for this client "
                "to read them",
                CloseCode.LIMIT,
            )
        except* Exception as eg:  # a bug must not take the process down
            log.exception("session %s failed", self.id, exc_info=eg.exceptions[0])
            self.state.metrics.errors_total.labels(ErrorCode.INTERNAL.value).inc()
            ended = SessionEnded(
                CloseCode.INTERNAL,
                "internal error",
                [P.error_message(ErrorCode.INTERNAL, "internal error in the gateway", fatal=True)],
            )
        finally:
            await self._finish(ended)

    async def _finish(self, ended: SessionEnded) -> None:
        # Stop the engine first: no new events, upstream closed.
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.engine.stop(), 5.0)
        # Final messages go out directly; queued audio is moot now.
        pending = self.outbox.pending_control()
        self.outbox.close()
        if self.ws.application_state == WebSocketState.CONNECTED:
            try:
                async with asyncio.timeout(2.0):
                    for text in pending:
                        await self.ws.send({"type": "websocket.send", "text": text})
                    for message in ended.final:
                        await self.ws.send({"type": "websocket.send", "text": P.encode(message)})
                    await self.ws.close(ended.close_code, close_reason(ended.reason))
            except TimeoutError:
                self._abort_connection()
            except Exception:
                pass
        # Finish writing turns, within the shutdown deadline. An answer cut off by the
        # shutdown or by a lost upstream is kept as far as the client saw it.
        if ended.close_code in (CloseCode.GOING_AWAY, CloseCode.UPSTREAM_FAILED):
            self._store_partial_turns()
        await self._writer.finish(self.settings.shutdown_deadline_s)
        if self.conversation_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.state.store.end_conversation(self.conversation_id), 5.0)
        if self.started and self.engine_name:
            m = self.state.metrics
            m.active_sessions.labels(self.engine_name).dec()
            m.session_duration.labels(self.engine_name).observe(time.time() - self.started_at)
        log.info(
            "session %s ended (close %s%s)",
            self.id,
            ended.close_code,
            f": {ended.reason}" if ended.reason else "",
        )

    def _abort_connection(self) -> None:
        """The client did not take our last words within the timeout: it stopped reading."""
        if abort_connection(self.ws):
            log.warning("session %s: the client is not reading; dropping its connection", self.id)

    def request_shutdown(self, reason: str = "server_shutdown") -> None:
        self._shutdown_reason = reason
        self._shutdown.set()

    def info(self) -> dict[str, Any]:
        return {
            "sessionId": self.id,
            "userId": self.user_id,
            "engine": self.engine_name,
            "conversationId": self.conversation_id,
            "started": self.started,
            "startedAt": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "audioInSeconds": round(self.audio_in_bytes / self._in_bytes_per_s, 3),
            "audioOutSeconds": round(self.audio_out_bytes / self._out_bytes_per_s, 3),
            "turns": self.turns_stored,
            "status": self.engine.status if self.engine else "disconnected",
        }

    # ----------------------------------------------------------------------------------------
    # Errors
    # ----------------------------------------------------------------------------------------

    def _send_error(self, code: ErrorCode | str, message: str, fatal: bool = False) -> None:
        self.state.metrics.errors_total.labels(str(code)).inc()
        self.outbox.put(P.error_message(code, message, fatal=fatal))

    def _fatal(self, code: ErrorCode | str, message: str, close_code: int) -> SessionEnded:
        self.state.metrics.errors_total.labels(str(code)).inc()
        return SessionEnded(close_code, message, [P.error_message(code, message, fatal=True)])

    def _client_error(self, exc: ProtocolError) -> None:
        """A bad client frame: tell the client, and close it if it keeps doing that."""
        if exc.fatal:
            raise self._fatal(exc.code, exc.message, exc.close_code or CloseCode.POLICY_VIOLATION)
        if exc.counts_as_invalid:
            count = self._invalid.hit()
            if count > self.settings.invalid_frames_per_min:
                raise self._fatal(
                    exc.code,
                    f"{exc.message}; closing: more than {self.settings.invalid_frames_per_min} "
                    "invalid frames within a minute",
                    CloseCode.POLICY_VIOLATION,
                )
        self._send_error(exc.code, exc.message)

    # ----------------------------------------------------------------------------------------
    # Before start
    # ----------------------------------------------------------------------------------------

    async def _receive(self) -> MutableMapping[str, Any]:
        # The watchdog owns every timeout (idle, max duration), so this waits plainly.
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise SessionEnded(message.get("code") or CloseCode.NORMAL, "client closed")
        self.last_activity = time.monotonic()
        return message

    def _check_size(self, n: int) -> None:
        if n > self.settings.max_frame_bytes:
            raise self._fatal(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"frame of {n} bytes exceeds the limit of {self.settings.max_frame_bytes} bytes",
                CloseCode.MESSAGE_TOO_BIG,
            )

    async def _main(self, group: asyncio.TaskGroup) -> None:
        await self._wait_for_start()
        group.create_task(self._emit_loop(), name="emit")
        await self._receive_loop()

    async def _wait_for_start(self) -> None:
        """Answer messages until a valid `start` arrives, then start the engine.

        The watchdog enforces the idle timeout meanwhile.
        """
        while True:
            message = await self._receive()
            data = message.get("bytes")
            if data is not None:
                self._check_size(len(data))
                # Out-of-order input: it counts towards the invalid-frame flood limit, so a
                # binary flood before `start` cannot turn every frame into a reply.
                if self._invalid.hit() > self.settings.invalid_frames_per_min:
                    raise self._fatal(
                        ErrorCode.NOT_STARTED,
                        "send 'start' before audio; closing: too many invalid frames",
                        CloseCode.POLICY_VIOLATION,
                    )
                self._send_now(
                    P.error_message(ErrorCode.NOT_STARTED, "send 'start' before audio")
                )
                continue
            text = message.get("text") or ""
            self._check_size(len(text.encode()))
            try:
                if not self._control_bucket.take():
                    raise ProtocolError(ErrorCode.RATE_LIMITED, self._rate_sentence())
                parsed = P.parse_client_text(text)
                if isinstance(parsed, P.StartMessage):
                    await self._start(parsed)
                    return
                if isinstance(parsed, P.PingMessage):
                    self._send_now(P.pong_message(parsed.id))
                    continue
                if isinstance(parsed, P.SimpleMessage) and parsed.type == "stop":
                    raise SessionEnded(CloseCode.NORMAL, "stopped before start")
                raise ProtocolError(
                    ErrorCode.NOT_STARTED, f"send 'start' before '{parsed.type}'"
                )
            except ProtocolError as exc:
                if exc.fatal:
                    raise self._fatal(exc.code, exc.message, exc.close_code or CloseCode.NORMAL) from None
                if exc.counts_as_invalid and self._invalid.hit() > self.settings.invalid_frames_per_min:
                    raise self._fatal(
                        exc.code,
                        f"{exc.message}; closing: too many invalid frames",
                        CloseCode.POLICY_VIOLATION,
                    ) from None
                self._send_now(P.error_message(exc.code, exc.message))
                self.state.metrics.errors_total.labels(str(exc.code)).inc()

    def _send_now(self, message: Mapping[str, Any]) -> None:
        # Before the sender task runs, messages still queue; it flushes them when it starts.
        self.outbox.put(message)

    def _rate_sentence(self) -> str:
        return (
            f"too many control messages: the limit is {self.settings.control_messages_per_min} "
            "per minute; this message was dropped"
        )

    async def _start(self, msg: P.StartMessage) -> None:
        s = self.settings
        state = self.state
        engine_name = msg.engine or s.engine
        allowed = s.engines_allowed_for_clients()
        if engine_name not in allowed:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"start: engine '{engine_name}' is not allowed here; allowed: {', '.join(allowed)}",
                counts_as_invalid=True,
            )
        history: list[HistoryTurn] = []
        resumed = None
        if msg.conversation_id:
            resumed = await state.store.get_conversation(msg.conversation_id, with_turns=True)
            if resumed is None or (
                state.authenticator.enabled
                and resumed.user_id != self.user_id
                and not self.identity.is_admin
            ):
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"start: conversation '{msg.conversation_id}' was not found",
                    counts_as_invalid=True,
                )
            for turn in resumed.turns:
                text = turn.remembered_text
                if text:
                    history.append(HistoryTurn(turn.role, text))

        # The breaker last among the checks: a half-open breaker lets exactly one trial through,
        # and a trial refused for another reason (say, an unknown conversationId) would never
        # report an outcome.
        breaker = state.breaker(engine_name)
        if not breaker.allow():
            raise ProtocolError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"the {engine_name} engine is failing to connect; new sessions are paused for "
                f"{max(1.0, breaker.retry_after_s()):.0f} s (circuit breaker open)",
                fatal=True,
                close_code=CloseCode.ENGINE_UNAVAILABLE,
            )

        # A signed-in user's saved settings fill what `start` leaves out.
        saved = UserSettings(self.user_id)
        if not self.identity.anonymous:
            saved = await state.store.get_user_settings(self.user_id) or saved
        personality = msg.personality.model_dump(exclude_none=True) if msg.personality else None
        td = msg.turn_detection
        options = StartOptions(
            instructions=msg.instructions if msg.instructions is not None else saved.instructions,
            voice=msg.voice if msg.voice is not None else saved.voice,
            personality=personality if personality is not None else saved.personality,
            turn_detection=TurnDetectionOptions(
                mode=td.mode, threshold=td.threshold, silence_ms=td.silence_ms, prefix_ms=td.prefix_ms
            )
            if td
            else TurnDetectionOptions(),
            input_rate=msg.input_rate,
            output_rate=msg.output_rate,
            history=history,
            metadata=msg.metadata,
            session_id=self.id,
        )
        engine = create_engine(engine_name, s)

        def observe(ok: bool, seconds: float, _name: str = engine_name) -> None:
            breaker.record(ok)
            state.metrics.upstream_connect_seconds.labels(_name, "ok" if ok else "error").observe(
                seconds
            )

        engine.connect_observer = observe
        self.engine = engine
        self.engine_name = engine_name
        self._send_now(P.status_message("connecting"))
        try:
            await asyncio.wait_for(engine.start(options), s.start_timeout_s + 5.0)
        except EngineUnavailable as exc:
            code = ErrorCode.UPSTREAM_UNAVAILABLE if exc.upstream else ErrorCode.ENGINE_UNAVAILABLE
            close = CloseCode.UPSTREAM_FAILED if exc.upstream else CloseCode.ENGINE_UNAVAILABLE
            raise ProtocolError(code, exc.message, fatal=True, close_code=close) from None
        except TimeoutError:
            breaker.record(False)
            raise ProtocolError(
                ErrorCode.TIMEOUT,
                f"the {engine_name} engine did not become ready within {s.start_timeout_s:.0f} s",
                fatal=True,
                close_code=CloseCode.UPSTREAM_FAILED,
            ) from None

        if resumed is not None:
            self.conversation_id = resumed.id
        else:
            record = await state.store.create_conversation(
                self.user_id, engine_name, dict(msg.metadata or {})
            )
            self.conversation_id = record.id

        caps = engine.capabilities
        self.binary = msg.binary
        self.client_in_rate = msg.input_rate
        self.client_out_rate = msg.output_rate
        self._in_bytes_per_s = msg.input_rate * 2
        self._out_bytes_per_s = msg.output_rate * 2
        if caps.input_rate != msg.input_rate:
            self._in_resampler = StreamResampler(msg.input_rate, caps.input_rate)
        if caps.output_rate != msg.output_rate:
            self._out_resampler = StreamResampler(caps.output_rate, msg.output_rate)
        self._engine_out_bytes_per_s = caps.output_rate * 2
        rate_cap = self._in_bytes_per_s * s.audio_rate_multiple
        # Burst of two seconds of audio on top of the sustained multiple of real time.
        self._audio_bucket = TokenBucket(capacity=rate_cap * 2, rate=rate_cap)
        self.outbox.max_audio_bytes = int(s.client_buffer_s * self._out_bytes_per_s)
        self.started = True
        state.metrics.sessions_total.labels(engine_name).inc()
        state.metrics.active_sessions.labels(engine_name).inc()
        self._send_now(
            P.session_ready(
                session_id=self.id,
                conversation_id=self.conversation_id,
                engine=engine_name,
                capabilities=caps.to_wire(),
                input_rate=msg.input_rate,
                output_rate=msg.output_rate,
                binary=msg.binary,
            )
        )
        self._send_now(P.status_message("connected"))
        self._last_status = "connected"
        log.info(
            "session %s started: user=%s engine=%s conversation=%s%s",
            self.id,
            self.user_id,
            engine_name,
            self.conversation_id,
            " (resumed)" if resumed else "",
        )

    # ----------------------------------------------------------------------------------------
    # Loops
    # ----------------------------------------------------------------------------------------

    async def _sender_loop(self) -> None:
        try:
            await self.outbox.run()
        except (RuntimeError, OSError):
            raise SessionEnded(CloseCode.NORMAL, "client went away") from None

    async def _watchdog(self) -> None:
        s = self.settings
        tick = self.state.tuning.watchdog_tick_s
        while True:
            try:
                await asyncio.wait_for(self._shutdown.wait(), tick)
            except TimeoutError:
                pass
            if self._shutdown.is_set():
                raise SessionEnded(
                    CloseCode.GOING_AWAY,
                    self._shutdown_reason,
                    [P.status_message("disconnected", self._shutdown_reason)],
                )
            now = time.monotonic()
            if now - self.last_activity > s.idle_timeout_s:
                raise self._fatal(
                    ErrorCode.TIMEOUT,
                    f"closing an idle session: nothing received for {s.idle_timeout_s:.0f} s",
                    CloseCode.IDLE_TIMEOUT,
                )
            if self.outbox.stalled_s() > s.client_stall_timeout_s:
                # Memory is bounded anyway (see Outbox); this frees the session and, through
                # the abort in `_finish`, the connection. The client will likely never read
                # this sentence, but the logs and metrics will.
                log.warning("session %s: the client stopped reading; closing", self.id)
                raise self._fatal(
                    ErrorCode.TIMEOUT,
                    "closing: the client has not read anything for "
                    f"{s.client_stall_timeout_s:.0f} s",
                    CloseCode.IDLE_TIMEOUT,
                )
            if time.time() - self.started_at > s.max_session_s:
                raise self._fatal(
                    ErrorCode.TIMEOUT,
                    f"the session reached its maximum duration of {s.max_session_s:.0f} s",
                    CloseCode.IDLE_TIMEOUT,
                )

    async def _receive_loop(self) -> None:
        engine = self.engine
        assert engine is not None and self._audio_bucket is not None
        max_frame = self.settings.max_frame_bytes
        audio_bucket = self._audio_bucket
        in_resampler = self._in_resampler
        audio_counter = self.state.metrics.audio_in_seconds
        in_bps = float(self._in_bytes_per_s)
        while True:
            message = await self._receive()
            pcm = message.get("bytes")
            if pcm is not None:
                # Hot path: a binary audio frame.
                if len(pcm) > max_frame:
                    self._check_size(len(pcm))
                if len(pcm) & 1:
                    self._client_error(P.odd_pcm16(len(pcm)))
                    continue
            else:
                text = message.get("text") or ""
                if len(text) > max_frame // 4 and len(text.encode()) > max_frame:
                    self._check_size(len(text.encode()))
                try:
                    parsed = P.parse_client_text(text)
                except ProtocolError as exc:
                    self._client_error(exc)
                    continue
                if not isinstance(parsed, P.AudioChunk):
                    await self._control(parsed)
                    continue
                pcm = parsed.pcm16
            if not audio_bucket.take(len(pcm)):
                self._audio_rate_error()
                continue
            self.audio_in_bytes += len(pcm)
            audio_counter.inc(len(pcm) / in_bps)
            if self._audio_log is not None:
                self._log_user_audio(pcm)
            if in_resampler is not None:
                pcm = in_resampler.process(pcm)
            await engine.send_audio(pcm)

    def _audio_rate_error(self) -> None:
        now = time.monotonic()
        if now - self._last_rate_error > 1.0:  # one sentence a second is enough
            self._last_rate_error = now
            self._send_error(
                ErrorCode.RATE_LIMITED,
                f"audio arrives faster than {self.settings.audio_rate_multiple:g}x real time; "
                "frames are being dropped",
            )

    async def _control(self, msg: Any) -> None:
        engine = self.engine
        assert engine is not None
        if not self._control_bucket.take():
            self._send_error(ErrorCode.RATE_LIMITED, self._rate_sentence())
            return
        kind = msg.type
        if kind == "ping":
            self.outbox.put(P.pong_message(msg.id))
        elif kind == "user_message":
            self._mark_turn()
            self._store_turn_now(
                _Turn("user", f"msg_{uuid.uuid4().hex[:20]}", text=msg.text), ended=True
            )
            await engine.send_user_message(msg.text)
        elif kind == "commit":
            self._mark_turn()
            await engine.commit()
        elif kind == "interrupt":
            if self._announced_item:
                self.outbox.drop_audio(self._announced_item)
            if self._out_resampler is not None:
                self._out_resampler.reset()
            await engine.interrupt(msg.played_ms)
        elif kind == "context_update":
            await engine.send_context_update(msg.payload)
        elif kind == "stop":
            raise SessionEnded(CloseCode.NORMAL, "client stopped")
        elif kind == "start":
            self._client_error(
                ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    "start: the session is already started; send 'stop' and reconnect to start another",
                    counts_as_invalid=True,
                )
            )

    async def _emit_loop(self) -> None:
        engine = self.engine
        assert engine is not None
        outbox = self.outbox
        metrics = self.state.metrics
        audio_out_counter = metrics.audio_out_seconds
        out_bps = float(self._out_bytes_per_s)
        async for event in engine.events():
            if isinstance(event, AudioOut):
                item_id = event.item_id
                if item_id in self._cancelled_items:
                    continue  # stale audio of an interrupted response
                turn = self._turn("assistant", item_id)
                turn.audio_bytes += len(event.pcm16)
                if turn.audio is not None:
                    turn.audio.extend(event.pcm16)
                pcm = event.pcm16
                if self._out_resampler is not None:
                    pcm = self._out_resampler.process(pcm)
                    if not pcm:
                        continue
                if item_id != self._announced_item or not self._client_speaking:
                    self._announced_item = item_id
                    self._audio_tail = P.audio_frame_tail(item_id)
                    self._client_speaking = True
                    outbox.put(P.speaking_message(True, item_id))
                if self._awaiting_audio and self._turn_mark is not None:
                    metrics.turn_first_audio_seconds.labels(self.engine_name).observe(
                        time.monotonic() - self._turn_mark
                    )
                    self._awaiting_audio = False
                n = len(pcm)
                self.audio_out_bytes += n
                audio_out_counter.inc(n / out_bps)
                if self.binary:
                    dropped = outbox.put_audio(pcm, n, item_id)
                else:
                    dropped = outbox.put_audio(P.audio_frame(pcm, self._audio_tail), n, item_id)
                if dropped:
                    self._audio_dropped(dropped)
            elif isinstance(event, Transcript):
                self._on_transcript(event)
            elif isinstance(event, UserSpeaking):
                outbox.put(P.user_speaking_message(event.is_speaking))
                if not event.is_speaking:
                    self._mark_turn()
            elif isinstance(event, AssistantSpeaking):
                # "Speaking" is announced with the first audio of an item (it carries the
                # itemId that binary frames belong to); only the end is forwarded as is.
                if not event.is_speaking and self._client_speaking:
                    self._client_speaking = False
                    outbox.put(P.speaking_message(False))
            elif isinstance(event, Interrupted):
                self._on_interrupted(event)
            elif isinstance(event, ResponseDone):
                if event.status == "failed":
                    self._store_partial_turns()  # e.g. the upstream dropped mid-answer
                outbox.put(P.response_done_message(event.response_id, event.status, event.usage))
            elif isinstance(event, StatusChanged):
                # Engines report connecting/connected during start(); the client already got
                # those around session_ready, so only changes after that are news.
                if event.status == self._last_status and not event.reason:
                    continue
                if not self._seen_status_change and event.status == "connecting":
                    continue
                self._seen_status_change = True
                self._last_status = event.status
                outbox.put(P.status_message(event.status, event.reason))
                if event.status == "disconnected":
                    raise SessionEnded(CloseCode.NORMAL, event.reason or "the conversation ended")
            elif isinstance(event, EngineError):
                if event.fatal:
                    close = (
                        CloseCode.ENGINE_UNAVAILABLE
                        if event.code == ErrorCode.ENGINE_UNAVAILABLE
                        else CloseCode.UPSTREAM_FAILED
                    )
                    raise SessionEnded(
                        close,
                        event.message,
                        [
                            P.error_message(event.code, event.message, fatal=True),
                            P.status_message("disconnected", event.code),
                        ],
                    )
                self._send_error(event.code, event.message)
        # The engine's event stream ended without a fatal error: the conversation is over.
        raise SessionEnded(
            CloseCode.NORMAL, "engine finished", [P.status_message("disconnected", "engine_stopped")]
        )

    def _audio_dropped(self, nbytes: int) -> None:
        seconds = nbytes / self._out_bytes_per_s
        self.state.metrics.audio_dropped_seconds.inc(seconds)
        outbox = self.outbox
        if outbox.congested:
            return  # said once per episode; the metric counts every dropped second
        outbox.congested = True
        buffered = outbox.max_audio_bytes / self._out_bytes_per_s
        log.warning(
            "session %s: client is not reading fast enough; dropping the oldest queued audio "
            "(more than %.1f s waiting)", self.id, buffered,
        )  # fmt: skip
        # Say so, once: a client that handles `backpressure` pauses its microphone; any client
        # reads why the assistant's audio has a gap when it catches up.
        outbox.put(P.backpressure_message(True))
        self._send_error(
            ErrorCode.RATE_LIMITED,
            f"you are not reading fast enough: more than {buffered:.1f} s of assistant audio was "
            "waiting, so the oldest is being dropped; 'backpressure' with paused false follows "
            "once you have caught up",
        )

    # ----------------------------------------------------------------------------------------
    # Turns
    # ----------------------------------------------------------------------------------------

    def _mark_turn(self) -> None:
        self._turn_mark = time.monotonic()
        self._awaiting_audio = True
        self._awaiting_transcript = True

    def _turn(self, role: str, item_id: str) -> _Turn:
        turn = self._turns.get(item_id)
        if turn is None:
            turn = _Turn(role, item_id)
            if self._audio_log is not None:
                turn.audio = bytearray()
            self._turns[item_id] = turn
            self._turn_order.append(item_id)
            while len(self._turn_order) > 64:
                old = self._turn_order.popleft()
                self._turns.pop(old, None)
        return turn

    def _on_transcript(self, event: Transcript) -> None:
        if event.item_id in self._cancelled_items and event.role == "assistant" and not event.final:
            return
        self.outbox.put_transcript(
            P.transcript_message(event.role, event.item_id, event.text, event.delta, event.final)
        )
        if event.role == "assistant" and self._awaiting_transcript and self._turn_mark is not None:
            self.state.metrics.turn_first_transcript_seconds.labels(self.engine_name).observe(
                time.monotonic() - self._turn_mark
            )
            self._awaiting_transcript = False
        turn = self._turn(event.role, event.item_id)
        turn.text = event.text
        if event.final and not turn.stored:
            self._store_turn_now(turn, ended=True)

    def _on_interrupted(self, event: Interrupted) -> None:
        item_id = event.item_id
        self._cancelled_items.append(item_id)
        self.outbox.drop_audio(item_id)
        if self._out_resampler is not None:
            self._out_resampler.reset()
        self.outbox.put(P.interrupted_message(item_id, event.played_ms))
        if self._client_speaking:
            self._client_speaking = False
            self.outbox.put(P.speaking_message(False))
        turn = self._turn("assistant", item_id)
        total_ms = turn.audio_bytes / self._engine_out_bytes_per_s * 1000.0
        heard = (
            event.heard_text
            if event.heard_text is not None
            else heard_prefix(turn.text, event.played_ms, total_ms)
        )
        turn.interrupted = True
        if turn.stored:
            self._writer.mark_interrupted(self.state.store, turn, heard, event.played_ms)
        else:
            self._store_turn_now(turn, ended=True, heard=heard, audio_ms=event.played_ms)

    def _store_partial_turns(self) -> None:
        """Store assistant turns cut off before their final transcript (the upstream dropped,
        the server is shutting down): the client already saw that text, so it is kept, marked
        interrupted. What exactly was heard is unknown, so no `heard_text` is claimed."""
        for item_id in self._turn_order:
            turn = self._turns.get(item_id)
            if turn is not None and turn.role == "assistant" and not turn.stored and turn.text:
                turn.interrupted = True
                self._store_turn_now(turn, ended=True)

    def _store_turn_now(
        self,
        turn: _Turn,
        *,
        ended: bool,
        heard: str | None = None,
        audio_ms: int | None = None,
    ) -> None:
        if self.conversation_id is None:
            return
        turn.stored = True
        if audio_ms is None and turn.audio_bytes:
            audio_ms = int(turn.audio_bytes / self._engine_out_bytes_per_s * 1000)
        record = TurnRecord(
            role=turn.role,  # type: ignore[arg-type]
            text=turn.text,
            item_id=turn.item_id,
            started_at=turn.started_at,
            ended_at=now_utc() if ended else None,
            interrupted=turn.interrupted,
            heard_text=heard,
            audio_ms=audio_ms,
        )
        conversation_id = self.conversation_id
        store = self.state.store
        self.turns_stored += 1
        self.state.metrics.turns_total.labels(turn.role).inc()
        audio = bytes(turn.audio) if turn.audio else None
        turn.audio = None if turn.audio is None else bytearray()
        if turn.role == "user" and self._audio_log is not None:
            audio = bytes(self._user_audio)
            self._user_audio.clear()

        async def write() -> None:
            saved = await store.add_turn(conversation_id, record)
            turn.stored_id = saved.id
            if audio and self._audio_log is not None:
                rate = self.client_in_rate if turn.role == "user" else self._engine_out_bytes_per_s // 2
                await asyncio.to_thread(
                    self._audio_log.write,
                    conversation_id,
                    saved.turn_index or 0,
                    turn.role,
                    audio,
                    rate,
                )

        self._writer.enqueue(write)


    # --- optional audio logs ------------------------------------------------------------------

    def _log_user_audio(self, pcm: bytes) -> None:
        buf = self._user_audio
        if len(buf) < 60 * self._in_bytes_per_s:  # cap a runaway turn at a minute
            buf.extend(pcm)
