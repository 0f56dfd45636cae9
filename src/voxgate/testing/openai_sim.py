"""A protocol-faithful simulator of the OpenAI Realtime **GA** API (WebSocket + REST).

Why it exists: the OpenAI engine, the gateway and user code must be testable offline, against
something that behaves like the real service where it matters (event names and shapes, error
shapes, ordering, pacing, VAD barge-in, truncation rules, close codes, beta rejection), and that
can also misbehave on request (refused handshakes, mid-response drops, silent sockets, session
expiry). Every event it emits parses with the official `openai` SDK's GA models (tested).

Facts follow `shared/protocols/openai-realtime.md`. Where the real service is unverified
(exact VAD energy mapping, error codes for invalid JSON) the choice is documented inline.

Usage::

    async with OpenAISimulator(keys={"sk-test"}, pace=4.0) as sim:
        ...  # connect to sim.url with "Authorization: Bearer sk-test"
        sim.connections[-1].received  # every client event, in order

`run_openai_sim(...)` runs one blocking (the `voxgate simulate openai` CLI).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from voxgate.testing.speech import synthesize
from voxgate.testing.tooling import ToolTrigger, tool_answer, triggered_calls

log = logging.getLogger("voxgate.testing.openai_sim")

RATE = 24000
BYTES_PER_MS = 48  # PCM16 mono @ 24 kHz
FRAME_MS = 10
DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. "
    "Act like a human, but remember that you aren't a human."
)
KNOWN_SESSION_KEYS = {
    "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
    "parallel_tool_calls", "reasoning", "max_output_tokens", "truncation", "include", "prompt",
    "tracing",
}  # fmt: skip
CLIENT_EVENT_TYPES = {
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.retrieve",
    "conversation.item.truncate", "conversation.item.delete", "response.create",
    "response.cancel", "output_audio_buffer.clear",
}  # fmt: skip

#: Responder: sees the whole conversation (GA item dicts, user audio items carry the transcript
#: the simulator heard) and returns the assistant's reply text.
Responder = Callable[[list[dict[str, Any]]], str]
#: Transcriber: user audio (24 kHz PCM16) -> text.
Transcriber = Callable[[bytes], str]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def error_event(
    code: str | None,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An `error` server event with the real GA shape (`type`, `code`, `message`, `param`, `event_id`)."""
    return {
        "type": "error",
        "event_id": _id("event"),
        "error": {
            "type": type_,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        },
    }


def scripted_calls(
    triggers: Iterable[ToolTrigger], items: list[dict[str, Any]], declared: set[str]
) -> list[tuple[str, str]]:
    """The calls the model makes now: those of the first trigger the latest user words match,
    unless the conversation already answered them (outputs after those words)."""
    for item in reversed(items):
        if item.get("type") == "function_call_output":
            return []
        if item.get("type") == "message" and item.get("role") == "user":
            said = " ".join(
                str(part.get("text") or part.get("transcript") or "")
                for part in item.get("content") or []
            )
            return triggered_calls(triggers, said, declared)
    return []


def default_response(text: str | None = None, items: list[dict[str, Any]] | None = None) -> str:
    """Default responder: a short deterministic reply mentioning the last user text, or the
    tool outputs the model just received."""
    outputs: list[str] = []
    for item in reversed(items or []):
        if item.get("type") == "function_call_output":
            outputs.insert(0, str(item.get("output", "")))
        elif item.get("type") == "function_call":
            continue
        else:
            break
    if outputs:
        return tool_answer(outputs)
    for item in reversed(items or []):
        if item.get("type") == "message" and item.get("role") == "user":
            for part in item.get("content") or []:
                said = part.get("text") or part.get("transcript")
                if said:
                    return f"You said: {said.strip()}."
    return "Hello! How can I help you today?"


def default_responder(items: list[dict[str, Any]]) -> str:
    return default_response(items=items)


def pocketsphinx_transcriber(grammar: str | None = None) -> Transcriber:
    """A real recogniser (pocketsphinx, optionally constrained by a JSGF grammar file)."""

    def transcribe(pcm: bytes) -> str:
        from pocketsphinx import Decoder

        from voxgate.audio import resample

        # Second/third passes off: with a JSGF grammar the lattice pass truncates hypotheses.
        config: dict[str, Any] = {"fwdflat": False, "bestpath": False, "loglevel": "FATAL"}
        if grammar:
            config["jsgf"] = grammar
        decoder = Decoder(**config)
        decoder.start_utt()
        decoder.process_raw(resample(pcm, RATE, 16000), False, True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    return transcribe


def default_session(model: str, session_id: str) -> dict[str, Any]:
    """The full default GA session object sent in `session.created`."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _server_vad_defaults(),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
    }


def _server_vad_defaults() -> dict[str, Any]:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


@dataclass
class SimFaults:
    """Misbehaviour on request; every field can be changed while the simulator runs."""

    #: Refuse every WebSocket handshake with this HTTP status (e.g. 503, 500).
    refuse_status: int | None = None
    #: Refuse only the next N handshakes (with `refuse_status` or 503), then accept again.
    refuse_next: int = 0
    #: Reject every key with 401, as if the key had been revoked.
    invalid_key: bool = False
    #: Close the socket after `close_after_deltas` audio deltas of a response: a WebSocket close
    #: code (e.g. 1011), or 0 for an abrupt TCP close without a close frame.
    close_mid_response: int | None = None
    close_after_deltas: int = 2
    #: Fire `close_mid_response` once, then clear it.
    close_once: bool = True
    #: Stop answering pings and stop sending events (a dead upstream).
    blackhole: bool = False
    #: Emulate the maximum session duration: `session_expired` error, then close 1001.
    session_max_s: float | None = None

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if not hasattr(self, key):
                raise KeyError(key)
            setattr(self, key, value)


@dataclass
class SimConnection:
    """What one connection attempt looked like, for tests to assert on."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    subprotocols: list[str]
    accepted: bool = False
    rejected_status: int | None = None
    received: list[Any] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    session: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)

    def received_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.received if isinstance(e, dict)]

    def sent_types(self) -> list[str]:
        return [e["type"] for e in self.sent]


def _make_protocol_class(sim: OpenAISimulator) -> type[WebSocketsSansIOProtocol]:
    """uvicorn's WebSocket protocol, with hooks for blackholing pings and aborting TCP."""

    class SimProtocol(WebSocketsSansIOProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            sim._transports[self.client] = self  # type: ignore[index]

        def connection_lost(self, exc: Exception | None) -> None:
            sim._transports.pop(self.client, None)  # type: ignore[arg-type]
            super().connection_lost(exc)

        def handle_ping(self) -> None:
            if sim.faults.blackhole:
                self.conn.data_to_send()  # discard the queued pong
                return
            super().handle_ping()

    return SimProtocol


class _Response:
    def __init__(self, response_id: str, item_id: str) -> None:
        self.id = response_id
        self.item_id = item_id
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None


class _Session:
    """One accepted WebSocket: the conversation state machine."""

    def __init__(self, sim: OpenAISimulator, ws: WebSocket, rec: SimConnection, model: str):
        self.sim = sim
        self.ws = ws
        self.rec = rec
        self.model = model
        self.conversation_id = _id("conv")
        rec.session = default_session(model, _id("sess"))
        self.send_lock = asyncio.Lock()
        self.buffer = bytearray()  # uncommitted input audio
        self.total_bytes = 0  # all audio appended this session
        self.frame_rest = b""
        self.speaking = False
        self.speech_frames = 0
        self.silence_ms = 0
        self.speech_item: str | None = None
        self.speech_start_ms = 0
        self.response: _Response | None = None
        self.audio_ms: dict[str, int] = {}  # assistant item id -> generated audio ms
        self.tasks: set[asyncio.Task[Any]] = set()
        self.transcripts: dict[str, asyncio.Future[str]] = {}
        self.closed = False

    # --- plumbing --------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        if self.closed or self.sim.faults.blackhole:
            return
        event.setdefault("event_id", _id("event"))
        self.rec.sent.append(event)
        data = orjson.dumps(event).decode()
        async with self.send_lock:
            try:
                await self.ws.send_text(data)
            except Exception:  # the peer is gone; the receive loop will notice
                self.closed = True

    async def error(self, code: str | None, message: str, **kw: Any) -> None:
        await self.send(error_event(code, message, **kw))

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

    @property
    def td(self) -> dict[str, Any] | None:
        return self.rec.session["audio"]["input"].get("turn_detection")

    # --- main loop -------------------------------------------------------------------------
    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.rec.session})
        await self.send(
            {
                "type": "conversation.created",
                "conversation": {"id": self.conversation_id, "object": "realtime.conversation"},
            }
        )
        if self.sim.faults.session_max_s is not None:
            self.spawn(self._expire(self.sim.faults.session_max_s))
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

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        minutes = seconds / 60
        await self.error(
            "session_expired", f"Your session hit the maximum duration of {minutes:g} minutes."
        )
        await self.close(1001, "session expired")

    async def handle_text(self, text: str) -> None:
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.rec.received.append(text)
            # UNVERIFIED: the real code for unparsable frames; the shape is the real one.
            await self.error("invalid_json", "The server could not parse the JSON in your event.")
            return
        if self.sim.record_audio or not (
            isinstance(event, dict) and event.get("type") == "input_audio_buffer.append"
        ):
            self.rec.received.append(event)
        else:
            self.rec.received.append(
                {"type": "input_audio_buffer.append", "audio_bytes": len(event.get("audio", ""))}
            )
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.error(
                "missing_required_parameter", "Missing required parameter: 'type'.", param="type"
            )
            return
        etype = event["type"]
        eid = event.get("event_id")
        if etype not in CLIENT_EVENT_TYPES:
            await self.error(
                "invalid_value",
                f"Invalid value: '{etype}'. Supported values are: "
                + ", ".join(f"'{t}'" for t in sorted(CLIENT_EVENT_TYPES))
                + ".",
                param="type",
                event_id=eid,
            )
            return
        handler = getattr(self, "on_" + etype.replace(".", "_"))
        await handler(event, eid)

    # --- session ---------------------------------------------------------------------------
    async def on_session_update(self, event: dict[str, Any], eid: str | None) -> None:
        new = event.get("session")
        if not isinstance(new, dict):
            await self.error(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                param="session",
                event_id=eid,
            )
            return
        if "type" not in new:
            await self.error(
                "missing_required_parameter",
                "Missing required parameter: 'session.type'.",
                param="session.type",
                event_id=eid,
            )
            return
        for key in new:
            if key not in KNOWN_SESSION_KEYS:
                await self.error(
                    "unknown_parameter",
                    f"Unknown parameter: 'session.{key}'.",
                    param=f"session.{key}",
                    event_id=eid,
                )
                return
        if new["type"] not in ("realtime", "transcription"):
            await self.error(
                "invalid_value",
                f"Invalid value: '{new['type']}'. Supported values are: 'realtime' and "
                "'transcription'.",
                param="session.type",
                event_id=eid,
            )
            return
        modalities = new.get("output_modalities")
        if modalities is not None and modalities not in (["audio"], ["text"]):
            await self.error(
                "invalid_value",
                "Invalid value for 'session.output_modalities': use ['audio'] or ['text'].",
                param="session.output_modalities",
                event_id=eid,
            )
            return
        session = self.rec.session
        for key, value in new.items():
            if key == "audio":
                continue
            session[key] = value
        audio = new.get("audio") or {}
        for direction in ("input", "output"):
            part = audio.get(direction) or {}
            for key, value in part.items():
                if key == "format" and isinstance(value, dict):
                    if value.get("type") == "audio/pcm" and value.get("rate", RATE) != RATE:
                        await self.error(
                            "invalid_value",
                            "Invalid value: only a 24kHz sample rate is supported for audio/pcm.",
                            param=f"session.audio.{direction}.format.rate",
                            event_id=eid,
                        )
                        return
                    value = {"type": value.get("type", "audio/pcm"), "rate": RATE}
                if key == "turn_detection" and isinstance(value, dict):
                    merged = _server_vad_defaults() if value.get("type") != "semantic_vad" else {
                        "type": "semantic_vad", "eagerness": "auto",
                        "create_response": True, "interrupt_response": True,
                    }  # fmt: skip
                    merged.update(value)
                    value = merged
                session["audio"][direction][key] = value
        session["model"] = self.model  # the model cannot be changed by session.update
        await self.send({"type": "session.updated", "session": session})

    # --- input audio -----------------------------------------------------------------------
    async def on_input_audio_buffer_append(self, event: dict[str, Any], eid: str | None) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            await self.error(
                "missing_required_parameter",
                "Missing required parameter: 'audio'.",
                param="audio",
                event_id=eid,
            )
            return
        try:
            pcm = base64.b64decode(audio, validate=True)
        except ValueError:
            await self.error(
                "invalid_value", "Invalid 'audio': not valid base64.", param="audio", event_id=eid
            )
            return
        start_bytes = self.total_bytes
        self.buffer.extend(pcm)
        self.total_bytes += len(pcm)
        if self.td is not None:
            await self._vad(start_bytes - len(self.frame_rest), self.frame_rest + pcm)

    async def _vad(self, start_bytes: int, pcm: bytes) -> None:
        """Energy VAD on 10 ms frames.

        UNVERIFIED mapping of `threshold` (0..1) to energy: a frame is speech when its level is
        above `-60 + 40 * threshold` dBFS (0.5 -> -40 dBFS; espeak speech sits near -20 dBFS).
        Two consecutive speech frames start speech, so a click does not.
        """
        td = self.td
        assert td is not None
        frame_bytes = FRAME_MS * BYTES_PER_MS
        n = len(pcm) // frame_bytes
        self.frame_rest = pcm[n * frame_bytes :]
        if n == 0:
            return
        x = np.frombuffer(pcm[: n * frame_bytes], dtype="<i2").astype(np.float64).reshape(n, -1)
        rms = np.sqrt(np.mean(x * x, axis=1)) / 32768.0
        threshold_db = -60.0 + 40.0 * float(td.get("threshold") or 0.5)
        loud = 20.0 * np.log10(np.maximum(rms, 1e-9)) > threshold_db
        silence_needed = int(td.get("silence_duration_ms") or 500)
        prefix = int(td.get("prefix_padding_ms") or 0)
        for i in range(n):
            frame_end_ms = (start_bytes + (i + 1) * frame_bytes) // BYTES_PER_MS
            if not self.speaking:
                self.speech_frames = self.speech_frames + 1 if loud[i] else 0
                if self.speech_frames >= 2:
                    self.speaking = True
                    self.silence_ms = 0
                    self.speech_item = _id("item")
                    begin = frame_end_ms - 2 * FRAME_MS
                    self.speech_start_ms = max(0, begin - prefix)
                    await self.send(
                        {
                            "type": "input_audio_buffer.speech_started",
                            "audio_start_ms": self.speech_start_ms,
                            "item_id": self.speech_item,
                        }
                    )
                    if self.response is not None and td.get("interrupt_response", True):
                        await self._cancel(self.response, "turn_detected")
            else:
                self.silence_ms = 0 if loud[i] else self.silence_ms + FRAME_MS
                if self.silence_ms >= silence_needed:
                    self.speaking = False
                    self.speech_frames = 0
                    item_id = self.speech_item or _id("item")
                    await self.send(
                        {
                            "type": "input_audio_buffer.speech_stopped",
                            "audio_end_ms": frame_end_ms - self.silence_ms,
                            "item_id": item_id,
                        }
                    )
                    # Commit what was buffered up to this frame; later audio stays buffered.
                    keep = self.total_bytes - (start_bytes + (i + 1) * frame_bytes)
                    cut = max(0, len(self.buffer) - keep)
                    # Like the service, the item's audio starts at speech start minus the
                    # prefix padding: the silence before it is not part of the user's turn.
                    buffer_start = self.total_bytes - len(self.buffer)
                    lead = max(0, self.speech_start_ms * BYTES_PER_MS - buffer_start)
                    lead = min(lead - lead % 2, cut)
                    audio = bytes(self.buffer[lead:cut])
                    del self.buffer[:cut]
                    await self._commit(item_id, audio)
                    if td.get("create_response", True) and self.response is None:
                        self._start_response({}, None)

    async def on_input_audio_buffer_commit(self, event: dict[str, Any], eid: str | None) -> None:
        if len(self.buffer) < 100 * BYTES_PER_MS:
            ms = len(self.buffer) / BYTES_PER_MS
            await self.error(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {ms:.2f}ms of audio.",
                event_id=eid,
            )
            return
        audio = bytes(self.buffer)
        self.buffer.clear()
        self.frame_rest = b""
        self.speaking = False
        self.speech_frames = 0
        await self._commit(self.speech_item or _id("item"), audio)
        self.speech_item = None

    async def on_input_audio_buffer_clear(self, event: dict[str, Any], eid: str | None) -> None:
        self.buffer.clear()
        self.frame_rest = b""
        self.speaking = False
        self.speech_frames = 0
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _commit(self, item_id: str, audio: bytes) -> None:
        previous = self.rec.items[-1]["id"] if self.rec.items else None
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.rec.items.append(item)
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        await self.send(
            {"type": "conversation.item.added", "item": item, "previous_item_id": previous}
        )
        await self.send(
            {"type": "conversation.item.done", "item": item, "previous_item_id": previous}
        )
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.transcripts[item_id] = future
        self.spawn(self._transcribe(item, audio, future))

    async def _transcribe(
        self, item: dict[str, Any], audio: bytes, fut: asyncio.Future[str]
    ) -> None:
        """Hear the user (scripted or pocketsphinx); emit transcription events when enabled."""
        try:
            text = await self.sim._transcribe(audio)
        except Exception as exc:  # a broken recogniser must not kill the connection
            log.warning("transcription failed: %s", exc)
            text = ""
        item["content"][0]["transcript"] = text
        if not fut.done():
            fut.set_result(text)
        if self.rec.session["audio"]["input"].get("transcription") is None:
            return
        words = text.split(" ")
        for i, word in enumerate(words):
            delta = word if i == 0 else " " + word
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.delta",
                    "item_id": item["id"],
                    "content_index": 0,
                    "delta": delta,
                }
            )
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item["id"],
                "content_index": 0,
                "transcript": text,
                "usage": {"type": "duration", "seconds": round(len(audio) / 48000, 3)},
            }
        )

    # --- conversation items ----------------------------------------------------------------
    async def on_conversation_item_create(self, event: dict[str, Any], eid: str | None) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or "type" not in item:
            await self.error(
                "missing_required_parameter",
                "Missing required parameter: 'item'.",
                param="item",
                event_id=eid,
            )
            return
        if item["type"] == "message":
            role = item.get("role")
            allowed = {"user": {"input_text", "input_audio", "input_image"},
                       "system": {"input_text"}, "assistant": {"output_text", "output_audio"}}  # fmt: skip
            if role not in allowed:
                await self.error(
                    "invalid_value",
                    f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', and "
                    "'system'.",
                    param="item.role",
                    event_id=eid,
                )
                return
            for part in item.get("content") or []:
                if part.get("type") not in allowed[role]:
                    await self.error(
                        "invalid_value",
                        f"Invalid value: '{part.get('type')}' is not a valid content type for "
                        f"role '{role}'.",
                        param="item.content.type",
                        event_id=eid,
                    )
                    return
                if role == "assistant" and part.get("type") == "output_audio":
                    await self.error(
                        "invalid_value",
                        "Assistant audio messages cannot be created.",
                        param="item.content.type",
                        event_id=eid,
                    )
                    return
        if item["type"] == "function_call_output":
            # The output must answer a call the conversation holds (the real service refuses
            # an output whose call it does not know).
            call_id = item.get("call_id")
            calls = {i.get("call_id") for i in self.rec.items if i.get("type") == "function_call"}
            if not isinstance(item.get("output"), str) or call_id not in calls:
                await self.error(
                    "invalid_value",
                    f"No tool call found for function call output with call_id '{call_id}'.",
                    param="item.call_id",
                    event_id=eid,
                )
                return
        item = dict(item)
        item.setdefault("id", _id("item"))
        item["object"] = "realtime.item"
        item["status"] = "completed"
        previous = event.get("previous_item_id")
        ids = [i["id"] for i in self.rec.items]
        if previous not in (None, "root") and previous not in ids:
            await self.error(
                "invalid_value",
                f"Item with id '{previous}' not found.",
                param="previous_item_id",
                event_id=eid,
            )
            return
        if previous == "root":
            self.rec.items.insert(0, item)
            previous = None
        elif previous is not None:
            self.rec.items.insert(ids.index(previous) + 1, item)
        else:
            previous = ids[-1] if ids else None
            self.rec.items.append(item)
        await self.send(
            {"type": "conversation.item.added", "item": item, "previous_item_id": previous}
        )
        await self.send(
            {"type": "conversation.item.done", "item": item, "previous_item_id": previous}
        )

    async def on_conversation_item_retrieve(self, event: dict[str, Any], eid: str | None) -> None:
        item = self._find(event.get("item_id"))
        if item is None:
            await self._no_item(event, eid)
            return
        await self.send({"type": "conversation.item.retrieved", "item": item})

    async def on_conversation_item_delete(self, event: dict[str, Any], eid: str | None) -> None:
        item = self._find(event.get("item_id"))
        if item is None:
            await self._no_item(event, eid)
            return
        self.rec.items.remove(item)
        await self.send({"type": "conversation.item.deleted", "item_id": item["id"]})

    async def on_conversation_item_truncate(self, event: dict[str, Any], eid: str | None) -> None:
        for key in ("item_id", "content_index", "audio_end_ms"):
            if key not in event:
                await self.error(
                    "missing_required_parameter",
                    f"Missing required parameter: '{key}'.",
                    param=key,
                    event_id=eid,
                )
                return
        item = self._find(event["item_id"])
        if item is None:
            await self._no_item(event, eid)
            return
        if item.get("role") != "assistant" or item["id"] not in self.audio_ms:
            await self.error(
                "invalid_value",
                "Only assistant messages with audio can be truncated.",
                param="item_id",
                event_id=eid,
            )
            return
        end = event["audio_end_ms"]
        have = self.audio_ms[item["id"]]
        if not isinstance(end, int) or end < 0 or end > have:
            await self.error(
                "invalid_value",
                f"Audio content of {have}ms is shorter than {end}ms.",
                param="audio_end_ms",
                event_id=eid,
            )
            return
        self.audio_ms[item["id"]] = end
        for part in item.get("content") or []:
            if part.get("type") == "output_audio":
                part["transcript"] = ""  # the server deletes the unheard transcript
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item["id"],
                "content_index": event["content_index"],
                "audio_end_ms": end,
            }
        )

    def _find(self, item_id: Any) -> dict[str, Any] | None:
        return next((i for i in self.rec.items if i["id"] == item_id), None)

    async def _no_item(self, event: dict[str, Any], eid: str | None) -> None:
        if "item_id" not in event:
            await self.error(
                "missing_required_parameter",
                "Missing required parameter: 'item_id'.",
                param="item_id",
                event_id=eid,
            )
        else:
            await self.error(
                "invalid_value",
                f"Item with item_id '{event['item_id']}' not found.",
                param="item_id",
                event_id=eid,
            )

    # --- responses -------------------------------------------------------------------------
    async def on_response_create(self, event: dict[str, Any], eid: str | None) -> None:
        if self.response is not None:
            await self.error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
                event_id=eid,
            )
            return
        params = event.get("response") or {}
        if not isinstance(params, dict):
            await self.error(
                "invalid_type", "Invalid type for 'response'.", param="response", event_id=eid
            )
            return
        self._start_response(params, eid)

    async def on_response_cancel(self, event: dict[str, Any], eid: str | None) -> None:
        wanted = event.get("response_id")
        if self.response is None or (wanted and wanted != self.response.id):
            await self.error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                event_id=eid,
            )
            return
        await self._cancel(self.response, "client_cancelled")

    async def on_output_audio_buffer_clear(self, event: dict[str, Any], eid: str | None) -> None:
        await self.error(
            "invalid_value",
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            event_id=eid,
        )

    async def _cancel(self, response: _Response, reason: str) -> None:
        response.cancel_reason = reason
        if response.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(response.task), 10)

    def _start_response(self, params: dict[str, Any], eid: str | None) -> None:
        response = _Response(_id("resp"), _id("item"))
        self.response = response
        response.task = self.spawn(self._respond(response, params))

    async def _respond(self, resp: _Response, params: dict[str, Any]) -> None:
        try:
            await self._respond_inner(resp, params)
        finally:
            if self.response is resp:
                self.response = None

    async def _respond_inner(self, resp: _Response, params: dict[str, Any]) -> None:
        session = self.rec.session
        modalities = (
            params.get("output_modalities") or session.get("output_modalities") or ["audio"]
        )
        audio_mode = modalities == ["audio"]
        voice = session["audio"]["output"].get("voice", "alloy")
        out_format = session["audio"]["output"]["format"]
        base = {
            "id": resp.id,
            "object": "realtime.response",
            "conversation_id": self.conversation_id,
            "output_modalities": modalities,
            "max_output_tokens": session.get("max_output_tokens", "inf"),
            "audio": {"output": {"format": out_format, "voice": voice}},
            "metadata": params.get("metadata"),
        }
        await self.send(
            {
                "type": "response.created",
                "response": {**base, "status": "in_progress", "status_details": None,
                             "output": [], "usage": None},
            }
        )  # fmt: skip
        await self.send(
            {
                "type": "rate_limits.updated",
                "rate_limits": [
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 40000, "remaining": 38000, "reset_seconds": 3.0},
                ],
            }
        )
        # The model "hears" the user: wait for pending transcripts of committed audio.
        for fut in list(self.transcripts.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(fut), 30)
        # An out-of-band response (`conversation: "none"`) joins no conversation: its item is
        # not added, and the simulated model says what its instructions ask for (the text after
        # their last colon), calling no tools.
        in_band = params.get("conversation", "auto") != "none"
        declared = {t.get("name") for t in session.get("tools") or [] if isinstance(t, dict)}
        calls = scripted_calls(self.sim.tool_triggers, self.rec.items, declared) if in_band else []  # type: ignore[arg-type]
        if calls:
            await self._call_functions(resp, base, calls)
            return
        if in_band or not str(params.get("instructions") or "").strip():
            text = await asyncio.to_thread(self.sim.responder, [dict(i) for i in self.rec.items])
        else:
            text = str(params["instructions"]).rsplit(":", 1)[-1].strip()
        previous = self.rec.items[-1]["id"] if self.rec.items else None
        item: dict[str, Any] = {
            "id": resp.item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        if in_band:
            self.rec.items.append(item)
        ids = {
            "response_id": resp.id,
            "item_id": resp.item_id,
            "output_index": 0,
            "content_index": 0,
        }
        await self.send({"type": "response.output_item.added", "response_id": resp.id,
                         "output_index": 0, "item": dict(item)})  # fmt: skip
        if in_band:
            await self.send({"type": "conversation.item.added", "item": dict(item),
                             "previous_item_id": previous})  # fmt: skip
        empty_part = (
            {"type": "audio", "transcript": ""} if audio_mode else {"type": "text", "text": ""}
        )
        await self.send({"type": "response.content_part.added", **ids, "part": empty_part})
        self.audio_ms[resp.item_id] = 0
        spoken = ""
        words = text.split(" ")
        deltas_sent = 0
        faults = self.sim.faults
        if audio_mode:
            pcm = await asyncio.to_thread(synthesize, text, RATE)
            chunk = self.sim.chunk_ms * BYTES_PER_MS
            n_chunks = max(1, -(-len(pcm) // chunk))
            word_i = 0
            t0 = time.monotonic()
            for c in range(n_chunks):
                if resp.cancel_reason or self.closed:
                    break
                piece = pcm[c * chunk : (c + 1) * chunk]
                await self.send({"type": "response.output_audio.delta", **ids,
                                 "delta": base64.b64encode(piece).decode()})  # fmt: skip
                self.audio_ms[resp.item_id] += len(piece) // BYTES_PER_MS
                deltas_sent += 1
                # Transcript words spread evenly over the audio, slightly ahead like the real one.
                target = min(len(words), round(len(words) * (c + 1) / n_chunks + 0.5))
                while word_i < target:
                    delta = words[word_i] if word_i == 0 else " " + words[word_i]
                    spoken += delta
                    word_i += 1
                    await self.send({"type": "response.output_audio_transcript.delta", **ids,
                                     "delta": delta})  # fmt: skip
                if (
                    faults.close_mid_response is not None
                    and deltas_sent >= faults.close_after_deltas
                ):
                    code = faults.close_mid_response
                    if faults.close_once:
                        faults.close_mid_response = None
                    await self.close(code, "simulated failure")
                    return
                # Real-time pacing (divided by `pace`), measured from the start: no drift.
                due = t0 + (c + 1) * self.sim.chunk_ms / 1000.0 / self.sim.pace
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        else:
            for i, word in enumerate(words):
                if resp.cancel_reason or self.closed:
                    break
                delta = word if i == 0 else " " + word
                spoken += delta
                await self.send({"type": "response.output_text.delta", **ids, "delta": delta})
                await asyncio.sleep(0.02 / self.sim.pace)
        if self.closed:
            return
        cancelled = resp.cancel_reason is not None
        if audio_mode:
            await self.send({"type": "response.output_audio.done", **ids})
            await self.send({"type": "response.output_audio_transcript.done", **ids,
                             "transcript": spoken})  # fmt: skip
            final_part = {"type": "audio", "transcript": spoken}
            content = [{"type": "output_audio", "transcript": spoken}]
        else:
            await self.send({"type": "response.output_text.done", **ids, "text": spoken})
            final_part = {"type": "text", "text": spoken}
            content = [{"type": "output_text", "text": spoken}]
        await self.send({"type": "response.content_part.done", **ids, "part": final_part})
        item["status"] = "incomplete" if cancelled else "completed"
        item["content"] = content
        await self.send({"type": "response.output_item.done", "response_id": resp.id,
                         "output_index": 0, "item": dict(item)})  # fmt: skip
        if in_band:
            await self.send({"type": "conversation.item.done", "item": dict(item),
                             "previous_item_id": previous})  # fmt: skip
        out_tokens = max(1, len(spoken.split()))
        in_tokens = 10 + sum(
            len(str(p.get("text") or p.get("transcript") or "").split())
            for i in self.rec.items
            for p in i.get("content") or []
        )
        audio_tokens = self.audio_ms.get(resp.item_id, 0) // 50 if audio_mode else 0
        usage = {
            "total_tokens": in_tokens + out_tokens + audio_tokens,
            "input_tokens": in_tokens,
            "output_tokens": out_tokens + audio_tokens,
            "input_token_details": {"text_tokens": in_tokens, "audio_tokens": 0,
                                    "image_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": out_tokens, "audio_tokens": audio_tokens},
        }  # fmt: skip
        status_details = {"type": "cancelled", "reason": resp.cancel_reason} if cancelled else None
        self.response = None  # before response.done: a client may create the next one at once
        await self.send(
            {
                "type": "response.done",
                "response": {**base, "status": "cancelled" if cancelled else "completed",
                             "status_details": status_details, "output": [dict(item)],
                             "usage": usage},
            }
        )  # fmt: skip


    async def _call_functions(
        self, resp: _Response, base: dict[str, Any], calls: list[tuple[str, str]]
    ) -> None:
        """A response whose output is function calls (the model's arguments streamed in two
        deltas), ending with `response.done` that lists them."""
        output: list[dict[str, Any]] = []
        for index, (name, arguments) in enumerate(calls):
            if resp.cancel_reason or self.closed:
                break
            previous = self.rec.items[-1]["id"] if self.rec.items else None
            item_id = resp.item_id if index == 0 else _id("item")
            item: dict[str, Any] = {
                "id": item_id, "type": "function_call", "object": "realtime.item",
                "status": "in_progress", "call_id": _id("call"), "name": name, "arguments": "",
            }  # fmt: skip
            self.rec.items.append(item)
            ids = {"response_id": resp.id, "item_id": item_id, "output_index": index,
                   "call_id": item["call_id"]}  # fmt: skip
            await self.send({"type": "response.output_item.added", "response_id": resp.id,
                             "output_index": index, "item": dict(item)})  # fmt: skip
            await self.send({"type": "conversation.item.added", "item": dict(item),
                             "previous_item_id": previous})  # fmt: skip
            half = len(arguments) // 2
            for delta in (arguments[:half], arguments[half:]):
                await self.send({"type": "response.function_call_arguments.delta", **ids,
                                 "delta": delta})  # fmt: skip
                await asyncio.sleep(0.01 / self.sim.pace)
            item["arguments"] = arguments
            item["status"] = "completed"
            await self.send({"type": "response.function_call_arguments.done", **ids,
                             "name": name, "arguments": arguments})  # fmt: skip
            await self.send({"type": "response.output_item.done", "response_id": resp.id,
                             "output_index": index, "item": dict(item)})  # fmt: skip
            await self.send({"type": "conversation.item.done", "item": dict(item),
                             "previous_item_id": previous})  # fmt: skip
            output.append(dict(item))
        if self.closed:
            return
        cancelled = resp.cancel_reason is not None
        tokens = 5 * max(1, len(output))
        usage = {
            "total_tokens": 20 + tokens, "input_tokens": 20, "output_tokens": tokens,
            "input_token_details": {"text_tokens": 20, "audio_tokens": 0, "image_tokens": 0,
                                    "cached_tokens": 0},
            "output_token_details": {"text_tokens": tokens, "audio_tokens": 0},
        }  # fmt: skip
        status_details = {"type": "cancelled", "reason": resp.cancel_reason} if cancelled else None
        self.response = None
        await self.send({"type": "response.done", "response": {
            **base, "status": "cancelled" if cancelled else "completed",
            "status_details": status_details, "output": output, "usage": usage,
        }})  # fmt: skip


class _InLoopServer(uvicorn.Server):
    """uvicorn inside someone else's loop (tests): leave the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class SimulatorServer:
    """What every WebSocket provider simulator does the same way: serve its app with uvicorn in
    the test's own event loop (or until a signal, for the CLI), close its sessions on stop, and
    hear what its script says. Subclasses set `label` and keep `host`, `port`, `app`,
    `_sessions`, `transcriber` and `transcript`."""

    label = "the simulator"
    host: str
    port: int
    app: Any
    transcriber: Transcriber | None
    transcript: str | list[str] | None
    _sessions: list[Any]
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            lifespan="off",
            log_level="warning",
            ws=_make_protocol_class(self),  # type: ignore[arg-type]
            ws_ping_interval=None,
            ws_ping_timeout=None,
            timeout_graceful_shutdown=2,
        )

    async def start(self) -> Self:
        """Serve in the current event loop (signal handlers untouched); returns once listening."""
        self._server = server = _InLoopServer(self._config())
        self._task = task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"the {self.label} simulator failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.label} simulator did not start within 10 s")
            await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    async def serve_forever(self, on_ready: Callable[[Self], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM, with uvicorn's own signal handling (the CLI)."""
        self._server = server = uvicorn.Server(self._config())
        self._task = task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            self.port = server.servers[0].sockets[0].getsockname()[1]
            if on_ready is not None:
                on_ready(self)
        try:
            await task
        finally:
            self._server = None
            self._task = None

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        for session in list(self._sessions):
            await session.close(1001, "simulator stopping")
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        self._server = None
        self._task = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _transcribe(self, audio: bytes) -> str:
        if self.transcriber is not None:
            return await asyncio.to_thread(self.transcriber, audio)
        if isinstance(self.transcript, list):
            if not self.transcript:
                return ""
            return self.transcript.pop(0) if len(self.transcript) > 1 else self.transcript[0]
        return self.transcript if self.transcript is not None else "hello"


class OpenAISimulator(SimulatorServer):
    """The simulator server: uvicorn on 127.0.0.1 (port 0 by default) in the current loop."""

    label = "OpenAI"

    def __init__(
        self,
        keys: Iterable[str] = ("sk-test",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        pace: float = 1.0,
        transcript: str | list[str] | None = None,
        transcriber: Transcriber | None = None,
        pocketsphinx: bool = False,
        grammar: str | None = None,
        responder: Responder | None = None,
        chunk_ms: int = 100,
        record_audio: bool = True,
        faults: SimFaults | None = None,
        tool_triggers: Iterable[ToolTrigger] = (),
    ) -> None:
        self.keys = set(keys)
        #: Scripted function calls (see `ToolTrigger`).
        self.tool_triggers = list(tool_triggers)
        self.host = host
        self.port = port
        self.pace = pace
        self.chunk_ms = chunk_ms
        self.record_audio = record_audio
        self.faults = faults or SimFaults()
        self.responder: Responder = responder or default_responder
        #: Scripted transcripts: one string for every utterance, or a list consumed in order
        #: (the last one repeats). None with `pocketsphinx=False` hears "hello".
        self.transcript = list(transcript) if isinstance(transcript, list) else transcript
        if transcriber is None and pocketsphinx:
            transcriber = pocketsphinx_transcriber(grammar)
        self.transcriber = transcriber
        self.connections: list[SimConnection] = []
        self.ephemeral: dict[str, float] = {}  # ek_ value -> expires_at
        self._sessions: list[_Session] = []
        self._transports: dict[Any, Any] = {}
        self._injected: list[tuple[int, dict[str, Any]]] = []
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = self._build_app()

    # --- public API ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def accepted(self) -> list[SimConnection]:
        return [c for c in self.connections if c.accepted]

    def inject_error(
        self, code: str, message: str, *, type_: str = "server_error", close: int | None = None
    ) -> None:
        """Send an `error` event on every live connection (then close with `close`, if given)."""
        event = error_event(code, message, type_=type_)
        for session in list(self._sessions):
            if not session.closed:
                task = asyncio.get_running_loop().create_task(
                    self._inject(session, dict(event), close)
                )
                session.tasks.add(task)  # owned (and cancelled) by the connection
                task.add_done_callback(session.tasks.discard)

    async def _inject(self, session: _Session, event: dict[str, Any], close: int | None) -> None:
        await session.send(event)
        if close is not None:
            await session.close(close, event["error"]["message"])

    # --- internals -------------------------------------------------------------------------
    def _key_ok(self, key: str | None) -> bool:
        if key is None or self.faults.invalid_key:
            return False
        if key in self.keys:
            return True
        expires = self.ephemeral.get(key)
        return expires is not None and expires > time.time()

    def _build_app(self) -> Starlette:
        return Starlette(
            routes=[
                WebSocketRoute("/v1/realtime", self._ws_endpoint),
                Route("/v1/realtime/client_secrets", self._client_secrets, methods=["POST"]),
                Route("/_sim/faults", self._faults_endpoint, methods=["POST", "GET"]),
                Route("/_sim/connections", self._connections_endpoint, methods=["GET"]),
            ]
        )

    async def _ws_endpoint(self, ws: WebSocket) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in ws.scope["headers"]}
        query = dict(parse_qsl(ws.scope.get("query_string", b"").decode()))
        offered = list(ws.scope.get("subprotocols") or [])
        rec = SimConnection(
            path=ws.scope["path"], query=query, headers=headers, subprotocols=offered
        )
        self.connections.append(rec)
        faults = self.faults
        if faults.refuse_next > 0 or faults.refuse_status is not None:
            status = faults.refuse_status or 503
            if faults.refuse_next > 0:
                faults.refuse_next -= 1
            await self._deny(ws, rec, status, "server_error", None,
                             "The server is temporarily unable to handle the request.")  # fmt: skip
            return
        key = None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        for proto in offered:
            if proto.startswith("openai-insecure-api-key."):
                key = proto.split(".", 1)[1]
        if not self._key_ok(key):
            shown = (key[:3] + "*" * 4 + key[-4:]) if key and len(key) > 8 else "****"
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                if key is None
                else f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            code = None if key is None else "invalid_api_key"
            await self._deny(ws, rec, 401, "invalid_request_error", code, message)
            return
        model = query.get("model") or "gpt-realtime"
        subprotocol = "realtime" if "realtime" in offered else None
        beta = "realtime=v1" in headers.get("openai-beta", "") or (
            "openai-beta.realtime-v1" in offered
        )
        await ws.accept(subprotocol=subprotocol)
        rec.accepted = True
        session = _Session(self, ws, rec, model)
        if beta:
            await session.send(
                error_event(
                    "beta_api_shape_disabled",
                    "The Realtime Beta API is no longer supported. Please use /v1/realtime for "
                    "the GA API.",
                )
            )
            await session.close(4000, "invalid_request_error.beta_api_shape_disabled")
            return
        self._sessions.append(session)
        try:
            await session.run()
        finally:
            self._sessions.remove(session)

    async def _deny(
        self, ws: WebSocket, rec: SimConnection, status: int, etype: str, code: str | None,
        message: str,
    ) -> None:  # fmt: skip
        rec.rejected_status = status
        body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        await ws.send_denial_response(JSONResponse(body, status_code=status))

    async def _client_secrets(self, request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if key is None or key not in self.keys or self.faults.invalid_key:
            return JSONResponse(
                {"error": {"message": "Incorrect API key provided.",
                           "type": "invalid_request_error", "param": None,
                           "code": "invalid_api_key"}},
                status_code=401,
            )  # fmt: skip
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _bad_request("We could not parse the JSON body of your request.", None)
        expires = body.get("expires_after") or {}
        seconds = expires.get("seconds", 600)
        if not isinstance(seconds, int) or not 10 <= seconds <= 7200:
            return _bad_request(
                "Invalid 'expires_after.seconds': must be between 10 and 7200.",
                "expires_after.seconds",
            )
        wanted = body.get("session") or {"type": "realtime"}
        if not isinstance(wanted, dict) or "type" not in wanted:
            return _bad_request("Missing required parameter: 'session.type'.", "session.type")
        unknown = [k for k in wanted if k not in KNOWN_SESSION_KEYS]
        if unknown:
            return _bad_request(
                f"Unknown parameter: 'session.{unknown[0]}'.", f"session.{unknown[0]}"
            )
        session = default_session(wanted.get("model") or "gpt-realtime", _id("sess"))
        for key_, value in wanted.items():
            if key_ == "audio" and isinstance(value, dict):
                for direction in ("input", "output"):
                    session["audio"][direction].update(value.get(direction) or {})
            else:
                session[key_] = value
        value = "ek_" + secrets.token_hex(16)
        expires_at = int(time.time()) + seconds
        session["expires_at"] = 0
        self.ephemeral[value] = expires_at
        return JSONResponse({"value": value, "expires_at": expires_at, "session": session})

    async def _faults_endpoint(self, request: Request) -> JSONResponse:
        """Drive a subprocess simulator: POST a partial `SimFaults` JSON object (plus
        optionally `{"inject_error": {"code", "message", "close"}}`); GET shows the current one."""
        if request.method == "POST":
            body = orjson.loads(await request.body() or b"{}")
            inject = body.pop("inject_error", None)
            try:
                self.faults.update(body)
            except KeyError as exc:
                return _bad_request(f"Unknown fault: {exc.args[0]}", str(exc.args[0]))
            if inject:
                self.inject_error(inject.get("code", "server_error"),
                                  inject.get("message", "Simulated error."),
                                  close=inject.get("close"))  # fmt: skip
        return JSONResponse(self.faults.__dict__)

    async def _connections_endpoint(self, request: Request) -> JSONResponse:
        return JSONResponse(
            [
                {"path": c.path, "query": c.query, "accepted": c.accepted,
                 "rejected_status": c.rejected_status, "close_code": c.close_code,
                 "received_types": c.received_types()}
                for c in self.connections
            ]
        )  # fmt: skip


def _bad_request(message: str, param: str | None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": param,
                   "code": "invalid_value"}},
        status_code=400,
    )  # fmt: skip


def run_openai_sim(
    host: str = "127.0.0.1",
    port: int = 8765,
    keys: Iterable[str] = ("sk-test",),
    pace: float = 1.0,
    transcript: str | None = None,
    pocketsphinx: bool = False,
    grammar: str | None = None,
    tool_triggers: Iterable[ToolTrigger] = (),
) -> None:
    """Run the simulator until interrupted (the `voxgate simulate openai` CLI verb)."""

    sim = OpenAISimulator(
        keys, host=host, port=port, pace=pace, transcript=transcript,
        pocketsphinx=pocketsphinx, grammar=grammar, record_audio=False,
        tool_triggers=tool_triggers,
    )  # fmt: skip

    def ready(sim: OpenAISimulator) -> None:
        print(f"OpenAI Realtime GA simulator on {sim.url} (REST {sim.api_base})", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(sim.serve_forever(ready))


def main(argv: list[str] | None = None) -> None:
    """`python -m voxgate.testing.openai_sim --port 8765 --key sk-test --pace 1`."""
    import argparse

    parser = argparse.ArgumentParser(description="OpenAI Realtime GA simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--key", action="append", help="accepted API key (repeatable)")
    parser.add_argument("--pace", type=float, default=1.0, help="4.0 = four times real time")
    parser.add_argument("--transcript", help="what the simulator hears for every utterance")
    parser.add_argument("--pocketsphinx", action="store_true", help="recognise speech for real")
    parser.add_argument("--grammar", help="JSGF grammar file for pocketsphinx")
    parser.add_argument(
        "--tool-trigger", action="append", default=[], metavar="PHRASE=NAME:JSON",
        help="call the tool NAME with the JSON arguments when the user says PHRASE (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    triggers = []
    for spec in args.tool_trigger:
        phrase, _, call = spec.partition("=")
        name, _, arguments = call.partition(":")
        if not phrase or not name:
            parser.error(f"--tool-trigger {spec!r}: expected PHRASE=NAME:JSON")
        triggers.append(ToolTrigger.one(phrase, name, orjson.loads(arguments or "{}")))
    run_openai_sim(
        args.host, args.port, args.key or ["sk-test"], args.pace, args.transcript,
        args.pocketsphinx or bool(args.grammar), args.grammar, triggers,
    )  # fmt: skip


if __name__ == "__main__":
    main()


__all__ = [
    "OpenAISimulator",
    "SimConnection",
    "SimFaults",
    "ToolTrigger",
    "default_responder",
    "error_event",
    "main",
    "pocketsphinx_transcriber",
    "run_openai_sim",
]
