"""OpenAI Realtime (GA) behind the `ConversationEngine` seam, over one WebSocket.

Why it looks the way it does:

- **GA only.** The beta interface is shut down: no `OpenAI-Beta` header, GA session shape, GA
  event names.
- **Hot path.** `send_audio` is a base64 call and a byte concatenation into a pre-built JSON
  template; no models, no dict building, no JSON encoder. A JSON client's base64 goes into the
  template as it came (`send_audio_base64`), and an audio delta's base64 reaches the session
  undecoded (`Base64PCM`): at 24 kHz both ways nothing is decoded or encoded at all. Provider events reach their
  `_on_<event>` handler through one dict lookup, built once per engine.
- **The client knows what was heard.** `interrupt(played_ms)` truncates the assistant item to
  what was actually played (clamped to the audio received), and the engine drops every later
  audio delta of the cancelled response so no stale audio follows `Interrupted`.
- **Upstream faults are survivable.** One reader task owns the socket. When it drops (close,
  TCP reset, missed pongs) the engine reconnects with jittered backoff, re-sends the session
  config and replays the conversation so far as `conversation.item.create` items, and tells the
  session through `StatusChanged`.
- **Nothing said is lost to a reconnect.** Audio sent while reconnecting is held (bounded,
  `VOXGATE_RECONNECT_AUDIO_BUFFER_S`; beyond it the oldest goes and the client is told once)
  and appended to the new session, in order, right after the conversation is restored, so the
  provider hears the utterance and answers it. The held audio starts with what the old session
  received but never committed into a turn (a pre-roll, or the utterance in progress until its
  transcript is back), so speech that straddles the drop arrives whole, and committed audio is
  never sent twice. A manual `commit` during the reconnect is replayed in its place, after the
  audio before it, and gets one `response.create`.
- **Session recycle.** OpenAI ends sessions at 60 minutes; the engine opens a fresh upstream
  session at a quiet moment before that (`VOXGATE_OPENAI_SESSION_RECYCLE_S`) and swaps it in
  without any status change. A provider `session_expired` is handled the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voxgate.engines.base import (
    AssistantSpeaking,
    AudioOut,
    Capabilities,
    ConversationEngine,
    EngineError,
    EngineUnavailable,
    InputAudioDropped,
    Interrupted,
    ResponseDone,
    StartOptions,
    StatusChanged,
    ToolCall,
    ToolExchange,
    Transcript,
    TurnDetectionOptions,
    UserSpeaking,
)
from voxgate.engines.openai.config import OpenAIConfig
from voxgate.engines.openai.dial import dial_openai, realtime_url, unreachable
from voxgate.engines.upstream import (
    COMMIT,
    ReconnectAudioBuffer,
    cancel_and_wait,
    close_quietly,
    reconnect,
)
from voxgate.pcm_b64 import Base64PCM, check_base64
from voxgate.turns import heard_prefix, text_delta

if TYPE_CHECKING:
    pass

log = logging.getLogger("voxgate.engines.openai")

RATE = 24000
BYTES_PER_MS = 48  # PCM16 mono @ 24 kHz
_APPEND_PREFIX = b'{"type":"input_audio_buffer.append","audio":"'
_APPEND_SUFFIX = b'"}'
_COMMIT_EVENT = '{"type":"input_audio_buffer.commit"}'
#: Upstream error codes that retrying cannot fix.
FATAL_CODES = {"invalid_api_key", "insufficient_quota", "account_deactivated"}
#: Upstream errors that are expected and harmless.
HARMLESS_CODES = {"response_cancel_not_active"}
#: How a filler is asked of the model (an out-of-band response's instructions).
FILLER_INSTRUCTION = "Tools are still running. Say this to the user, and nothing else:"
_STATUS_MAP = {"completed": "completed", "cancelled": "cancelled"}

Event = dict[str, Any]
Handler = Callable[[Event], Awaitable[None]]

#: Provider event type -> the engine method that handles it. Audio and text deltas share a
#: handler where OpenAI sends the same thing under two names (spoken vs text-only replies).
_HANDLERS: dict[str, str] = {
    "response.output_audio.delta": "_on_response_output_audio_delta",
    "response.output_audio_transcript.delta": "_on_assistant_text_delta",
    "response.output_text.delta": "_on_assistant_text_delta",
    "response.output_audio_transcript.done": "_on_assistant_text_done",
    "response.output_text.done": "_on_assistant_text_done",
    "input_audio_buffer.speech_started": "_on_input_audio_buffer_speech_started",
    "input_audio_buffer.speech_stopped": "_on_input_audio_buffer_speech_stopped",
    "conversation.item.input_audio_transcription.delta": "_on_input_transcription_delta",
    "conversation.item.input_audio_transcription.completed": "_on_input_transcription_completed",
    "conversation.item.input_audio_transcription.failed": "_on_input_transcription_failed",
    "response.created": "_on_response_created",
    "response.output_item.added": "_on_response_output_item_added",
    "response.done": "_on_response_done",
    "error": "_on_error",
}


@dataclass
class _Item:
    """An assistant output item: what we received of it, and whether it was cut off."""

    id: str
    response_id: str
    audio_bytes: int = 0
    transcript: str = ""
    interrupted: bool = False
    truncated: bool = False
    final: bool = False
    heard: str | None = None


class _Upstream:
    """One upstream connection: its socket plus what `start()`/restore learned."""

    def __init__(self, ws: ClientConnection, opened_at: float) -> None:
        self.ws = ws
        self.opened_at = opened_at
        self.expired = False


def _turn_detection(
    td: TurnDetectionOptions, auto_respond: bool = True, auto_interrupt: bool = True
) -> dict[str, Any] | None:
    """OpenAI's `turn_detection` for the client's choice; None is manual (the client commits).

    With the gateway steering turns, the server VAD still segments speech and transcribes, but
    creates no response (`create_response: false`) and cancels none (`interrupt_response:
    false`): the engine sends `response.create` and `response.cancel` when told."""
    if td.mode != "server_vad":
        return None
    config: dict[str, Any] = {"type": "server_vad", "create_response": auto_respond,
                              "interrupt_response": auto_interrupt}  # fmt: skip
    if td.threshold is not None:
        config["threshold"] = td.threshold
    if td.silence_ms is not None:
        config["silence_duration_ms"] = td.silence_ms
    if td.prefix_ms is not None:
        config["prefix_padding_ms"] = td.prefix_ms
    return config


def _replay_item(role: str, text: str) -> str:
    """A `conversation.item.create` that restores one earlier turn into a new session."""
    content_type = "output_text" if role == "assistant" else "input_text"
    item = {"type": "message", "role": role, "content": [{"type": content_type, "text": text}]}
    return orjson.dumps({"type": "conversation.item.create", "item": item}).decode()


def _replay_tool(exchange: ToolExchange) -> list[str]:
    """The call (and its output, once there is one) restored into a new session."""
    call = {"type": "function_call", "call_id": exchange.call_id, "name": exchange.name,
            "arguments": exchange.arguments}  # fmt: skip
    events = [orjson.dumps({"type": "conversation.item.create", "item": call}).decode()]
    if exchange.output is not None:
        events.append(_output_item(exchange.call_id, exchange.output))
    return events


def _output_item(call_id: str, output: str) -> str:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return orjson.dumps({"type": "conversation.item.create", "item": item}).decode()


#: What the conversation remembers, in order: (role, text) turns and tool calls.
_Remembered = tuple[str, str] | ToolExchange


class OpenAIRealtimeEngine(ConversationEngine):
    """OpenAI Realtime GA over WebSocket; see the module docstring for the design."""

    name = "openai"
    config_type = OpenAIConfig

    def __init__(self, config: OpenAIConfig) -> None:
        super().__init__()
        self.config = config
        self.capabilities = Capabilities(
            input_rate=RATE, output_rate=RATE, turn_control=True, tools=True
        )
        self._url = realtime_url(config.url, {"model": config.model})
        self._handlers: dict[str, Handler] = {
            etype: getattr(self, method) for etype, method in _HANDLERS.items()
        }
        self._options = StartOptions()
        self._up: _Upstream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._recycler: asyncio.Task[None] | None = None
        self._stopping = False
        self._reconnecting = False
        #: Everything said so far, in order (role, text); roles include "system" for context.
        #: Tool calls are kept as `ToolExchange`s and replayed as call and output items.
        self._turns: list[_Remembered] = []
        #: Calls of the last response still waiting for their result, and whether any result
        #: asked the model to go on (cancelled calls do not).
        self._open_calls: set[str] = set()
        self._continue_after_tools = False
        #: Out-of-band responses that only say a filler: kept out of the remembered turns.
        self._filler_responses: set[str] = set()
        self._user_partial: dict[str, str] = {}
        self._response_id: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._item: _Item | None = None  # the current/last assistant item
        self._dropped_responses: set[str] = set()
        self._server_vad = True
        #: Turn control (see `set_turn_control`): OpenAI's server VAD answers and cancels by
        #: itself only while these are on.
        self._auto_respond = True
        self._auto_interrupt = True
        self._user_speaking = False
        #: Set while an upstream session is usable; cleared during a reconnect.
        self._ready = asyncio.Event()
        #: `response.create` went out and no `response.created` came back yet. If the upstream
        #: dies now the request may have vanished with it, so a reconnect asks again; otherwise
        #: the user would wait forever for an answer to a message the replay did restore.
        self._awaiting_response = False
        self._first_byte: asyncio.Task[None] | None = None
        #: User audio across reconnects (see the module docstring).
        self._held = ReconnectAudioBuffer(config.upstream.audio_buffer_s, self.report_held_audio)
        self._held.configure(RATE * 2)
        #: Utterances the server VAD committed whose transcript has not come back: item id ->
        #: where it ended (bytes into the upstream session). Until the transcript arrives the
        #: audio stays replayable: a drop now would otherwise lose what the user said.
        self._untranscribed: dict[str, int] = {}

    # --- connection --------------------------------------------------------------------------
    def _session_config(self) -> dict[str, Any]:
        audio_format = {"type": "audio/pcm", "rate": RATE}
        config: dict[str, Any] = {
            "type": "realtime",
            "instructions": self._options.system_prompt(),
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": audio_format,
                    "transcription": {"model": self.config.transcription_model},
                    "turn_detection": self._turn_detection_config(),
                },
                "output": {
                    "format": audio_format,
                    "voice": self._options.voice or self.config.voice,
                },
            },
        }
        if self._options.tools:
            config["tools"] = [
                {"type": "function", "name": t.name, "description": t.description,
                 "parameters": t.parameters}
                for t in self._options.tools
            ]  # fmt: skip
            config["tool_choice"] = "auto"
        return config

    def _turn_detection_config(self) -> dict[str, Any] | None:
        return _turn_detection(
            self._options.turn_detection, self._auto_respond, self._auto_interrupt
        )

    async def _open(self) -> _Upstream:
        """Dial, configure and restore one upstream session; raises `EngineUnavailable`."""
        config = self.config
        if not config.api_key:
            raise EngineUnavailable(
                "OPENAI_API_KEY is not set: configure an OpenAI API key to use the openai engine",
                upstream=False,
                retryable=False,
            )
        started = time.monotonic()
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(config.upstream.start_timeout_s):
                ws = await dial_openai(self._url, config.api_key, config.upstream)
                await self._configure(ws)
        except EngineUnavailable:
            self.report_connect(False, time.monotonic() - started)
            await close_quietly(ws)
            raise
        except (OSError, ConnectionClosed, TimeoutError, ValueError) as exc:
            self.report_connect(False, time.monotonic() - started)
            await close_quietly(ws)
            raise unreachable(
                "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            ) from None
        self.report_connect(True, time.monotonic() - started)
        return _Upstream(ws, time.monotonic())

    async def _configure(self, ws: ClientConnection) -> None:
        """session.update, wait for session.updated, then replay the conversation so far."""
        await ws.send(
            orjson.dumps({"type": "session.update", "session": self._session_config()}).decode()
        )
        while True:
            event = orjson.loads(await ws.recv())
            etype = event.get("type")
            if etype == "session.updated":
                break
            if etype == "error":
                err = event.get("error") or {}
                code = err.get("code")
                raise EngineUnavailable(
                    f"OpenAI rejected the session configuration: {err.get('message')} ({code})",
                    upstream=True,
                    retryable=code not in FATAL_CODES and code != "unknown_parameter",
                )
        for turn in self._turns:
            if isinstance(turn, ToolExchange):
                for event in _replay_tool(turn):
                    await ws.send(event)
            else:
                await ws.send(_replay_item(*turn))

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self, options: StartOptions) -> None:
        self._options = options
        self._server_vad = options.turn_detection.mode == "server_vad"
        self._auto_respond = options.turn_detection.auto_respond
        self._auto_interrupt = options.turn_detection.auto_interrupt
        # A manual turn is in progress until its commit: all of it stays replayable.
        self._held.speech(not self._server_vad)
        self._turns = [t.tool if t.tool else (t.role, t.text) for t in options.history]
        await self.emit(StatusChanged("connecting"))
        self._up = await self._open()
        self._ready.set()
        await self.emit(StatusChanged("connected"))
        self._reader = asyncio.create_task(self._run(), name="openai-reader")
        if self.config.recycle_s > 0:
            self._recycler = asyncio.create_task(self._recycle_loop(), name="openai-recycle")

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        await cancel_and_wait((self._first_byte, self._recycler, self._reader))
        self._held.discard()
        if self._up is not None:
            await close_quietly(self._up.ws)
        self._up = None
        await self.emit(StatusChanged("disconnected"))
        self._finish_events()

    # --- input -------------------------------------------------------------------------------
    async def send_audio(self, pcm16: bytes) -> None:
        up = self._up
        if up is None:
            return
        if self._reconnecting:  # held for the new upstream (see the module docstring)
            if self._held.hold(pcm16):
                await self.emit(InputAudioDropped(self._held.seconds))
            return
        self._held.sent(pcm16)
        with contextlib.suppress(ConnectionClosed):
            await up.ws.send(_APPEND_PREFIX + base64.b64encode(pcm16) + _APPEND_SUFFIX, text=True)

    async def send_audio_base64(self, audio: Base64PCM) -> None:
        up = self._up
        if up is None:
            return
        if self._reconnecting:
            if self._held.hold(audio):
                await self.emit(InputAudioDropped(self._held.seconds))
            return
        self._held.sent(audio)
        with contextlib.suppress(ConnectionClosed):
            await up.ws.send(_APPEND_PREFIX + audio.b64 + _APPEND_SUFFIX, text=True)

    async def _send(self, event: dict[str, Any]) -> None:
        """Send a control event. Unlike audio, control events wait out a reconnect (bounded),
        so a message typed during a blip still gets its answer."""
        if self._reconnecting:
            await _wait_event(self._ready, 2 * self.config.upstream.start_timeout_s)
        up = self._up
        if up is None or self._reconnecting or self._closed:
            return
        if event.get("type") == "response.create":
            self._awaiting_response = True  # even if this send fails: `_recover` re-asks
            self._watch_first_byte(up)
        with contextlib.suppress(ConnectionClosed):
            await up.ws.send(orjson.dumps(event).decode())

    def _watch_first_byte(self, up: _Upstream) -> None:
        if self._first_byte is not None and not self._first_byte.done():
            self._first_byte.cancel()
        self._first_byte = asyncio.create_task(self._first_byte_watch(up), name="openai-first-byte")

    async def _first_byte_watch(self, up: _Upstream) -> None:
        """A provider that keeps the socket (and pings) alive but never starts the response is
        as dead as one that dropped: after `first_byte_timeout_s` report it and abort the
        socket, so the reconnect path restores the conversation and asks again."""
        seconds = self.config.first_byte_timeout_s
        await asyncio.sleep(seconds)
        if not self._awaiting_response or self._up is not up or self._stopping or self._closed:
            return
        log.warning("OpenAI did not start a response within %.0f s; reconnecting", seconds)
        await self.emit(EngineError(
            "timeout", f"OpenAI did not start answering within {seconds:.0f} s; reconnecting"
        ))  # fmt: skip
        transport = getattr(up.ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def _respond_now(self) -> None:
        """`response.create`, after cancelling (and waiting out) any active response: only one
        response may write to the conversation at a time."""
        if self._response_id is not None:
            await self.interrupt(None)
            await _wait_event(self._idle, self.config.first_byte_timeout_s)
        await self._send({"type": "response.create"})

    async def commit(self) -> None:
        if self._reconnecting:
            # Replayed after the audio held before it. Waiting out the reconnect here instead
            # would stall the client's audio behind the commit.
            self._held.hold_commit()
            return
        self._held.committed()
        await self._send({"type": "input_audio_buffer.commit"})
        if self._user_speaking and self._server_vad:
            # A commit ends the utterance in progress (the gateway's utterance limit): OpenAI
            # sends no `speech_stopped` for it, so say it here.
            self._user_speaking = False
            await self.emit(UserSpeaking(False))
        if self._auto_respond:
            await self._respond_now()

    async def set_turn_control(self, *, auto_respond: bool, auto_interrupt: bool) -> None:
        if (auto_respond, auto_interrupt) == (self._auto_respond, self._auto_interrupt):
            return
        self._auto_respond, self._auto_interrupt = auto_respond, auto_interrupt
        if self._server_vad:
            audio = {"input": {"turn_detection": self._turn_detection_config()}}
            await self._send({"type": "session.update", "session": {"type": "realtime", "audio": audio}})

    async def respond(self) -> None:
        await self._respond_now()

    async def send_user_message(self, text: str) -> None:
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }
        await self._send({"type": "conversation.item.create", "item": item})
        # After the send: a send that waited out a reconnect must not be replayed twice.
        self._turns.append(("user", text))
        if self._auto_respond:
            await self._respond_now()

    async def send_tool_result(
        self, call_id: str, output: str, *, respond: bool = True, is_error: bool = False
    ) -> None:
        exchange = next(
            (t for t in reversed(self._turns) if isinstance(t, ToolExchange) and t.call_id == call_id),
            None,
        )
        if exchange is None:
            log.warning("ignoring the result of an unknown tool call %s", call_id)
            return
        exchange.output = output
        await self._send(orjson.loads(_output_item(call_id, output)))
        self._open_calls.discard(call_id)
        self._continue_after_tools |= respond
        if not self._open_calls and self._continue_after_tools:
            self._continue_after_tools = False
            # The response that called is over, but a user turn may have started another:
            # only one response at a time, so wait for it rather than cancel it.
            if self._response_id is not None:
                await _wait_event(self._idle, self.config.first_byte_timeout_s)
            await self._send({"type": "response.create"})

    async def say_filler(self, text: str) -> bool:
        """An out-of-band response (`conversation: "none"`: it joins no conversation) that
        says `text`, while calls run and nothing else is being said."""
        if not self._open_calls or self._response_id is not None or self._reconnecting:
            return False
        await self._send({"type": "response.create", "response": {
            "conversation": "none", "output_modalities": ["audio"], "tool_choice": "none",
            "instructions": f"{FILLER_INSTRUCTION} {text}", "metadata": {"voxgate": "filler"},
        }})  # fmt: skip
        return True

    async def send_context_update(self, payload: dict[str, Any]) -> None:
        text = "Context update (JSON): " + orjson.dumps(payload).decode()
        item = {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": text}],
        }
        await self._send({"type": "conversation.item.create", "item": item})
        self._turns.append(("system", text))

    async def interrupt(self, played_ms: int | None) -> None:
        if self._response_id is not None:
            self._dropped_responses.add(self._response_id)
            await self._send({"type": "response.cancel", "response_id": self._response_id})
        item = self._item
        if item is None or (item.interrupted and item.truncated):
            if self.is_speaking:
                await self.emit(AssistantSpeaking(False))
            return
        received_ms = item.audio_bytes // BYTES_PER_MS
        clamped = received_ms if played_ms is None else max(0, min(int(played_ms), received_ms))
        if clamped > 0:
            await self._send({"type": "conversation.item.truncate", "item_id": item.id,
                              "content_index": 0, "audio_end_ms": clamped})  # fmt: skip
            item.truncated = True
        await self._mark_interrupted(item, clamped)

    async def _mark_interrupted(self, item: _Item, played_ms: int) -> None:
        """Emit `Interrupted`; the assistant turn becomes what was heard (that is what stays in
        OpenAI's context after a truncate, and what a later replay must restore)."""
        heard = heard_prefix(item.transcript, played_ms, item.audio_bytes // BYTES_PER_MS)
        item.interrupted = True
        self._dropped_responses.add(item.response_id)
        await self.emit(Interrupted(item.id, played_ms=played_ms, heard_text=heard))
        if self.is_speaking:
            await self.emit(AssistantSpeaking(False))
        if item.final:
            # Already in the history (as the full transcript, or an earlier estimate): replace.
            held = item.transcript if item.heard is None else item.heard
            self._replace_assistant_turn(held, heard)
        else:
            item.final = True
            if heard:
                self._turns.append(("assistant", heard))
            # Close the client's transcript of this item with what was actually heard.
            await self.emit(Transcript("assistant", item.id, heard, "", True))
        item.heard = heard

    def _replace_assistant_turn(self, held: str, heard: str) -> None:
        """The latest assistant turn `held` becomes `heard` (dropped when nothing was heard)."""
        turns = self._turns
        for i in range(len(turns) - 1, -1, -1):
            if turns[i] == ("assistant", held):
                if heard:
                    turns[i] = ("assistant", heard)
                else:
                    del turns[i]
                return

    # --- reading -----------------------------------------------------------------------------
    async def _run(self) -> None:
        """Own the upstream socket: read events, recover from drops, swap recycled sessions."""
        try:
            while not self._stopping and not self._closed:
                up = self._up
                assert up is not None
                with contextlib.suppress(ConnectionClosed):
                    await self._read(up)
                if self._stopping or self._closed:
                    return
                if self._up is not up:
                    continue  # recycled: the new session is already in place
                await self._recover(expected=up.expired)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end the conversation visibly, not hang it
            log.exception("openai engine reader failed")
            await self.emit(EngineError("internal", f"the OpenAI engine failed: {exc}", fatal=True))

    async def _read(self, up: _Upstream) -> None:
        """Hand each event of this session to its handler until the socket ends (or the events
        do, after a fatal error). Unknown event types are ignored."""
        handlers = self._handlers
        async for raw in up.ws:
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("ignoring an unparsable frame from OpenAI")
                continue
            try:
                handler = handlers.get(event.get("type"))
            except (AttributeError, TypeError):
                continue  # not an object, or a "type" that cannot name an event
            if handler is not None:
                await handler(event)
            if self._closed:
                return

    async def _recover(self, *, expected: bool) -> None:
        """The upstream went away: fail the response in flight, reconnect and restore."""
        await self._forget_session()
        self._reconnecting = True
        self._ready.clear()
        self._held.begin()
        try:
            up: _Upstream | None = None
            if expected:
                # Session expiry: try a silent swap first, like a recycle.
                with contextlib.suppress(EngineUnavailable):
                    up = await self._open()
            silent, last = up is not None, ""
            if up is None:
                await self.emit(StatusChanged("reconnecting", "upstream connection lost"))
                up, last = await reconnect(
                    self.config.upstream.reconnect, self._open, stopped=lambda: self._stopping
                )
            if up is not None:
                self._up = up
                await self._restore_input(up)
                if not silent:
                    await self.emit(StatusChanged("connected"))
            elif not self._stopping:
                self._held.discard()
                await self.emit(EngineError(
                    "upstream_unavailable",
                    f"Lost the connection to OpenAI and could not reconnect ({last}).",
                    fatal=True,
                ))  # fmt: skip
        finally:
            self._held.discard()  # only if still held: stopped or cancelled meanwhile
            self._reconnecting = False
            self._ready.set()  # release waiting senders (they check `_closed`)

    async def _restore_input(self, up: _Upstream) -> None:
        """The conversation is restored: append the held audio, in order, commit where the
        client committed, then ask for the response a commit (or a request lost in the drop)
        is owed. Audio arriving meanwhile is held and sent in turn; the moment nothing is left,
        new audio goes straight to the new upstream again."""
        held, committed = self._held, False
        with contextlib.suppress(ConnectionClosed):  # the reader notices; held audio is kept
            while (item := held.next_held()) is not None:
                if item is COMMIT:
                    await up.ws.send(_COMMIT_EVENT)
                    committed = True
                elif isinstance(item, bytes):
                    await up.ws.send(_APPEND_PREFIX + base64.b64encode(item) + _APPEND_SUFFIX,
                                     text=True)  # fmt: skip
                elif isinstance(item, Base64PCM):
                    await up.ws.send(_APPEND_PREFIX + item.b64 + _APPEND_SUFFIX, text=True)
        held.finish()
        self._reconnecting = False
        self._ready.set()
        if committed and self._auto_respond:
            self._awaiting_response = True
        await self._re_request_response()

    async def _forget_session(self) -> None:
        """End what lived in the lost upstream session: the response in flight fails, and the
        new session knows nothing of its items (never truncate/cancel across sessions)."""
        if self._response_id is not None:
            rid = self._response_id
            self._end_response()
            await self.emit(ResponseDone(rid, "failed"))
            await self.emit(EngineError(
                "upstream_error", "the connection to OpenAI dropped mid-response; reconnecting"
            ))  # fmt: skip
        if self.is_speaking:
            await self.emit(AssistantSpeaking(False))
        self._item = None
        self._dropped_responses.clear()
        self._user_partial.clear()
        self._user_speaking = False
        self._untranscribed.clear()

    async def _re_request_response(self) -> None:
        """After a restore: ask again for a response whose request died with the old upstream
        (the replay already holds the message it answers)."""
        up = self._up
        if self._awaiting_response and up is not None:
            self._watch_first_byte(up)
            with contextlib.suppress(ConnectionClosed):
                await up.ws.send(orjson.dumps({"type": "response.create"}).decode())

    async def _recycle_loop(self) -> None:
        """Swap in a fresh upstream session before OpenAI's 60-minute limit, when quiet."""
        recycle_s = self.config.recycle_s
        while not self._stopping:
            up = self._up
            if up is None:
                return
            wait = up.opened_at + recycle_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if self._response_id is not None or self._reconnecting or self._user_speaking:
                await asyncio.sleep(0.2)
                continue
            try:
                fresh = await self._open()
            except EngineUnavailable:
                await asyncio.sleep(min(30.0, recycle_s))
                continue
            if self._up is not up or self._stopping:
                await close_quietly(fresh.ws)
                continue
            self._up = fresh
            self._held.new_session()
            await close_quietly(up.ws)

    def _end_response(self) -> None:
        self._response_id = None
        self._idle.set()

    # --- provider events (one handler per event type, see `_HANDLERS`) -----------------------
    async def _on_response_output_audio_delta(self, event: Event) -> None:
        rid = event.get("response_id")
        if rid in self._dropped_responses:
            return
        item = self._item
        if item is None or item.id != event.get("item_id"):
            item = self._item = _Item(event.get("item_id", ""), rid or "")
        delta = event.get("delta", "")
        # Kept as base64 when it is clean (it nearly always is); anything else is decoded as
        # leniently as before.
        checked = check_base64(delta) if isinstance(delta, str) else None
        audio = base64.b64decode(delta) if checked is None or checked.nbytes & 1 else checked
        item.audio_bytes += len(audio)
        if not self.is_speaking:
            await self.emit(AssistantSpeaking(True))
        await self.emit(AudioOut(audio, item.id))

    async def _on_assistant_text_delta(self, event: Event) -> None:
        item = self._assistant_item(event)
        if item is None or item.interrupted:
            return
        delta = event.get("delta") or ""
        item.transcript += delta
        await self.emit(Transcript("assistant", item.id, item.transcript, delta, False))

    async def _on_assistant_text_done(self, event: Event) -> None:
        item = self._assistant_item(event)
        if item is None or item.interrupted or item.final:
            return
        text = event.get("transcript") if "transcript" in event else event.get("text")
        text = text or item.transcript
        # The client already holds the partials: a rewritten final adds nothing to them.
        delta = text_delta(item.transcript, text, fallback="")
        item.transcript = text
        item.final = True
        if text and item.response_id not in self._filler_responses:
            self._turns.append(("assistant", text))
        await self.emit(Transcript("assistant", item.id, text, delta, True))

    async def _on_input_audio_buffer_speech_started(self, event: Event) -> None:
        self._user_speaking = True
        self._held.speech(True)
        await self.emit(UserSpeaking(True, event.get("item_id")))
        item = self._item
        if (
            self._server_vad
            and self._auto_interrupt
            and self._response_id is not None
            and item is not None
            and item.response_id == self._response_id
            and not item.interrupted
            and item.audio_bytes > 0
        ):
            # OpenAI cancels the response itself; we only stop its audio and say so.
            await self._mark_interrupted(item, item.audio_bytes // BYTES_PER_MS)

    async def _on_input_audio_buffer_speech_stopped(self, event: Event) -> None:
        self._user_speaking = False
        end_ms = event.get("audio_end_ms")
        if isinstance(end_ms, int) and self._server_vad:
            self._untranscribed[str(event.get("item_id", ""))] = end_ms * BYTES_PER_MS
        await self.emit(UserSpeaking(False, event.get("item_id")))

    def _transcribed(self, event: Event) -> None:
        """The provider heard this utterance for good: a replay must not send it again."""
        end = self._untranscribed.pop(str(event.get("item_id", "")), None)
        if end is None:
            return
        self._held.committed(end)
        if not self._user_speaking and not self._untranscribed:
            self._held.speech(False)

    async def _on_input_transcription_delta(self, event: Event) -> None:
        item_id = event.get("item_id", "")
        delta = event.get("delta") or ""
        text = self._user_partial.get(item_id, "") + delta
        self._user_partial[item_id] = text
        await self.emit(Transcript("user", item_id, text, delta, False))

    async def _on_input_transcription_completed(self, event: Event) -> None:
        item_id = event.get("item_id", "")
        text = event.get("transcript") or ""
        delta = text_delta(self._user_partial.pop(item_id, ""), text)
        self._transcribed(event)
        if text.strip():
            self._insert_user_turn(text)
        await self.emit(Transcript("user", item_id, text, delta, True))

    async def _on_input_transcription_failed(self, event: Event) -> None:
        self._transcribed(event)

    async def _on_response_created(self, event: Event) -> None:
        self._awaiting_response = False
        response = event.get("response") or {}
        self._response_id = response.get("id")
        if (response.get("metadata") or {}).get("voxgate") == "filler":
            self._filler_responses.add(str(self._response_id))
        self._idle.clear()

    async def _on_response_output_item_added(self, event: Event) -> None:
        added = event.get("item") or {}
        if added.get("type") == "message" and added.get("role") == "assistant":
            self._item = _Item(added.get("id", ""), event.get("response_id", ""))

    async def _on_response_done(self, event: Event) -> None:
        response = event.get("response") or {}
        rid = response.get("id", "")
        status = _STATUS_MAP.get(response.get("status", ""), "failed")
        if rid == self._response_id:
            self._end_response()
        self._dropped_responses.discard(rid)
        if self.is_speaking:
            await self.emit(AssistantSpeaking(False))
        if status == "completed":
            # Before `ResponseDone`: a client reading the response's end knows of its calls.
            await self._calls_of(response)
        await self.emit(ResponseDone(rid, status, response.get("usage")))  # type: ignore[arg-type]

    async def _calls_of(self, response: Event) -> None:
        """A completed response's function calls (several when the model calls in parallel):
        each goes to the session, which answers with `send_tool_result`; the model goes on once
        every one of them is answered."""
        for item in response.get("output") or []:
            if not isinstance(item, dict) or item.get("type") != "function_call":
                continue
            call_id, name = str(item.get("call_id") or ""), str(item.get("name") or "")
            if not call_id or not name:
                continue
            arguments = item.get("arguments")
            arguments = arguments if isinstance(arguments, str) else ""
            self._turns.append(ToolExchange(call_id, name, arguments))
            self._open_calls.add(call_id)
            await self.emit(ToolCall(call_id, name, arguments))

    async def _on_error(self, event: Event) -> None:
        err = event.get("error") or {}
        code = err.get("code") or err.get("type") or "error"
        message = err.get("message") or "OpenAI reported an error"
        if code in HARMLESS_CODES:
            return
        if code == "session_expired" and self._up is not None:
            self._up.expired = True
            return
        if code in FATAL_CODES:
            await self.emit(
                EngineError("upstream_unavailable", f"OpenAI: {message} ({code})", fatal=True)
            )
            if self._up is not None:
                await close_quietly(self._up.ws)
            return
        await self.emit(EngineError("upstream_error", f"OpenAI: {message} ({code})"))

    def _assistant_item(self, event: Event) -> _Item | None:
        item = self._item
        if event.get("response_id") in self._dropped_responses and (
            item is None or item.id != event.get("item_id")
        ):
            return None
        if item is None or item.id != event.get("item_id"):
            item = self._item = _Item(event.get("item_id", ""), event.get("response_id", ""))
        return item

    def _insert_user_turn(self, text: str) -> None:
        """Transcription is asynchronous and may finish after the reply it prompted; keep the
        replay order right by putting the user turn before that reply."""
        item = self._item
        last = (
            "assistant",
            item.heard if item and item.heard is not None else getattr(item, "transcript", ""),
        )
        if item is not None and item.final and self._turns and self._turns[-1] == last:
            self._turns.insert(len(self._turns) - 1, ("user", text))
        else:
            self._turns.append(("user", text))


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; False on timeout.

    Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that arrives just as the
    event is set (a reconnect ending while the session shuts down), and the caller, the
    session's receive task, then lived on and kept its TaskGroup (and the client) waiting
    forever. `asyncio.timeout` counts cancellations correctly. Found by the chaos test.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


__all__ = ["OpenAIRealtimeEngine"]
