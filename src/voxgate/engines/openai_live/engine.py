"""OpenAI GPT-Live behind the `ConversationEngine` seam: a full-duplex model over one WebSocket.

GPT-Live is not Realtime with other names. How the seam maps onto it, and why:

- **Start.** `session.start` (the model, the prompt with personality, the voice, the
  conversation so far as `input`) is the first message; the engine waits for `session.started`.
  An `error` before it is the provider refusing the session (a key, quota or configuration
  problem arrives this way, after a successful upgrade) and is not retried.
- **The timeline only moves while audio flows.** GPT-Live hears nothing, and places no
  appended text, while no input audio arrives. When the client sends none (typed messages,
  push-to-talk released, a muted microphone) the engine fills the gap with digital silence at
  real-time pace; client audio counts towards the same clock, so silence the client did send
  is never doubled (see `_keep_timeline`).
- **Output is continuous, silence included.** Assistant audio is forwarded only while the model
  speaks: a turn starts with voiced audio (or an output transcript fragment) and ends after
  `gap_ms` of silent output. Short pauses inside a turn are forwarded as they come (they play
  on time); a longer silence is held and forwarded only if speech resumes, so long runs of
  digital silence never reach the client as speech, and `speaking` goes false when the model
  stops rather than when the stream does (it never does).
- **Transcripts are timed fragments with no ids.** User fragments are grouped into a turn that
  is final on a pause or when the model starts answering (`grouping`); the assistant's turn is
  the audio turn above. Both are emitted as `Transcript` events like every other engine's.
- **Turns belong to the model.** `commit` and manual turn detection do not exist, so
  `Capabilities.manual_turns` is false and `commit()` answers with a non-fatal error.
- **Interrupt is advisory.** No event stops GPT-Live's speech: the model yields when it hears
  the user. `interrupt(played_ms)` ends the turn for the client at once (`Interrupted` with the
  heard text) and drops the rest of that speech until the model pauses.
- **Usage is duration.** Cumulative `usage.seconds` (every ~15 s, and final in
  `session.closed`) is reported through `report_billed` as it grows, and rides on each
  `ResponseDone` as `{"type": "duration", "seconds": <billed so far>}`.
- **A lost session cannot be resumed.** A dropped socket (no `session.closed`) is replaced by a
  new session seeded with the conversation so far as `input`, with `status: reconnecting`;
  user audio spoken meanwhile is held and replayed (`ReconnectAudioBuffer`). A
  `session.closed` from GPT-Live is a clean end of the conversation, never reconnected.
- **Tools go through Responses delegation.** GPT-Live's voice model calls no functions itself;
  a session with tools starts with `delegation: {type: "responses"}` naming a backend model
  (`VOXGATE_OPENAI_LIVE_TOOLS_MODEL`) and the tools as function tools. The backend's stream
  arrives as `response.event`; each nested `function_call` item becomes a `ToolCall`. Once the
  backend response has completed and every one of its calls has a result, the outputs go back
  as `response.item.create` and then one `response.create`; the voice model speaks what the
  backend makes of them. Calls cancelled by an interrupt are answered too (with the
  cancellation): an interruption does not cancel GPT-Live's delegated work, and a backend left
  with open calls would wait for ever; the model ignores stale results. The calls of a backend
  response that failed are never answered (GPT-Live refuses them). A session without tools
  keeps client delegation, answered at once with commentary saying there are no tools, so the
  model never waits for a result.
- **What a new session remembers of tools.** Startup `input` holds messages only, so each
  finished call is restored as a developer message naming the tool, its arguments and its
  result; a call still running when the session was lost is not (its backend response is
  gone with the session, and its result only joins the history).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voxgate.audio import rms_dbfs
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
    Transcript,
    UserSpeaking,
)
from voxgate.engines.openai_live import wire
from voxgate.engines.openai_live.config import OpenAILiveConfig
from voxgate.engines.openai_live.dial import dial_live, unreachable
from voxgate.engines.openai_live.grouping import LiveTurn, TranscriptTurns, new_item_id
from voxgate.engines.upstream import ReconnectAudioBuffer, cancel_and_wait, close_quietly, reconnect
from voxgate.turns import heard_prefix

if TYPE_CHECKING:
    from voxgate.config import Settings

log = logging.getLogger("voxgate.engines.openai_live")

RATE = wire.RATE
BYTES_PER_MS = wire.BYTES_PER_MS
#: The keepalive's step: 100 ms of silence per frame.
FRAME_MS = 100
_SILENCE = bytes(FRAME_MS * BYTES_PER_MS)
_SILENCE_FRAME = wire.audio_frame(_SILENCE)
#: Output quieter than this is silence (the model's stream between and inside turns).
VOICE_DBFS = -50.0

Event = dict[str, Any]
Handler = Callable[[Event], Awaitable[None]]

_HANDLERS: dict[str, str] = {
    "session.output_audio.delta": "_on_output_audio",
    "session.output_transcript.delta": "_on_output_transcript",
    "session.input_transcript.delta": "_on_input_transcript",
    "session.usage.updated": "_on_usage",
    "session.delegation.created": "_on_delegation",
    "response.event": "_on_response_event",
    "session.closed": "_on_closed",
    "error": "_on_error",
}


class _Upstream:
    """One GPT-Live session: its socket and its clock."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        #: When its timeline started (wall clock): the keepalive's reference.
        self.epoch = time.monotonic()
        #: Input audio sent (bytes): the session timeline is sent_bytes / 48 ms.
        self.sent_bytes = 0
        #: The provider's cumulative usage as last reported for this session.
        self.billed = 0.0
        #: Set once `session.closed` arrived (its `reason`).
        self.closed_reason: str | None = None
        self.closed = asyncio.Event()


@dataclass(slots=True)
class _Answer:
    """The assistant turn the client hears now."""

    item_id: str
    text: str = ""
    audio_bytes: int = 0
    speaking: bool = False
    #: Output silence since the last voiced audio (ms), and that silence itself: forwarded if
    #: speech resumes, dropped if the turn ends.
    silent_ms: float = 0.0
    pending: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class _Batch:
    """The function calls of one backend response, answered together once it completed."""

    #: call id -> its output (None while it runs), in the order the backend made them.
    outputs: dict[str, str | None] = field(default_factory=dict)
    completed: bool = False


class OpenAILiveEngine(ConversationEngine):
    """OpenAI GPT-Live over WebSocket; see the module docstring for the design."""

    name = "openai-live"
    config_type = OpenAILiveConfig

    #: A pause this long (ms) ends a turn: of output audio for the assistant, of timeline
    #: after the last fragment for the user.
    gap_ms: int = 800
    #: Silence inside a turn is forwarded as it comes for this long (ms), so pauses between
    #: words play on time; beyond it, it is held until speech resumes (then sent) or the turn
    #: ends (then dropped): at most this much trailing silence reaches the client.
    pause_ms: int = 400
    #: The keepalive's clock as a multiple of real time. Tests speed it up to fast-forward the
    #: model's timeline (a minute of silence in seconds); 1 in production.
    timeline_pace: float = 1.0
    #: The keepalive adds silence only once the timeline lags the wall clock by this much, so
    #: a client's jittery microphone frames are never padded.
    slack_ms: int = 300
    #: How long `stop()` waits for `session.closed` (it carries the final usage).
    close_wait_s: float = 3.0

    def __init__(self, config: OpenAILiveConfig) -> None:
        super().__init__()
        self.config = config
        self.capabilities = Capabilities(
            input_rate=RATE, output_rate=RATE, manual_turns=False, interrupt="advisory", tools=True
        )
        self._handlers: dict[str, Handler] = {t: getattr(self, m) for t, m in _HANDLERS.items()}
        self._options = StartOptions()
        self._up: _Upstream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._stopping = False
        self._reconnecting = False
        #: Set while an upstream session is usable; cleared during a reconnect.
        self._ready = asyncio.Event()
        #: Everything said so far (role, text); "developer" for context: a new session's `input`.
        self._turns: list[tuple[str, str]] = []
        self._grouper = TranscriptTurns(self.gap_ms)
        self._answer: _Answer | None = None
        #: After an interrupt: drop the model's output until it pauses (ms of silence so far).
        self._dropping = False
        self._dropped_quiet_ms = 0.0
        self._billed_total = 0.0
        #: Backend function calls waiting for results, one batch per delegation.
        self._batches: dict[str, _Batch] = {}
        #: call id -> (name, arguments), for the history note once its result arrives.
        self._calls: dict[str, tuple[str, str]] = {}
        self._held = ReconnectAudioBuffer(config.upstream.audio_buffer_s, self.report_held_audio)
        self._held.configure(RATE * 2)

    @classmethod
    def describe(cls, settings: Settings) -> list[str]:
        config = OpenAILiveConfig.from_settings(settings)
        return [f"model {config.model} at {config.url}"]

    # --- connection --------------------------------------------------------------------------
    async def _open(self) -> _Upstream:
        """Dial, `session.start`, wait for `session.started`; raises `EngineUnavailable`."""
        config = self.config
        if not config.api_key:
            raise EngineUnavailable(config.problem() or "no key", retryable=False)
        started = time.monotonic()
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(config.upstream.start_timeout_s):
                ws = await dial_live(config.url, config.api_key, config.upstream)
                await ws.send(
                    wire.session_start(config.model, self._options, self._turns, config.tools_model)
                )
                await _wait_started(ws)
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
        return _Upstream(ws)

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self, options: StartOptions) -> None:
        self._options = options
        self._turns = [
            ("developer", wire.tool_note(t.tool.name, t.tool.arguments, t.tool.output))
            if t.tool is not None
            else (t.role, t.text)
            for t in options.history
        ]
        await self.emit(StatusChanged("connecting"))
        self._up = await self._open()
        self._ready.set()
        await self.emit(StatusChanged("connected"))
        self._reader = asyncio.create_task(self._run(), name="openai-live-reader")
        self._keepalive = asyncio.create_task(self._keep_timeline(), name="openai-live-timeline")
        if options.turn_detection.mode == "manual":
            await self.emit(EngineError("bad_request", _NO_MANUAL))

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        await cancel_and_wait((self._keepalive,))
        up = self._up
        if up is not None and not self._reconnecting and up.closed_reason is None:
            # Ask GPT-Live to finalize: `session.closed` carries the final usage.
            with contextlib.suppress(ConnectionClosed):
                await up.ws.send(wire.CLOSE_EVENT)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.close_wait_s):
                        await up.closed.wait()
        await cancel_and_wait((self._reader,))
        self._held.discard()
        if up is not None:
            await close_quietly(up.ws)
        self._up = None
        await self.emit(StatusChanged("disconnected"))
        self._finish_events()

    # --- input -------------------------------------------------------------------------------
    async def send_audio(self, pcm16: bytes) -> None:
        up = self._up
        if up is None:
            return
        if self._reconnecting:  # held for the new session
            if self._held.hold(pcm16):
                await self.emit(InputAudioDropped(self._held.seconds))
            return
        self._held.sent(pcm16)
        up.sent_bytes += len(pcm16)
        with contextlib.suppress(ConnectionClosed):
            await up.ws.send(wire.audio_frame(pcm16), text=True)

    async def commit(self) -> None:
        await self.emit(EngineError("bad_request", _NO_COMMIT))

    async def send_user_message(self, text: str) -> None:
        self._turns.append(("user", text))
        for event in wire.appends("commentary", wire.typed_message(text)):
            await self._send(event)

    async def send_context_update(self, payload: dict[str, Any]) -> None:
        text = wire.context_text(payload)
        self._turns.append(("developer", text))
        for event in wire.appends("thinking", text):
            await self._send(event)

    async def interrupt(self, played_ms: int | None) -> None:
        """Advisory: end the answer for the client where it stopped hearing it; GPT-Live's model
        yields by itself, and what it still says of this answer is dropped until it pauses."""
        answer = self._answer
        if answer is None or answer.audio_bytes == 0:
            return
        total_ms = answer.audio_bytes / BYTES_PER_MS
        played = total_ms if played_ms is None else max(0.0, min(float(played_ms), total_ms))
        heard = heard_prefix(answer.text.strip(), played, total_ms)
        self._answer = None
        self._dropping, self._dropped_quiet_ms = True, 0.0
        if answer.speaking:
            await self.emit(AssistantSpeaking(False))
        await self.emit(Interrupted(answer.item_id, int(played), heard_text=heard))
        await self.emit(Transcript("assistant", answer.item_id, heard, "", True))
        if heard:
            self._turns.append(("assistant", heard))
        await self.emit(ResponseDone(answer.item_id, "cancelled", self._usage()))

    async def send_tool_result(
        self, call_id: str, output: str, *, respond: bool = True, is_error: bool = False
    ) -> None:
        """The result joins the history; once the backend response that made the call has
        completed and all its calls have results, they go back together. `respond=False`
        (cancelled by an interrupt) is answered all the same: GPT-Live's delegated work
        survives interruptions, and an open call would keep its backend waiting."""
        named = self._calls.pop(call_id, None)
        if named is None:
            log.warning("ignoring the result of an unknown tool call %s", call_id)
            return
        self._turns.append(("developer", wire.tool_note(*named, output)))
        for key, batch in self._batches.items():
            if call_id in batch.outputs:
                batch.outputs[call_id] = output
                await self._answer_batch(key, batch)
                return

    async def _answer_batch(self, key: str, batch: _Batch) -> None:
        """Every call of a completed backend response has its output: send them, then one
        `response.create` (GPT-Live refuses a partial batch)."""
        if not batch.completed or any(o is None for o in batch.outputs.values()):
            return
        del self._batches[key]
        for call_id, output in batch.outputs.items():
            await self._send(wire.function_output(call_id, output or ""))
        await self._send(wire.response_create())

    async def _send(self, text: str) -> None:
        """A control event. Unlike audio, control events wait out a reconnect (bounded), so a
        message typed during a blip still reaches the new session."""
        if self._reconnecting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2 * self.config.upstream.start_timeout_s):
                    await self._ready.wait()
        up = self._up
        if up is None or self._reconnecting or self._closed:
            return
        with contextlib.suppress(ConnectionClosed):
            await up.ws.send(text)

    # --- the timeline ------------------------------------------------------------------------
    async def _keep_timeline(self) -> None:
        """Keep GPT-Live's clock moving at real time: whenever the audio sent lags the wall
        clock by `slack_ms`, send silence up to it. Client audio counts, so this only fills
        gaps; a stall is not caught up (at most half a second at once). Also ends the user's
        turn on a pause, which only the timeline can tell."""
        pace = self.timeline_pace
        bytes_per_s = RATE * 2 * pace
        slack = self.slack_ms * BYTES_PER_MS
        while True:
            await asyncio.sleep(FRAME_MS / 1000 / pace)
            up = self._up
            if up is None or self._reconnecting or up.closed_reason is not None:
                continue
            behind = (time.monotonic() - up.epoch) * bytes_per_s - up.sent_bytes
            if behind > 5 * len(_SILENCE) + slack:
                up.epoch += (behind - 5 * len(_SILENCE) - slack) / bytes_per_s
                behind = 5 * len(_SILENCE) + slack
            with contextlib.suppress(ConnectionClosed):
                while behind >= slack:
                    self._held.sent(_SILENCE)
                    up.sent_bytes += len(_SILENCE)
                    behind -= len(_SILENCE)
                    await up.ws.send(_SILENCE_FRAME, text=True)
            for turn in self._grouper.due(up.sent_bytes // BYTES_PER_MS, "user"):
                await self._user_turn_done(turn)

    # --- reading -----------------------------------------------------------------------------
    async def _run(self) -> None:
        """Own the upstream socket: read events; on a drop, reconnect with the history."""
        try:
            while not self._stopping and not self._closed:
                up = self._up
                assert up is not None
                with contextlib.suppress(ConnectionClosed):
                    await self._read(up)
                if self._stopping or self._closed or up.closed_reason is not None:
                    return
                await self._recover()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end the conversation visibly, not hang it
            log.exception("openai-live engine reader failed")
            await self.emit(EngineError("internal", f"the GPT-Live engine failed: {exc}", fatal=True))

    async def _read(self, up: _Upstream) -> None:
        handlers = self._handlers
        async for raw in up.ws:
            try:
                event = orjson.loads(raw)
                handler = handlers.get(event.get("type"))
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                log.warning("ignoring a GPT-Live frame that is not an event object")
                continue
            if handler is not None:
                try:
                    await handler(event)
                except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
                    log.warning("ignoring a malformed %r event from GPT-Live (%s)", event.get("type"), exc)
            if self._closed or up.closed_reason is not None:
                return

    async def _recover(self) -> None:
        """The socket dropped without `session.closed`: GPT-Live cannot resume a session, so
        open a new one seeded with the conversation so far, replaying held audio."""
        await self._forget_session()
        self._reconnecting = True
        self._ready.clear()
        self._held.begin()
        try:
            await self.emit(StatusChanged("reconnecting", "upstream connection lost"))
            up, last = await reconnect(
                self.config.upstream.reconnect, self._open, stopped=lambda: self._stopping
            )
            if up is not None:
                self._up = up
                await self._restore_input(up)
                await self.emit(StatusChanged("connected"))
            elif not self._stopping:
                self._held.discard()
                await self.emit(EngineError(
                    "upstream_unavailable",
                    f"Lost the connection to OpenAI GPT-Live and could not reconnect ({last}).",
                    fatal=True,
                ))  # fmt: skip
        finally:
            self._held.discard()  # only if still held: stopped or cancelled meanwhile
            self._reconnecting = False
            self._ready.set()

    async def _restore_input(self, up: _Upstream) -> None:
        """Send the held audio to the new session, in order; audio arriving meanwhile is held
        and sent in turn, and the moment nothing is left it goes straight upstream again."""
        held = self._held
        with contextlib.suppress(ConnectionClosed):  # the reader notices; held audio is kept
            while (item := held.next_held()) is not None:
                if isinstance(item, bytes):
                    up.sent_bytes += len(item)
                    await up.ws.send(wire.audio_frame(item), text=True)
        held.finish()
        self._reconnecting = False

    async def _forget_session(self) -> None:
        """End what lived in the lost session: the answer in flight fails (what arrived of it is
        kept), the user's words so far become their turn, the timeline starts over."""
        answer, self._answer = self._answer, None
        if answer is not None:
            await self._end_answer(answer, "failed")
            await self.emit(EngineError(
                "upstream_error", "the connection to GPT-Live dropped mid-answer; reconnecting"
            ))  # fmt: skip
        for turn in self._grouper.close_all():
            if turn.role == "user":
                await self._user_turn_done(turn)
        self._dropping = False
        # The backend responses died with the session: results still to come only join the
        # history.
        self._batches.clear()

    # --- provider events (one handler per event type, see `_HANDLERS`) -----------------------
    async def _on_output_audio(self, event: Event) -> None:
        pcm = base64.b64decode(event["delta"])
        pcm = pcm[: len(pcm) - len(pcm) % 2]
        if not pcm:
            return
        voiced = rms_dbfs(pcm) > VOICE_DBFS
        ms = len(pcm) / BYTES_PER_MS
        if self._dropping:  # the interrupted answer, until the model pauses
            self._dropped_quiet_ms = 0.0 if voiced else self._dropped_quiet_ms + ms
            self._dropping = self._dropped_quiet_ms < self.gap_ms
            return
        answer = self._answer
        if not voiced:
            if answer is None:
                return  # the stream between turns: never forwarded
            answer.silent_ms += ms
            if answer.silent_ms >= self.gap_ms:
                self._answer = None
                await self._end_answer(answer, "completed")
            elif answer.silent_ms <= self.pause_ms and not answer.pending:
                await self._forward(answer, pcm)  # a pause between words: played on time
            else:
                answer.pending += pcm  # a longer silence: played only if speech resumes
            return
        if answer is None:
            answer = await self._open_answer()
        if not answer.speaking:
            answer.speaking = True
            await self.emit(AssistantSpeaking(True))
        if answer.pending:
            pcm = bytes(answer.pending) + pcm
            answer.pending.clear()
        answer.silent_ms = 0.0
        await self._forward(answer, pcm)

    async def _forward(self, answer: _Answer, pcm: bytes) -> None:
        answer.audio_bytes += len(pcm)
        await self.emit(AudioOut(pcm, answer.item_id))

    async def _on_output_transcript(self, event: Event) -> None:
        if self._dropping:
            return
        answer = self._answer or await self._open_answer()
        delta = str(event["delta"])
        added = delta if answer.text else delta.lstrip()
        answer.text += added
        await self.emit(Transcript("assistant", answer.item_id, answer.text, added, False))

    async def _on_input_transcript(self, event: Event) -> None:
        start, end = int(event["start_ms"]), int(event["end_ms"])
        ended, turn, added = self._grouper.add(
            "user", str(event["delta"]), start, end, closes_other=False
        )
        for done in ended:
            await self._user_turn_done(done)
        if turn.text == added:  # its first words
            self._held.speech(True)
            await self.emit(UserSpeaking(True))
        await self.emit(Transcript("user", turn.item_id, turn.text, added, False))

    async def _on_usage(self, event: Event) -> None:
        self._bill(float(event["usage"]["seconds"]))

    async def _on_delegation(self, event: Event) -> None:
        delegation = event["delegation"]
        if delegation.get("target") == "client":
            # No tools here: say so at once, or the model waits for a result forever.
            for text in wire.appends("commentary", wire.NO_TOOLS, str(delegation["id"])):
                await self._send(text)

    async def _on_response_event(self, event: Event) -> None:
        """The backend's stream (Responses delegation): its function calls become `ToolCall`s;
        a completed response whose calls all have results is answered (`_answer_batch`)."""
        nested = event["event"]
        kind = nested.get("type")
        key = str(event.get("delegation_id") or "")
        if kind == "response.created":
            self._batches.setdefault(key, _Batch())
        elif kind == "response.output_item.done":
            item = nested.get("item") or {}
            if item.get("type") != "function_call":
                return
            call_id, name = str(item.get("call_id") or ""), str(item.get("name") or "")
            if not call_id or not name:
                return
            arguments = item.get("arguments")
            arguments = arguments if isinstance(arguments, str) else ""
            self._batches.setdefault(key, _Batch()).outputs[call_id] = None
            self._calls[call_id] = (name, arguments)
            await self.emit(ToolCall(call_id, name, arguments))
        elif kind == "response.completed":
            batch = self._batches.get(key)
            if batch is not None:
                if not batch.outputs:
                    del self._batches[key]  # an answer in words: nothing to send back
                    return
                batch.completed = True
                await self._answer_batch(key, batch)
        elif kind in ("response.failed", "response.incomplete"):
            # GPT-Live refuses the outputs of a failed response's calls: never send them.
            self._batches.pop(key, None)
            if kind == "response.failed":
                error = (nested.get("response") or {}).get("error") or {}
                why = str(error.get("message") or "no reason given")
                await self.emit(EngineError("upstream_error", f"GPT-Live's tool backend failed: {why}"))

    async def _on_closed(self, event: Event) -> None:
        """GPT-Live ended the session (asked to, or on its own): a clean end, never a
        reconnect. What was in flight is kept; the final usage is billed."""
        up = self._up
        reason = str(event.get("reason") or "unknown")
        with contextlib.suppress(KeyError, TypeError, ValueError):
            self._bill(float(event["usage"]["seconds"]))
        if up is None:
            return
        up.closed_reason = reason
        up.closed.set()
        if self._stopping:
            return
        answer, self._answer = self._answer, None
        if answer is not None:
            await self._end_answer(answer, "completed")
        for turn in self._grouper.close_all():
            if turn.role == "user":
                await self._user_turn_done(turn)
        await self.emit(StatusChanged("disconnected", f"GPT-Live ended the session ({reason})"))
        self._finish_events()

    async def _on_error(self, event: Event) -> None:
        err = event.get("error") or {}
        code = str(err.get("code") or err.get("type") or "error")
        message = str(err.get("message") or "OpenAI GPT-Live reported an error")
        if code in wire.FATAL_CODES:
            await self.emit(
                EngineError("upstream_unavailable", f"GPT-Live: {message} ({code})", fatal=True)
            )
            if self._up is not None:
                await close_quietly(self._up.ws)
            return
        await self.emit(EngineError("upstream_error", f"GPT-Live: {message} ({code})"))

    # --- turns -------------------------------------------------------------------------------
    async def _open_answer(self) -> _Answer:
        """The model starts a turn: the user's turn, if one is open, is final now."""
        user = self._grouper.close("user")
        if user is not None:
            await self._user_turn_done(user)
        self._answer = _Answer(new_item_id("assistant"))
        return self._answer

    async def _end_answer(
        self, answer: _Answer, status: Literal["completed", "failed"]
    ) -> None:
        if answer.speaking:
            await self.emit(AssistantSpeaking(False))
        text = answer.text.strip()
        if text:
            self._turns.append(("assistant", text))
        await self.emit(Transcript("assistant", answer.item_id, text, "", True))
        await self.emit(ResponseDone(answer.item_id, status, self._usage()))

    async def _user_turn_done(self, turn: LiveTurn) -> None:
        """The user's turn is final: stored, in the history, and never replayed again."""
        text = turn.text.strip()
        # GPT-Live heard this audio for good (the timeline is input audio: 48 bytes a ms).
        self._held.committed(turn.end_ms * BYTES_PER_MS)
        self._held.speech(False)
        if text:
            self._turns.append(("user", text))
        await self.emit(UserSpeaking(False))
        await self.emit(Transcript("user", turn.item_id, text, "", True))

    def _bill(self, seconds: float) -> None:
        """Usage is cumulative per GPT-Live session: bill what it grew by."""
        up = self._up
        if up is None or seconds <= up.billed:
            return
        grown, up.billed = seconds - up.billed, seconds
        self._billed_total += grown
        self.report_billed(grown)

    def _usage(self) -> dict[str, Any]:
        return {"type": "duration", "seconds": round(self._billed_total, 3)}


_NO_COMMIT = (
    "commit is not supported by the openai-live engine: its model decides when your turn ends "
    "(capabilities.manualTurns is false); keep streaming audio instead"
)
_NO_MANUAL = (
    "manual turn detection is not supported by the openai-live engine: its model decides when "
    "your turn ends, so the session runs hands-free (capabilities.manualTurns is false)"
)


async def _wait_started(ws: ClientConnection) -> None:
    """Read until `session.started`; an `error` first is GPT-Live refusing the session."""
    while True:
        event = orjson.loads(await ws.recv())
        etype = event.get("type") if isinstance(event, dict) else None
        if etype == "session.started":
            return
        if etype == "error":
            err = event.get("error") or {}
            code = str(err.get("code") or err.get("type") or "error")
            retryable = code not in wire.FATAL_CODES and code not in wire.CONFIG_CODES
            raise EngineUnavailable(
                f"OpenAI GPT-Live refused the session: {err.get('message')} ({code})",
                upstream=True,
                retryable=retryable,
            )
        if etype == "session.closed":
            raise EngineUnavailable(
                f"OpenAI GPT-Live closed the session at once ({event.get('reason')})",
                upstream=True,
            )


__all__ = ["OpenAILiveEngine"]
