"""The cascade engine: VAD -> speech-to-text -> responder -> text-to-speech, offline by default.

It speaks the same `ConversationEngine` events as the OpenAI Realtime engine, so a client cannot
tell which one it talks to. Every part is swappable by configuration (see `CascadeConfig`).

Timeline of one spoken turn (server VAD):

    audio frames -> VAD (inline, Silero ~0.3 ms a frame) -> recogniser fed (Whisper: partial
    re-decodes on the shared inference pool) -> the user pauses: the final decode starts
    silence hangover elapses -> user_speaking false -> STT final (usually ready) -> transcript
    -> responder streams tokens -> sentence complete -> Piper -> first AudioOut

Audio is emitted as fast as it is made (the client plays it, like OpenAI); the engine keeps the
emitted duration per item so an interrupt or a barge-in knows what the listener heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from voxgate.audio import bytes_for_ms, duration_ms
from voxgate.engines.base import (
    AssistantSpeaking,
    AudioOut,
    Capabilities,
    CapabilityMissing,
    ConversationEngine,
    EngineError,
    Interrupted,
    ResponseDone,
    StartOptions,
    StatusChanged,
    ToolCall,
    ToolExchange,
    Transcript,
    UserSpeaking,
)
from voxgate.engines.cascade.config import CascadeConfig
from voxgate.engines.cascade.models import InferenceBusy, inference_pool
from voxgate.engines.cascade.responder import (
    Message,
    RequestedCall,
    Responder,
    ResponderError,
    make_responder,
)
from voxgate.engines.cascade.stt import Recognizer, SpeechToTextError, open_recognizer
from voxgate.engines.cascade.text import SentenceSplitter, SpokenSentence, heard_text, is_speakable
from voxgate.engines.cascade.tts import Synthesizer, TextToSpeechError, open_synthesizer
from voxgate.engines.cascade.vad import VAD_RATE, TurnSegmenter, make_segmenter
from voxgate.turns import text_delta

if TYPE_CHECKING:
    from voxgate.config import Settings

log = logging.getLogger("voxgate.cascade")

INPUT_RATE = VAD_RATE  # every detector and recogniser here wants 16 kHz
OUTPUT_RATE = 24000  # the default client rate: the common path needs no resampling at the gateway


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(eq=False)
class _Response:
    """One assistant reply in flight (or just finished but possibly still playing)."""

    response_id: str
    item_id: str
    task: asyncio.Task[None] | None = None
    first_audio_t: float | None = None
    emitted_bytes: int = 0
    sentences: list[SpokenSentence] = field(default_factory=list)
    text: str = ""
    speaking: bool = False
    done: bool = False  # generation finished (completed, failed or cancelled)
    interrupted: bool = False
    cancelling: bool = False
    history_index: int | None = None
    #: Where the words of the current model round start in `text` (earlier rounds called
    #: tools, and their words are in the history with those calls).
    round_start: int = 0

    def emitted_ms(self) -> float:
        return duration_ms(self.emitted_bytes, OUTPUT_RATE)

    def audible(self, now: float) -> bool:
        """Assume the client plays what we sent in real time from the first byte on."""
        if self.first_audio_t is None or self.interrupted:
            return False
        return not self.done or (now - self.first_audio_t) * 1000.0 < self.emitted_ms()


@dataclass(slots=True)
class TurnTimings:
    """Monotonic timestamps of the last turn, for the latency benchmark."""

    speech_end_t: float | None = None  # the VAD decided the turn ended
    stt_final_t: float | None = None
    first_token_t: float | None = None
    first_audio_t: float | None = None


class CascadeEngine(ConversationEngine):
    """Offline-capable conversation engine; see the module docstring."""

    name = "cascade"
    config_type = CascadeConfig
    AUDIO_CHUNK_MS = 40
    PARTIAL_EVERY_MS = 300
    MAX_HISTORY = 60
    #: The longest user turn; server VAD ends it there even without a pause.
    MAX_TURN_MS = 60_000
    #: Silence after speech that the recogniser still gets (it closes the last word).
    STT_TAIL_MS = 160
    #: Audio held while speech onset is inside the echo guard window (then used or dropped).
    MAX_GUARD_MS = 3000

    def __init__(self, config: CascadeConfig) -> None:
        super().__init__()
        self.config = config
        self.capabilities = Capabilities(
            input_rate=INPUT_RATE, output_rate=OUTPUT_RATE, turn_control=True,
            # Tools need a model that can call them: a chat endpoint, not the echo.
            tools=bool(config.responder.llm_url),
        )  # fmt: skip
        self.parts: dict[str, str] = {}
        self.timings = TurnTimings()
        self._options = StartOptions()
        self._system_prompt = ""
        self._history: list[Message] = []
        self._started = False
        self._stopped = False
        self._segmenter: TurnSegmenter | None = None
        self._stt: Recognizer | None = None
        self._responder: Responder | None = None
        self._tts: Synthesizer | None = None
        self._manual = False
        #: Turn control (see `set_turn_control`): this pipeline answers and yields by itself
        #: only while these are on; otherwise the gateway calls `respond` / `interrupt`.
        self._auto_respond = True
        self._auto_interrupt = True
        #: `respond()` came while an utterance was still being recognised: answer after it.
        self._respond_pending = False
        #: Utterances ended whose final recognition has not finished yet.
        self._finalizing = 0
        self._odd = b""  # a trailing odd byte of input, kept for the next chunk
        # user turn state
        self._user_item: str | None = None
        self._fed_ms = 0.0
        self._last_partial = ""
        self._partial_task: asyncio.Task[None] | None = None
        self._guard_audio: list[bytes] | None = None
        self._held: list[bytes] = []  # trailing silence not (yet) given to the recogniser
        self._guard_bytes = 0
        # assistant state
        self._response: _Response | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._chunk_bytes = bytes_for_ms(self.AUDIO_CHUNK_MS, OUTPUT_RATE)
        #: Tools in the chat API's shape, and the calls of this reply waiting for results
        #: (call id -> whether the model may go on once it has them).
        self._tools: list[dict[str, Any]] = []
        self._tool_waits: dict[str, asyncio.Future[bool]] = {}
        #: A filler the reply waiting for tools should say (`say_filler`).
        self._filler: asyncio.Future[str] | None = None

    # --- operator view (`voxgate serve`, /health) -------------------------------------------
    @classmethod
    def describe(cls, settings: Settings) -> list[str]:
        """One line per part: which one is active and why."""
        parts = CascadeConfig.from_settings(settings).describe_parts()
        return [f"{part}: {why}" for part, why in parts.items()]

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self, options: StartOptions) -> None:
        if self._started:
            return
        self._options = options
        await self.emit(StatusChanged("connecting"))
        self._manual = options.turn_detection.mode == "manual"
        self._auto_respond = options.turn_detection.auto_respond
        self._auto_interrupt = options.turn_detection.auto_interrupt
        try:
            await self._make_parts(options)
        except BaseException:
            await self._close_parts()
            raise
        for part, why in self.parts.items():
            log.info("cascade %s: %s", part, why)
        self._system_prompt = options.system_prompt()
        self._tools = [
            {"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}}
            for t in options.tools
        ]  # fmt: skip
        for turn in options.history:
            if turn.tool is not None:
                self._history.extend(_tool_messages(turn.tool))
            else:
                self._history.append({"role": turn.role, "content": turn.text})
        self._started = True
        await self.emit(StatusChanged("connected"))

    @classmethod
    async def warm_up(cls, settings: Settings) -> None:
        """Build the parts once and drop them: the models they load stay shared in the process."""
        engine = cls.from_settings(settings)
        try:
            await engine._make_parts(StartOptions())
        finally:
            await engine._close_parts()
        # What `voxgate serve` runs, and why, before any user connects (a fallback is visible
        # at startup, not at the first complaint about recognition).
        for part, why in engine.parts.items():
            log.info("cascade %s: %s", part, why)

    async def _make_parts(self, options: StartOptions) -> None:
        """Build the parts in the order `CascadeConfig.problem` checks them, so the sentence a
        failing start raises is the one `/health` already showed."""
        config = self.config
        pool = inference_pool(config.inference_workers or None, config.inference_queue)
        self._tts, self.parts["tts"] = await open_synthesizer(
            config.tts, options.voice, OUTPUT_RATE, pool
        )
        # The first session of a process loads the shared Silero model: not on the loop.
        self._segmenter, self.parts["vad"] = await asyncio.to_thread(
            make_segmenter, config.vad, options.turn_detection
        )
        self._stt, self.parts["stt"] = await open_recognizer(config.stt, pool)
        self._responder = make_responder(config.responder)
        self.parts["responder"] = config.responder.describe()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        resp = self._response
        if resp is not None and resp.task is not None and not resp.task.done():
            resp.task.cancel()
        for task in list(self._tasks) + [self._partial_task]:
            if task is not None and not task.done():
                task.cancel()
        pending = [t for t in list(self._tasks) + [resp.task if resp else None] if t is not None]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        await self._close_parts()
        if self._started:
            await self.emit(StatusChanged("disconnected"))
        self._finish_events()

    async def _close_parts(self) -> None:
        if self._stt is not None:
            self._stt.close()
        if self._responder is not None:
            with contextlib.suppress(Exception):
                await self._responder.aclose()
        if self._tts is not None:
            with contextlib.suppress(Exception):
                await self._tts.aclose()

    # --- input ----------------------------------------------------------------------------
    async def send_audio(self, pcm16: bytes) -> None:
        if not self._started or self._stopped or not pcm16:
            return
        if self._manual:
            if self._user_item is None:
                self._begin_user_turn(b"")
            if self._odd:
                pcm16, self._odd = self._odd + pcm16, b""
            if len(pcm16) % 2:
                pcm16, self._odd = pcm16[:-1], pcm16[-1:]
            if self._fed_ms <= self.MAX_TURN_MS:  # beyond it, wait for the commit
                self._feed_stt(pcm16)
            return
        assert self._segmenter is not None
        for ev in self._segmenter.feed(pcm16):
            if ev.kind == "speech":
                if self._user_item is not None:
                    if self._segmenter.silent_ms > self.STT_TAIL_MS:
                        # Deep in the hangover: the recogniser needs no more silence, and a
                        # short queue on its thread is what makes the final result instant.
                        # A pause is where the turn may end: start the final decode now.
                        if not self._held and self._stt is not None:
                            self._stt.prefetch()
                        self._held.append(ev.audio)
                        continue
                    if self._held:
                        self._feed_stt(b"".join(self._held))  # the pause was inside speech
                        self._held.clear()
                    self._feed_stt(ev.audio)
                elif self._guard_audio is not None:
                    await self._guarded_speech(ev.audio)
            elif ev.kind == "start":
                await self._on_speech_start(ev.audio)
            elif self._user_item is not None:  # end
                self.timings = TurnTimings(speech_end_t=time.monotonic())
                await self._end_user_turn()
            else:
                self._guard_audio = None  # echo that never outlasted the guard
        if self._user_item is not None and self._fed_ms > self.MAX_TURN_MS:
            # A turn that never pauses (a radio, a stuck key): answer what we have so far,
            # which also bounds the audio a buffered recogniser keeps.
            self._segmenter.force_end()
            self.timings = TurnTimings(speech_end_t=time.monotonic())
            await self._end_user_turn(cut=True)

    async def commit(self) -> None:
        if not self._started or self._stopped:
            return
        if self._user_item is None:
            await self.emit(
                EngineError("bad_request", "nothing to commit: no audio since the last turn")
            )
            return
        if self._segmenter is not None:
            self._segmenter.force_end()
        self.timings = TurnTimings(speech_end_t=time.monotonic())
        # With server VAD a commit cuts the user off mid-speech (the gateway's utterance limit).
        await self._end_user_turn(announce=not self._manual, cut=not self._manual)

    async def send_user_message(self, text: str) -> None:
        """Typed text joins the history and gets a reply; like OpenAI it is not echoed back
        as a user transcript (it was never transcribed)."""
        if not self._started or self._stopped or not text.strip():
            return
        self._history.append({"role": "user", "content": text.strip()})
        self._trim_history()
        if self._auto_respond:
            await self._answer()

    async def set_turn_control(self, *, auto_respond: bool, auto_interrupt: bool) -> None:
        self._auto_respond, self._auto_interrupt = auto_respond, auto_interrupt

    async def respond(self) -> None:
        if not self._started or self._stopped:
            return
        if self._finalizing or self._user_item is not None:
            # An utterance is still being recognised (or spoken): answer once it is in.
            self._respond_pending = True
            return
        await self._answer()

    async def _answer(self) -> None:
        """Start a reply to the history as it stands, replacing one still being generated."""
        self._respond_pending = False
        await self._cancel_response(None, only_running=True)
        self._start_response()

    async def send_context_update(self, payload: dict[str, Any]) -> None:
        if not self._started or self._stopped:
            return
        self._history.append(
            {
                "role": "system",
                "content": "Context update (JSON): " + json.dumps(payload, ensure_ascii=False),
            }
        )
        self._trim_history()

    async def send_tool_result(
        self, call_id: str, output: str, *, respond: bool = True, is_error: bool = False
    ) -> None:
        """The result joins the history right after the call that asked for it (whatever was
        said meanwhile), and the reply waiting for it goes on."""
        if not self.capabilities.tools:
            raise CapabilityMissing("the cascade has tools only with a chat endpoint")
        for index, message in enumerate(self._history):
            ids = {c["id"] for c in message.get("tool_calls") or ()}
            if call_id in ids:
                at = index + 1
                while at < len(self._history) and self._history[at]["role"] == "tool":
                    at += 1
                self._history.insert(at, {"role": "tool", "tool_call_id": call_id, "content": output})
                break
        waiting = self._tool_waits.pop(call_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(respond)

    async def interrupt(self, played_ms: int | None) -> None:
        if not self._started or self._stopped:
            return
        await self._cancel_response(played_ms, explicit=True)

    # --- user turn ------------------------------------------------------------------------
    async def _on_speech_start(self, prefix: bytes) -> None:
        if not self._auto_interrupt:
            # The gateway decides whether this is a barge-in (it calls `interrupt`).
            await self._start_user_speech(prefix)
            return
        resp = self._response
        now = time.monotonic()
        if resp is not None and resp.audible(now):
            assert resp.first_audio_t is not None
            if (now - resp.first_audio_t) * 1000.0 < self.config.echo_guard_ms:
                # Probably our own voice coming back through the speaker: hold it and decide
                # once the guard window has passed.
                self._guard_audio = [prefix]
                self._guard_bytes = len(prefix)
                return
        await self._cancel_response(None)
        await self._start_user_speech(prefix)

    async def _guarded_speech(self, frame: bytes) -> None:
        assert self._guard_audio is not None
        self._guard_audio.append(frame)
        self._guard_bytes += len(frame)
        resp = self._response
        now = time.monotonic()
        still_audible = resp is not None and resp.audible(now)
        guard_over = (
            resp is None
            or resp.first_audio_t is None
            or (now - resp.first_audio_t) * 1000.0 >= self.config.echo_guard_ms
        )
        if guard_over or not still_audible:
            audio = b"".join(self._guard_audio)
            self._guard_audio = None
            await self._cancel_response(None)
            await self._start_user_speech(audio)
        elif duration_ms(self._guard_bytes, INPUT_RATE) > self.MAX_GUARD_MS:
            self._guard_audio = self._guard_audio[-1:]
            self._guard_bytes = len(self._guard_audio[0])

    async def _start_user_speech(self, prefix: bytes) -> None:
        self._begin_user_turn(prefix)
        await self.emit(UserSpeaking(True, self._user_item))

    def _begin_user_turn(self, prefix: bytes) -> None:
        assert self._stt is not None
        self._held.clear()
        self._user_item = _new_id("item")
        self._fed_ms = 0.0
        self._last_partial = ""
        self._stt.begin()
        if prefix:
            self._feed_stt(prefix)

    def _feed_stt(self, pcm16: bytes) -> None:
        assert self._stt is not None
        self._stt.feed(pcm16)
        before = self._fed_ms
        self._fed_ms += duration_ms(pcm16, INPUT_RATE)
        if (
            self._stt.streams_partials
            and (self._segmenter is None or self._segmenter.silent_ms < 100)
            and int(self._fed_ms // self.PARTIAL_EVERY_MS) > int(before // self.PARTIAL_EVERY_MS)
            and (self._partial_task is None or self._partial_task.done())
        ):
            self._partial_task = asyncio.create_task(self._emit_partial(self._user_item))

    async def _emit_partial(self, item_id: str | None) -> None:
        assert self._stt is not None
        text = await self._stt.partial()
        if item_id is None or not text or item_id != self._user_item or text == self._last_partial:
            return
        delta = text_delta(self._last_partial, text)
        self._last_partial = text
        await self.emit(Transcript("user", item_id, text, delta, final=False))

    async def _end_user_turn(self, announce: bool = True, *, cut: bool = False) -> None:
        item_id = self._user_item
        self._user_item = None
        if item_id is None:
            return
        if self._partial_task is not None and not self._partial_task.done():
            self._partial_task.cancel()
        # Counted before anyone hears the turn ended, so a `respond()` prompted by that waits
        # for the words.
        self._finalizing += 1
        if announce:
            await self.emit(UserSpeaking(False, item_id))
        assert self._stt is not None
        # The utterance ends now (a new one may begin with the next frame); the final decode
        # runs in its own task so incoming audio is never held up by it (a remote
        # transcription back end can take a second).
        final_text = self._stt.finish()
        task = asyncio.create_task(
            self._finish_user_turn(item_id, self._last_partial, final_text, cut=cut)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_user_turn(
        self, item_id: str, last_partial: str, final_text: Awaitable[str], *, cut: bool = False
    ) -> None:
        try:
            text = await self._recognised(final_text)
        finally:
            self._finalizing -= 1
        if not text and cut:
            # Cut off mid-word, a grammar-bound recogniser may match nothing at all: what it
            # had heard so far is the user's turn.
            text = last_partial
        self.timings.stt_final_t = time.monotonic()
        if text:
            delta = text_delta(last_partial, text)
            await self.emit(Transcript("user", item_id, text, delta, final=True))
            self._history.append({"role": "user", "content": text})
            self._trim_history()
        else:
            log.debug("turn %s: nothing recognised, no reply", item_id)
        if not (self._respond_pending or (text and self._auto_respond)):
            return
        if self._user_item is not None or self._finalizing:
            # The user is already speaking again: the reply waits for that next turn.
            self._respond_pending = True
            return
        await self._answer()

    async def _recognised(self, final_text: Awaitable[str]) -> str:
        """The utterance's final text; a failed recogniser is reported and heard as nothing."""
        try:
            return await final_text
        except SpeechToTextError as exc:
            await self.emit(EngineError("upstream_unavailable", f"speech-to-text failed: {exc}"))
            return ""
        except InferenceBusy as exc:
            await self.emit(
                EngineError(
                    "rate_limited",
                    f"the server is too busy to recognise speech right now ({exc}): "
                    "that turn was not heard, please say it again",
                )
            )
            return ""

    # --- assistant response -----------------------------------------------------------------
    def _messages(self) -> list[Message]:
        return [{"role": "system", "content": self._system_prompt}, *_answered(self._history)]

    def _trim_history(self) -> None:
        excess = len(self._history) - self.MAX_HISTORY
        # Never start with a tool result whose call was cut off.
        while excess < len(self._history) and excess > 0 and self._history[excess]["role"] == "tool":
            excess += 1
        if excess > 0:
            del self._history[:excess]
            if self._response is not None and self._response.history_index is not None:
                self._response.history_index -= excess
                if self._response.history_index < 0:
                    self._response.history_index = None

    def _start_response(self) -> None:
        resp = _Response(response_id=_new_id("resp"), item_id=_new_id("item"))
        self._response = resp
        resp.task = asyncio.create_task(self._run_response(resp))

    #: Most model rounds of one reply (each round's calls answered before the next).
    MAX_TOOL_ROUNDS = 8

    async def _run_response(self, resp: _Response) -> None:
        """Speak what the model writes; when it calls tools, hand the calls to the session,
        wait for their results, and ask the model again, until it answers in words."""
        try:
            for _ in range(self.MAX_TOOL_ROUNDS):
                calls = await self._run_round(resp)
                if not calls:
                    break
                if not await self._call_tools(resp, calls):
                    # Cancelled (an interrupt): the model waits for the user.
                    resp.done = True
                    await self._stop_speaking(resp)
                    await self.emit(ResponseDone(resp.response_id, "cancelled"))
                    return
            else:
                await self.emit(EngineError(
                    "upstream_error",
                    f"the language model kept calling tools ({self.MAX_TOOL_ROUNDS} rounds); "
                    "this reply stops here",
                ))  # fmt: skip
            await self._finish_response(resp, "completed")
        except ResponderError as exc:
            await self.emit(EngineError("upstream_unavailable", str(exc), fatal=False))
            await self._finish_response(resp, "failed")
        except InferenceBusy as exc:
            await self.emit(
                EngineError(
                    "rate_limited",
                    f"the server is too busy to speak the reply right now ({exc}): "
                    "the reply stopped; ask again in a moment",
                )
            )
            await self._finish_response(resp, "failed")
        except TextToSpeechError as exc:
            code = "upstream_unavailable" if self.config.tts.kind == "openai" else "internal"
            await self.emit(EngineError(code, f"text-to-speech failed: {exc}", fatal=False))
            await self._finish_response(resp, "failed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one bad turn kill the session
            log.exception("cascade response %s failed", resp.response_id)
            await self.emit(EngineError("internal", f"the reply failed: {exc}", fatal=False))
            await self._finish_response(resp, "failed")

    async def _call_tools(self, resp: _Response, calls: list[RequestedCall]) -> bool:
        """The round's calls join the history (with the words said before them), go to the
        session, and are waited for: -> whether the model may go on."""
        said = resp.text[resp.round_start :].strip()
        resp.round_start = len(resp.text)
        self._history.append({
            "role": "assistant", "content": said or None,
            "tool_calls": [{"id": c.call_id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}} for c in calls],
        })  # fmt: skip
        loop = asyncio.get_running_loop()
        waits = [loop.create_future() for _ in calls]
        for call, waiting in zip(calls, waits, strict=True):
            self._tool_waits[call.call_id] = waiting
        for call in calls:
            await self.emit(ToolCall(call.call_id, call.name, call.arguments))
        answered: asyncio.Future[list[bool]] = asyncio.gather(*waits)
        filler: asyncio.Future[str] = loop.create_future()
        self._filler = filler
        try:
            # The filler is spoken here, by the reply itself: its audio never overlaps the
            # answer that follows it.
            either: set[asyncio.Future[Any]] = {answered, filler}
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if filler in done and answered not in done:
                await self._speak_sentence(resp, filler.result())
                resp.round_start = len(resp.text)
            answers = await answered
        finally:
            self._filler = None
            if not answered.done():
                answered.cancel()
            for call in calls:
                self._tool_waits.pop(call.call_id, None)
        return all(answers)

    async def say_filler(self, text: str) -> bool:
        filler = self._filler
        if filler is None or filler.done():
            return False
        filler.set_result(text)
        return True

    async def _run_round(self, resp: _Response) -> list[RequestedCall]:
        """One model round: its words spoken sentence by sentence; -> the calls it made."""
        assert self._responder is not None
        messages = self._messages()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue(maxsize=32)
        responder = self._responder
        calls: list[RequestedCall] = []

        async def produce() -> None:
            splitter = SentenceSplitter()
            try:
                async for piece in responder.stream(messages, self._tools or None):
                    if isinstance(piece, RequestedCall):
                        calls.append(piece)
                        continue
                    if self.timings.first_token_t is None:
                        self.timings.first_token_t = time.monotonic()
                    for sentence in splitter.push(piece):
                        await queue.put(sentence)
                tail = splitter.flush()
                if tail:
                    await queue.put(tail)
                await queue.put(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # handed to the consumer, which reports it
                await queue.put(exc)

        producer = asyncio.create_task(produce())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if is_speakable(item):
                    await self._speak_sentence(resp, item)
            return calls
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producer

    async def _speak_sentence(self, resp: _Response, sentence: str) -> None:
        assert self._tts is not None
        start_ms = resp.emitted_ms()
        announced = False
        carry = b""
        cb = self._chunk_bytes

        async def send(chunk: bytes) -> None:
            nonlocal announced
            if resp.cancelling:
                # Belt and braces: the task is being cancelled, and nothing of this item may
                # follow its `Interrupted`, even if the cancellation is slow to land.
                raise asyncio.CancelledError
            if not announced:
                announced = True
                if resp.first_audio_t is None:
                    resp.first_audio_t = time.monotonic()
                    if self.timings.first_audio_t is None:
                        self.timings.first_audio_t = resp.first_audio_t
                    resp.speaking = True
                    await self.emit(AssistantSpeaking(True))
                delta = sentence if not resp.text else " " + sentence
                resp.text += delta
                await self.emit(
                    Transcript("assistant", resp.item_id, resp.text, delta, final=False)
                )
                # Recorded now, with a provisional end, so an interrupt mid-sentence sees it.
                resp.sentences.append(SpokenSentence(sentence, start_ms, start_ms, complete=False))
            resp.emitted_bytes += len(chunk)
            resp.sentences[-1].end_ms = resp.emitted_ms()
            await self.emit(AudioOut(chunk, resp.item_id))

        async with contextlib.aclosing(self._tts.speak(sentence)) as audio:
            async for pcm in audio:
                data = carry + pcm if carry else pcm
                n = len(data) - len(data) % cb
                for i in range(0, n, cb):
                    await send(data[i : i + cb])
                carry = data[n:]
        if carry:
            await send(carry)
        if announced:
            resp.sentences[-1].complete = True

    async def _finish_response(
        self, resp: _Response, status: Literal["completed", "failed"]
    ) -> None:
        if resp.cancelling:
            return  # the canceller reports the end
        resp.done = True
        if said := resp.text[resp.round_start :].strip():
            self._history.append({"role": "assistant", "content": said})
            resp.history_index = len(self._history) - 1
            self._trim_history()
        if status == "completed" or resp.text:
            await self.emit(Transcript("assistant", resp.item_id, resp.text, "", final=True))
        await self._stop_speaking(resp)
        await self.emit(ResponseDone(resp.response_id, status))

    async def _cancel_response(
        self, played_ms: int | None, *, explicit: bool = False, only_running: bool = False
    ) -> None:
        """Stop the current reply at once and truncate it to what the listener heard.

        Used by `interrupt` (explicit), barge-in and a new turn. A reply whose generation already
        finished is still truncated while its audio is (assumed) playing, or when the client
        says how much it played; `only_running` leaves finished replies alone (a typed message
        is no barge-in: like OpenAI, it only cancels a reply still being generated).
        """
        resp = self._response
        if resp is None or resp.interrupted or resp.cancelling:
            return
        now = time.monotonic()
        running = not resp.done
        if only_running and not running:
            return
        audible = resp.audible(now)
        if not running and not audible and not (explicit and played_ms is not None):
            log.debug("cascade cancel: %s already finished and played", resp.item_id)
            return
        resp.cancelling = True  # a concurrent interrupt/barge-in must not report it twice
        log.debug(
            "cascade cancel %s: running=%s audible=%s played_ms=%s emitted_ms=%.0f",
            resp.item_id,
            running,
            audible,
            played_ms,
            resp.emitted_ms(),
        )
        if running and resp.task is not None:
            resp.task.cancel()
            await asyncio.wait({resp.task}, timeout=5.0)
            resp.done = True
        if resp.first_audio_t is not None:
            await self._interrupt_at_heard(resp, played_ms, now, running)
        await self._stop_speaking(resp)
        if running:
            await self.emit(ResponseDone(resp.response_id, "cancelled"))

    async def _interrupt_at_heard(
        self, resp: _Response, played_ms: int | None, now: float, running: bool
    ) -> None:
        """Report how far the listener got (`Interrupted` with the words heard) and make the
        history say only that."""
        assert resp.first_audio_t is not None
        # Without the client's word, assume it played in real time from the first byte.
        played = (now - resp.first_audio_t) * 1000.0 if played_ms is None else float(played_ms)
        played = max(0.0, min(played, resp.emitted_ms()))
        resp.interrupted = True
        heard = heard_text(resp.sentences, played)
        self._keep_heard_in_history(resp, heard, running)
        log.debug("cascade cancel %s: interrupted at %.0f ms", resp.item_id, played)
        await self.emit(Interrupted(resp.item_id, int(played), heard_text=heard))
        await self._stop_speaking(resp)
        if running:
            # The item ends with what was heard, as the OpenAI engine does after a truncate.
            await self.emit(Transcript("assistant", resp.item_id, heard, "", final=True))

    def _keep_heard_in_history(self, resp: _Response, heard: str, running: bool) -> None:
        """The history keeps what was heard, not what was generated (OpenAI truncation)."""
        index = resp.history_index
        if index is not None and 0 <= index < len(self._history):
            if heard:
                self._history[index]["content"] = heard
            else:
                del self._history[index]
        elif running and heard:
            self._history.append({"role": "assistant", "content": heard})
            self._trim_history()

    async def _stop_speaking(self, resp: _Response) -> None:
        if resp.speaking:
            resp.speaking = False
            await self.emit(AssistantSpeaking(False))

    # --- introspection (tests, benchmark) ---------------------------------------------------
    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self._tools)

    @property
    def history(self) -> list[Message]:
        """The conversation as the responder sees it (without the system prompt)."""
        return [dict(m) for m in self._history]


def _tool_messages(exchange: ToolExchange) -> list[Message]:
    """A remembered call as the chat API keeps it: the assistant's call, then its result."""
    call = {"id": exchange.call_id, "type": "function",
            "function": {"name": exchange.name, "arguments": exchange.arguments}}  # fmt: skip
    messages: list[Message] = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    if exchange.output is not None:
        messages.append({"role": "tool", "tool_call_id": exchange.call_id, "content": exchange.output})
    return messages


def _answered(history: list[Message]) -> list[Message]:
    """The history without calls still waiting for results (a user who spoke while a tool
    ran gets an answer; the chat API refuses a call whose results are not all there)."""
    answered = {m["tool_call_id"] for m in history if m["role"] == "tool"}
    out: list[Message] = []
    skipping: set[str] = set()
    for message in history:
        ids = {c["id"] for c in message.get("tool_calls") or ()}
        if ids and not ids <= answered:
            skipping |= ids
            if message.get("content"):
                out.append({"role": "assistant", "content": message["content"]})
            continue
        if message["role"] == "tool" and message["tool_call_id"] in skipping:
            continue
        out.append(message)
    return out
