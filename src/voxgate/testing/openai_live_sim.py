"""A protocol-faithful simulator of OpenAI **GPT-Live** (`/v1/live/sessions`, WebSocket).

Why it exists: the `openai-live` engine, the gateway's compatible endpoint and user code must be
testable offline, against something that behaves like the real service where it matters, and
that the official `openai` SDK (`client.live.connect()`) talks to unchanged. Every event it emits
validates against the SDK's `ServerEvent` models (tested).

What it models, and how:

- **The session timeline is the input audio.** GPT-Live's clock only advances while input audio
  flows, so here every appended chunk of N ms moves the timeline N ms and produces exactly N ms
  of output audio: speech while the model talks, digital silence otherwise. A client that
  streams at real time hears real time; a test that streams faster gets the whole conversation
  faster (a fast-forwardable clock, with no wall-clock sleeps anywhere in the model).
- **Turns belong to the model.** An energy detector on the input finds the user's utterances;
  each is transcribed (scripted, or pocketsphinx) and answered after a short latency. Talking
  over the model makes it yield a moment later (`yield_ms`). There are no items, no turn or done
  events: transcripts arrive as timed fragments on a 200 ms grid with leading spaces.
- **Appends are placed on the timeline.** `…instructions/thinking/commentary.append` are acked
  with `start_ms`/`end_ms` when timeline audio next advances; without audio they stay pending
  and a close reports `context_injection_incomplete`. Commentary is spoken; thinking and
  instructions are silent context.
- **Client delegation.** When the user says one of the `delegate_on` phrases the model emits
  `session.delegation.created` (no task text), says a short acknowledgement, and speaks the
  commentary appended with that `delegation_id`.
- **Responses delegation.** A session started with `delegation: {type: "responses"}` (checked
  like the strict service: unknown fields are refused, the type is immutable) calls its
  function tools when the user's words match one of the `tool_triggers`: it emits
  `session.delegation.created{target: "responses", response_id}`, says a short
  acknowledgement, and streams the backend's `response.created`, one
  `response.output_item.done` per `function_call` and `response.completed` as `response.event`s.
  `response.item.create` answers a call (an unknown call id is refused); `response.create`
  before every open call has an output is refused with `function_call_outputs_required`;
  after it the backend streams its text (`tool_answer` of the outputs) and the voice model
  says it. `response.*` in client mode is refused.
- **Usage** is cumulative whole seconds of timeline, every `usage_interval_s`; `session.close`
  answers with the final usage in `session.closed{reason:"close_requested"}`, then close 1000.
- **Faults on request** (`SimFaults`): refused handshakes, revoked keys, an admission `error`
  after the upgrade, a TCP drop or close code mid-answer, a dead socket, and `end_sessions` /
  `drop_connections` / `inject_error` for the test in charge.

Where the real service is unverified (the error for a first frame that is not `session.start`,
the no-audio expiry, exact error codes for some refusals) the choice is marked UNVERIFIED.

Usage::

    async with OpenAILiveSimulator(keys={"sk-test"}) as sim:
        client = AsyncOpenAI(api_key="sk-test", base_url=sim.base_url)
        async with client.live.connect() as conn: ...
        sim.connections[-1].received  # every client event, in order

`run_openai_live_sim(...)` runs one blocking (the `voxgate simulate openai-live` CLI).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxgate.audio import StreamResampler, pcm16_to_ulaw, resample, ulaw_to_pcm16
from voxgate.testing.openai_sim import SimulatorServer, pocketsphinx_transcriber
from voxgate.testing.speech import synthesize
from voxgate.testing.tooling import ToolTrigger, tool_answer, triggered_calls

log = logging.getLogger("voxgate.testing.openai_live_sim")

RATE = 24000
BYTES_PER_MS = 48  # PCM16 mono @ 24 kHz, the simulator's internal format
FRAME_MS = 10
GRID_MS = 200  # transcript fragments
MODELS = ("gpt-live-1", "gpt-live-1.1")
VOICES = {
    "alloy", "ash", "ballad", "beacon", "bossa", "cedar", "cinder", "coral", "delta", "echo",
    "gleam", "marin", "meridian", "quartz", "ripple", "sage", "shida", "shimmer", "stone",
    "tempo", "verse", "vesper", "willow",
}  # fmt: skip
SESSION_KEYS = {
    "model", "instructions", "audio", "delegation", "input", "store", "safety_identifier",
    "triggers", "client",
}  # fmt: skip
UPDATABLE_KEYS = {"delegation", "triggers"}
APPEND_TYPES = {
    "session.instructions.append": ("instructions", "session.instructions.appended"),
    "session.thinking.append": ("thinking", "session.thinking.appended"),
    "session.commentary.append": ("commentary", "session.commentary.appended"),
}
CLIENT_EVENT_TYPES = {
    "session.start", "session.update", "session.close", "session.input_audio.append",
    "session.input_audio.mute", "session.input_audio.unmute", "session.output_audio.fixture.play",
    "response.item.create", "response.create", "decision.create", "decision.item.create",
    "decision.item.delete", "transport.dtmf.send", *APPEND_TYPES,
}  # fmt: skip
#: Roughly 500 tokens, the limit of one append.
MAX_APPEND_CHARS = 2000

#: Responder: the conversation so far (`{"role", "text"}`; roles `user`, `assistant`,
#: `developer`, `thinking`, `commentary`) -> what the model says next.
Responder = Callable[[list[dict[str, str]]], str]
#: Transcriber: user audio (24 kHz PCM16) -> text.
Transcriber = Callable[[bytes], str]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def error_event(
    code: str,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    client_event_id: str | None = None,
) -> dict[str, Any]:
    """An `error` server event with GPT-Live's shape (`error{type, code, message, param,
    client_event_id}`); `client_event_id` is echoed on the event too."""
    event: dict[str, Any] = {
        "type": "error",
        "event_id": _id("event"),
        "error": {"type": type_, "code": code, "message": message, "param": param},
    }
    if client_event_id is not None:
        event["error"]["client_event_id"] = client_event_id
        event["client_event_id"] = client_event_id
    return event


def default_responder(items: list[dict[str, str]]) -> str:
    """Deterministic replies: a user utterance gets "You said: …"; commentary is said as
    given ("in the model's own words"), except that commentary ending in a quotation (how
    voxgate passes typed messages) is answered like the quoted words."""
    for item in reversed(items):
        if item["role"] == "commentary":
            quoted = _QUOTED.search(item["text"])
            return f"You said: {quoted.group(1).strip()}." if quoted else item["text"]
        if item["role"] == "user":
            return f"You said: {item['text'].strip()}."
    return "Hello! How can I help you today?"


_QUOTED = re.compile(r'"([^"]+)"\s*$')


# --- audio formats ----------------------------------------------------------------------------


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int32)


_ALAW_TO_PCM = _alaw_table()
_ALAW_ORDER = np.argsort(_ALAW_TO_PCM)
_ALAW_SORTED = _ALAW_TO_PCM[_ALAW_ORDER]


def _alaw_decode(data: bytes) -> bytes:
    return _ALAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def _alaw_encode(pcm: bytes) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    i = np.clip(np.searchsorted(_ALAW_SORTED, x), 1, 255)
    nearer = np.where(np.abs(_ALAW_SORTED[i - 1] - x) <= np.abs(_ALAW_SORTED[i] - x), i - 1, i)
    return _ALAW_ORDER[nearer].astype(np.uint8).tobytes()


class AudioCodec:
    """The session's one audio format, both ways, to and from the simulator's 24 kHz PCM16."""

    def __init__(self, kind: str, rate: int) -> None:
        self.kind = kind
        self.rate = rate
        self.in_bytes_per_ms = rate // 1000 * (2 if kind == "audio/pcm" else 1)
        self._out = StreamResampler(RATE, rate) if rate != RATE else None

    def decode(self, data: bytes) -> bytes:
        if self.kind == "audio/pcmu":
            data = ulaw_to_pcm16(data)
        elif self.kind == "audio/pcma":
            data = _alaw_decode(data)
        else:
            data = data[: len(data) - len(data) % 2]
        return resample(data, self.rate, RATE) if self.rate != RATE else data

    def encode(self, pcm24: bytes) -> bytes:
        pcm = self._out.process(pcm24) if self._out is not None else pcm24
        if self.kind == "audio/pcmu":
            return pcm16_to_ulaw(pcm)
        if self.kind == "audio/pcma":
            return _alaw_encode(pcm)
        return pcm


def format_problem(fmt: Any) -> tuple[str, str] | None:
    """(message, param suffix) for an `audio.format` the service refuses, or None."""
    if not isinstance(fmt, dict):
        return "Invalid type for 'session.audio.format': expected an object.", "format"
    kind, rate = fmt.get("type"), fmt.get("rate")
    if kind == "audio/pcm":
        if rate not in (16000, 24000):
            return (
                "Invalid 'session.audio.format.rate': audio/pcm supports 16000 or 24000.",
                "format.rate",
            )
        return None
    if kind in ("audio/pcmu", "audio/pcma"):
        if rate != 8000:
            return f"Invalid 'session.audio.format.rate': {kind} uses 8000.", "format.rate"
        return None
    return (
        f"Invalid value: {kind!r}. Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'.",
        "format.type",
    )


# --- configuration and records ----------------------------------------------------------------


@dataclass
class SimFaults:
    """Misbehaviour on request; every field can be changed while the simulator runs."""

    #: Refuse every handshake with this HTTP status (e.g. 503).
    refuse_status: int | None = None
    #: Refuse only the next N handshakes (with `refuse_status` or 503), then accept again.
    refuse_next: int = 0
    #: Reject every key with 401, as if the key had been revoked.
    invalid_key: bool = False
    #: Accept the upgrade, then send an `error` with this code (e.g. `insufficient_quota`) and
    #: close: admission errors arrive after a successful upgrade, not as HTTP statuses.
    admission_error: str | None = None
    #: Drop the socket after this many voiced output deltas of an answer: a close code, or 0 for
    #: an abrupt TCP close without a close frame.
    drop_mid_answer: int | None = None
    drop_after_deltas: int = 3
    #: Fire `drop_mid_answer` once, then clear it.
    drop_once: bool = True
    #: The Responses backend fails after making its function calls (`response.failed`): their
    #: outputs are then refused, as GPT-Live refuses a failed response's.
    backend_fails: bool = False
    #: Stop answering pings and stop sending events (a dead upstream).
    blackhole: bool = False
    #: End sessions after this much timeline with `session.closed{reason:"expired"}`.
    session_max_s: float | None = None

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if not hasattr(self, key):
                raise KeyError(key)
            setattr(self, key, value)


@dataclass
class LiveConnection:
    """What one connection attempt looked like, for tests to assert on."""

    path: str
    headers: dict[str, str]
    subprotocols: list[str]
    accepted: bool = False
    rejected_status: int | None = None
    received: list[Any] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    #: The session snapshot once started.
    session: dict[str, Any] = field(default_factory=dict)
    #: The timeline, in ms (advanced by input audio only).
    timeline_ms: int = 0
    closed_reason: str | None = None
    #: What the model heard and said, in order (`{"role", "text"}`).
    history: list[dict[str, str]] = field(default_factory=list)

    def received_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.received if isinstance(e, dict)]

    def sent_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.sent]


@dataclass
class _Utterance:
    """Something the model says: its audio, and its words placed along that audio."""

    text: str
    pcm: bytes
    #: Silence before it starts (response latency, the gap after the previous utterance).
    wait: int = 0
    pos: int = 0
    words: deque[tuple[int, str]] = field(default_factory=deque)  # (byte offset, word)
    started_ms: int | None = None  # timeline position of its first byte
    said: list[str] = field(default_factory=list)
    stop_at: int | None = None  # the model yields here (talked over)
    fixture_event: str | None = None  # a fixture: the play command's event id


def _place_words(text: str, pcm: bytes) -> deque[tuple[int, str]]:
    """The words of `text` spread over the voiced part of `pcm`, by character count."""
    words = text.split()
    if not words:
        return deque()
    x = np.abs(np.frombuffer(pcm, dtype="<i2"))
    loud = np.nonzero(x > 300)[0]
    first, last = (int(loud[0]), int(loud[-1])) if len(loud) else (0, len(x))
    total = sum(len(w) + 1 for w in words)
    placed: deque[tuple[int, str]] = deque()
    at = 0
    for word in words:
        offset = first + (last - first) * at // max(1, total)
        placed.append((offset * 2, word))
        at += len(word) + 1
    return placed


class _Session:
    """One accepted primary WebSocket: the GPT-Live state machine."""

    def __init__(self, sim: OpenAILiveSimulator, ws: WebSocket, rec: LiveConnection) -> None:
        self.sim = sim
        self.ws = ws
        self.rec = rec
        self.started = False
        self.closed = False
        self.send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.codec = AudioCodec("audio/pcm", RATE)
        self.input_bytes = 0  # 24 kHz PCM16 the timeline has consumed
        self.last_audio = time.monotonic()
        self.muted = False
        # Input speech detection.
        self.frame_rest = b""
        self.speaking = False
        self.loud_frames = 0
        self.quiet_ms = 0
        self.utterance = bytearray()
        self.speech_start_ms = 0
        # Output.
        self.current: _Utterance | None = None
        self.queue: deque[_Utterance] = deque()
        self.out_buf = bytearray()
        self.voiced_deltas = 0
        # Appends waiting for the timeline: (kind, ack type, content, client event id, delegation).
        self.pending: list[tuple[str, str, str, str | None, str | None]] = []
        self.delegations: set[str] = set()
        #: Responses delegation: open backend calls (call id -> output, None until answered)
        #: and the delegation they belong to.
        self.calls: dict[str, str | None] = {}
        self.backend_delegation: str | None = None
        self.next_usage_s = sim.usage_interval_s
        self.backend_seq = 0

    # --- plumbing ----------------------------------------------------------------------------
    @property
    def timeline_ms(self) -> int:
        return self.input_bytes // BYTES_PER_MS

    async def send(self, event: dict[str, Any]) -> None:
        if self.closed or self.sim.faults.blackhole:
            return
        if event["type"] != "session.output_audio.delta":
            event.setdefault("event_id", _id("event"))
        self.rec.sent.append(event)
        data = orjson.dumps(event).decode()
        async with self.send_lock:
            try:
                await self.ws.send_text(data)
            except Exception:  # the peer is gone; the receive loop will notice
                self.closed = True

    async def error(self, code: str, message: str, eid: str | None = None, **kw: Any) -> None:
        await self.send(error_event(code, message, client_event_id=eid, **kw))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.rec.close_code = code
        if code == 0:
            proto = self.sim._transports.get(tuple(self.ws.scope["client"] or ()))
            if proto is not None:
                proto.transport.abort()
            return
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    async def end(self, reason: str, eid: str | None = None) -> None:
        """Finalize: a last usage, `session.closed`, then close 1000."""
        if self.closed:
            return
        if self.pending:
            self.pending.clear()
            await self.error(
                "context_injection_incomplete",
                "The session closed before appended context reached the timeline: no input "
                "audio was streamed after it.",
            )
        usage = self.usage()
        closed: dict[str, Any] = {"type": "session.closed", "reason": reason,
                                  "session": self.rec.session, "usage": usage}  # fmt: skip
        if eid is not None:
            closed["client_event_id"] = eid
        await self.send(closed)
        self.rec.closed_reason = reason
        await self.close(1000, reason)

    def usage(self) -> dict[str, Any]:
        return {"seconds": self.timeline_ms // 1000}

    # --- main loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        faults = self.sim.faults
        if faults.admission_error:
            await self.error(
                faults.admission_error,
                _ADMISSION_SENTENCES.get(faults.admission_error, "Your request was refused."),
                type_="invalid_request_error",
            )
            await self.close(1008, f"invalid_request_error.{faults.admission_error}")
            return
        if self.sim.idle_close_s is not None:
            self.spawn(self._idle_watch(self.sim.idle_close_s))
        try:
            while not self.closed:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    self.rec.close_code = self.rec.close_code or msg.get("code")
                    break
                text = msg.get("text")
                if text is None and msg.get("bytes") is not None:
                    text = msg["bytes"].decode("utf-8", "replace")
                await self.handle_text(text or "")
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.closed = True
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _idle_watch(self, seconds: float) -> None:
        """UNVERIFIED: a field report saw `session.closed{reason:"expired"}` ~31 s into a
        session that never received audio; here, any `seconds` without input audio."""
        while not self.closed:
            wait = self.last_audio + seconds - time.monotonic()
            if wait <= 0:
                await self.end("expired")
                return
            await asyncio.sleep(min(wait, 1.0))

    async def handle_text(self, text: str) -> None:
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.rec.received.append(text)
            # UNVERIFIED: the real code for unparsable frames; the shape is the real one.
            await self.error("invalid_json", "The server could not parse the JSON in your event.")
            return
        self._record(event)
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.error("missing_required_parameter", "Missing required parameter: 'type'.",
                             param="type")  # fmt: skip
            return
        etype = event["type"]
        eid = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if etype not in CLIENT_EVENT_TYPES:
            await self.error(
                "invalid_value",
                f"Invalid value: '{etype}'. Supported values are: "
                + ", ".join(f"'{t}'" for t in sorted(CLIENT_EVENT_TYPES)) + ".",
                eid, param="type",
            )  # fmt: skip
            return
        if etype == "session.start":
            await self.on_start(event, eid)
        elif not self.started:
            # UNVERIFIED: the real error for a command before `session.start`.
            await self.error("session_not_started",
                             "The first event on a Live session must be session.start.", eid)  # fmt: skip
        elif etype in APPEND_TYPES:
            await self.on_append(event, eid)
        else:
            await getattr(self, "on_" + etype.replace(".", "_"))(event, eid)

    def _record(self, event: Any) -> None:
        if (
            not self.sim.record_audio
            and isinstance(event, dict)
            and event.get("type") == "session.input_audio.append"
        ):
            event = {
                "type": "session.input_audio.append",
                "audio_chars": len(event.get("audio") or ""),
            }
        self.rec.received.append(event)

    # --- session -----------------------------------------------------------------------------
    async def on_start(self, event: dict[str, Any], eid: str | None) -> None:
        if self.started:
            # UNVERIFIED: the real code for a second start.
            await self.error("session_already_started",
                             "session.start may be sent only once per connection.", eid)  # fmt: skip
            return
        config = event.get("session")
        problem = start_problem(config, self.sim.models, self.sim.session_keys)
        if problem is not None:
            code, message, param = problem
            await self.error(code, message, eid, param=param)
            return
        assert isinstance(config, dict)
        self.rec.session = snapshot(config)
        fmt = self.rec.session["audio"]["format"]
        self.codec = AudioCodec(fmt["type"], fmt["rate"])
        for item in config.get("input") or []:
            self.rec.history.append({"role": item["role"], "text": item["content"][0]["text"]})
        self.started = True
        started: dict[str, Any] = {"type": "session.started", "session": self.rec.session}
        if eid is not None:
            started["client_event_id"] = eid
        await self.send(started)

    async def on_session_update(self, event: dict[str, Any], eid: str | None) -> None:
        new = event.get("session")
        if not isinstance(new, dict):
            await self.error("missing_required_parameter", "Missing required parameter: 'session'.",
                             eid, param="session")  # fmt: skip
            return
        problem = delegation_problem(new.get("delegation")) if new.get("delegation") else None
        if problem is not None:
            code, message, param = problem
            await self.error(code, message, eid, param=param)
            return
        for key, value in new.items():
            if key not in SESSION_KEYS:
                await self.error("unknown_parameter", f"Unknown parameter: 'session.{key}'.", eid,
                                 param=f"session.{key}")  # fmt: skip
                return
            current = (self.rec.session.get("delegation") or {}).get("type", "client")
            changed = key == "delegation" and (value or {}).get("type", "client") != current
            if key not in UPDATABLE_KEYS or changed:
                await self.error("immutable_field_update",
                                 f"'session.{key}' cannot change after the session has started.",
                                 eid, param=f"session.{key}")  # fmt: skip
                return
        self.rec.session.update(new)
        updated: dict[str, Any] = {"type": "session.updated", "session": self.rec.session}
        if eid is not None:
            updated["client_event_id"] = eid
        await self.send(updated)

    async def on_session_close(self, event: dict[str, Any], eid: str | None) -> None:
        await self.end("close_requested", eid)

    async def on_session_input_audio_mute(self, event: dict[str, Any], eid: str | None) -> None:
        self.muted = True
        await self._ack("session.input_audio.muted", eid)

    async def on_session_input_audio_unmute(self, event: dict[str, Any], eid: str | None) -> None:
        self.muted = False
        await self._ack("session.input_audio.unmuted", eid)

    async def _ack(self, etype: str, eid: str | None, **fields: Any) -> None:
        event: dict[str, Any] = {"type": etype, **fields}
        if eid is not None:
            event["client_event_id"] = eid
        await self.send(event)

    async def _backend_only(self, event: dict[str, Any], eid: str | None) -> None:
        kind = (self.rec.session.get("delegation") or {}).get("type", "client")
        if kind != "responses":
            # UNVERIFIED code; the sentence is the one field logs show.
            await self.error("invalid_request_error",
                             f"{event['type']} requires Responses delegation.", eid)  # fmt: skip

    def _mode(self) -> str:
        return str((self.rec.session.get("delegation") or {}).get("type", "client"))

    async def on_response_item_create(self, event: dict[str, Any], eid: str | None) -> None:
        if self._mode() != "responses":
            await self._backend_only(event, eid)
            return
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") != "function_call_output":
            await self.error("invalid_value", "'item' must be a function_call_output item.",
                             eid, param="item")  # fmt: skip
            return
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(output, str):
            await self.error("invalid_type", "Invalid type for 'item.output': expected a string.",
                             eid, param="item.output")  # fmt: skip
            return
        if call_id not in self.calls:
            # The Responses API's sentence for an output that answers no call.
            await self.error("invalid_value",
                             f"No tool call found for function call output with call_id {str(call_id)[:64]}.",
                             eid, param="item.call_id")  # fmt: skip
            return
        self.calls[call_id] = output

    async def on_response_create(self, event: dict[str, Any], eid: str | None) -> None:
        if self._mode() != "responses":
            await self._backend_only(event, eid)
            return
        missing = [c for c, o in self.calls.items() if o is None]
        if missing:
            await self.error("function_call_outputs_required",
                             "Every open function call needs a function_call_output before "
                             f"response.create; missing: {', '.join(missing)}.", eid)  # fmt: skip
            return
        if not self.calls:
            await self.error("invalid_request_error",
                             "There is no backend response to continue.", eid)  # fmt: skip
            return
        outputs = [o or "" for o in self.calls.values()]
        self.calls.clear()
        delegation, self.backend_delegation = self.backend_delegation, None
        for item in outputs:
            self.rec.history.append({"role": "tool", "text": item})
        text = tool_answer(outputs)
        rid = _id("resp")
        await self._backend(delegation, eid, {"type": "response.created", "response": _response(rid, "in_progress")})
        item_id = _id("msg")
        await self._backend(delegation, None, {
            "type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
            "content_index": 0, "delta": text, "logprobs": [],
        })  # fmt: skip
        await self._backend(delegation, None, {
            "type": "response.output_text.done", "item_id": item_id, "output_index": 0,
            "content_index": 0, "text": text, "logprobs": [],
        })  # fmt: skip
        message = {"type": "message", "id": item_id, "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
        await self._backend(delegation, None, {"type": "response.output_item.done", "output_index": 0, "item": message})
        await self._backend(delegation, None, {"type": "response.completed", "response": _response(rid, "completed")})
        # The voice model says what the backend made of the outputs.
        self._say(text, self.sim.latency_ms)

    async def _backend(self, delegation: str | None, eid: str | None, nested: dict[str, Any]) -> None:
        self.backend_seq += 1
        event: dict[str, Any] = {"type": "response.event", "delegation_id": delegation,
                                 "event": {**nested, "sequence_number": self.backend_seq}}  # fmt: skip
        if eid is not None:
            event["client_event_id"] = eid
        await self.send(event)

    async def _decisions_only(self, event: dict[str, Any], eid: str | None) -> None:
        await self.error("invalid_request_error",
                         f"{event['type']} requires Decisions delegation or triggers.", eid)  # fmt: skip

    on_decision_create = on_decision_item_create = on_decision_item_delete = _decisions_only

    async def on_transport_dtmf_send(self, event: dict[str, Any], eid: str | None) -> None:
        await self.error("invalid_request_error",
                         "transport.dtmf.send is available on SIP sideband connections only.", eid)  # fmt: skip

    async def on_session_output_audio_fixture_play(
        self, event: dict[str, Any], eid: str | None
    ) -> None:
        pcm = _b64(event.get("audio"))
        if not pcm or len(pcm) > 30 * RATE * 2:
            await self.error("invalid_value", "'audio' must be base64 PCM16 at 24 kHz, at most 30 s.",
                             eid, param="audio")  # fmt: skip
            return
        self._yield_now()
        self.queue.clear()
        self.current = _Utterance("", pcm[: len(pcm) - len(pcm) % 2], fixture_event=eid or "")
        await self._ack("session.output_audio.fixture.playing", eid)

    # --- input audio -------------------------------------------------------------------------
    async def on_session_input_audio_append(self, event: dict[str, Any], eid: str | None) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str) or not audio:
            await self.error("missing_required_parameter", "Missing required parameter: 'audio'.",
                             eid, param="audio")  # fmt: skip
            return
        raw = _b64(audio)
        if raw is None:
            await self.error(
                "invalid_value", "Invalid 'audio': not valid base64.", eid, param="audio"
            )
            return
        await self.advance(self.codec.decode(raw))

    async def advance(self, pcm: bytes) -> None:
        """`pcm` (24 kHz) moves the timeline: appends land, the model listens and speaks."""
        if not pcm:
            return
        self.last_audio = time.monotonic()
        self.input_bytes += len(pcm)
        self.rec.timeline_ms = self.timeline_ms
        await self._land_appends()
        await self._listen(bytes(len(pcm)) if self.muted else pcm)
        await self._speak(len(pcm))
        if self.closed:
            return
        if self.timeline_ms >= self.next_usage_s * 1000:
            self.next_usage_s += self.sim.usage_interval_s
            await self.send({"type": "session.usage.updated", "usage": self.usage(),
                             "context_window": {"usage_ratio": 0.01}})  # fmt: skip
        limit = self.sim.faults.session_max_s
        if limit is not None and self.timeline_ms >= limit * 1000:
            await self.end("expired")

    async def _listen(self, pcm: bytes) -> None:
        """Energy speech detection on 10 ms frames: two loud frames start an utterance, 500 ms
        of quiet end it (then it is transcribed and answered)."""
        frame = FRAME_MS * BYTES_PER_MS
        data = self.frame_rest + pcm
        n = len(data) // frame
        self.frame_rest = data[n * frame :]
        if n == 0:
            return
        x = np.frombuffer(data[: n * frame], dtype="<i2").astype(np.float64).reshape(n, -1)
        level = 20.0 * np.log10(np.maximum(np.sqrt(np.mean(x * x, axis=1)) / 32768.0, 1e-9))
        loud = level > -40.0
        end_ms = self.timeline_ms - len(self.frame_rest) // BYTES_PER_MS - n * FRAME_MS
        for i in range(n):
            end_ms += FRAME_MS
            chunk = data[i * frame : (i + 1) * frame]
            if not self.speaking:
                self.loud_frames = self.loud_frames + 1 if loud[i] else 0
                if self.loud_frames >= 2:
                    self.speaking, self.quiet_ms = True, 0
                    self.speech_start_ms = end_ms - 2 * FRAME_MS
                    self.utterance = bytearray(
                        data[(i - 1) * frame : (i + 1) * frame] if i else chunk
                    )
                    self._talked_over()
                continue
            self.utterance += chunk
            self.quiet_ms = 0 if loud[i] else self.quiet_ms + FRAME_MS
            if self.quiet_ms >= 500:
                self.speaking, self.loud_frames = False, 0
                audio = bytes(self.utterance[: len(self.utterance) - self.quiet_ms * BYTES_PER_MS])
                # Heard and answered before the timeline moves on: the answer's place in the
                # timeline is then set by the audio alone, not by how busy this machine is.
                await self._heard(audio, self.speech_start_ms, end_ms - self.quiet_ms)

    def _talked_over(self) -> None:
        """The user started talking: the model yields a moment later, and drops what it had
        queued (it will answer what the user says now)."""
        u = self.current
        if u is not None and u.fixture_event is None:
            if u.started_ms is None:
                self.current = None  # not begun: it is simply not said
            elif u.pos < len(u.pcm):
                u.stop_at = min(len(u.pcm), u.pos + self.sim.yield_ms * BYTES_PER_MS)
        self.queue.clear()

    def _yield_now(self) -> None:
        if self.current is not None:
            self.current.stop_at = self.current.pos

    async def _heard(self, audio: bytes, start_ms: int, end_ms: int) -> None:
        """One user utterance: transcript fragments over its span, then the model's answer."""
        try:
            text = (await self.sim._transcribe(audio)).strip()
        except Exception as exc:  # a broken recogniser must not kill the connection
            log.warning("transcription failed: %s", exc)
            text = ""
        if not text or self.closed:
            return
        words = text.split()
        span = max(GRID_MS, end_ms - start_ms)
        windows = max(1, -(-span // GRID_MS))
        for w in range(windows):
            part = words[w * len(words) // windows : (w + 1) * len(words) // windows]
            if not part:
                continue
            a = start_ms + w * GRID_MS
            await self.send({"type": "session.input_transcript.delta", "delta": " " + " ".join(part),
                             "start_ms": a, "end_ms": min(end_ms, a + GRID_MS)})  # fmt: skip
        self.rec.history.append({"role": "user", "text": text})
        if await self._maybe_call_tools(text):
            return
        trigger = next((p for p in self.sim.delegate_on if p.lower() in text.lower()), None)
        if trigger is not None:
            await self._delegate()
            return
        self._say(self.sim.responder(list(self.rec.history)), self.sim.latency_ms)

    async def _delegate(self) -> None:
        delegation_id = _id("item")
        self.delegations.add(delegation_id)
        await self.send({"type": "session.delegation.created", "offset_ms": self.timeline_ms,
                         "delegation": {"id": delegation_id, "type": "delegation",
                                        "target": "client"}})  # fmt: skip
        self._say("Okay, let me check.", self.sim.latency_ms)

    def _declared(self) -> set[str]:
        responses = (self.rec.session.get("delegation") or {}).get("responses") or {}
        return {str(t.get("name")) for t in responses.get("tools") or [] if t.get("type") == "function"}

    async def _delegate_to_backend(self, calls: list[tuple[str, str]]) -> None:
        """The model hands the turn to its Responses backend, which calls functions."""
        delegation_id, rid = _id("item"), _id("resp")
        self.backend_delegation = delegation_id
        await self.send({"type": "session.delegation.created", "offset_ms": self.timeline_ms,
                         "delegation": {"id": delegation_id, "type": "delegation",
                                        "target": "responses", "response_id": rid}})  # fmt: skip
        self._say("Okay, let me check.", self.sim.latency_ms)
        await self._backend(delegation_id, None, {"type": "response.created", "response": _response(rid, "in_progress")})
        for index, (name, arguments) in enumerate(calls):
            call_id = _id("call")
            self.calls[call_id] = None
            item = {"type": "function_call", "id": _id("fc"), "call_id": call_id, "name": name,
                    "arguments": arguments, "status": "completed"}  # fmt: skip
            await self._backend(delegation_id, None, {"type": "response.output_item.done", "output_index": index, "item": item})
        if self.sim.faults.backend_fails:
            self.calls.clear()
            failed = {**_response(rid, "failed"),
                      "error": {"code": "server_error", "message": "The backend model failed."}}  # fmt: skip
            await self._backend(delegation_id, None, {"type": "response.failed", "response": failed})
            return
        await self._backend(delegation_id, None, {"type": "response.completed", "response": _response(rid, "completed")})

    def _say(self, text: str, wait_ms: int) -> None:
        if not text.strip():
            return
        pcm = synthesize(text, RATE)
        after = self.current is not None or bool(self.queue)
        wait = (self.sim.turn_gap_ms if after else wait_ms) * BYTES_PER_MS
        self.queue.append(_Utterance(text, pcm, wait=wait, words=_place_words(text, pcm)))

    # --- output ------------------------------------------------------------------------------
    async def _speak(self, n: int) -> None:
        """Produce `n` bytes of output (24 kHz) for the timeline just consumed: what the model
        is saying, digital silence otherwise; transcript fragments ahead of their audio."""
        start_ms = self.timeline_ms - n // BYTES_PER_MS
        out = bytearray()
        while len(out) < n and not self.closed:
            u = self.current
            if u is None:
                if not self.queue:
                    out += bytes(n - len(out))
                    break
                u = self.current = self.queue.popleft()
            if u.wait:
                take = min(u.wait, n - len(out))
                out += bytes(take)
                u.wait -= take
                continue
            end = len(u.pcm) if u.stop_at is None else u.stop_at
            take = min(end - u.pos, n - len(out))
            if u.started_ms is None:
                u.started_ms = start_ms + len(out) // BYTES_PER_MS
            await self._words(u, u.pos + take)
            out += u.pcm[u.pos : u.pos + take]
            u.pos += take
            if u.pos >= end:
                await self._finished(u)
        self.out_buf += out
        await self._flush_audio(voiced=any(out))

    async def _words(self, u: _Utterance, upto: int) -> None:
        """Output transcript fragments for the words of `u` spoken before byte `upto`, one per
        200 ms window of the utterance."""
        assert u.started_ms is not None
        while u.words and u.words[0][0] < upto:
            window = u.words[0][0] // (GRID_MS * BYTES_PER_MS)
            part = []
            while u.words and u.words[0][0] // (GRID_MS * BYTES_PER_MS) == window:
                part.append(u.words.popleft()[1])
            u.said.extend(part)
            a = u.started_ms + window * GRID_MS
            await self.send({"type": "session.output_transcript.delta", "delta": " " + " ".join(part),
                             "start_ms": a, "end_ms": a + GRID_MS})  # fmt: skip

    async def _finished(self, u: _Utterance) -> None:
        self.current = None
        if u.fixture_event is not None:
            await self._ack("session.output_audio.fixture.played", u.fixture_event or None)
            return
        said = " ".join(u.said) if u.stop_at is not None else u.text
        if said:
            self.rec.history.append({"role": "assistant", "text": said})
        if self.queue:
            self.queue[0].wait = max(self.queue[0].wait, self.sim.turn_gap_ms * BYTES_PER_MS)

    async def _flush_audio(self, voiced: bool) -> None:
        chunk = self.sim.chunk_ms * BYTES_PER_MS
        while len(self.out_buf) >= chunk and not self.closed:
            pcm = bytes(self.out_buf[:chunk])
            del self.out_buf[:chunk]
            data = base64.b64encode(self.codec.encode(pcm)).decode()
            await self.send({"type": "session.output_audio.delta", "delta": data})
            if any(pcm):
                await self._maybe_drop()

    async def _maybe_drop(self) -> None:
        faults = self.sim.faults
        if faults.drop_mid_answer is None:
            return
        self.voiced_deltas += 1
        if self.voiced_deltas >= faults.drop_after_deltas:
            code = faults.drop_mid_answer
            if faults.drop_once:
                faults.drop_mid_answer = None
            await self.close(code, "simulated drop")

    # --- appends -----------------------------------------------------------------------------
    async def on_append(self, event: dict[str, Any], eid: str | None) -> None:
        kind, ack = APPEND_TYPES[event["type"]]
        content = event.get("content")
        if "delegation_id" not in event:
            await self.error("missing_required_parameter",
                             "Missing required parameter: 'delegation_id'.", eid, param="delegation_id")  # fmt: skip
            return
        if not isinstance(content, str) or not content.strip():
            await self.error("missing_required_parameter", "Missing required parameter: 'content'.",
                             eid, param="content")  # fmt: skip
            return
        if len(content) > MAX_APPEND_CHARS:
            await self.error("string_above_max_length",
                             "Invalid 'content': an append is limited to 500 tokens.", eid, param="content")  # fmt: skip
            return
        delegation = event.get("delegation_id")
        if delegation is not None and delegation not in self.delegations:
            await self.error("invalid_value", f"Unknown delegation_id: {str(delegation)[:64]!r}.",
                             eid, param="delegation_id")  # fmt: skip
            return
        if self.current is not None and self.current.fixture_event is not None:
            await self.error(
                "fixture_active", "Appends are refused while an audio fixture plays.", eid
            )
            return
        self.pending.append((kind, ack, content, eid, delegation))

    async def _land_appends(self) -> None:
        """Pending appends reach the timeline now that audio advanced it."""
        pending, self.pending = self.pending, []
        at = self.timeline_ms
        for kind, ack, content, eid, delegation in pending:
            await self._ack(ack, eid, start_ms=at, end_ms=at)
            self.rec.history.append({"role": "developer" if kind == "instructions" else kind,
                                     "text": content})  # fmt: skip
            if kind == "commentary":
                if delegation is not None:
                    self.delegations.discard(delegation)
                elif await self._maybe_call_tools(content):
                    continue
                self._say(self.sim.responder(list(self.rec.history)), self.sim.latency_ms)

    async def _maybe_call_tools(self, said: str) -> bool:
        """Under Responses delegation, words that match a tool trigger (spoken, or typed and
        quoted in commentary) go to the backend, which calls functions -> whether they did."""
        if self._mode() != "responses" or self.calls:
            return False
        quoted = _QUOTED.search(said)
        calls = triggered_calls(
            self.sim.tool_triggers, quoted.group(1) if quoted else said, self._declared()
        )
        if calls:
            await self._delegate_to_backend(calls)
        return bool(calls)


_ADMISSION_SENTENCES = {
    "insufficient_quota": "You exceeded your current quota, please check your plan and billing details.",
    "invalid_api_key": "Incorrect API key provided.",
    "account_deactivated": "This account has been deactivated.",
    "billing_hard_limit_reached": "Billing hard limit has been reached.",
}


def _response(rid: str, status: str) -> dict[str, Any]:
    """A backend lifecycle snapshot: as GPT-Live relays it, with `output` cleared."""
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "model": "sim-backend", "output": [], "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": [], "temperature": 1.0, "top_p": 1.0, "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}}  # fmt: skip


DELEGATION_KEYS = {"type", "responses", "decisions", "acknowledgement_delay_ms"}
RESPONSES_KEYS = {
    "model", "instructions", "tools", "tool_choice", "parallel_tool_calls", "reasoning", "text",
    "max_output_tokens", "service_tier",
}  # fmt: skip
FUNCTION_TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}


def delegation_problem(delegation: Any) -> tuple[str, str, str | None] | None:
    """(code, message, param) for a `session.delegation` the strict service refuses."""
    if delegation is None:
        return None
    param = "session.delegation"
    if not isinstance(delegation, dict):
        return "invalid_type", f"Invalid type for '{param}': expected an object.", param
    for key in delegation:
        if key not in DELEGATION_KEYS:
            return "unknown_parameter", f"Unknown parameter: '{param}.{key}'.", f"{param}.{key}"
    kind = delegation.get("type", "client")
    if kind not in ("client", "responses", "decisions"):
        return ("invalid_value", f"Invalid value: {str(kind)[:64]!r}. Supported values are: "
                "'client', 'responses' and 'decisions'.", f"{param}.type")  # fmt: skip
    if kind != "responses":
        return None
    responses = delegation.get("responses")
    if not isinstance(responses, dict):
        return ("missing_required_parameter",
                f"Missing required parameter: '{param}.responses'.", f"{param}.responses")  # fmt: skip
    for key in responses:
        if key not in RESPONSES_KEYS:
            return ("unknown_parameter", f"Unknown parameter: '{param}.responses.{key}'.",
                    f"{param}.responses.{key}")  # fmt: skip
    if not isinstance(responses.get("model"), str) or not responses["model"]:
        return ("missing_required_parameter",
                f"Missing required parameter: '{param}.responses.model'.", f"{param}.responses.model")  # fmt: skip
    tools = responses.get("tools") or []
    if not isinstance(tools, list):
        return "invalid_type", f"Invalid type for '{param}.responses.tools'.", f"{param}.responses.tools"
    for i, tool in enumerate(tools):
        where = f"{param}.responses.tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            return "missing_required_parameter", f"Missing required parameter: '{where}.type'.", f"{where}.type"
        if tool["type"] != "function":
            continue  # hosted tools run server-side; not simulated
        for key in tool:
            if key not in FUNCTION_TOOL_KEYS:
                return "unknown_parameter", f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}"
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            return "missing_required_parameter", f"Missing required parameter: '{where}.name'.", f"{where}.name"
    return None


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def start_problem(
    config: Any, models: Iterable[str], keys: Iterable[str] = SESSION_KEYS
) -> tuple[str, str, str | None] | None:
    """(code, message, param) for a `session.start` config the strict service refuses."""
    if not isinstance(config, dict):
        return "missing_required_parameter", "Missing required parameter: 'session'.", "session"
    known = set(keys)
    for key in config:
        if key not in known:
            return "unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}"
    model = config.get("model")
    if not isinstance(model, str):
        return (
            "missing_required_parameter",
            "Missing required parameter: 'session.model'.",
            "session.model",
        )
    if model not in models:
        return (
            "invalid_model",
            f"The model '{model[:64]}' is not supported on /v1/live/sessions; use a Live model "
            f"({', '.join(models)}).",
            "session.model",
        )
    instructions = config.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return (
            "invalid_type",
            "Invalid type for 'session.instructions': expected a string.",
            "session.instructions",
        )
    return (
        _audio_problem(config.get("audio"))
        or _input_problem(config.get("input"))
        or delegation_problem(config.get("delegation"))
    )


def _audio_problem(audio: Any) -> tuple[str, str, str | None] | None:
    if audio is None:
        return None
    if not isinstance(audio, dict):
        return (
            "invalid_type",
            "Invalid type for 'session.audio': expected an object.",
            "session.audio",
        )
    for key in audio:
        if key not in ("format", "output"):
            return (
                "unknown_parameter",
                f"Unknown parameter: 'session.audio.{key}'.",
                f"session.audio.{key}",
            )
    if "format" in audio and (bad := format_problem(audio["format"])) is not None:
        return "invalid_value", bad[0], f"session.audio.{bad[1]}"
    output = audio.get("output") or {}
    if not isinstance(output, dict):
        return "invalid_type", "Invalid type for 'session.audio.output'.", "session.audio.output"
    for key in output:
        if key != "voice":
            return ("unknown_parameter", f"Unknown parameter: 'session.audio.output.{key}'.",
                    f"session.audio.output.{key}")  # fmt: skip
    voice = output.get("voice")
    if (
        voice is None
        or voice in VOICES
        or (isinstance(voice, dict) and str(voice.get("id", "")).startswith("voice_"))
    ):
        return None
    return ("invalid_value", f"Invalid value: {str(voice)[:64]!r}. Use a built-in voice or {{\"id\": \"voice_…\"}}.",
            "session.audio.output.voice")  # fmt: skip


def _input_problem(items: Any) -> tuple[str, str, str | None] | None:
    if items is None:
        return None
    if not isinstance(items, list) or len(items) > 128:
        return (
            "invalid_value",
            "'session.input' must be a list of at most 128 messages.",
            "session.input",
        )
    for i, item in enumerate(items):
        param = f"session.input[{i}]"
        if not isinstance(item, dict) or item.get("role") not in ("developer", "user", "assistant"):
            return (
                "invalid_value",
                f"Invalid '{param}.role': developer, user or assistant.",
                f"{param}.role",
            )
        content = item.get("content")
        if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict):
            return (
                "invalid_value",
                f"'{param}.content' must hold exactly one text part.",
                f"{param}.content",
            )
        part = content[0]
        allowed = ("output_text", "text") if item["role"] == "assistant" else ("input_text", None)
        if part.get("type") not in allowed or not isinstance(part.get("text"), str):
            return (
                "invalid_value",
                f"Invalid '{param}.content[0]' for role {item['role']}.",
                f"{param}.content",
            )
    return None


def snapshot(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved session: the config with the service's defaults filled in."""
    audio = config.get("audio") or {}
    output = audio.get("output") or {}
    return {
        "id": _id("live_sim"),
        "expires_at": int(time.time()) + 7200,
        "status": "active",
        "model": config["model"],
        "instructions": config.get("instructions") or "",
        "input": list(config.get("input") or []),
        "audio": {
            "format": audio.get("format") or {"type": "audio/pcm", "rate": RATE},
            "output": {"voice": output.get("voice") or "marin"},
        },
        "delegation": config.get("delegation") or {"type": "client"},
        "store": bool(config.get("store", False)),
        **(
            {"safety_identifier": config["safety_identifier"]}
            if config.get("safety_identifier")
            else {}
        ),
    }


class OpenAILiveSimulator(SimulatorServer):
    """The simulator server: uvicorn on 127.0.0.1 (port 0 by default) in the current loop."""

    label = "GPT-Live"

    def __init__(
        self,
        keys: Iterable[str] = ("sk-test",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        transcript: str | list[str] | None = None,
        transcriber: Transcriber | None = None,
        pocketsphinx: bool = False,
        grammar: str | None = None,
        responder: Responder | None = None,
        delegate_on: Iterable[str] = (),
        tool_triggers: Iterable[ToolTrigger] = (),
        models: Iterable[str] = MODELS,
        session_keys: Iterable[str] = SESSION_KEYS,
        usage_interval_s: float = 15.0,
        idle_close_s: float | None = 31.0,
        latency_ms: int = 300,
        yield_ms: int = 200,
        turn_gap_ms: int = 1200,
        chunk_ms: int = 100,
        record_audio: bool = True,
        faults: SimFaults | None = None,
    ) -> None:
        self.keys = set(keys)
        self.host = host
        self.port = port
        #: Scripted transcripts: one string for every utterance, or a list consumed in order
        #: (the last one repeats). None without a transcriber hears "hello".
        self.transcript = list(transcript) if isinstance(transcript, list) else transcript
        if transcriber is None and (pocketsphinx or grammar):
            transcriber = pocketsphinx_transcriber(grammar)
        self.transcriber = transcriber
        self.responder: Responder = responder or default_responder
        #: Phrases that make the model delegate to the client (`session.delegation.created`).
        self.delegate_on = tuple(delegate_on)
        #: Scripted backend function calls under Responses delegation (see `ToolTrigger`).
        self.tool_triggers = list(tool_triggers)
        self.models = tuple(models)
        #: The `session.start` fields this service accepts (fewer: an older API revision).
        self.session_keys = frozenset(session_keys)
        #: Timeline seconds between `session.usage.updated` events.
        self.usage_interval_s = usage_interval_s
        #: Wall-clock seconds without input audio before the session expires (None: never).
        self.idle_close_s = idle_close_s
        self.latency_ms = latency_ms
        self.yield_ms = yield_ms
        self.turn_gap_ms = turn_gap_ms
        self.chunk_ms = chunk_ms
        self.record_audio = record_audio
        self.faults = faults or SimFaults()
        self.connections: list[LiveConnection] = []
        self._sessions: list[_Session] = []
        self._transports: dict[Any, Any] = {}
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = self._build_app()

    # --- public API --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The primary session socket (`VOXGATE_OPENAI_LIVE_URL`)."""
        return f"ws://{self.host}:{self.port}/v1/live/sessions"

    @property
    def base_url(self) -> str:
        """For the official SDK: `AsyncOpenAI(base_url=sim.base_url)`."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def accepted(self) -> list[LiveConnection]:
        return [c for c in self.connections if c.accepted]

    def live(self) -> list[_Session]:
        return [s for s in self._sessions if not s.closed]

    def inject_error(self, code: str, message: str, *, type_: str = "server_error") -> None:
        """Send an `error` event on every live session (the socket stays open)."""
        for session in self.live():
            session.spawn(session.send(error_event(code, message, type_=type_)))

    def end_sessions(self, reason: str = "remote_hangup") -> None:
        """End every live session as the service does: `session.closed{reason}`, close 1000."""
        for session in self.live():
            session.spawn(session.end(reason))

    def drop_connections(self, code: int = 0) -> None:
        """Drop every live socket: a close `code`, or 0 for a TCP abort without a close frame."""
        for session in self.live():
            session.spawn(session.close(code, "simulated drop"))

    # --- internals ---------------------------------------------------------------------------
    def _build_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/_sim/faults", self._faults_endpoint, methods=["POST", "GET"]),
                Route("/_sim/connections", self._connections_endpoint, methods=["GET"]),
                WebSocketRoute("/{path:path}", self._ws_endpoint),
            ]
        )

    async def _ws_endpoint(self, ws: WebSocket) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in ws.scope["headers"]}
        rec = LiveConnection(ws.scope["path"], headers, list(ws.scope.get("subprotocols") or []))
        self.connections.append(rec)
        if not _PRIMARY.search(rec.path):
            # Sideband (`…/{id}/attach`) and fork routes are not simulated.
            await self._deny(ws, rec, 404, "invalid_request_error", "not_found",
                             f"No simulated Live route at {rec.path}.")  # fmt: skip
            return
        faults = self.faults
        if faults.refuse_next > 0 or faults.refuse_status is not None:
            status = faults.refuse_status or 503
            faults.refuse_next = max(0, faults.refuse_next - 1)
            await self._deny(ws, rec, status, "server_error", "server_error",
                             "The server is temporarily unable to handle the request.")  # fmt: skip
            return
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if not key or key not in self.keys or faults.invalid_key:
            shown = (key[:3] + "*" * 4 + key[-4:]) if key and len(key) > 8 else "****"
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                if not key
                else f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            await self._deny(ws, rec, 401, "invalid_request_error", "invalid_api_key", message)
            return
        await ws.accept()
        rec.accepted = True
        session = _Session(self, ws, rec)
        self._sessions.append(session)
        try:
            await session.run()
        finally:
            self._sessions.remove(session)

    async def _deny(
        self, ws: WebSocket, rec: LiveConnection, status: int, etype: str, code: str, message: str
    ) -> None:
        rec.rejected_status = status
        body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        await ws.send_denial_response(JSONResponse(body, status_code=status))

    async def _faults_endpoint(self, request: Request) -> JSONResponse:
        """Drive a subprocess simulator: POST a partial `SimFaults` object (plus optionally
        `{"end_sessions": reason}` or `{"drop_connections": code}`); GET shows the faults."""
        if request.method == "POST":
            body = orjson.loads(await request.body() or b"{}")
            end = body.pop("end_sessions", None)
            drop = body.pop("drop_connections", None)
            try:
                self.faults.update(body)
            except KeyError as exc:
                return JSONResponse({"error": {"message": f"Unknown fault: {exc.args[0]}"}}, 400)
            if end:
                self.end_sessions(str(end))
            if drop is not None:
                self.drop_connections(int(drop))
        return JSONResponse(self.faults.__dict__)

    async def _connections_endpoint(self, request: Request) -> JSONResponse:
        return JSONResponse([
            {"path": c.path, "accepted": c.accepted, "rejected_status": c.rejected_status,
             "close_code": c.close_code, "timeline_ms": c.timeline_ms,
             "closed_reason": c.closed_reason, "received_types": c.received_types()}
            for c in self.connections
        ])  # fmt: skip


_PRIMARY = re.compile(r"/live/sessions/?$")


def run_openai_live_sim(
    host: str = "127.0.0.1",
    port: int = 9150,
    keys: Iterable[str] = ("sk-test",),
    transcript: str | None = None,
    pocketsphinx: bool = False,
    delegate_on: Iterable[str] = (),
    tool_triggers: Iterable[ToolTrigger] = (),
) -> None:
    """Run the simulator until interrupted (the `voxgate simulate openai-live` CLI verb)."""
    sim = OpenAILiveSimulator(
        keys, host=host, port=port, transcript=transcript, pocketsphinx=pocketsphinx,
        delegate_on=delegate_on, tool_triggers=tool_triggers, record_audio=False,
    )  # fmt: skip

    def ready(sim: OpenAILiveSimulator) -> None:
        print(f"OpenAI GPT-Live simulator on {sim.url} (SDK base_url {sim.base_url})", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(sim.serve_forever(ready))


def main(argv: list[str] | None = None) -> None:
    """`python -m voxgate.testing.openai_live_sim --port 9150 --key sk-test`."""
    import argparse

    parser = argparse.ArgumentParser(description="OpenAI GPT-Live simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9150)
    parser.add_argument("--key", action="append", help="accepted API key (repeatable)")
    parser.add_argument("--transcript", help="what the simulator hears for every utterance")
    parser.add_argument("--pocketsphinx", action="store_true", help="recognise speech for real")
    parser.add_argument("--delegate-on", action="append", default=[], help="phrase that delegates")
    parser.add_argument(
        "--tool-trigger", action="append", default=[], metavar="PHRASE=NAME:JSON",
        help="under Responses delegation, the backend calls the tool NAME with the JSON arguments "
        "when the user says PHRASE (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    triggers = []
    for spec in args.tool_trigger:
        phrase, _, call = spec.partition("=")
        name, _, arguments = call.partition(":")
        if not phrase or not name:
            parser.error(f"--tool-trigger {spec!r}: expected PHRASE=NAME:JSON")
        triggers.append(ToolTrigger.one(phrase, name, orjson.loads(arguments or "{}")))
    run_openai_live_sim(args.host, args.port, args.key or ["sk-test"], args.transcript,
                        args.pocketsphinx, args.delegate_on, triggers)  # fmt: skip


if __name__ == "__main__":
    main()


__all__ = [
    "AudioCodec",
    "LiveConnection",
    "OpenAILiveSimulator",
    "SimFaults",
    "default_responder",
    "delegation_problem",
    "error_event",
    "main",
    "run_openai_live_sim",
    "start_problem",
]
