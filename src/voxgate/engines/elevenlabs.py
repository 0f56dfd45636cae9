"""ElevenLabs Conversational AI ("Agents") behind the engine seam.

The wire protocol (as the official SDKs and the provider's AsyncAPI contract define it): one JSON
object per text frame, user audio as `{"user_audio_chunk": b64}` in the agent's input format,
agent speech as `audio` events with increasing integer `event_id`s, `ping` answered with `pong`.

How the seam maps onto it, and why:
- **Auth.** With `ELEVENLABS_API_KEY` set, a signed URL is fetched server-side
  (`GET /convai/conversation/get-signed-url`, header `xi-api-key`); the key never leaves the
  server and never appears in an error. Without a key the agent must be public (`?agent_id=`).
- **Rates.** The agent's formats arrive in `conversation_initiation_metadata`, so `start()` waits
  for it and then sets `capabilities.input_rate`/`output_rate` (`pcm_44100` -> 44100; `ulaw_8000`
  is converted to/from PCM16 here and declared as 8000). The session resamples to client rates.
- **No end-of-response event.** ElevenLabs sends the agent's whole text once (`agent_response`)
  and audio chunks, but no "done". A turn is complete at the next turn marker (a user transcript,
  the next `agent_response`), on `agent_response_complete` when the agent sends it, or after
  `response_idle_s` without audio (ARCHITECTURE 7).
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
- **Faults.** Malformed server messages are logged and skipped. A close by the provider ends
  the engine: 1000 as `status: disconnected` (the agent ended the call), 1002/1008/1011 as a
  fatal `EngineError` with the provider's own sentence. A dropped transport (1001/1006/1012/1013)
  is retried with backoff as a *new* ElevenLabs conversation briefed with the history as a
  `contextual_update` (ElevenLabs cannot replay items; the agent's own state is lost), with
  `status: reconnecting`; the turn in flight ends as `failed`. When every attempt fails the
  fatal error follows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from voxgate.audio import pcm16_to_ulaw, ulaw_to_pcm16
from voxgate.engines.base import (
    AssistantSpeaking,
    AudioOut,
    Capabilities,
    ConversationEngine,
    EngineError,
    EngineUnavailable,
    HistoryTurn,
    Interrupted,
    ResponseDone,
    StartOptions,
    StatusChanged,
    Transcript,
    UserSpeaking,
)
from voxgate.engines.upstream import ReconnectPolicy
from voxgate.turns import heard_prefix

if TYPE_CHECKING:
    from voxgate.config import Settings

log = logging.getLogger("voxgate.engines.elevenlabs")

#: ElevenLabs format name -> sample rate. `pcm_*` is PCM16 LE mono; `ulaw_8000` is G.711 mu-law.
FORMAT_RATES: dict[str, int] = {
    "pcm_8000": 8000,
    "pcm_16000": 16000,
    "pcm_22050": 22050,
    "pcm_24000": 24000,
    "pcm_44100": 44100,
    "pcm_48000": 48000,
    "ulaw_8000": 8000,
}

#: Server events the engine has no use for; skipped quietly (unknown types are logged).
_IGNORED_TYPES = frozenset(
    {
        "vad_score",
        "internal_tentative_agent_response",
        "internal_turn_probability",
        "agent_chat_response_part",
        "agent_reasoning_response_part",
        "agent_tool_request",
        "agent_tool_response",
        "agent_tool_response_full_payload",
        "agent_response_metadata",
        "mcp_tool_call",
        "mcp_connection_status",
        "context_usage",
        "asr_initiation_metadata",
        "rich_content",
        "agent_typing",
        "guardrail_triggered",
        "external_agent_connected",
        "external_agent_disconnected",
        "conversation_initiation_metadata",
    }
)

#: Close codes of a dropped transport rather than a provider decision: worth a new conversation.
#: (1002/1008/1011 are the provider ending this conversation on purpose: fatal, as documented.)
_RECONNECT_CODES = frozenset({1001, 1006, 1012, 1013})

#: Roughly how long speech takes per character; only used to estimate heard text while a turn's
#: audio is still arriving (once it has all arrived, the real audio length is used).
_MS_PER_CHAR = 65.0


class SignedUrlError(EngineUnavailable):
    """The signed-URL call failed; the sentence says what to fix and never contains the key."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True):
        super().__init__(message, upstream=True, retryable=retryable)
        self.status = status


class _Rejected(Exception):
    """The conversation socket closed before `conversation_initiation_metadata`."""

    def __init__(self, code: int, error_type: str | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error_type = error_type
        self.message = message


async def fetch_signed_url(settings: Settings, *, timeout: float = 10.0) -> str:
    """A signed conversation URL for the configured private agent (valid ~15 minutes).

    Raises `SignedUrlError` with a sentence an operator can act on: 401 means the key is wrong,
    404 that the agent id is unknown. The key goes only into the request header.
    """
    key = settings.elevenlabs_api_key
    agent_id = settings.elevenlabs_agent_id
    if key is None or not key.get_secret_value():
        raise SignedUrlError(
            "ELEVENLABS_API_KEY is not set; a signed URL needs it.", retryable=False
        )
    if not agent_id:
        raise SignedUrlError(
            "No ElevenLabs agent is configured: set VOXGATE_ELEVENLABS_AGENT_ID.", retryable=False
        )
    base = settings.elevenlabs_api_base.rstrip("/")
    url = f"{base}/convai/conversation/get-signed-url"
    host = urlsplit(base).netloc or base
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(
                url, params={"agent_id": agent_id}, headers={"xi-api-key": key.get_secret_value()}
            )
    except httpx.HTTPError as exc:
        raise SignedUrlError(
            f"ElevenLabs could not be reached at {host} ({type(exc).__name__}); "
            "check the network and VOXGATE_ELEVENLABS_API_BASE."
        ) from None
    status = response.status_code
    if status == 401:
        raise SignedUrlError(
            "ElevenLabs rejected the API key (HTTP 401): check ELEVENLABS_API_KEY.",
            status=401,
            retryable=False,
        )
    if status == 403:
        raise SignedUrlError(
            "ElevenLabs refused the signed-URL request (HTTP 403): the API key lacks access "
            f"to agent {agent_id!r} or to Conversational AI.",
            status=403,
            retryable=False,
        )
    if status == 404:
        raise SignedUrlError(
            f"ElevenLabs does not know agent {agent_id!r} (HTTP 404): check "
            "VOXGATE_ELEVENLABS_AGENT_ID.",
            status=404,
            retryable=False,
        )
    if status != 200:
        raise SignedUrlError(
            f"ElevenLabs answered the signed-URL request with HTTP {status}; try again later.",
            status=status,
            retryable=status == 429 or status >= 500,
        )
    try:
        signed = response.json()["signed_url"]
    except (ValueError, KeyError, TypeError):
        signed = None
    if not isinstance(signed, str) or not signed.startswith(("ws://", "wss://")):
        raise SignedUrlError(
            "ElevenLabs answered the signed-URL request without a usable signed_url.",
            status=status,
        )
    return signed


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer event_id, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


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

    #: Audio idle after which an agent turn counts as complete (no end event from ElevenLabs).
    response_idle_s: float = 1.0
    #: After a server `interruption`, how long `Interrupted` waits for
    #: `agent_response_correction` (its text is what the session stores as heard).
    correction_wait_s: float = 0.3
    #: Silence sent on `commit()`, so the provider's turn detection ends the user turn now.
    commit_silence_ms: int = 800

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.capabilities = Capabilities(
            audio_in=True,
            audio_out=True,
            tools=False,
            server_vad=True,
            input_rate=16000,
            output_rate=16000,
        )
        self.conversation_id: str | None = None
        self.input_format = "pcm_16000"
        self.output_format = "pcm_16000"
        #: The provider's latency estimate from its last `ping` (ms), when it sends one.
        self.last_ping_ms: float | None = None
        #: Counters that tests and metrics read.
        self.dropped_stale_audio = 0
        self.skipped_messages = 0
        self.pongs_sent = 0
        self._ws: Any = None
        self._reader_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._state_lock = asyncio.Lock()
        self._stopping = False
        self._started = False
        self._turn: _AgentTurn | None = None
        self._pending: tuple[_AgentTurn, float] | None = None  # interrupted, awaiting correction
        self._last_interrupt_id = 0
        self._muted = False  # after a client interrupt: drop audio until the next turn marker
        self._user_item: str | None = None
        self._user_text = ""
        self._seq = 0
        self._last_error: dict[str, Any] | None = None
        self.override_warning: str | None = None
        #: Every final turn, so a reconnect can brief the new conversation.
        self._history: list[HistoryTurn] = []
        self._options = StartOptions()
        self._override_used: dict[str, Any] = {}

    # --- start / stop -------------------------------------------------------------------------
    async def start(self, options: StartOptions) -> None:
        if self._started:
            raise RuntimeError("ElevenLabsEngine.start() called twice")
        self._started = True
        if not self.settings.elevenlabs_agent_id:
            raise EngineUnavailable(
                "No ElevenLabs agent is configured: set VOXGATE_ELEVENLABS_AGENT_ID to your "
                "agent's id (and ELEVENLABS_API_KEY for a private agent).",
                retryable=False,
            )
        await self.emit(StatusChanged("connecting"))
        override = self._override(options)
        self._options = options
        self._history = list(options.history)
        self._override_used = override
        try:
            async with asyncio.timeout(self.settings.start_timeout_s):
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
            self.status = "disconnected"
            raise EngineUnavailable(
                f"ElevenLabs did not start the conversation within "
                f"{self.settings.start_timeout_s:g} s; try again later.",
                upstream=True,
            ) from None
        except _Rejected as exc:
            self.status = "disconnected"
            raise EngineUnavailable(
                f"ElevenLabs refused the conversation: {exc.message} "
                f"({exc.error_type or 'no error type'}, close {exc.code}).",
                upstream=True,
                retryable=exc.code not in (1008,),
            ) from None
        except EngineUnavailable:
            self.status = "disconnected"
            raise
        if self._stopping:  # stop() ran while we were connecting: leave nothing behind
            ws, self._ws = self._ws, None
            with contextlib.suppress(Exception):
                await ws.close()
            return
        self._reader_task = asyncio.create_task(self._reader(), name="elevenlabs-reader")
        await self.emit(StatusChanged("connected"))
        if self.override_warning:
            await self.emit(EngineError("upstream_error", self.override_warning, fatal=False))
        if options.history:
            await self._send({"type": "contextual_update", "text": _history_text(options.history)})

    def _override(self, options: StartOptions) -> dict[str, Any]:
        override: dict[str, Any] = {}
        agent: dict[str, Any] = {}
        if options.instructions or options.personality:
            agent["prompt"] = {"prompt": options.system_prompt()}
        first = (options.metadata or {}).get("firstMessage")
        if isinstance(first, str) and first.strip():
            agent["first_message"] = first.strip()
        if agent:
            override["agent"] = agent
        if options.voice:
            override["tts"] = {"voice_id": options.voice}
        return override

    async def _connect(self, override: dict[str, Any], options: StartOptions) -> None:
        """Open the socket, send the init message, wait for the metadata (one attempt)."""
        settings = self.settings
        began = time.monotonic()
        ws = None
        try:
            if (
                settings.elevenlabs_api_key is not None
                and settings.elevenlabs_api_key.get_secret_value()
            ):
                url = await fetch_signed_url(settings)
            else:
                sep = "&" if "?" in settings.elevenlabs_url else "?"
                url = (
                    settings.elevenlabs_url
                    + sep
                    + urlencode({"agent_id": settings.elevenlabs_agent_id})
                )
            try:
                ws = await websockets.connect(
                    url,
                    max_size=16 * 1024 * 1024,
                    open_timeout=None,  # bounded by start_timeout_s around us
                    ping_interval=settings.upstream_ping_interval_s,
                    # PCM barely deflates; see docs/benchmarks.md.
                    compression="deflate" if settings.ws_compression else None,
                )
            except InvalidStatus as exc:
                raise EngineUnavailable(
                    "ElevenLabs refused the conversation socket (HTTP "
                    f"{exc.response.status_code}); check the agent's authentication settings.",
                    upstream=True,
                ) from None
            except (OSError, InvalidHandshake) as exc:
                raise EngineUnavailable(
                    f"ElevenLabs conversation socket unreachable ({type(exc).__name__}); check "
                    "the network and VOXGATE_ELEVENLABS_URL.",
                    upstream=True,
                ) from None
            init: dict[str, Any] = {
                "type": "conversation_initiation_client_data",
                "conversation_config_override": override,
                "custom_llm_extra_body": {},
                "dynamic_variables": {},
            }
            if options.session_id:
                init["user_id"] = options.session_id
            with contextlib.suppress(ConnectionClosed):  # a refusal is read from the close
                await ws.send(orjson.dumps(init).decode())
            meta = await self._await_metadata(ws)
        except BaseException:
            self.report_connect(False, time.monotonic() - began)
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close()
            raise
        in_fmt = meta.get("user_input_audio_format") or "pcm_16000"
        out_fmt = meta.get("agent_output_audio_format") or "pcm_16000"
        if in_fmt not in FORMAT_RATES or out_fmt not in FORMAT_RATES:
            self.report_connect(False, time.monotonic() - began)
            with contextlib.suppress(Exception):
                await ws.close()
            raise EngineUnavailable(
                f"The ElevenLabs agent uses audio formats voxgate does not know "
                f"({in_fmt!r} in, {out_fmt!r} out).",
                upstream=True,
                retryable=False,
            )
        self.report_connect(True, time.monotonic() - began)
        self._ws = ws
        self.conversation_id = str(meta.get("conversation_id") or "")
        self.input_format, self.output_format = in_fmt, out_fmt
        self.capabilities.input_rate = FORMAT_RATES[in_fmt]
        self.capabilities.output_rate = FORMAT_RATES[out_fmt]

    async def _await_metadata(self, ws: Any) -> dict[str, Any]:
        error: dict[str, Any] | None = None
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                message = (error or {}).get("message") or reason or "the socket closed"
                raise _Rejected(code, (error or {}).get("error_type"), str(message)) from None
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
                    event_id = _int(msg["ping_event"]["event_id"])
                    await ws.send(orjson.dumps({"type": "pong", "event_id": event_id}).decode())
            else:
                log.info("elevenlabs: %r before the conversation metadata, skipped", kind)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1000, reason="client ended"), 5)
        await self.emit(StatusChanged("disconnected", "stopped"))
        self._finish_events()

    # --- input --------------------------------------------------------------------------------
    async def _send(self, message: dict[str, Any]) -> bool:
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
        data = pcm16_to_ulaw(pcm16) if self.input_format.startswith("ulaw") else pcm16
        await self._send({"user_audio_chunk": base64.b64encode(data).decode("ascii")})

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
            self._muted = True
            received = self._ms(turn.audio_bytes)
            played = int(received if played_ms is None else max(0, min(played_ms, received)))
            heard = self._estimate_heard(turn, played)
            if turn.speaking:
                await self.emit(AssistantSpeaking(False))
            await self.emit(Interrupted(turn.item_id, played, heard_text=heard))
            await self._final_transcript(turn, heard)
            if heard:
                self._history.append(HistoryTurn("assistant", heard))
            await self.emit(ResponseDone(turn.item_id, "cancelled"))

    # --- the reader ---------------------------------------------------------------------------
    async def _reader(self) -> None:
        try:
            while True:
                try:
                    await self._read(self._ws)
                except ConnectionClosed as exc:
                    if self._stopping:
                        return
                    code = exc.rcvd.code if exc.rcvd is not None else 1006
                    async with self._state_lock:
                        await self._end_turn_on_close(code)
                    if code in _RECONNECT_CODES and await self._reconnect(code):
                        continue
                    async with self._state_lock:
                        await self._on_closed(exc)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not hang the session
            log.exception("elevenlabs reader failed")
            await self.emit(
                EngineError("internal", f"The ElevenLabs engine failed: {exc}", fatal=True)
            )

    async def _read(self, ws: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._deadline()
            try:
                if deadline is None:
                    raw = await ws.recv()
                else:
                    async with asyncio.timeout_at(deadline):
                        raw = await ws.recv()
            except TimeoutError:
                async with self._state_lock:
                    await self._on_deadline(loop.time())
                continue
            msg = self._parse(raw)
            if msg is not None:
                async with self._state_lock:
                    await self._dispatch(msg)

    async def _reconnect(self, code: int) -> bool:
        """A dropped transport (not a provider decision): start a new ElevenLabs conversation
        with backoff and give it the history as a `contextual_update` (ElevenLabs cannot replay
        items). False when every attempt failed; the caller then reports the fatal error."""
        settings = self.settings
        policy = ReconnectPolicy(
            settings.reconnect_attempts, settings.reconnect_base_s, settings.reconnect_max_s
        )
        self._ws = None
        await self.emit(StatusChanged("reconnecting", f"ElevenLabs connection lost (close {code})"))
        old_rates = (self.capabilities.input_rate, self.capabilities.output_rate)
        for delay in policy.delays():
            await asyncio.sleep(policy.jittered(delay))
            if self._stopping:
                return False
            try:
                async with asyncio.timeout(settings.start_timeout_s):
                    await self._connect(self._override_used, self._options)
            except (EngineUnavailable, _Rejected, TimeoutError) as exc:
                log.warning("elevenlabs reconnect failed: %s", exc)
                if isinstance(exc, EngineUnavailable) and not exc.retryable:
                    break
                continue
            if (self.capabilities.input_rate, self.capabilities.output_rate) != old_rates:
                # Rates are final once start() returned; a changed agent cannot continue here.
                with contextlib.suppress(Exception):
                    await self._ws.close()
                self._ws = None
                break
            self._last_interrupt_id = 0  # event ids restart with the new conversation
            self._muted = False
            self._last_error = None
            if self._history:
                await self._send(
                    {"type": "contextual_update", "text": _history_text(self._history)}
                )
            await self.emit(StatusChanged("connected", "reconnected"))
            return True
        return False

    def _parse(self, raw: str | bytes) -> dict[str, Any] | None:
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

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        handler = self._handlers.get(kind)  # type: ignore[arg-type]
        if handler is None:
            if kind in _IGNORED_TYPES:
                return
            self._skip(f"an unknown message type {kind!r}")
            return
        try:
            await handler(self, msg)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            self._skip(f"a malformed {kind!r} message ({exc})")

    # --- handlers (each validates before it changes state) ------------------------------------
    async def _on_ping(self, msg: dict[str, Any]) -> None:
        event = msg["ping_event"]
        event_id = _int(event["event_id"])
        if await self._send({"type": "pong", "event_id": event_id}):
            self.pongs_sent += 1
        ping_ms = event.get("ping_ms")
        if isinstance(ping_ms, int | float) and not isinstance(ping_ms, bool):
            self.last_ping_ms = float(ping_ms)

    async def _on_audio(self, msg: dict[str, Any]) -> None:
        event = msg["audio_event"]
        event_id = _int(event["event_id"])
        data = base64.b64decode(_str(event["audio_base_64"]), validate=True)
        if event_id <= self._last_interrupt_id or self._muted:
            self.dropped_stale_audio += 1
            return
        pcm = ulaw_to_pcm16(data) if self.output_format.startswith("ulaw") else data
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

    async def _on_agent_response(self, msg: dict[str, Any]) -> None:
        text = _str(msg["agent_response_event"]["agent_response"]).strip()
        self._muted = False
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

    async def _on_correction(self, msg: dict[str, Any]) -> None:
        event = msg["agent_response_correction_event"]
        corrected = _str(event["corrected_agent_response"]).strip()
        if self._pending is not None:
            turn, _ = self._pending
            turn.heard = corrected
            await self._flush_pending()
        elif self._turn is not None:
            self._turn.corrected = corrected
        else:
            log.info("elevenlabs: correction for a turn already finished, ignored")

    async def _on_user_transcript(self, msg: dict[str, Any]) -> None:
        text = _str(msg["user_transcription_event"]["user_transcript"]).strip()
        self._muted = False
        if self._turn is not None:
            await self._complete(self._turn)
        await self._flush_pending()
        item_id = self._user_item or self._new_id("u")
        delta = text[len(self._user_text) :] if text.startswith(self._user_text) else text
        if self._user_item is not None:
            await self.emit(UserSpeaking(False))
        self._user_item, self._user_text = None, ""
        if text:
            self._history.append(HistoryTurn("user", text))
        await self.emit(Transcript("user", item_id, text, delta, final=True))

    async def _on_tentative(self, msg: dict[str, Any]) -> None:
        text = _str(msg["tentative_user_transcription_event"]["user_transcript"]).strip()
        if self._user_item is None:
            self._user_item, self._user_text = self._new_id("u"), ""
            await self.emit(UserSpeaking(True))
        delta = text[len(self._user_text) :] if text.startswith(self._user_text) else text
        self._user_text = text
        await self.emit(Transcript("user", self._user_item, text, delta, final=False))

    async def _on_interruption(self, msg: dict[str, Any]) -> None:
        event_id = _int(msg["interruption_event"]["event_id"])
        self._last_interrupt_id = max(self._last_interrupt_id, event_id)
        self._muted = False  # stale audio is now filtered by event_id
        turn = self._turn
        if turn is None:
            return
        self._turn = None
        turn.played_ms = int(self._ms(turn.audio_bytes))
        turn.heard = self._estimate_heard(turn, turn.played_ms)
        if turn.speaking:
            await self.emit(AssistantSpeaking(False))
        await self._flush_pending()
        # `Interrupted` waits (briefly) for the correction: the session stores the heard text it
        # carries, and the provider's correction is better than any estimate.
        self._pending = (turn, asyncio.get_running_loop().time() + self.correction_wait_s)

    async def _on_response_complete(self, msg: dict[str, Any]) -> None:
        if self._turn is not None:
            await self._complete(self._turn)

    async def _on_tool_call(self, msg: dict[str, Any]) -> None:
        call = msg["client_tool_call"]
        call_id = _str(call["tool_call_id"])
        name = str(call.get("tool_name", "unknown"))
        await self._send(
            {
                "type": "client_tool_result",
                "tool_call_id": call_id,
                "result": f"Client tool {name!r} is not available: this voxgate gateway does "
                "not run client tools.",
                "is_error": True,
            }
        )

    async def _on_error(self, msg: dict[str, Any]) -> None:
        event = msg["error_event"]
        if not isinstance(event, dict):
            raise TypeError("error_event is not an object")
        self._last_error = event
        log.warning("elevenlabs error event: %s", event)

    _handlers: dict[str, Any] = {
        "ping": _on_ping,
        "audio": _on_audio,
        "agent_response": _on_agent_response,
        "agent_response_correction": _on_correction,
        "user_transcript": _on_user_transcript,
        "tentative_user_transcript": _on_tentative,
        "interruption": _on_interruption,
        "agent_response_complete": _on_response_complete,
        "client_tool_call": _on_tool_call,
        "error": _on_error,
    }

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
            delta = (
                turn.text[len(turn.emitted) :] if turn.text.startswith(turn.emitted) else turn.text
            )
            turn.emitted = turn.text
            await self.emit(Transcript("assistant", turn.item_id, turn.text, delta, final=False))

    async def _final_transcript(self, turn: _AgentTurn, text: str) -> None:
        if not text and not turn.emitted:
            return
        delta = text[len(turn.emitted) :] if text.startswith(turn.emitted) else ""
        await self.emit(Transcript("assistant", turn.item_id, text, delta, final=True))

    async def _complete(self, turn: _AgentTurn) -> None:
        """The agent's text and audio for this turn are all here."""
        if self._turn is turn:
            self._turn = None
        if turn.speaking:
            await self.emit(AssistantSpeaking(False))
        text = turn.corrected or turn.text or ""
        await self._final_transcript(turn, text)
        if text:
            self._history.append(HistoryTurn("assistant", text))
        await self.emit(ResponseDone(turn.item_id, "completed"))

    async def _flush_pending(self) -> None:
        """Finish an interrupted turn: its final text is the correction, else the estimate."""
        if self._pending is None:
            return
        turn, _ = self._pending
        self._pending = None
        await self.emit(Interrupted(turn.item_id, turn.played_ms, heard_text=turn.heard or ""))
        await self._final_transcript(turn, turn.heard or "")
        if turn.heard:
            self._history.append(HistoryTurn("assistant", turn.heard))
        await self.emit(ResponseDone(turn.item_id, "cancelled"))

    def _deadline(self) -> float | None:
        deadlines = []
        if self._pending is not None:
            deadlines.append(self._pending[1])
        if self._turn is not None:
            deadlines.append(self._turn.last_activity + self.response_idle_s)
        return min(deadlines) if deadlines else None

    async def _on_deadline(self, now: float) -> None:
        if self._pending is not None and self._pending[1] <= now:
            await self._flush_pending()
        turn = self._turn
        if turn is not None and turn.last_activity + self.response_idle_s <= now:
            await self._complete(turn)

    async def _end_turn_on_close(self, code: int) -> None:
        """The socket is gone: close the turn in flight (its audio stops here)."""
        self._ws = None
        turn = self._turn
        self._turn = None
        await self._flush_pending()
        if turn is None:
            return
        if turn.speaking:
            await self.emit(AssistantSpeaking(False))
        # Ended by the agent: the turn stands as sent. Lost: only what arrived was heard.
        received = self._ms(turn.audio_bytes)
        text = turn.corrected or turn.text or ""
        heard = text if code == 1000 else self._estimate_heard(turn, received)
        await self._final_transcript(turn, heard)
        if heard:
            self._history.append(HistoryTurn("assistant", heard))
        await self.emit(ResponseDone(turn.item_id, "completed" if code == 1000 else "failed"))

    async def _on_closed(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
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
        what = {
            1002: "ElevenLabs ended the conversation with an error",
            1008: "ElevenLabs rejected a message and ended the conversation",
            1011: "ElevenLabs failed internally and ended the conversation",
        }.get(code, "The ElevenLabs connection was lost and could not be restored")
        sentence = f"{what}: {detail} (close {code}{', ' + str(error_type) if error_type else ''})."
        # The fatal error first and alone: a `disconnected` status ahead of it would end the
        # session as a normal close (1000) and the client would never learn why. The session
        # itself follows a fatal error with `status: disconnected`.
        self.status = "disconnected"
        await self.emit(EngineError(code_name, sentence, fatal=True))


def _history_text(history: list[HistoryTurn], limit_chars: int = 6000) -> str:
    """ElevenLabs cannot replay items, so prior turns go in as one background note."""
    lines = [f"{turn.role}: {turn.text}" for turn in history if turn.text]
    text = "\n".join(lines)
    if len(text) > limit_chars:
        text = "...\n" + text[-limit_chars:]
    return (
        "This conversation is being resumed. The earlier turns were:\n"
        + text
        + "\nContinue from there without repeating yourself."
    )


__all__ = ["FORMAT_RATES", "ElevenLabsEngine", "SignedUrlError", "fetch_signed_url"]
