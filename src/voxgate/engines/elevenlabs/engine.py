"""The ElevenLabs engine: one ElevenLabs conversation per engine instance.

How the seam maps onto the provider, and why:
- **Rates.** The agent's formats arrive in `conversation_initiation_metadata`, so `start()` waits
  for it and then sets `capabilities.input_rate`/`output_rate` (`pcm_44100` -> 44100; `ulaw_8000`
  is converted to/from PCM16 here and declared as 8000). The session resamples to client rates.
- **No end-of-response event.** ElevenLabs sends the agent's whole text once (`agent_response`)
  and audio chunks, but no "done". A turn is complete at the next turn marker (a user transcript,
  the next `agent_response`), on `agent_response_complete` when the agent sends it, or after
  `response_idle_s` without audio.
- **Assistant text.** A non-final assistant `Transcript` with the full text is emitted with the
  first audio chunk (so a client shows the text as it starts to hear it); the final one comes at
  completion and carries the corrected text after an interruption.
- **Interruptions.** Server `interruption` N: audio with `event_id <= N` is dropped at once (the
  Python SDK's rule) and `speaking false` goes out; `Interrupted` follows as soon as
  `agent_response_correction` arrives (at most `correction_wait_s` later), carrying the corrected
  text as the heard text, then the final transcript (same text) and `response_done: cancelled`.
  Client `interrupt(played_ms)`: the rest of the turn's audio is dropped at the gateway until the
  next turn marker, `user_activity` is sent (all ElevenLabs offers), and the turn ends at once with
  the heard text estimated from `played_ms`.
- **Turns are the provider's.** ElevenLabs decides on its side when the agent answers and when
  the user's speech stops it; its socket has no message to hold a reply back or to keep the
  agent talking over the user (`user_activity` only delays the agent's turn timer). So the
  engine declares no `turn_control`: the gateway refuses `hold` and its interruption policy for
  it with a sentence, and can still end a user turn (`commit`, trailing silence) and stop the
  agent (`interrupt`).
- **Faults.** Malformed server messages are logged and skipped. A close by the provider ends
  the engine: 1000 as `status: disconnected` (the agent ended the call), 1002/1008/1011 as a
  fatal `EngineError` with the provider's own sentence. A dropped transport (1001/1006/1012/1013)
  is retried with backoff as a *new* ElevenLabs conversation briefed with the history as a
  `contextual_update` (ElevenLabs cannot replay items; the agent's own state is lost), with
  `status: reconnecting`; the turn in flight ends as `failed`. When every attempt fails the
  fatal error follows.
- **Nothing said is lost to a reconnect.** User audio sent while reconnecting is held (bounded,
  `VOXGATE_RECONNECT_AUDIO_BUFFER_S`) and sent to the new conversation right after its briefing,
  in order, so the agent hears the utterance and answers it; it starts with what the lost
  conversation received but never turned into a user transcript (a pre-roll, or the utterance
  in progress), so speech that straddles the drop arrives whole. A `commit` is trailing silence,
  so it is held in its place like any audio.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voxgate.audio import pcm16_to_ulaw, ulaw_to_pcm16
from voxgate.engines.base import (
    AssistantSpeaking,
    AudioOut,
    Capabilities,
    ConversationEngine,
    EngineError,
    EngineUnavailable,
    HistoryTurn,
    InputAudioDropped,
    Interrupted,
    ResponseDone,
    StartOptions,
    StatusChanged,
    ToolCall,
    ToolExchange,
    Transcript,
    UserSpeaking,
)
from voxgate.engines.elevenlabs.config import ElevenLabsConfig
from voxgate.engines.elevenlabs.signed_url import conversation_url
from voxgate.engines.elevenlabs.wire import (
    CLOSE_MEANINGS,
    FORMAT_RATES,
    IGNORED_TYPES,
    LOST_MEANING,
    RECONNECT_CODES,
    audio_formats,
    conversation_override,
    history_text,
    init_message,
    int_field,
    str_field,
    tool_result,
)
from voxgate.engines.upstream import (
    DialFailed,
    ReconnectAudioBuffer,
    cancel_and_wait,
    close_quietly,
    dial_ws,
    reconnect,
)
from voxgate.turns import heard_prefix, text_delta

if TYPE_CHECKING:
    pass

log = logging.getLogger("voxgate.engines.elevenlabs")

Message = dict[str, Any]
_Handler = Callable[[Message], Awaitable[None]]

#: Roughly how long speech takes per character; only used to estimate heard text while a turn's
#: audio is still arriving (once it has all arrived, the real audio length is used).
_MS_PER_CHAR = 65.0


class _Rejected(Exception):
    """The conversation socket closed before `conversation_initiation_metadata`."""

    def __init__(self, code: int, error_type: str | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error_type = error_type
        self.message = message

    def sentence(self) -> str:
        return (
            f"ElevenLabs refused the conversation: {self.message} "
            f"({self.error_type or 'no error type'}, close {self.code})."
        )


def _close_info(exc: ConnectionClosed) -> tuple[int, str]:
    """(code, reason) of a close; 1006 when the socket died without a close frame."""
    if exc.rcvd is None:
        return 1006, ""
    return exc.rcvd.code, exc.rcvd.reason


def _start_timed_out(timeout_s: float) -> EngineUnavailable:
    return EngineUnavailable(
        f"ElevenLabs did not start the conversation within {timeout_s:g} s; try again later.",
        upstream=True,
    )


def _dial_unavailable(exc: DialFailed) -> EngineUnavailable:
    """The conversation socket would not open: an HTTP refusal or an unreachable address."""
    if exc.status is not None:
        return EngineUnavailable(
            f"ElevenLabs refused the conversation socket (HTTP {exc.status}); check the "
            "agent's authentication settings.",
            upstream=True,
        )
    return EngineUnavailable(
        f"ElevenLabs conversation socket unreachable ({exc.reason}); check the network and "
        "VOXGATE_ELEVENLABS_URL.",
        upstream=True,
        retryable=not exc.bad_url,
    )


@dataclass(slots=True)
class _AgentTurn:
    item_id: str
    text: str | None = None
    corrected: str | None = None
    emitted: str = ""  # assistant text already sent in a non-final Transcript
    audio_bytes: int = 0  # PCM16 at the output rate
    speaking: bool = False
    last_activity: float = 0.0
    heard: str | None = None  # set when interrupted
    played_ms: int = 0


class ElevenLabsEngine(ConversationEngine):
    """One ElevenLabs conversation per engine instance."""

    name = "elevenlabs"
    config_type = ElevenLabsConfig

    #: Audio idle after which an agent turn counts as complete (no end event from ElevenLabs).
    response_idle_s: float = 1.0
    #: After a server `interruption`, how long `Interrupted` waits for
    #: `agent_response_correction` (its text is what the session stores as heard).
    correction_wait_s: float = 0.3
    #: Silence sent on `commit()`, so the provider's turn detection ends the user turn now.
    commit_silence_ms: int = 800

    def __init__(self, config: ElevenLabsConfig) -> None:
        super().__init__()
        self.config = config
        # Tools: the agent's client tools, declared on the agent, run by the gateway by name.
        self.capabilities = Capabilities(input_rate=16000, output_rate=16000, tools=True)
        self.conversation_id: str | None = None
        self.input_format = "pcm_16000"
        self.output_format = "pcm_16000"
        self._ulaw_in = self._ulaw_out = False  # the formats above, decided once per connect
        #: The provider's latency estimate from its last `ping` (ms), when it sends one.
        self.last_ping_ms: float | None = None
        #: Counters that tests and metrics read.
        self.dropped_stale_audio = 0
        self.skipped_messages = 0
        self.pongs_sent = 0
        self.override_warning: str | None = None
        self._ws: ClientConnection | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._state_lock = asyncio.Lock()
        self._stopping = False
        self._started = False
        #: True from a dropped transport until the new conversation has all held audio.
        self._reconnecting = False
        #: User audio across reconnects (see the module docstring); sized once rates are known.
        self._held = ReconnectAudioBuffer(config.upstream.audio_buffer_s, self.report_held_audio)
        self._turn: _AgentTurn | None = None
        self._pending: tuple[_AgentTurn, float] | None = None  # interrupted, awaiting correction
        self._last_interrupt_id = 0
        #: After a client interrupt, the rest of that response's audio is stale: drop it until
        #: the next turn marker (ElevenLabs has no id to cancel it by).
        self._dropping_stale_audio = False
        self._user_item: str | None = None
        self._user_text = ""
        self._seq = 0
        self._last_error: dict[str, Any] | None = None
        #: Every final turn, so a reconnect can brief the new conversation.
        self._history: list[HistoryTurn] = []
        self._options = StartOptions()
        self._override_used: dict[str, Any] = {}
        self._handlers: dict[str, _Handler] = {
            "ping": self._on_ping,
            "audio": self._on_audio,
            "agent_response": self._on_agent_response,
            "agent_response_correction": self._on_agent_response_correction,
            "user_transcript": self._on_user_transcript,
            "tentative_user_transcript": self._on_tentative_user_transcript,
            "interruption": self._on_interruption,
            "agent_response_complete": self._on_agent_response_complete,
            "client_tool_call": self._on_client_tool_call,
            "error": self._on_error,
        }

    # --- start / stop -------------------------------------------------------------------------
    async def start(self, options: StartOptions) -> None:
        if self._started:
            raise RuntimeError("ElevenLabsEngine.start() called twice")
        self._started = True
        if not self.config.agent_id:
            raise EngineUnavailable(
                "No ElevenLabs agent is configured: set VOXGATE_ELEVENLABS_AGENT_ID to your "
                "agent's id (and ELEVENLABS_API_KEY for a private agent).",
                retryable=False,
            )
        await self.emit(StatusChanged("connecting"))
        self._options = options
        self._history = list(options.history)
        try:
            await self._open(conversation_override(options), options)
        except EngineUnavailable:
            self.status = "disconnected"
            raise
        self._held.configure(self.capabilities.input_rate * 2)
        # A manual turn is in progress until the agent has its transcript: all of it is kept.
        self._held.speech(options.turn_detection.mode == "manual")
        if self._stopping:  # stop() ran while we were connecting: leave nothing behind
            ws, self._ws = self._ws, None
            await close_quietly(ws)
            return
        self._reader_task = asyncio.create_task(self._reader(), name="elevenlabs-reader")
        await self.emit(StatusChanged("connected"))
        if self.override_warning:
            await self.emit(EngineError("upstream_error", self.override_warning, fatal=False))
        if options.history:
            await self._send({"type": "contextual_update", "text": history_text(options.history)})

    async def _open(self, override: dict[str, Any], options: StartOptions) -> None:
        """The first conversation, within the start timeout; any failure is `EngineUnavailable`."""
        self._override_used = override
        timeout_s = self.config.upstream.start_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    await self._connect(override, options)
                except _Rejected as exc:
                    if exc.error_type != "override_error" or not override:
                        raise
                    # The agent does not allow these overrides: run with its own settings and
                    # tell the user, rather than refusing the whole conversation.
                    self.override_warning = (
                        f"The ElevenLabs agent does not allow these overrides ({exc.message}); "
                        "its own prompt, voice and first message are used."
                    )
                    log.warning("%s", self.override_warning)
                    self._override_used = {}
                    await self._connect({}, options)
        except TimeoutError:
            raise _start_timed_out(timeout_s) from None
        except _Rejected as exc:
            # 1008: the provider refused this agent or these settings; trying again will not help.
            raise EngineUnavailable(
                exc.sentence(), upstream=True, retryable=exc.code != 1008
            ) from None

    async def _connect(self, override: dict[str, Any], options: StartOptions) -> ClientConnection:
        """One attempt: open the socket, send the init message, adopt the agent's formats."""
        began = time.monotonic()
        ws: ClientConnection | None = None
        try:
            ws = await self._dial()
            with contextlib.suppress(ConnectionClosed):  # a refusal is read from the close
                await ws.send(init_message(override, options.session_id))
            meta = await self._await_metadata(ws)
            in_fmt, out_fmt = audio_formats(meta)
        except BaseException:
            self.report_connect(False, time.monotonic() - began)
            await close_quietly(ws)
            raise
        self.report_connect(True, time.monotonic() - began)
        self._ws = ws
        self.conversation_id = str(meta.get("conversation_id") or "")
        self.input_format, self.output_format = in_fmt, out_fmt
        self._ulaw_in, self._ulaw_out = in_fmt.startswith("ulaw"), out_fmt.startswith("ulaw")
        self.capabilities.input_rate = FORMAT_RATES[in_fmt]
        self.capabilities.output_rate = FORMAT_RATES[out_fmt]
        return ws

    async def _dial(self) -> ClientConnection:
        url = await conversation_url(self.config)
        try:
            return await dial_ws(url, self.config.upstream)
        except DialFailed as exc:
            raise _dial_unavailable(exc) from None

    async def _await_metadata(self, ws: ClientConnection) -> dict[str, Any]:
        """Read until the conversation's metadata; a close before it is a `_Rejected` carrying
        the provider's `error` event when one came first (its sentence beats the close reason)."""
        error: dict[str, Any] = {}
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as exc:
                code, reason = _close_info(exc)
                message = error.get("message") or reason or "the socket closed"
                raise _Rejected(code, error.get("error_type"), str(message)) from None
            msg = self._parse(raw)
            if msg is None:
                continue
            kind = msg.get("type")
            if kind == "conversation_initiation_metadata":
                meta = msg.get("conversation_initiation_metadata_event")
                if isinstance(meta, dict):
                    return meta
                self._skip("metadata without conversation_initiation_metadata_event")
            elif kind == "error" and isinstance(msg.get("error_event"), dict):
                error = msg["error_event"]
            elif kind == "ping":
                with contextlib.suppress(KeyError, TypeError):
                    event_id = int_field(msg["ping_event"]["event_id"])
                    await ws.send(orjson.dumps({"type": "pong", "event_id": event_id}).decode())
            else:
                log.info("elevenlabs: %r before the conversation metadata, skipped", kind)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        task, self._reader_task = self._reader_task, None
        await cancel_and_wait([task])
        self._held.discard()
        ws, self._ws = self._ws, None
        await close_quietly(ws)
        await self.emit(StatusChanged("disconnected", "stopped"))
        self._finish_events()

    # --- input --------------------------------------------------------------------------------
    async def _send(self, message: Message) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            async with self._send_lock:
                await ws.send(orjson.dumps(message).decode())
            return True
        except ConnectionClosed:
            return False  # the reader reports the close

    async def send_audio(self, pcm16: bytes) -> None:
        if not pcm16:
            return
        if self._reconnecting:  # held for the new conversation (see the module docstring)
            if self._held.hold(pcm16):
                await self.emit(InputAudioDropped(self._held.seconds))
            return
        self._held.sent(pcm16)
        await self._send_audio_now(pcm16)

    async def _send_audio_now(self, pcm16: bytes) -> bool:
        data = pcm16_to_ulaw(pcm16) if self._ulaw_in else pcm16
        return await self._send({"user_audio_chunk": base64.b64encode(data).decode("ascii")})

    async def commit(self) -> None:
        """ElevenLabs has no "respond now" message; its own turn detection decides. Trailing
        silence is what ends a turn there, so commit sends `commit_silence_ms` of it: a client
        that stops streaming at commit (manual mode) gets its answer without waiting for the
        provider's turn timeout."""
        rate = self.capabilities.input_rate
        silence = b"\x00\x00" * int(rate * self.commit_silence_ms / 1000)
        step = rate // 10 * 2  # 100 ms chunks, like a microphone
        for i in range(0, len(silence), step):
            await self.send_audio(silence[i : i + step])

    async def send_user_message(self, text: str) -> None:
        self._history.append(HistoryTurn("user", text))
        await self._send({"type": "user_message", "text": text})

    async def send_context_update(self, payload: dict[str, Any]) -> None:
        await self._send({"type": "contextual_update", "text": orjson.dumps(payload).decode()})

    async def interrupt(self, played_ms: int | None) -> None:
        await self._send({"type": "user_activity"})
        async with self._state_lock:
            turn = self._turn
            if turn is None:
                return
            self._turn = None
            self._dropping_stale_audio = True
            received = self._ms(turn.audio_bytes)
            played = int(received if played_ms is None else max(0, min(played_ms, received)))
            heard = self._estimate_heard(turn, played)
            await self._end_turn(turn, heard, "cancelled", interrupted_at_ms=played)

    # --- the reader ---------------------------------------------------------------------------
    async def _reader(self) -> None:
        try:
            while True:
                try:
                    await self._read()
                except ConnectionClosed as exc:
                    if self._stopping or not await self._survive_close(exc):
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not hang the session
            log.exception("elevenlabs reader failed")
            await self.emit(
                EngineError("internal", f"The ElevenLabs engine failed: {exc}", fatal=True)
            )

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        state_lock, dispatch = self._state_lock, self._dispatch
        while True:
            deadline = self._deadline()
            try:
                if deadline is None:
                    raw = await ws.recv()
                else:
                    async with asyncio.timeout_at(deadline):
                        raw = await ws.recv()
            except TimeoutError:
                async with state_lock:
                    await self._deadline_passed(loop.time())
                continue
            msg = self._parse(raw)
            if msg is not None:
                async with state_lock:
                    await dispatch(msg)

    async def _survive_close(self, exc: ConnectionClosed) -> bool:
        """The socket closed under us: end the turn in flight, and reconnect when only the
        transport dropped. False when the engine is over (its end has been reported)."""
        code, _ = _close_info(exc)
        async with self._state_lock:
            await self._end_turn_on_close(code)
        if code in RECONNECT_CODES and await self._reconnect(code):
            return True
        async with self._state_lock:
            await self._report_close(exc)
        return False

    async def _reconnect(self, code: int) -> bool:
        """A dropped transport (not a provider decision): start a new ElevenLabs conversation
        with backoff and give it the history as a `contextual_update` (ElevenLabs cannot replay
        items). False when every attempt failed; the caller then reports the fatal error."""
        self._ws = None
        self._reconnecting = True
        self._held.begin()
        try:
            await self.emit(
                StatusChanged("reconnecting", f"ElevenLabs connection lost (close {code})")
            )
            rates = (self.capabilities.input_rate, self.capabilities.output_rate)
            ws, _ = await reconnect(
                self.config.upstream.reconnect,
                lambda: self._reconnect_once(rates),
                stopped=lambda: self._stopping,
            )
            if ws is None:
                return False
            self._last_interrupt_id = 0  # event ids restart with the new conversation
            self._dropping_stale_audio = False
            self._last_error = None
            if self._history:
                await self._send({"type": "contextual_update", "text": history_text(self._history)})
            await self._restore_input()
            await self.emit(StatusChanged("connected", "reconnected"))
            return True
        finally:
            self._held.discard()  # only if still held: the reconnect failed or was cancelled
            self._reconnecting = False

    async def _restore_input(self) -> None:
        """The new conversation is briefed: send it the held audio, in order. Audio arriving
        meanwhile is held and sent in turn; the moment nothing is left, new audio goes straight
        to the new conversation again."""
        held = self._held
        while (item := held.next_held()) is not None:
            if isinstance(item, bytes):
                await self._send_audio_now(item)  # a failure is the reader's to notice
        held.finish()
        self._reconnecting = False

    async def _reconnect_once(self, rates: tuple[int, int]) -> ClientConnection:
        """One reconnect attempt; any failure is an `EngineUnavailable`, as `reconnect` wants."""
        timeout_s = self.config.upstream.start_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                ws = await self._connect(self._override_used, self._options)
        except _Rejected as exc:
            failure = EngineUnavailable(exc.sentence(), upstream=True)
        except TimeoutError:
            failure = _start_timed_out(timeout_s)
        except EngineUnavailable as exc:
            failure = exc
        else:
            if (self.capabilities.input_rate, self.capabilities.output_rate) == rates:
                return ws
            # Rates are final once start() returned; a changed agent cannot continue here.
            self._ws = None
            await close_quietly(ws)
            failure = EngineUnavailable(
                "The ElevenLabs agent's audio formats changed during the conversation.",
                upstream=True,
                retryable=False,
            )
        log.warning("elevenlabs reconnect failed: %s", failure.message)
        raise failure

    def _parse(self, raw: str | bytes) -> Message | None:
        if isinstance(raw, bytes):
            self._skip("a binary frame")
            return None
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._skip("a message that is not JSON")
            return None
        if not isinstance(msg, dict):
            self._skip("a JSON message that is not an object")
            return None
        return msg

    def _skip(self, what: str) -> None:
        self.skipped_messages += 1
        log.warning("elevenlabs: skipped %s", what)

    async def _dispatch(self, msg: Message) -> None:
        kind = msg.get("type")
        handler = self._handlers.get(kind)  # type: ignore[arg-type]
        if handler is None:
            if kind not in IGNORED_TYPES:
                self._skip(f"an unknown message type {kind!r}")
            return
        try:
            await handler(msg)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            self._skip(f"a malformed {kind!r} message ({exc})")

    # --- one handler per server message type (each validates before it changes state) ---------
    async def _on_ping(self, msg: Message) -> None:
        event = msg["ping_event"]
        event_id = int_field(event["event_id"])
        if await self._send({"type": "pong", "event_id": event_id}):
            self.pongs_sent += 1
        ping_ms = event.get("ping_ms")
        if isinstance(ping_ms, int | float) and not isinstance(ping_ms, bool):
            self.last_ping_ms = float(ping_ms)

    async def _on_audio(self, msg: Message) -> None:
        event = msg["audio_event"]
        event_id = int_field(event["event_id"])
        data = base64.b64decode(str_field(event["audio_base_64"]), validate=True)
        if event_id <= self._last_interrupt_id or self._dropping_stale_audio:
            self.dropped_stale_audio += 1
            return
        pcm = ulaw_to_pcm16(data) if self._ulaw_out else data
        pcm = pcm[: len(pcm) - len(pcm) % 2]
        if not pcm:
            return
        turn = await self._current_turn()
        if not turn.speaking:
            turn.speaking = True
            await self.emit(AssistantSpeaking(True))
            await self._partial_transcript(turn)
        turn.audio_bytes += len(pcm)
        turn.last_activity = asyncio.get_running_loop().time()
        await self.emit(AudioOut(pcm, turn.item_id))

    async def _on_agent_response(self, msg: Message) -> None:
        text = str_field(msg["agent_response_event"]["agent_response"]).strip()
        self._dropping_stale_audio = False
        turn = self._turn
        if turn is not None and turn.text is not None:
            await self._complete(turn)  # a new agent turn starts: the previous one is done
            turn = None
        if turn is None:
            turn = await self._current_turn()
        turn.text = text
        turn.last_activity = asyncio.get_running_loop().time()
        if turn.speaking:
            await self._partial_transcript(turn)

    async def _on_agent_response_correction(self, msg: Message) -> None:
        event = msg["agent_response_correction_event"]
        corrected = str_field(event["corrected_agent_response"]).strip()
        if self._pending is not None:
            turn, _ = self._pending
            turn.heard = corrected
            await self._flush_pending()
        elif self._turn is not None:
            self._turn.corrected = corrected
        else:
            log.info("elevenlabs: correction for a turn already finished, ignored")

    async def _on_user_transcript(self, msg: Message) -> None:
        text = str_field(msg["user_transcription_event"]["user_transcript"]).strip()
        self._dropping_stale_audio = False
        if self._turn is not None:
            await self._complete(self._turn)
        await self._flush_pending()
        item_id = self._user_item or self._new_id("u")
        delta = text_delta(self._user_text, text)
        if self._user_item is not None:
            await self.emit(UserSpeaking(False, item_id))
        elif text:
            # No tentative transcript came first (a one-word turn): the user spoke all the same.
            await self.emit(UserSpeaking(True, item_id))
            await self.emit(UserSpeaking(False, item_id))
        self._user_item, self._user_text = None, ""
        # The agent heard this turn for good: a replay after a drop must not send it again.
        self._held.committed()
        self._held.speech(self._options.turn_detection.mode == "manual")
        if text:
            self._history.append(HistoryTurn("user", text))
        await self.emit(Transcript("user", item_id, text, delta, final=True))

    async def _on_tentative_user_transcript(self, msg: Message) -> None:
        text = str_field(msg["tentative_user_transcription_event"]["user_transcript"]).strip()
        if self._user_item is None:
            self._user_item, self._user_text = self._new_id("u"), ""
            self._held.speech(True)
            await self.emit(UserSpeaking(True, self._user_item))
        delta = text_delta(self._user_text, text)
        self._user_text = text
        await self.emit(Transcript("user", self._user_item, text, delta, final=False))

    async def _on_interruption(self, msg: Message) -> None:
        event_id = int_field(msg["interruption_event"]["event_id"])
        self._last_interrupt_id = max(self._last_interrupt_id, event_id)
        self._dropping_stale_audio = False  # stale audio is now filtered by event_id
        turn = self._turn
        if turn is None:
            return
        self._turn = None
        turn.played_ms = int(self._ms(turn.audio_bytes))
        turn.heard = self._estimate_heard(turn, turn.played_ms)
        await self._stop_speaking(turn)
        await self._flush_pending()
        # `Interrupted` waits (briefly) for the correction: the session stores the heard text it
        # carries, and the provider's correction is better than any estimate.
        self._pending = (turn, asyncio.get_running_loop().time() + self.correction_wait_s)

    async def _on_agent_response_complete(self, msg: Message) -> None:
        if self._turn is not None:
            await self._complete(self._turn)

    async def _on_client_tool_call(self, msg: Message) -> None:
        """The agent calls a tool declared on it (ElevenLabs "client tools"): the session runs
        the tool of that name and `send_tool_result` answers with `client_tool_result`."""
        call = msg["client_tool_call"]
        call_id = str_field(call["tool_call_id"])
        name = str(call.get("tool_name") or "")
        parameters = call.get("parameters")
        arguments = orjson.dumps(parameters if isinstance(parameters, dict) else {}).decode()
        exchange = ToolExchange(call_id, name, arguments)
        self._history.append(HistoryTurn("tool", f"{name}({arguments})", exchange))
        await self.emit(ToolCall(call_id, name, arguments))

    async def send_tool_result(
        self, call_id: str, output: str, *, respond: bool = True, is_error: bool = False
    ) -> None:
        # ElevenLabs cannot be told to wait for the user: a cancelled call is answered too,
        # and the agent says what it makes of the cancellation.
        for turn in reversed(self._history):
            if turn.tool is not None and turn.tool.call_id == call_id:
                turn.tool.output = output
                turn.text = f"{turn.tool.name}({turn.tool.arguments}) -> {output}"
                break
        await self._send(tool_result(call_id, output, is_error))

    async def _on_error(self, msg: Message) -> None:
        event = msg["error_event"]
        if not isinstance(event, dict):
            raise TypeError("error_event is not an object")
        self._last_error = event
        log.warning("elevenlabs error event: %s", event)

    # --- turn bookkeeping ---------------------------------------------------------------------
    def _new_id(self, role: str) -> str:
        self._seq += 1
        return f"el_{self.conversation_id or 'conv'}_{role}{self._seq}"

    def _ms(self, nbytes: int) -> float:
        return nbytes / 2 * 1000.0 / self.capabilities.output_rate

    async def _current_turn(self) -> _AgentTurn:
        if self._turn is None:
            await self._flush_pending()
            self._turn = _AgentTurn(
                self._new_id("a"), last_activity=asyncio.get_running_loop().time()
            )
        return self._turn

    def _estimate_heard(self, turn: _AgentTurn, played_ms: float) -> str:
        text = turn.corrected or turn.text or ""
        if not text:
            return ""
        # Whole-turn duration: the audio received, or a speech-rate estimate while it streams.
        total_ms = max(self._ms(turn.audio_bytes), len(text) * _MS_PER_CHAR)
        return heard_prefix(text, played_ms, total_ms)

    async def _partial_transcript(self, turn: _AgentTurn) -> None:
        if turn.text and turn.emitted != turn.text:
            delta = text_delta(turn.emitted, turn.text)
            turn.emitted = turn.text
            await self.emit(Transcript("assistant", turn.item_id, turn.text, delta, final=False))

    async def _final_transcript(self, turn: _AgentTurn, text: str) -> None:
        if not text and not turn.emitted:
            return
        # A corrected text is no continuation of what the client shows: no delta, just the text.
        delta = text_delta(turn.emitted, text, fallback="")
        await self.emit(Transcript("assistant", turn.item_id, text, delta, final=True))

    async def _stop_speaking(self, turn: _AgentTurn) -> None:
        if turn.speaking:
            turn.speaking = False
            await self.emit(AssistantSpeaking(False))

    async def _end_turn(
        self,
        turn: _AgentTurn,
        text: str,
        status: Literal["completed", "cancelled", "failed"],
        *,
        interrupted_at_ms: int | None = None,
    ) -> None:
        """Close an agent turn: speaking off, `Interrupted` when it was cut, the final text
        (what was heard), the history, `ResponseDone`."""
        await self._stop_speaking(turn)
        if interrupted_at_ms is not None:
            await self.emit(Interrupted(turn.item_id, interrupted_at_ms, heard_text=text))
        await self._final_transcript(turn, text)
        if text:
            self._history.append(HistoryTurn("assistant", text))
        await self.emit(ResponseDone(turn.item_id, status))

    async def _complete(self, turn: _AgentTurn) -> None:
        """The agent's text and audio for this turn are all here."""
        if self._turn is turn:
            self._turn = None
        await self._end_turn(turn, turn.corrected or turn.text or "", "completed")

    async def _flush_pending(self) -> None:
        """Finish an interrupted turn: its final text is the correction, else the estimate."""
        if self._pending is None:
            return
        turn, _ = self._pending
        self._pending = None
        await self._end_turn(turn, turn.heard or "", "cancelled", interrupted_at_ms=turn.played_ms)

    def _deadline(self) -> float | None:
        deadlines = []
        if self._pending is not None:
            deadlines.append(self._pending[1])
        if self._turn is not None:
            deadlines.append(self._turn.last_activity + self.response_idle_s)
        return min(deadlines) if deadlines else None

    async def _deadline_passed(self, now: float) -> None:
        if self._pending is not None and self._pending[1] <= now:
            await self._flush_pending()
        turn = self._turn
        if turn is not None and turn.last_activity + self.response_idle_s <= now:
            await self._complete(turn)

    async def _end_turn_on_close(self, code: int) -> None:
        """The socket is gone: close the turn in flight (its audio stops here)."""
        self._ws = None
        turn, self._turn = self._turn, None
        await self._flush_pending()
        if turn is None:
            return
        if code == 1000:  # ended by the agent: the turn stands as sent
            await self._end_turn(turn, turn.corrected or turn.text or "", "completed")
        else:  # lost: only what arrived was heard
            heard = self._estimate_heard(turn, self._ms(turn.audio_bytes))
            await self._end_turn(turn, heard, "failed")

    async def _report_close(self, exc: ConnectionClosed) -> None:
        """The engine is over: a normal end (1000) or the fatal error, in the provider's words."""
        code, reason = _close_info(exc)
        error = self._last_error or {}
        detail = str(error.get("message") or reason or "no reason given")
        if code == 1000:
            await self.emit(
                StatusChanged("disconnected", f"ElevenLabs ended the conversation: {detail}")
            )
            self._finish_events()
            return
        error_type = error.get("error_type")
        code_name = "upstream_error" if code in (1002, 1008) else "upstream_unavailable"
        what = CLOSE_MEANINGS.get(code, LOST_MEANING)
        sentence = f"{what}: {detail} (close {code}{', ' + str(error_type) if error_type else ''})."
        # The fatal error first and alone: a `disconnected` status ahead of it would end the
        # session as a normal close (1000) and the client would never learn why. The session
        # itself follows a fatal error with `status: disconnected`.
        self.status = "disconnected"
        await self.emit(EngineError(code_name, sentence, fatal=True))


__all__ = ["ElevenLabsEngine"]
