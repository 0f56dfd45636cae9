"""One `/ws` conversation: the client socket on one side, a `ConversationEngine` on the other.

Five tasks share the session's task group: receive (client frames to the engine), emit (engine
events to the client), send (the `Outbox` draining to the socket), turns (the `TurnArbiter`'s
engine calls) and the watchdog. The session knows nothing about providers: it speaks protocol
v1 to the client and the engine seam to the engine, resampling between the client's rates and
the engine's native ones; who has the floor is the arbiter's to decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Mapping, MutableMapping
from typing import Any, assert_never

from starlette.websockets import WebSocket

from voxgate import protocol as P
from voxgate.audio import StreamResampler
from voxgate.engines import create_engine
from voxgate.engines.base import (
    AssistantSpeaking,
    AudioOut,
    Capabilities,
    ConversationEngine,
    EngineError,
    InputAudioDropped,
    Interrupted,
    ResponseDone,
    StartOptions,
    StatusChanged,
    ToolCall,
    Transcript,
    UserSpeaking,
)
from voxgate.gateway.auth import Identity
from voxgate.gateway.limits import AudioBudget, TokenBucket, WindowCounter
from voxgate.gateway.live import ENDED_BY_ADMIN, Ending, LiveSessionBase, SessionEnded
from voxgate.gateway.neutral import start as steps
from voxgate.gateway.neutral.arbiter import TurnArbiter
from voxgate.gateway.neutral.toolcalls import SessionToolset, ToolCalls
from voxgate.gateway.outbox import Outbox, OutboxFactory, SlowClient
from voxgate.gateway.state import GatewayState
from voxgate.pcm_b64 import Base64PCM
from voxgate.protocol import CloseCode, ErrorCode, ProtocolError
from voxgate.tools import ToolBox, ToolContext

log = logging.getLogger("voxgate.session")


class NeutralSession(LiveSessionBase):
    """A `/ws` client speaking protocol v1, served by the engine its `start` chose.

    Before `start` it answers pings and refuses everything else; `start` picks and starts the
    engine; from then on client audio and control messages go to the engine and its events
    come back through the `Outbox`, until either side ends the session.
    """

    def __init__(
        self,
        state: GatewayState,
        websocket: WebSocket,
        identity: Identity,
        outbox_factory: OutboxFactory = Outbox,
    ) -> None:
        super().__init__(state, websocket, identity, engine_name=None)
        s = self.settings
        self.engine: ConversationEngine | None = None
        #: Who has the floor (created with the engine, by `start`).
        self.arbiter: TurnArbiter | None = None
        self._turn_notes: list[tuple[ErrorCode, str]] = []
        self.binary = False
        self.outbox = outbox_factory(websocket, int(s.client_buffer_s * self.out_bytes_per_s))
        self.turns.audio_log = state.audio_log
        self._in_resampler: StreamResampler | None = None
        self._out_resampler: StreamResampler | None = None
        self._control_bucket = TokenBucket.per_minute(s.control_messages_per_min)
        self._audio_budget: AudioBudget | None = None
        #: Tiny frames gathered until they make one upstream chunk (`_min_chunk` bytes): a
        #: client sending 2-byte frames must not turn each into a provider request.
        self._pending_audio = bytearray()
        self._min_chunk = 0
        self._invalid = WindowCounter(60.0)
        self._last_rate_error = 0.0
        self._cancelled_items: deque[str] = deque(maxlen=32)
        #: The item whose audio the client gets now (announced by `speaking`).
        self._announced_item: str | None = None
        self._audio_tail = ""  # the end of `_announced_item`'s JSON audio frames
        self._client_speaking = False
        self._last_status = "disconnected"
        self._seen_status_change = False
        #: The session's tool calls (created with the engine, by `start`).
        self.tool_calls: ToolCalls | None = None

    @property
    def status(self) -> str:
        return self.engine.status if self.engine else "disconnected"

    # ----------------------------------------------------------------------------------------
    # Lifecycle hooks
    # ----------------------------------------------------------------------------------------

    def _start_loops(self, group: asyncio.TaskGroup) -> None:
        group.create_task(self._sender_loop(), name="send")
        group.create_task(self._main(group), name="receive")

    def _ending(self, why: Ending) -> SessionEnded:
        s = self.settings
        match why:
            case Ending.SHUTDOWN:
                reason = self.shutdown_reason
                close = CloseCode.NORMAL if reason == ENDED_BY_ADMIN else CloseCode.GOING_AWAY
                return SessionEnded(close, reason, [P.status_message("disconnected", reason)])
            case Ending.IDLE:
                sentence = f"closing an idle session: nothing received for {s.idle_timeout_s:.0f} s"
            case Ending.STALLED:
                sentence = (
                    f"closing: the client has not read anything for {s.client_stall_timeout_s:.0f} s"
                )
            case Ending.EXPIRED:
                return self._fatal(
                    ErrorCode.SESSION_EXPIRED,
                    f"the session reached its maximum duration of {s.max_session_s:.0f} s; "
                    "start a new session to continue",
                    CloseCode.SESSION_EXPIRED,
                )
            case Ending.INTERNAL:
                self.state.metrics.errors_total.labels(ErrorCode.INTERNAL.value).inc()
                message = P.error_message(
                    ErrorCode.INTERNAL, "internal error in the gateway", fatal=True
                )
                return SessionEnded(CloseCode.INTERNAL, "internal error", [message])
            case _:
                assert_never(why)
        return self._fatal(ErrorCode.TIMEOUT, sentence, CloseCode.IDLE_TIMEOUT)

    def _unexpected(self, exc: BaseException) -> SessionEnded:
        if isinstance(exc, SlowClient):
            # Not a gateway fault: the client floods requests without reading the answers.
            return self._fatal(
                ErrorCode.RATE_LIMITED,
                f"closing: more than {Outbox.MAX_CONTROL} messages are waiting for this client "
                "to read them",
                CloseCode.LIMIT,
            )
        return super()._unexpected(exc)

    async def _stop_upstream(self) -> None:
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.engine.stop(), 5.0)

    def _pending_frames(self) -> list[str]:
        # Queued control messages still go out; queued audio is moot now.
        pending = self.outbox.pending_control()
        self.outbox.close()
        return pending

    def _stalled_s(self) -> float:
        return self.outbox.stalled_s()

    def _store_cut_off(self, ended: SessionEnded) -> None:
        # An answer cut off by the shutdown or by a lost upstream is kept as far as the client
        # saw it.
        if ended.close_code in (CloseCode.GOING_AWAY, CloseCode.UPSTREAM_FAILED):
            self.turns.store_cut_off(truncated_only=False)

    async def _sender_loop(self) -> None:
        try:
            await self.outbox.run()
        except (RuntimeError, OSError):
            raise SessionEnded(CloseCode.NORMAL, "client went away") from None

    # ----------------------------------------------------------------------------------------
    # Errors
    # ----------------------------------------------------------------------------------------

    def _send_error(self, code: ErrorCode | str, message: str) -> None:
        self.state.metrics.errors_total.labels(str(code)).inc()
        self.outbox.put(P.error_message(code, message))

    def _fatal(self, code: ErrorCode | str, message: str, close_code: int) -> SessionEnded:
        self.state.metrics.errors_total.labels(str(code)).inc()
        return SessionEnded(close_code, message, [P.error_message(code, message, fatal=True)])

    def _client_error(self, exc: ProtocolError) -> None:
        """A bad client frame: tell the client, and close it if it keeps doing that."""
        if exc.fatal:
            raise self._fatal(exc.code, exc.message, exc.close_code or CloseCode.POLICY_VIOLATION)
        if exc.counts_as_invalid:
            limit = self.settings.invalid_frames_per_min
            if self._invalid.hit() > limit:
                raise self._fatal(
                    exc.code,
                    f"{exc.message}; closing: too many invalid frames (more than {limit} within "
                    "a minute)",
                    CloseCode.POLICY_VIOLATION,
                )
        self._send_error(exc.code, exc.message)

    def _rate_sentence(self) -> str:
        return (
            f"too many control messages: the limit is {self.settings.control_messages_per_min} "
            "per minute; this message was dropped"
        )

    def _audio_rate_error(self) -> None:
        now = time.monotonic()
        if now - self._last_rate_error > 1.0:  # one sentence a second is enough
            self._last_rate_error = now
            self._send_error(
                ErrorCode.RATE_LIMITED,
                f"audio arrives faster than {self.settings.audio_rate_multiple:g}x real time "
                f"or {self.settings.audio_frames_per_s} frames a second; frames are being dropped",
            )

    # ----------------------------------------------------------------------------------------
    # Receiving
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
        assert self.arbiter is not None and self.tool_calls is not None
        self.tool_calls.bind(group)
        group.create_task(self._emit_loop(), name="emit")
        group.create_task(self.arbiter.run(), name="turns")
        await self._receive_loop()

    async def _wait_for_start(self) -> None:
        """Answer messages until a valid `start` arrives and the engine has started."""
        while True:
            message = await self._receive()
            data = message.get("bytes")
            text = "" if data is not None else message.get("text") or ""
            self._check_size(len(data) if data is not None else len(text.encode()))
            try:
                if data is not None:
                    # Out-of-order input counts towards the invalid-frame flood limit, so a
                    # binary flood before `start` cannot turn every frame into a reply.
                    raise P.invalid("send 'start' before audio", ErrorCode.NOT_STARTED)
                if await self._before_start(text):
                    return
            except ProtocolError as exc:
                self._client_error(exc)

    async def _before_start(self, text: str) -> bool:
        """One text frame before `start`: -> whether it was the `start` (and it succeeded)."""
        if not self._control_bucket.take():
            raise ProtocolError(ErrorCode.RATE_LIMITED, self._rate_sentence())
        parsed = P.parse_client_text(text)
        if isinstance(parsed, P.StartMessage):
            await self._start(parsed)
            return True
        if isinstance(parsed, P.PingMessage):
            self.outbox.put(P.pong_message(parsed.id))
            return False
        if isinstance(parsed, P.SimpleMessage) and parsed.type == "stop":
            raise SessionEnded(CloseCode.NORMAL, "stopped before start")
        raise ProtocolError(ErrorCode.NOT_STARTED, f"send 'start' before '{parsed.type}'")

    async def _start(self, msg: P.StartMessage) -> None:
        state = self.state
        saved = await steps.saved_settings(state, self.identity)
        engine_name = steps.choose_engine(self.settings, msg.engine, self.identity, saved.engine)
        model = steps.choose_model(self.settings, msg.model, self.identity, engine_name)
        resumed, history = await steps.resume(state, self.identity, msg.conversation_id)
        toolset = SessionToolset.for_start(state.tools, msg.tools)
        breaker = steps.pass_breaker(state, engine_name)
        engine = create_engine(engine_name, steps.engine_settings(self.settings, model))
        if not engine.capabilities.tools:
            # Nothing to declare; the engine is not given calls it cannot replay either.
            toolset = SessionToolset(ToolBox())
            history = [turn for turn in history if turn.role != "tool"]
        options = steps.start_options(saved, self.id, msg, history)
        options.tools = toolset.specs
        self.tool_calls = ToolCalls(
            toolset, engine, self.turns, state.metrics, self.outbox.put, self._tool_context,
            self.settings.tool_timeout_s, self.settings.tool_filler_ms,
        )  # fmt: skip
        self._arbitrate(msg, engine, options)
        engine.connect_observer = steps.connect_observer(state, breaker, engine_name)
        engine.held_audio_observer = steps.held_audio_observer(state, engine_name)
        engine.billed_observer = steps.billed_observer(state, engine_name)
        # Known before it starts, so the session's end stops an engine that failed to start.
        self.engine = engine
        self.engine_name = self.turns.engine = engine_name
        self.outbox.put(P.status_message("connecting"))
        await steps.start_engine(engine, options, self.settings, breaker, engine_name)
        if resumed is not None:
            self.turns.conversation_id = resumed.id
        else:
            await self.turns.open_conversation(self.user_id, engine_name, dict(msg.metadata or {}))
        self._set_rates(msg, engine.capabilities)
        self._count_start()
        self._announce_ready(msg, engine.capabilities)
        if msg.tools and not engine.capabilities.tools:
            self._send_error(
                ErrorCode.UNSUPPORTED,
                f"the {engine_name} engine cannot call tools; the tools in 'start' are ignored",
            )
        log.info(
            "session %s started: user=%s engine=%s conversation=%s%s",
            self.id, self.user_id, engine_name, self.conversation_id, " (resumed)" if resumed else "",
        )  # fmt: skip

    def _arbitrate(
        self, msg: P.StartMessage, engine: ConversationEngine, options: StartOptions
    ) -> None:
        """The session's turn arbiter, and the engine's turn flags to start with."""
        policy, self._turn_notes = steps.turn_policy(self.settings, msg, engine)
        manual = options.turn_detection.mode == "manual"
        arbiter = TurnArbiter(policy, engine, self, manual=manual, in_bytes_per_s=msg.input_rate * 2)
        if engine.capabilities.turn_control:
            td = options.turn_detection
            td.auto_respond, td.auto_interrupt = arbiter.engine_flags()
        self.arbiter = arbiter

    def _set_rates(self, msg: P.StartMessage, caps: Capabilities) -> None:
        """Audio formats both ways: the client's rates, resampled to and from the engine's."""
        s = self.settings
        self.binary = msg.binary
        self.turns.in_rate = msg.input_rate
        self.in_bytes_per_s = msg.input_rate * 2
        self.out_bytes_per_s = msg.output_rate * 2
        if caps.input_rate != msg.input_rate:
            self._in_resampler = StreamResampler(msg.input_rate, caps.input_rate)
        if caps.output_rate != msg.output_rate:
            self._out_resampler = StreamResampler(caps.output_rate, msg.output_rate)
        self.turns.out_bytes_per_s = caps.output_rate * 2
        rate_cap = self.in_bytes_per_s * s.audio_rate_multiple
        # Burst of two seconds of audio on top of the sustained multiple of real time.
        self._audio_budget = AudioBudget(rate_cap, rate_cap * 2, s.audio_frames_per_s)
        self._min_chunk = self.in_bytes_per_s // 50  # 20 ms, the usual microphone frame
        self.outbox.max_audio_bytes = int(s.client_buffer_s * self.out_bytes_per_s)

    def _announce_ready(self, msg: P.StartMessage, caps: Capabilities) -> None:
        assert self.engine_name is not None and self.conversation_id is not None
        ready = P.session_ready(
            session_id=self.id,
            conversation_id=self.conversation_id,
            engine=self.engine_name,
            capabilities=caps.to_wire(),
            input_rate=msg.input_rate,
            output_rate=msg.output_rate,
            binary=msg.binary,
            turn_taking=self.arbiter.policy.to_wire(caps.turn_control) if self.arbiter else None,
            tools=self.tool_calls.toolset.names if self.tool_calls else [],
        )
        self.outbox.put(ready)
        self.outbox.put(P.status_message("connected"))
        self._last_status = "connected"
        for code, sentence in self._turn_notes:
            self._send_error(code, sentence)

    async def _receive_loop(self) -> None:
        engine = self.engine
        arbiter = self.arbiter
        assert engine is not None and arbiter is not None and self._audio_budget is not None
        max_frame = self.settings.max_frame_bytes
        take_audio = self._audio_budget.take
        min_chunk = self._min_chunk
        pending = self._pending_audio
        in_resampler = self._in_resampler
        turns = self.turns
        log_audio = turns.log_user_audio if turns.audio_log is not None else None
        send_audio = engine.send_audio
        send_base64 = engine.send_audio_base64
        while True:
            message = await self._receive()
            data = message.get("bytes")
            audio: Base64PCM | None = None
            if data is not None:
                # Hot path: a binary audio frame.
                pcm: bytes = data
                n = len(pcm)
                if n > max_frame:
                    self._check_size(n)
                if n & 1:
                    self._client_error(P.odd_pcm16(n))
                    continue
            else:
                text = message.get("text") or ""
                if len(text) > max_frame // 4 and len(text.encode()) > max_frame:
                    self._oversized_text(text)
                    continue
                try:
                    parsed = P.parse_client_text(text)
                except ProtocolError as exc:
                    self._client_error(exc)
                    continue
                if not isinstance(parsed, P.AudioChunk):
                    await self._control(parsed)
                    continue
                # Hot path: a JSON audio frame, still base64; decoded below only if needed.
                audio = parsed.audio
                n = audio.nbytes
                pcm = b""  # until someone needs the samples
            if not take_audio(n):  # empty frames take a frame token too
                self._audio_rate_error()
                continue
            if not n:
                continue
            self.audio_in_bytes += n
            if audio is not None:
                if log_audio is not None or arbiter.listening:
                    pcm = audio.pcm  # decoded once, for whoever below needs the samples
                if pending or n < min_chunk or in_resampler is not None:
                    pcm, audio = audio.pcm, None
            if log_audio is not None:
                log_audio(pcm)
            if arbiter.listening and not arbiter.feed(pcm):
                continue  # the rest of an utterance the turn arbiter ended
            if audio is not None:
                # The client's base64 at the engine's rate, in whole frames: passed on as it
                # came, never re-encoded.
                await send_base64(audio)
                continue
            if pending or n < min_chunk:
                pending += pcm
                if len(pending) < min_chunk:
                    continue
                pcm = bytes(pending)
                pending.clear()
            if in_resampler is not None:
                pcm = in_resampler.process(pcm)
            await send_audio(pcm)

    def _oversized_text(self, text: str) -> None:
        """A text frame over the limit ends the session, except a client tool's result: that
        call fails with a sentence (the model hears why) and the conversation goes on."""
        size, limit = len(text.encode()), self.settings.max_frame_bytes
        if self.tool_calls is not None and self.tool_calls.oversized_result(text, limit):
            self._client_error(P.invalid(
                f"tool_result: the frame of {size} bytes exceeds the limit of {limit} bytes; "
                "the tool call failed with an error result",
                ErrorCode.PAYLOAD_TOO_LARGE,
            ))  # fmt: skip
            return
        self._check_size(size)

    def _tool_context(self, call: ToolCall) -> ToolContext:
        return ToolContext(self.user_id, self.conversation_id, self.id, call.call_id, call.name)

    async def flush_pending_audio(self) -> None:
        """Send what tiny frames gathered: the turn ends, so nothing more will join it."""
        engine = self.engine
        if not self._pending_audio or engine is None:
            return
        pcm = bytes(self._pending_audio)
        self._pending_audio.clear()
        if self._in_resampler is not None:
            pcm = self._in_resampler.process(pcm)
        await engine.send_audio(pcm)

    async def _control(self, msg: P.ClientMessage) -> None:
        engine, arbiter, tools = self.engine, self.arbiter, self.tool_calls
        assert engine is not None and arbiter is not None and tools is not None
        if not self._control_bucket.take():
            self._send_error(ErrorCode.RATE_LIMITED, self._rate_sentence())
            return
        match msg:
            case P.PingMessage():
                self.outbox.put(P.pong_message(msg.id))
            case P.UserMessage():
                self.turns.mark()
                self.turns.store_text("user", f"msg_{uuid.uuid4().hex[:20]}", msg.text)
                await engine.send_user_message(msg.text)
                arbiter.typed()
            case P.SimpleMessage(type="commit"):
                self.turns.mark()
                await arbiter.commit()
            case P.SimpleMessage(type="stop"):
                await tools.cancel_all("the user ended the conversation", tell_engine=False)
                raise SessionEnded(CloseCode.NORMAL, "client stopped")
            case P.ToolResultMessage():
                try:
                    tools.client_result(msg)
                except ProtocolError as exc:
                    self._client_error(exc)
            case P.HoldMessage():
                await self._turn_request(arbiter.hold())
            case P.AllowNextMessage():
                await self._turn_request(arbiter.allow_next(msg.respond))
            case P.BargeInMessage():
                await tools.cancel_all("the user interrupted")
                await self._turn_request(arbiter.barge_in(msg.played_ms))
            case P.InterruptMessage():
                await tools.cancel_all("the user interrupted")
                arbiter.client_interrupted()
                if self._announced_item:
                    self.outbox.drop_audio(self._announced_item)
                if self._out_resampler is not None:
                    self._out_resampler.reset()
                await engine.interrupt(msg.played_ms)
            case P.ContextUpdateMessage():
                await engine.send_context_update(msg.payload)
            case P.StartMessage():
                self._client_error(
                    P.invalid(
                        "start: the session is already started; send 'stop' and reconnect to "
                        "start another"
                    )
                )

    async def _turn_request(self, request: Coroutine[Any, Any, None]) -> None:
        """`hold`, `allow_next`, `barge_in`: refused out of turn with a sentence; the session
        goes on."""
        try:
            await request
        except ProtocolError as exc:
            self._client_error(exc)

    # --- what the turn arbiter needs (`FloorSide`) --------------------------------------------

    def say(self, message: Mapping[str, Any]) -> None:
        self.outbox.put(message)

    def stop_client_audio(self, item_id: str) -> None:
        self.outbox.drop_audio(item_id)
        if self._out_resampler is not None:
            self._out_resampler.reset()

    def sent_ms(self, item_id: str) -> float:
        turn = self.turns.by_item.get(item_id)
        return 0.0 if turn is None else turn.audio_bytes * 1000.0 / self.turns.out_bytes_per_s

    # ----------------------------------------------------------------------------------------
    # Engine events to the client
    # ----------------------------------------------------------------------------------------

    async def _emit_loop(self) -> None:
        assert self.engine is not None
        # Audio the engine emits while no earlier event waits comes straight to `_on_audio`,
        # in the engine's task: one task switch less per frame (`ConversationEngine.audio_sink`).
        self.engine.audio_sink = self._on_audio
        try:
            await self._emit_events()
        finally:
            self.engine.audio_sink = None

    async def _emit_events(self) -> None:
        engine, arbiter = self.engine, self.arbiter
        assert engine is not None and arbiter is not None
        outbox = self.outbox
        turns = self.turns
        on_audio = self._on_audio
        async for event in engine.events():
            match event:
                case AudioOut():
                    on_audio(event)
                case Transcript():
                    self._on_transcript(event)
                case UserSpeaking(is_speaking=speaking):
                    outbox.put(P.user_speaking_message(speaking))
                    arbiter.user_speaking(speaking, event.item_id)
                    if not speaking:
                        turns.mark()
                case AssistantSpeaking(is_speaking=speaking):
                    # "Speaking" is announced with the first audio of an item (it carries the
                    # itemId that binary frames belong to); only the end is forwarded as is.
                    if not speaking:
                        self._speaking_ended()
                case Interrupted():
                    self._on_interrupted(event)
                case ResponseDone():
                    if event.status == "failed":
                        # E.g. the upstream dropped mid-answer: keep what the client saw.
                        turns.store_cut_off(truncated_only=False)
                    outbox.put(P.response_done_message(event.response_id, event.status, event.usage))
                    arbiter.response_done(event.status)
                case StatusChanged():
                    self._on_status(event)
                case InputAudioDropped(kept_s=kept):
                    self._input_audio_dropped(kept)
                case ToolCall():
                    assert self.tool_calls is not None
                    self.tool_calls.start(event)
                case EngineError():
                    self._on_engine_error(event)
                case _:
                    assert_never(event)
        # The engine's event stream ended without a fatal error: the conversation is over.
        raise SessionEnded(
            CloseCode.NORMAL, "engine finished", [P.status_message("disconnected", "engine_stopped")]
        )

    def _on_audio(self, event: AudioOut) -> None:
        """Hot path: assistant audio, 50 frames a second. Its `audio` may still be the
        provider's base64 (`Base64PCM`): a JSON client at the engine's rate gets it as it came;
        anything else decodes it, once."""
        item_id = event.item_id
        if item_id in self._cancelled_items:
            return  # stale audio of an interrupted response
        audio = event.audio
        turns = self.turns
        turn = turns.by_item.get(item_id) or turns.turn("assistant", item_id)
        n = len(audio)
        turn.audio_bytes += n
        if turn.audio is not None:
            turn.audio.extend(event.pcm16)
        pcm = b""
        if self._out_resampler is not None:
            pcm = self._out_resampler.process(event.pcm16)
            if not pcm:
                return
            n = len(pcm)
        if item_id != self._announced_item or not self._client_speaking:
            self._announce_item(item_id)
        if turns.awaiting_audio:
            turns.first_audio()
        payload: str | bytes
        if pcm:  # resampled
            payload = pcm if self.binary else P.audio_frame(pcm, self._audio_tail)
        elif self.binary:
            payload = event.pcm16
        elif isinstance(audio, bytes):
            payload = P.audio_frame(audio, self._audio_tail)
        else:
            payload = P.audio_frame_base64(audio.text, self._audio_tail)
        self.audio_out_bytes += n
        dropped = self.outbox.put_audio(payload, n, item_id)
        if dropped:
            self._audio_dropped(dropped)

    def _announce_item(self, item_id: str) -> None:
        self._announced_item = item_id
        self._audio_tail = P.audio_frame_tail(item_id)
        self._client_speaking = True
        self.outbox.put(P.speaking_message(True, item_id))
        if self.arbiter is not None:
            self.arbiter.assistant_started(item_id)

    def _speaking_ended(self) -> None:
        if self._client_speaking:
            self._client_speaking = False
            self.outbox.put(P.speaking_message(False))

    def _audio_dropped(self, nbytes: int) -> None:
        seconds = nbytes / self.out_bytes_per_s
        self.state.metrics.audio_dropped_seconds.inc(seconds)
        outbox = self.outbox
        if outbox.congested:
            return  # said once per episode; the metric counts every dropped second
        outbox.congested = True
        buffered = outbox.max_audio_bytes / self.out_bytes_per_s
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

    def _input_audio_dropped(self, kept_s: float) -> None:
        # The inbound twin of `_audio_dropped`: said once per reconnect, the session goes on.
        log.warning(
            "session %s: the upstream is still reconnecting; dropping the oldest of more than "
            "%.1f s of user audio kept for it", self.id, kept_s,
        )  # fmt: skip
        self._send_error(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"the provider has been unreachable for a while: only the last {kept_s:g} s of what "
            "you said is kept to be answered once it is back, and the oldest is being dropped",
        )

    def _on_transcript(self, event: Transcript) -> None:
        assistant = event.role == "assistant"
        if assistant and not event.final and event.item_id in self._cancelled_items:
            return
        self.outbox.put_transcript(
            P.transcript_message(event.role, event.item_id, event.text, event.delta, event.final)
        )
        turns = self.turns
        if assistant and turns.awaiting_transcript:
            turns.first_transcript()
        elif not assistant and self.arbiter is not None:
            self.arbiter.user_transcript(event.item_id, event.text, event.final)
        turn = turns.turn(event.role, event.item_id)
        turn.text = event.text
        if event.final and not turn.stored:
            turns.store_turn(turn)

    def _on_interrupted(self, event: Interrupted) -> None:
        item_id = event.item_id
        self._cancelled_items.append(item_id)
        self.outbox.drop_audio(item_id)
        if self._out_resampler is not None:
            self._out_resampler.reset()
        self.outbox.put(P.interrupted_message(item_id, event.played_ms))
        self._speaking_ended()
        if self.arbiter is not None:
            self.arbiter.assistant_interrupted(item_id)
        turn = self.turns.turn("assistant", item_id)
        self.turns.cut_short(turn, event.played_ms, event.heard_text)

    def _on_status(self, event: StatusChanged) -> None:
        # Engines report connecting/connected during start(); the client already got those
        # around session_ready, so only changes after that are news.
        if event.status == self._last_status and not event.reason:
            return
        if not self._seen_status_change and event.status == "connecting":
            return
        self._seen_status_change = True
        self._last_status = event.status
        self.outbox.put(P.status_message(event.status, event.reason))
        if event.status == "disconnected":
            raise SessionEnded(CloseCode.NORMAL, event.reason or "the conversation ended")

    def _on_engine_error(self, event: EngineError) -> None:
        if not event.fatal:
            self._send_error(event.code, event.message)
            return
        close = (
            CloseCode.ENGINE_UNAVAILABLE
            if event.code == ErrorCode.ENGINE_UNAVAILABLE
            else CloseCode.UPSTREAM_FAILED
        )
        final: list[Mapping[str, Any]] = [
            P.error_message(event.code, event.message, fatal=True),
            P.status_message("disconnected", event.code),
        ]
        raise SessionEnded(close, event.message, final)


__all__ = ["NeutralSession"]
