"""A faithful local simulator of ElevenLabs Conversational AI: the signed-URL REST call and the
conversation WebSocket, as the official SDKs (`elevenlabs` 2.78 for Python, `@elevenlabs/client`)
and the provider's AsyncAPI contract describe them.

Why it exists: so the gateway, its tests and its users can develop and test the ElevenLabs engine
with no account and no network. It speaks the real wire format (nested `*_event` payloads,
integer increasing `event_id`s, `ping`/`pong`, `interruption` + `agent_response_correction`,
`client_tool_call`, the `error` event before a close with the documented codes), so the official
`elevenlabs` Python SDK can talk to it too.

What it does on the conversation socket:
- waits for `conversation_initiation_client_data`, checks the overrides against what the agent
  allows (a forbidden one gets an `override_error` and close 1008, like the service), answers with
  `conversation_initiation_metadata` (audio formats from the agent config);
- runs an energy VAD over `user_audio_chunk` audio (in audio time, so faster-than-real-time
  input works); at the end of an utterance it sends `tentative_user_transcript` and
  `user_transcript` (scripted, else pocketsphinx), then `agent_response` and espeak-ng speech as
  `audio` chunks in the agent's output format, paced at real time times `pace`;
- speech while the agent talks is a barge-in: `interruption`, then `agent_response_correction`
  with the text cut to the audio actually sent;
- `user_message` is a typed user turn; `contextual_update`, `user_activity`, `pong` and
  `client_tool_result` are recorded; tool calls are scripted by trigger words;
- fault modes: close mid-response with a code, malformed messages, stale in-flight audio after an
  interruption, refusing the socket.

Everything the client sent is recorded on `SimConversation` objects for tests to inspect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxgate.audio import (
    BYTES_PER_SAMPLE,
    bytes_for_ms,
    parse_wav_bytes,
    pcm16_to_ulaw,
    resample,
    rms_dbfs,
    ulaw_to_pcm16,
)
from voxgate.engines.elevenlabs.wire import FORMAT_RATES
from voxgate.turns import cut_at_word

log = logging.getLogger("voxgate.testing.elevenlabs_sim")

#: The service's documented default `client_events`.
DEFAULT_CLIENT_EVENTS = frozenset(
    {
        "conversation_initiation_metadata",
        "audio",
        "interruption",
        "agent_response",
        "user_transcript",
        "tentative_user_transcript",
        "ping",
    }
)

#: What a simulated agent sends unless configured otherwise: the defaults plus the two events an
#: agent built for a gateway would enable (corrections for heard text, client tools).
SIM_CLIENT_EVENTS = DEFAULT_CLIENT_EVENTS | {"agent_response_correction", "client_tool_call"}

#: Override paths a simulated agent allows by default (the ones the gateway uses).
DEFAULT_ALLOWED_OVERRIDES = frozenset(
    {"agent.prompt.prompt", "agent.first_message", "agent.language", "tts.voice_id"}
)


def format_rate(fmt: str) -> int:
    """Sample rate of an ElevenLabs audio format name (`pcm_44100` -> 44100)."""
    try:
        return FORMAT_RATES[fmt]
    except KeyError:
        raise ValueError(f"unknown ElevenLabs audio format {fmt!r}") from None


def encode_audio(fmt: str, pcm16: bytes) -> bytes:
    return pcm16_to_ulaw(pcm16) if fmt.startswith("ulaw") else pcm16


def decode_audio(fmt: str, data: bytes) -> bytes:
    return ulaw_to_pcm16(data) if fmt.startswith("ulaw") else data


@dataclass
class SimAgent:
    """One agent as configured on the simulated platform."""

    agent_id: str = "agent_sim"
    #: Private agents need a signed URL; public ones accept `?agent_id=` alone.
    requires_auth: bool = True
    input_format: str = "pcm_16000"
    output_format: str = "pcm_16000"
    #: Dotted override paths enabled in `platform_settings.overrides`.
    allowed_overrides: frozenset[str] = DEFAULT_ALLOWED_OVERRIDES
    client_events: frozenset[str] = SIM_CLIENT_EVENTS
    first_message: str | None = None
    #: Send `agent_response_complete` after a turn's last audio (the payload is UNVERIFIED on the
    #: real service; the sim sends `agent_response_complete_event: {event_id}`).
    send_response_complete: bool = False
    #: A user text containing the key makes the agent call that client tool before replying.
    tool_triggers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        format_rate(self.input_format)
        format_rate(self.output_format)


@dataclass
class SimFault:
    """Fault modes; mutable, so a test may switch one on while the simulator runs."""

    #: Close the socket with this code after `close_after_chunks` audio chunks of a response
    #: (an `error` event with a matching `error_type` goes first unless the code is 1000).
    close_mid_response: int | None = None
    close_after_chunks: int = 2
    #: Send a burst of malformed messages before every response.
    malformed: bool = False
    #: After an interruption, send this many in-flight `audio` chunks with stale `event_id`s.
    stale_audio_after_interrupt: int = 0
    #: Reject the conversation socket handshake (HTTP 403).
    refuse: bool = False


@dataclass
class _Turn:
    text: str
    total_bytes: int = 0
    sent_bytes: int = 0
    cancelled: bool = False
    audio_ids: list[int] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


@dataclass
class SimConversation:
    """Everything about one conversation socket, recorded for tests."""

    conversation_id: str
    agent: SimAgent
    query: dict[str, str]
    subprotocol: str | None
    init: dict[str, Any] | None = None
    #: Every parsed client message except audio chunks, in order.
    received: list[dict[str, Any]] = field(default_factory=list)
    #: Every message the simulator sent except audio (audio is summarised in `audio_event_ids`).
    sent: list[dict[str, Any]] = field(default_factory=list)
    audio_event_ids: list[int] = field(default_factory=list)
    #: User audio, decoded to PCM16 at the agent's input rate.
    audio_in: bytearray = field(default_factory=bytearray)
    audio_chunks_in: int = 0
    pongs: list[dict[str, Any]] = field(default_factory=list)
    contextual_updates: list[str] = field(default_factory=list)
    user_activity: int = 0
    user_messages: list[str] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    user_transcripts: list[str] = field(default_factory=list)
    agent_responses: list[str] = field(default_factory=list)
    corrections: list[tuple[str, str]] = field(default_factory=list)
    interruptions: list[int] = field(default_factory=list)
    #: (text, PCM16 bytes of it actually sent) for each interrupted agent turn.
    interrupted_turns: list[tuple[str, int]] = field(default_factory=list)
    close_code: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def sent_of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == kind]


class _ConnectionClosed(Exception):
    pass


class _EnergyVad:
    """Speech start after 40 ms above the threshold, end after `silence_ms` below it, in audio
    time. Deliberately simple: the simulator must be predictable for tests with synthetic speech."""

    FRAME_MS = 20

    def __init__(self, rate: int, threshold_dbfs: float, silence_ms: int, prefix_ms: int = 200):
        self.rate = rate
        self.threshold = threshold_dbfs
        self.frame_bytes = bytes_for_ms(self.FRAME_MS, rate)
        self.silence_frames = max(1, silence_ms // self.FRAME_MS)
        self.prefix_frames = max(0, prefix_ms // self.FRAME_MS)
        self._pending = b""
        self._history: list[bytes] = []
        self.in_speech = False
        self._voiced_run = 0
        self._silent_run = 0
        self.utterance = bytearray()

    def feed(self, pcm: bytes) -> list[str]:
        """Returns the transitions seen: "start" and/or "end"."""
        out: list[str] = []
        data = self._pending + pcm
        n = len(data) - len(data) % self.frame_bytes
        self._pending = data[n:]
        for i in range(0, n, self.frame_bytes):
            frame = data[i : i + self.frame_bytes]
            voiced = rms_dbfs(frame) > self.threshold
            if not self.in_speech:
                self._history.append(frame)
                if len(self._history) > self.prefix_frames + 2:
                    self._history.pop(0)
                self._voiced_run = self._voiced_run + 1 if voiced else 0
                if self._voiced_run >= 2:
                    self.in_speech = True
                    self._silent_run = 0
                    self.utterance = bytearray(b"".join(self._history))
                    self._history.clear()
                    out.append("start")
            else:
                self.utterance += frame
                self._silent_run = 0 if voiced else self._silent_run + 1
                if self._silent_run >= self.silence_frames:
                    self.in_speech = False
                    self._voiced_run = 0
                    out.append("end")
        return out

    def force_end(self) -> bool:
        if not self.in_speech:
            return False
        self.in_speech = False
        self._voiced_run = 0
        return True


class _InLoopServer(uvicorn.Server):
    """uvicorn inside someone else's loop (tests): the process's signal handlers stay alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ElevenLabsSim:
    """The simulator; an async context manager serving on 127.0.0.1 (port 0 by default) in the
    caller's event loop.

    `reply` turns a user text into the agent's answer (default: "You said: <text>.");
    `transcripts` scripts what the ASR "heard" for successive spoken turns (else pocketsphinx).
    """

    def __init__(
        self,
        *,
        api_key: str = "sim-xi-key",
        agents: Sequence[SimAgent] | None = None,
        pace: float = 1.0,
        ping_interval_s: float = 20.0,
        chunk_ms: int = 100,
        vad_threshold_dbfs: float = -45.0,
        silence_ms: int = 500,
        turn_timeout_s: float | None = None,
        transcripts: Sequence[str] | None = None,
        transcript: str | None = None,
        reply: Callable[[str], str] | None = None,
        signed_url_ttl_s: float = 900.0,
        init_timeout_s: float = 10.0,
        tool_result_timeout_s: float = 5.0,
        voice: str = "en-us",
        espeak_bin: str = "espeak-ng",
        host: str = "127.0.0.1",
        port: int = 0,
        fault: SimFault | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.api_key = api_key
        #: True only for the CLI: uvicorn then owns SIGINT/SIGTERM and `serve_forever` returns.
        self.handle_signals = handle_signals
        self.agents: dict[str, SimAgent] = {a.agent_id: a for a in (agents or [SimAgent()])}
        self.pace = pace
        self.ping_interval_s = ping_interval_s
        self.chunk_ms = chunk_ms
        self.vad_threshold_dbfs = vad_threshold_dbfs
        self.silence_ms = silence_ms
        #: Wall time without audio that ends an utterance in progress (default: silence_ms).
        self.turn_timeout_s = turn_timeout_s if turn_timeout_s is not None else silence_ms / 1000
        self.transcripts: list[str] = list(transcripts or [])
        #: What every further utterance is heard as once `transcripts` is used up (else
        #: pocketsphinx recognises the audio).
        self.transcript = transcript
        self.reply = reply or (lambda text: f"You said: {text}.")
        self.signed_url_ttl_s = signed_url_ttl_s
        self.init_timeout_s = init_timeout_s
        self.tool_result_timeout_s = tool_result_timeout_s
        self.voice = voice
        self.espeak_bin = espeak_bin
        self.host = host
        self.port = port
        self.fault = fault or SimFault()
        self.conversations: list[SimConversation] = []
        #: REST calls seen: (path, agent_id, status code). Never the key itself.
        self.rest_calls: list[tuple[str, str | None, int]] = []
        self._signatures: dict[str, tuple[str, float]] = {}
        self._speech_cache: dict[tuple[str, int], bytes] = {}
        self._decoder: Any = None
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._sockets: set[WebSocket] = set()
        self.app = Starlette(
            routes=[
                Route("/v1/convai/conversation/get-signed-url", self._get_signed_url),
                WebSocketRoute("/v1/convai/conversation", self._conversation_socket),
            ]
        )

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/convai/conversation"

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
            ws_max_size=16 * 1024 * 1024,
            timeout_graceful_shutdown=2,
        )
        self._server = (uvicorn.Server if self.handle_signals else _InLoopServer)(config)
        self._serve_task = asyncio.create_task(self._server.serve(), name="elevenlabs-sim")
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("the ElevenLabs simulator failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError("the ElevenLabs simulator did not start within 10 s")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, reason="simulator shutting down")
        if self._server is not None:
            self._server.should_exit = True
        if self._serve_task is not None:
            try:
                await asyncio.wait_for(self._serve_task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._serve_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._serve_task
            self._serve_task = None

    async def serve_forever(self) -> None:
        """Until the server exits (SIGINT/SIGTERM with `handle_signals`)."""
        if self._serve_task is not None:
            await asyncio.shield(self._serve_task)

    async def __aenter__(self) -> ElevenLabsSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_conversation(self, timeout: float = 10.0) -> SimConversation:
        """The newest conversation that got its init message (waits for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for conv in reversed(self.conversations):
                if conv.init is not None:
                    return conv
            await asyncio.sleep(0.02)
        raise TimeoutError("no conversation reached the simulator")

    # --- REST ---------------------------------------------------------------------------------
    async def _get_signed_url(self, request: Request) -> JSONResponse:
        agent_id = request.query_params.get("agent_id")
        path = request.url.path
        if request.headers.get("xi-api-key") != self.api_key:
            self.rest_calls.append((path, agent_id, 401))
            return JSONResponse(
                {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
                status_code=401,
            )
        if not agent_id or agent_id not in self.agents:
            self.rest_calls.append((path, agent_id, 404))
            return JSONResponse(
                {
                    "detail": {
                        "status": "agent_not_found",
                        "message": f"Agent with id {agent_id!r} not found",
                    }
                },
                status_code=404,
            )
        signature = secrets.token_urlsafe(24)
        self._signatures[signature] = (agent_id, time.monotonic() + self.signed_url_ttl_s)
        query = urlencode({"agent_id": agent_id, "conversation_signature": signature})
        self.rest_calls.append((path, agent_id, 200))
        return JSONResponse({"signed_url": f"{self.ws_url}?{query}"})

    # --- the conversation socket --------------------------------------------------------------
    async def _conversation_socket(self, websocket: WebSocket) -> None:
        if self.fault.refuse:
            await websocket.close(code=1013)  # before accept: the handshake fails with HTTP 403
            return
        query = dict(websocket.query_params)
        offered = websocket.scope.get("subprotocols") or []
        subprotocol = "convai" if "convai" in offered else None
        await websocket.accept(subprotocol=subprotocol)
        self._sockets.add(websocket)
        agent_id = query.get("agent_id", "")
        agent = self.agents.get(agent_id)
        conv = SimConversation(
            conversation_id="conv_" + secrets.token_hex(8),
            agent=agent or SimAgent(agent_id=agent_id),
            query=query,
            subprotocol=subprotocol,
        )
        self.conversations.append(conv)
        session = _SimSession(self, websocket, conv)
        try:
            if agent is None:
                await session.fail(1008, "invalid_message", f"Agent {agent_id!r} does not exist.")
                return
            if agent.requires_auth and not self._signature_ok(query, agent_id):
                await session.fail(
                    1008,
                    "invalid_message",
                    "This agent requires authentication: connect with a valid, unexpired "
                    "signed URL.",
                )
                return
            await session.run()
        finally:
            self._sockets.discard(websocket)
            conv.ended.set()

    def _signature_ok(self, query: dict[str, str], agent_id: str) -> bool:
        entry = self._signatures.get(query.get("conversation_signature", ""))
        return entry is not None and entry[0] == agent_id and entry[1] > time.monotonic()

    # --- speech ---------------------------------------------------------------------------------
    async def synthesize(self, text: str, rate: int) -> bytes:
        """espeak-ng speech as PCM16 at `rate` (cached: tests repeat their phrases)."""
        key = (text, rate)
        if key not in self._speech_cache:
            proc = await asyncio.create_subprocess_exec(
                self.espeak_bin,
                "--stdout",
                "-v",
                self.voice,
                text,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            raw, _ = await asyncio.wait_for(proc.communicate(), 30)
            pcm, src_rate = parse_wav_bytes(raw)
            self._speech_cache[key] = resample(pcm, src_rate, rate)
        return self._speech_cache[key]

    async def transcribe(self, pcm16: bytes, rate: int) -> str:
        """Scripted transcript if one is queued (or fixed), else pocketsphinx on the utterance."""
        if self.transcripts:
            return self.transcripts.pop(0)
        if self.transcript is not None:
            return self.transcript
        audio = resample(pcm16, rate, 16000)
        return await asyncio.get_running_loop().run_in_executor(None, self._sphinx, audio)

    def _sphinx(self, pcm16_16k: bytes) -> str:
        if self._decoder is None:
            from pocketsphinx import Decoder

            self._decoder = Decoder(samprate=16000, loglevel="FATAL")
        decoder = self._decoder
        decoder.start_utt()
        decoder.process_raw(pcm16_16k, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


_ERROR_TYPES = {
    1000: "max_duration_exceeded",
    1002: "llm_error",
    1008: "invalid_message",
    1011: "unknown_websocket_crash",
}

#: What the `malformed` fault sends: each is something a robust client must log and skip.
MALFORMED_MESSAGES: tuple[str | bytes, ...] = (
    "this is not json",
    "[1, 2, 3]",
    '{"no_type": true}',
    '{"type": "audio"}',
    '{"type": "audio", "audio_event": {"audio_base_64": "%%%not-base64%%%", "event_id": 1}}',
    '{"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": "seven"}}',
    '{"type": "agent_response", "agent_response_event": {}}',
    '{"type": "user_transcript", "user_transcription_event": null}',
    '{"type": "ping", "ping_event": {"event_id": "x"}}',
    '{"type": "interruption", "interruption_event": {"event_id": null}}',
    '{"type": "a_type_from_the_future", "future_event": {"x": 1}}',
    b"\x00\x01binary frame",
)


class _SimSession:
    """One conversation socket: a reader task, a ping task, and responder tasks."""

    def __init__(self, sim: ElevenLabsSim, ws: WebSocket, conv: SimConversation) -> None:
        self.sim = sim
        self.ws = ws
        self.conv = conv
        self.agent = conv.agent
        self.in_rate = format_rate(self.agent.input_format)
        self.out_rate = format_rate(self.agent.output_format)
        self._lock = asyncio.Lock()
        self._event_id = 0
        self._closed = False
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(1000)
        self._turn: _Turn | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ping_sent: dict[int, float] = {}
        self._last_rtt_ms: int | None = None
        self._tool_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events = self.agent.client_events
        self._vad = _EnergyVad(self.in_rate, sim.vad_threshold_dbfs, sim.silence_ms)
        self.text_only = False

    def next_id(self) -> int:
        self._event_id += 1
        return self._event_id

    # --- sending ------------------------------------------------------------------------------
    async def _send_raw(self, data: str | bytes) -> None:
        if self._closed:
            raise _ConnectionClosed
        try:
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(data)
        except Exception as exc:  # the client went away mid-send
            self._closed = True
            raise _ConnectionClosed from exc

    async def send(self, message: dict[str, Any], *, record: bool = True) -> None:
        kind = message.get("type")
        if kind not in self._events and kind not in ("error", "agent_response_complete"):
            return  # not enabled on this agent: the service would not send it
        async with self._lock:
            await self._send_raw(json.dumps(message))
        if record:
            self.conv.sent.append(message)

    async def close(self, code: int, reason: str = "") -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            self.conv.close_code = code
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, reason=reason)

    async def fail(self, code: int, error_type: str, message: str) -> None:
        """The service's way to end a conversation on an error: an `error` event, then close."""
        with contextlib.suppress(_ConnectionClosed):
            await self.send(
                {
                    "type": "error",
                    "error_event": {"code": code, "error_type": error_type, "message": message},
                }
            )
        # A close frame holds 123 bytes of reason: cut on a character boundary.
        await self.close(code, message.encode()[:123].decode("utf-8", errors="ignore"))

    # --- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        reader = asyncio.create_task(self._reader(), name="el-sim-reader")
        try:
            await self._conversation()
        except _ConnectionClosed:
            pass
        finally:
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()
            for task in [reader, *self._tasks]:
                with contextlib.suppress(BaseException):
                    await task
            await self.close(1000, "")

    async def _reader(self) -> None:
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    self.conv.close_code = self.conv.close_code or msg.get("code")
                    break
                text = msg.get("text")
                if text is None:
                    await self._inbox.put({"__invalid__": "binary frame"})
                    continue
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = {"__invalid__": "not JSON"}
                if not isinstance(parsed, dict):
                    parsed = {"__invalid__": "not a JSON object"}
                await self._inbox.put(parsed)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self._closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(None)

    async def _next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next client message; None when the socket is gone. TimeoutError on `timeout`."""
        msg = await asyncio.wait_for(self._inbox.get(), timeout)
        if msg is None:
            raise _ConnectionClosed
        return msg

    async def _conversation(self) -> None:
        conv = self.conv
        # 1. the init message comes first (audio sent before it is dropped, as no format is set up)
        try:
            while True:
                msg = await self._next(self.sim.init_timeout_s)
                assert msg is not None
                if msg.get("type") == "conversation_initiation_client_data":
                    break
                conv.received.append(msg)
        except TimeoutError:
            await self.fail(
                1008, "invalid_message", "No conversation_initiation_client_data received."
            )
            return
        conv.init = msg
        conv.received.append(msg)
        override = msg.get("conversation_config_override") or {}
        if not isinstance(override, dict):
            await self.fail(
                1008, "invalid_message", "conversation_config_override must be an object."
            )
            return
        forbidden = [
            p
            for p in _leaf_paths(override)
            if p not in self.agent.allowed_overrides and p != "text_only"
        ]
        if forbidden:
            await self.fail(
                1008,
                "override_error",
                f"Override for field '{forbidden[0]}' is not allowed by config.",
            )
            return
        events_override = (override.get("conversation") or {}).get("client_events")
        if isinstance(events_override, list):
            self._events = frozenset(events_override) | {"conversation_initiation_metadata"}
        self.text_only = bool(
            override.get("text_only") or (override.get("conversation") or {}).get("text_only")
        )
        await self.send(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": conv.conversation_id,
                    "agent_output_audio_format": self.agent.output_format,
                    "user_input_audio_format": self.agent.input_format,
                },
            }
        )
        self._spawn(self._pinger())
        first = (override.get("agent") or {}).get("first_message") or self.agent.first_message
        if first:
            self._start_turn(first)
        # 2. the conversation proper
        while True:
            try:
                msg = await self._next(self.sim.turn_timeout_s if self._vad.in_speech else None)
            except TimeoutError:
                # The client stopped sending audio mid-utterance: end the turn on wall time.
                if self._vad.force_end():
                    await self._user_turn_ended()
                continue
            assert msg is not None
            await self._handle(msg)

    async def _handle(self, msg: dict[str, Any]) -> None:
        conv = self.conv
        if "__invalid__" in msg:
            conv.received.append(msg)
            await self.fail(1008, "invalid_message", f"Invalid message: {msg['__invalid__']}.")
            raise _ConnectionClosed
        if "user_audio_chunk" in msg and "type" not in msg:
            try:
                data = base64.b64decode(msg["user_audio_chunk"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                await self.fail(1008, "invalid_message", "user_audio_chunk is not valid base64.")
                raise _ConnectionClosed from None
            pcm = decode_audio(self.agent.input_format, data)
            pcm = pcm[: len(pcm) - len(pcm) % BYTES_PER_SAMPLE]
            conv.audio_in += pcm
            conv.audio_chunks_in += 1
            for transition in self._vad.feed(pcm):
                if transition == "start":
                    await self._user_started_speaking()
                else:
                    await self._user_turn_ended()
            return
        conv.received.append(msg)
        kind = msg.get("type")
        if kind == "pong":
            event_id = msg.get("event_id")
            sent_at = self._ping_sent.pop(event_id, None) if isinstance(event_id, int) else None
            rtt = None if sent_at is None else int((time.monotonic() - sent_at) * 1000)
            if rtt is not None:
                self._last_rtt_ms = max(1, rtt)
            conv.pongs.append({"event_id": event_id, "rtt_ms": rtt})
        elif kind == "user_message":
            text = msg.get("text")
            if isinstance(text, str) and text.strip():
                conv.user_messages.append(text)
                await self._interrupt_turn()
                self._spawn(self._respond(text))
        elif kind == "contextual_update":
            conv.contextual_updates.append(str(msg.get("text", "")))
        elif kind == "user_activity":
            conv.user_activity += 1
        elif kind == "client_tool_result":
            conv.tool_results.append(msg)
            waiter = self._tool_waiters.pop(str(msg.get("tool_call_id")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
        elif kind in (
            "feedback",
            "conversation_initiation_client_data",
            "mcp_tool_approval_result",
            "multimodal_message",
        ):
            pass  # recorded above
        else:
            await self.fail(1008, "invalid_message", f"Unknown message type {kind!r}.")
            raise _ConnectionClosed

    # --- turns ----------------------------------------------------------------------------------
    async def _user_started_speaking(self) -> None:
        if self._turn is not None and self._turn.sent_bytes > 0:
            await self._interrupt_turn()

    async def _user_turn_ended(self) -> None:
        utterance = bytes(self._vad.utterance)
        self._vad.utterance = bytearray()
        text = (await self.sim.transcribe(utterance, self.in_rate)).strip()
        if not text:
            return
        words = text.split()
        if len(words) > 1:
            await self.send(
                {
                    "type": "tentative_user_transcript",
                    "tentative_user_transcription_event": {
                        "user_transcript": " ".join(words[: len(words) // 2]),
                        "event_id": self.next_id(),
                    },
                }
            )
        self.conv.user_transcripts.append(text)
        await self.send(
            {
                "type": "user_transcript",
                "user_transcription_event": {"user_transcript": text, "event_id": self.next_id()},
            }
        )
        await self._interrupt_turn()
        self._spawn(self._respond(text))

    async def _interrupt_turn(self) -> None:
        """Barge-in: stop the agent's turn, tell the client, then correct the text."""
        turn = self._turn
        if turn is None:
            return
        self._turn = None
        async with self._lock:
            turn.cancelled = True
        if turn.task is not None and turn.task is not asyncio.current_task():
            turn.task.cancel()
        if turn.sent_bytes == 0 and not turn.audio_ids:
            return
        interruption_id = self.next_id()
        self.conv.interruptions.append(interruption_id)
        self.conv.interrupted_turns.append((turn.text, turn.sent_bytes))
        await self.send(
            {"type": "interruption", "interruption_event": {"event_id": interruption_id}}
        )
        stale = self.sim.fault.stale_audio_after_interrupt
        if stale and turn.audio_ids:
            silence = encode_audio(self.agent.output_format, b"\x00\x00" * (self.out_rate // 10))
            for _ in range(stale):
                await self._send_audio_event(silence, turn.audio_ids[-1])
        fraction = turn.sent_bytes / turn.total_bytes if turn.total_bytes else 1.0
        corrected = cut_at_word(turn.text, fraction)
        if corrected != turn.text:
            self.conv.corrections.append((turn.text, corrected))
            await self.send(
                {
                    "type": "agent_response_correction",
                    "agent_response_correction_event": {
                        "original_agent_response": turn.text,
                        "corrected_agent_response": corrected,
                        "event_id": interruption_id,
                    },
                }
            )

    def _start_turn(self, text: str) -> None:
        self._spawn(self._speak(text))

    async def _respond(self, user_text: str) -> None:
        reply_text = self.sim.reply(user_text)
        for trigger, (tool_name, parameters) in self.agent.tool_triggers.items():
            if trigger.lower() in user_text.lower():
                result = await self._call_tool(tool_name, parameters)
                if result is None:
                    reply_text = f"The {tool_name} tool did not answer."
                elif result.get("is_error"):
                    reply_text = f"The {tool_name} tool failed: {result.get('result')}"
                else:
                    reply_text = f"The {tool_name} tool says: {result.get('result')}"
                break
        await self._speak(reply_text)

    async def _call_tool(self, name: str, parameters: dict[str, Any]) -> dict[str, Any] | None:
        call_id = "toolu_" + secrets.token_hex(6)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._tool_waiters[call_id] = waiter
        await self.send(
            {
                "type": "client_tool_call",
                "client_tool_call": {
                    "tool_name": name,
                    "tool_call_id": call_id,
                    "parameters": parameters,
                    "event_id": self.next_id(),
                },
            }
        )
        try:
            return await asyncio.wait_for(waiter, self.sim.tool_result_timeout_s)
        except TimeoutError:
            return None
        finally:
            self._tool_waiters.pop(call_id, None)

    async def _speak(self, text: str) -> None:
        """One agent turn: `agent_response`, then paced `audio` chunks (or a fault)."""
        turn = _Turn(text=text, task=asyncio.current_task())  # type: ignore[arg-type]
        self._turn = turn
        fault = self.sim.fault
        try:
            if fault.malformed:
                for bad in MALFORMED_MESSAGES:
                    async with self._lock:
                        await self._send_raw(bad)
            pcm = b"" if self.text_only else await self.sim.synthesize(text, self.out_rate)
            turn.total_bytes = len(pcm)
            self.conv.agent_responses.append(text)
            await self.send(
                {
                    "type": "agent_response",
                    "agent_response_event": {"agent_response": text, "event_id": self.next_id()},
                }
            )
            step = bytes_for_ms(self.sim.chunk_ms, self.out_rate)
            delay = self.sim.chunk_ms / 1000.0 / max(self.sim.pace, 0.01)
            for index, start in enumerate(range(0, len(pcm), step)):
                if fault.close_mid_response is not None and index == fault.close_after_chunks:
                    code = fault.close_mid_response
                    if code == 1000:
                        await self.close(1000, "Conversation ended")
                    else:
                        await self.fail(
                            code,
                            _ERROR_TYPES.get(code, "unknown"),
                            "Simulated failure in the middle of a response.",
                        )
                    raise _ConnectionClosed
                chunk = pcm[start : start + step]
                event_id = self.next_id()
                async with self._lock:
                    if turn.cancelled:
                        return
                    turn.audio_ids.append(event_id)
                    turn.sent_bytes += len(chunk)
                    await self._send_audio_locked(
                        encode_audio(self.agent.output_format, chunk), event_id
                    )
                await asyncio.sleep(delay)
            if self.agent.send_response_complete and not turn.cancelled:
                await self.send(
                    {
                        "type": "agent_response_complete",
                        "agent_response_complete_event": {"event_id": self.next_id()},
                    }
                )
        finally:
            if self._turn is turn and not turn.cancelled:
                self._turn = None

    async def _send_audio_event(self, data: bytes, event_id: int) -> None:
        async with self._lock:
            await self._send_audio_locked(data, event_id)

    async def _send_audio_locked(self, data: bytes, event_id: int) -> None:
        if "audio" not in self._events:
            return
        self.conv.audio_event_ids.append(event_id)
        await self._send_raw(
            json.dumps(
                {
                    "type": "audio",
                    "audio_event": {
                        "audio_base_64": base64.b64encode(data).decode("ascii"),
                        "event_id": event_id,
                    },
                }
            )
        )

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(self.sim.ping_interval_s)
            event_id = self.next_id()
            self._ping_sent[event_id] = time.monotonic()
            await self.send(
                {"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": self._last_rtt_ms}}
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Any) -> None:
        """A failing turn or a fault closes the socket instead of dying silently."""
        try:
            await coro
        except (_ConnectionClosed, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("simulator turn failed")
            await self.fail(1011, "unknown_websocket_crash", "Simulator internal error.")
        if self._closed:
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(None)


def _leaf_paths(obj: dict[str, Any], prefix: str = "") -> list[str]:
    paths: list[str] = []
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths.extend(_leaf_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def run_elevenlabs_sim(
    host: str = "127.0.0.1",
    port: int = 8765,
    api_key: str = "sim-xi-key",
    agent_id: str = "agent_sim",
    pace: float = 1.0,
    *,
    public: bool = False,
    input_format: str = "pcm_16000",
    output_format: str = "pcm_16000",
    first_message: str | None = None,
    ping_interval_s: float = 20.0,
    transcript: str | None = None,
    on_ready: Callable[[ElevenLabsSim], None] | None = None,
) -> None:
    """Run the simulator until interrupted (the `voxgate simulate elevenlabs` command).

    Point voxgate at it with `VOXGATE_ELEVENLABS_API_BASE=<api_base>`,
    `VOXGATE_ELEVENLABS_URL=<ws_url>`, `VOXGATE_ELEVENLABS_AGENT_ID=<agent_id>` and (for a private
    agent) `ELEVENLABS_API_KEY=<api_key>`.
    """
    agent = SimAgent(
        agent_id=agent_id,
        requires_auth=not public,
        input_format=input_format,
        output_format=output_format,
        first_message=first_message,
    )

    async def main() -> None:
        async with ElevenLabsSim(
            api_key=api_key,
            agents=[agent],
            pace=pace,
            host=host,
            port=port,
            ping_interval_s=ping_interval_s,
            transcript=transcript,
            handle_signals=True,
        ) as sim:
            if on_ready is not None:
                on_ready(sim)
            else:
                print(f"ElevenLabs simulator: REST {sim.api_base}  socket {sim.ws_url}", flush=True)
                print(f"  agent {agent_id} ({'public' if public else 'private'})", flush=True)
            await sim.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


__all__ = [
    "DEFAULT_CLIENT_EVENTS",
    "MALFORMED_MESSAGES",
    "ElevenLabsSim",
    "SimAgent",
    "SimConversation",
    "SimFault",
    "decode_audio",
    "encode_audio",
    "format_rate",
    "run_elevenlabs_sim",
]
