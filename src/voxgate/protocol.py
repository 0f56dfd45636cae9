"""The neutral wire protocol v1 between clients and the gateway (`GET /ws`).

JSON text frames plus optional binary audio frames (raw PCM16 little-endian mono at the
negotiated rate). See `docs/protocol.md` for the complete reference with examples.

Parsing is split on purpose: `audio_chunk` (50 frames a second per session) is checked by hand
with no model validation, while control messages (a few per turn) go through pydantic models
whose errors name the offending field. Server messages are typed dicts (orjson serializes them
cheaply), except `audio`, which is assembled as text by `audio_frame`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import Any, Literal, NotRequired, TypedDict

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from voxgate.pcm_b64 import Base64PCM, check_base64

PROTOCOL_VERSION = 1


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    SESSION_LIMIT = "session_limit"
    NOT_STARTED = "not_started"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    SESSION_EXPIRED = "session_expired"
    #: The engine cannot do what was asked (e.g. `hold` on an engine whose provider decides
    #: turns itself); the session goes on without it.
    UNSUPPORTED = "unsupported"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008  # invalid-input flood
    MESSAGE_TOO_BIG = 1009
    INTERNAL = 1011
    UNAUTHORIZED = 4401
    FORBIDDEN_ORIGIN = 4403
    IDLE_TIMEOUT = 4408
    #: The session reached VOXGATE_MAX_SESSION_S: a limit, not inactivity, so the user is told
    #: so (and clients do not reconnect: the same conversation would hit it again).
    SESSION_EXPIRED = 4409
    LIMIT = 4429
    #: A fatal upstream/engine failure. Deliberately not 1011: official SDKs auto-reconnect on
    #: 1001/1005/1006/1011/1012/1013/1015, and reconnecting into a dead provider only loops.
    UPSTREAM_FAILED = 4502
    #: The engine cannot run (circuit breaker open, a local part missing such as espeak-ng).
    ENGINE_UNAVAILABLE = 4503


class ProtocolError(Exception):
    """A client-visible error: a code, a sentence a user can act on, and whether it is fatal."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        fatal: bool = False,
        close_code: int | None = None,
        counts_as_invalid: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.close_code = close_code
        #: Malformed input counts towards the invalid-frame flood limit: a client that keeps
        #: sending garbage is closed instead of getting an error reply for every frame.
        self.counts_as_invalid = counts_as_invalid


def invalid(message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> ProtocolError:
    """A non-fatal error for malformed client input (it counts towards the flood limit)."""
    return ProtocolError(code, message, counts_as_invalid=True)


# --------------------------------------------------------------------------------------------
# Client -> gateway
# --------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Personality(_Model):
    playfulness: int | None = Field(None, ge=0, le=100)
    empathy: int | None = Field(None, ge=0, le=100)
    humor: int | None = Field(None, ge=0, le=100)
    intelligence: int | None = Field(None, ge=0, le=100)
    supportiveness: int | None = Field(None, ge=0, le=100)


#: Turn-taking fields of `turnDetection` (camelCase on the wire); the operator's defaults come
#: from `VOXGATE_TURN_*`.
MAX_BACKCHANNELS = 50


class TurnDetection(_Model):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    mode: Literal["server_vad", "manual"] = "server_vad"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    silence_ms: int | None = Field(None, alias="silenceMs", ge=20, le=10_000)
    prefix_ms: int | None = Field(None, alias="prefixMs", ge=0, le=5_000)
    # --- the gateway's turn arbiter (see `gateway.neutral.arbiter`) ---
    min_silence_ms: int | None = Field(None, alias="minSilenceMs", ge=0, le=10_000)
    max_utterance_ms: int | None = Field(None, alias="maxUtteranceMs", ge=0, le=600_000)
    interrupt_min_ms: int | None = Field(None, alias="interruptMinMs", ge=0, le=5_000)
    interrupt_min_words: int | None = Field(None, alias="interruptMinWords", ge=0, le=20)
    backchannels: list[str] | None = Field(None, max_length=MAX_BACKCHANNELS)
    false_interruption_ms: int | None = Field(
        None, alias="falseInterruptionMs", ge=200, le=10_000
    )

    @field_validator("backchannels")
    @classmethod
    def _short_words(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(len(word) > 40 for word in value):
            raise ValueError("backchannels: each entry must be at most 40 characters")
        return value

    @field_validator("max_utterance_ms")
    @classmethod
    def _sensible_limit(cls, value: int | None) -> int | None:
        if value is not None and 0 < value < 1000:
            raise ValueError("maxUtteranceMs must be 0 (no limit) or at least 1000")
        return value

    def model_fields_set_wire(self) -> set[str]:
        """The known fields the client gave, by their wire (camelCase) names."""
        fields = type(self).model_fields
        return {fields[name].alias or name for name in self.model_fields_set if name in fields}

    def unknown_fields(self) -> list[str]:
        """Fields the client sent that this version does not know (they are ignored, and the
        client is told so: a misspelt `maxUtteranceMS` must not pass silently)."""
        return sorted(self.model_extra or {})


SUPPORTED_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
#: `start.metadata` is stored with the conversation and listed with it: bounded, so one user
#: cannot make every page of `GET /api/conversations` megabytes long.
MAX_METADATA_BYTES = 4096
#: A `context_update` payload reaches the model like a typed message, and is bounded like one.
MAX_CONTEXT_BYTES = 16_000


def _json_within(value: dict[str, Any] | None, limit: int, what: str) -> dict[str, Any] | None:
    if value is not None and len(orjson.dumps(value)) > limit:
        raise ValueError(f"{what} must be at most {limit} bytes as JSON")
    return value


#: Most tools one client may offer in `start.tools`, and the largest declaration of one.
MAX_CLIENT_TOOLS = 64
MAX_TOOL_DECLARATION_BYTES = 16_000


class ClientTool(_Model):
    """A tool the client offers (`start.tools`): it runs in the client, which answers each
    `tool_call` with a `tool_result`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = Field("", max_length=4000)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    @field_validator("parameters")
    @classmethod
    def _bounded_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _json_within(value, MAX_TOOL_DECLARATION_BYTES, "parameters") or {}


class StartMessage(_Model):
    type: Literal["start"] = "start"
    engine: str | None = None
    #: The engine's model, for engines that take one (openai: the realtime model), within
    #: VOXGATE_ALLOWED_MODELS and the token's `models` claim.
    model: str | None = Field(None, min_length=1, max_length=100)
    instructions: str | None = Field(None, max_length=32_000)
    voice: str | None = Field(None, max_length=100)
    personality: Personality | None = None
    turn_detection: TurnDetection | None = Field(None, alias="turnDetection")
    input_rate: int = Field(24000, alias="inputRate")
    output_rate: int = Field(24000, alias="outputRate")
    binary: bool = False
    conversation_id: str | None = Field(None, alias="conversationId", max_length=64)
    metadata: dict[str, Any] | None = None
    tools: list[ClientTool] | None = Field(None, max_length=MAX_CLIENT_TOOLS)

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, value: list[ClientTool] | None) -> list[ClientTool] | None:
        if value is not None:
            names = [tool.name for tool in value]
            for name in names:
                if names.count(name) > 1:
                    raise ValueError(f"tools: the name '{name}' is declared twice")
        return value

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _json_within(value, MAX_METADATA_BYTES, "metadata")

    def model_post_init(self, __context: Any) -> None:
        for name, rate in (("inputRate", self.input_rate), ("outputRate", self.output_rate)):
            if rate not in SUPPORTED_RATES:
                raise ValueError(f"{name} must be one of {list(SUPPORTED_RATES)}, got {rate}")


class UserMessage(_Model):
    type: Literal["user_message"] = "user_message"
    text: str = Field(min_length=1, max_length=16_000)


class ContextUpdateMessage(_Model):
    type: Literal["context_update"] = "context_update"
    payload: dict[str, Any]

    @field_validator("payload")
    @classmethod
    def _bounded_payload(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _json_within(value, MAX_CONTEXT_BYTES, "payload") or {}


class InterruptMessage(_Model):
    type: Literal["interrupt"] = "interrupt"
    played_ms: int | None = Field(None, alias="playedMs", ge=0)


class _Strict(BaseModel):
    """Messages added with the turn arbiter refuse unknown fields: `allow_next` with a
    misspelt `respnd` must not quietly do the opposite of what was meant."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class HoldMessage(_Strict):
    type: Literal["hold"] = "hold"


class AllowNextMessage(_Strict):
    type: Literal["allow_next"] = "allow_next"
    respond: bool = False


class BargeInMessage(_Strict):
    type: Literal["barge_in"] = "barge_in"
    played_ms: int | None = Field(None, alias="playedMs", ge=0)


class ToolResultMessage(_Strict):
    """The client's answer to a `tool_call`: `output` (any JSON) or `error` (a sentence)."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str = Field(alias="callId", min_length=1, max_length=128)
    output: Any = None
    error: str | None = Field(None, max_length=4000)

    def model_post_init(self, __context: Any) -> None:
        given = self.model_fields_set
        if ("output" in given) == ("error" in given):
            raise ValueError("give exactly one of 'output' and 'error'")


class PingMessage(_Model):
    type: Literal["ping"] = "ping"
    id: str | int | None = None


class SimpleMessage(_Model):
    """`commit` and `stop`: a type and nothing else."""

    type: Literal["commit", "stop"]


class AudioChunk:
    """A microphone chunk, still base64 (`audio`, checked by `parse`, decoded only on demand:
    see `voxgate.pcm_b64`); plain class, no validation beyond what `parse` did."""

    __slots__ = ("audio",)
    type = "audio_chunk"

    def __init__(self, audio: Base64PCM) -> None:
        self.audio = audio

    @property
    def pcm16(self) -> bytes:
        return self.audio.pcm


ClientMessage = (
    StartMessage
    | UserMessage
    | ContextUpdateMessage
    | InterruptMessage
    | HoldMessage
    | AllowNextMessage
    | BargeInMessage
    | ToolResultMessage
    | PingMessage
    | SimpleMessage
    | AudioChunk
)

_CONTROL_MODELS: dict[str, type[BaseModel]] = {
    "start": StartMessage,
    "user_message": UserMessage,
    "context_update": ContextUpdateMessage,
    "interrupt": InterruptMessage,
    "hold": HoldMessage,
    "allow_next": AllowNextMessage,
    "barge_in": BargeInMessage,
    "tool_result": ToolResultMessage,
    "ping": PingMessage,
    "commit": SimpleMessage,
    "stop": SimpleMessage,
}

CLIENT_TYPES = frozenset([*_CONTROL_MODELS, "audio_chunk"])


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "message"


def _describe(error: ValidationError, msg_type: str) -> str:
    first = error.errors(include_url=False)[0]
    field = _field_path(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "missing":
        return f"{msg_type}: field '{field}' is required"
    if kind == "extra_forbidden":
        return f"{msg_type}: unknown field '{field[:40]}'; the message was ignored"
    if kind == "value_error":
        return f"{msg_type}: {first.get('msg', 'invalid value').removeprefix('Value error, ')}"
    return f"{msg_type}: field '{field}' {first.get('msg', 'is invalid').lower()}"


def pcm16_base64(data: Any, field: str = "pcm16Base64") -> Base64PCM:
    """Check base64 PCM16 without decoding it: what `base64.b64decode(validate=True)` refuses
    is refused here too, and so is an odd byte count."""
    if not isinstance(data, str):
        raise invalid(f"audio_chunk: field '{field}' must be a base64 string")
    audio = check_base64(data)
    if audio is None:
        raise invalid(f"audio_chunk: field '{field}' is not valid base64")
    if audio.nbytes & 1:
        raise odd_pcm16(audio.nbytes)
    return audio


def odd_pcm16(nbytes: int) -> ProtocolError:
    """The error for audio that cannot be PCM16 (binary frames check their length inline)."""
    return invalid(f"audio: PCM16 needs an even number of bytes (2 per sample), got {nbytes}")


def parse_client_text(text: str | bytes) -> ClientMessage:
    """Parse one JSON text frame from a client. Raises `ProtocolError` with a clear sentence."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid("the frame is not valid JSON", ErrorCode.INVALID_JSON) from None
    if not isinstance(data, dict):
        raise invalid("a message must be a JSON object with a 'type' field")
    msg_type = data.get("type")
    if not isinstance(msg_type, str):
        raise invalid("a message must have a string 'type' field")
    if msg_type == "audio_chunk":
        return AudioChunk(pcm16_base64(data.get("pcm16Base64")))
    model = _CONTROL_MODELS.get(msg_type)
    if model is None:
        raise invalid(
            f"unknown message type '{msg_type[:40]}'; expected one of {sorted(CLIENT_TYPES)}",
            ErrorCode.UNKNOWN_TYPE,
        )
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        raise invalid(_describe(exc, msg_type)) from None
    except ValueError as exc:
        raise invalid(f"{msg_type}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Gateway -> client. Typed dicts serialized with orjson: cheap, and checked by mypy.
# --------------------------------------------------------------------------------------------


class AudioFormat(TypedDict):
    format: Literal["pcm16"]
    rate: int


class SessionReadyMessage(TypedDict):
    type: Literal["session_ready"]
    sessionId: str
    conversationId: str
    engine: str
    protocol: int
    capabilities: dict[str, Any]
    inputAudio: AudioFormat
    outputAudio: AudioFormat
    binary: bool
    #: The turn arbiter's settings for this session (`start.turnDetection` over the
    #: operator's defaults), as the engine can follow them.
    turnTaking: NotRequired[dict[str, Any]]
    #: Names of the tools the model may call in this session (server tools, then the client's).
    tools: NotRequired[list[str]]


class StatusMessage(TypedDict):
    type: Literal["status"]
    status: str
    reason: NotRequired[str]


class SpeakingMessage(TypedDict):
    type: Literal["speaking"]
    isSpeaking: bool
    #: Binary audio frames that follow belong to this item.
    itemId: NotRequired[str]


class UserSpeakingMessage(TypedDict):
    type: Literal["user_speaking"]
    isSpeaking: bool


class TranscriptMessage(TypedDict):
    type: Literal["transcript"]
    role: str
    itemId: str
    text: str
    delta: str
    final: bool


class ResponseDoneMessage(TypedDict):
    type: Literal["response_done"]
    responseId: str
    status: str
    usage: NotRequired[dict[str, Any]]


class InterruptedMessage(TypedDict):
    type: Literal["interrupted"]
    itemId: str
    playedMs: int


class ErrorMessage(TypedDict):
    type: Literal["error"]
    code: str
    message: str
    fatal: bool


class PongMessage(TypedDict):
    type: Literal["pong"]
    id: NotRequired[str | int]


class BackpressureMessage(TypedDict):
    type: Literal["backpressure"]
    paused: bool


#: What a `turn` message reports: who has the floor, and the app's hold on the assistant.
TurnEvent = Literal[
    "user_turn_started",
    "user_turn_ended",
    "assistant_turn_started",
    "assistant_turn_ended",
    "assistant_paused",
    "assistant_resumed",
    "held",
    "released",
]


class TurnMessage(TypedDict):
    type: Literal["turn"]
    event: TurnEvent
    reason: NotRequired[str]
    itemId: NotRequired[str]


class ToolCallMessage(TypedDict):
    type: Literal["tool_call"]
    callId: str
    name: str
    arguments: Any


ToolStatus = Literal["running", "done", "error", "cancelled"]


class ToolStatusMessage(TypedDict):
    type: Literal["tool_status"]
    callId: str
    name: str
    status: ToolStatus
    #: Milliseconds since the call started (0 for `running`).
    ms: int
    #: For `error` and `cancelled`: why, in a sentence.
    error: NotRequired[str]


#: Every server message but `audio`, which never exists as a dict (see `audio_frame`).
ServerMessage = (
    SessionReadyMessage
    | StatusMessage
    | SpeakingMessage
    | UserSpeakingMessage
    | TranscriptMessage
    | ResponseDoneMessage
    | InterruptedMessage
    | ErrorMessage
    | PongMessage
    | BackpressureMessage
    | TurnMessage
    | ToolCallMessage
    | ToolStatusMessage
)


def encode(message: Mapping[str, Any]) -> str:
    return orjson.dumps(message).decode()


_AUDIO_HEAD = '{"type":"audio","chunkBase64":"'
_b64encode = base64.b64encode


def audio_frame_tail(item_id: str) -> str:
    """The end of every JSON `audio` message of one item: build it once per item."""
    return '","itemId":' + orjson.dumps(item_id).decode() + "}"


def audio_frame_base64(b64: str, tail: str) -> str:
    """`audio_frame` for audio that is base64 already (checked: `voxgate.pcm_b64`)."""
    return _AUDIO_HEAD + b64 + tail


def audio_frame(pcm16: bytes, tail: str) -> str:
    """One JSON `audio` message, `{"type":"audio","chunkBase64":...,"itemId":...}`, as text.

    Assembled by hand rather than through a dict and orjson: it is sent 50 times a second per
    session, and the item's part (`audio_frame_tail`) does not change between frames.
    """
    return _AUDIO_HEAD + _b64encode(pcm16).decode() + tail


def session_ready(
    *,
    session_id: str,
    conversation_id: str,
    engine: str,
    capabilities: dict[str, Any],
    input_rate: int,
    output_rate: int,
    binary: bool,
    turn_taking: dict[str, Any] | None = None,
    tools: list[str] | None = None,
) -> SessionReadyMessage:
    msg: SessionReadyMessage = {
        "type": "session_ready",
        "sessionId": session_id,
        "conversationId": conversation_id,
        "engine": engine,
        "protocol": PROTOCOL_VERSION,
        "capabilities": capabilities,
        "inputAudio": {"format": "pcm16", "rate": input_rate},
        "outputAudio": {"format": "pcm16", "rate": output_rate},
        "binary": binary,
    }
    if turn_taking is not None:
        msg["turnTaking"] = turn_taking
    if tools is not None:
        msg["tools"] = tools
    return msg


def status_message(status: str, reason: str | None = None) -> StatusMessage:
    msg: StatusMessage = {"type": "status", "status": status}
    if reason:
        msg["reason"] = reason
    return msg


def speaking_message(is_speaking: bool, item_id: str | None = None) -> SpeakingMessage:
    msg: SpeakingMessage = {"type": "speaking", "isSpeaking": is_speaking}
    if item_id is not None:
        msg["itemId"] = item_id
    return msg


def user_speaking_message(is_speaking: bool) -> UserSpeakingMessage:
    return {"type": "user_speaking", "isSpeaking": is_speaking}


def transcript_message(
    role: str, item_id: str, text: str, delta: str, final: bool
) -> TranscriptMessage:
    return {
        "type": "transcript",
        "role": role,
        "itemId": item_id,
        "text": text,
        "delta": delta,
        "final": final,
    }


def response_done_message(
    response_id: str, status: str, usage: dict[str, Any] | None = None
) -> ResponseDoneMessage:
    msg: ResponseDoneMessage = {"type": "response_done", "responseId": response_id, "status": status}
    if usage is not None:
        msg["usage"] = usage
    return msg


def interrupted_message(item_id: str, played_ms: int) -> InterruptedMessage:
    return {"type": "interrupted", "itemId": item_id, "playedMs": played_ms}


def error_message(code: ErrorCode | str, message: str, *, fatal: bool = False) -> ErrorMessage:
    return {"type": "error", "code": str(code), "message": message, "fatal": fatal}


def pong_message(ping_id: str | int | None) -> PongMessage:
    msg: PongMessage = {"type": "pong"}
    if ping_id is not None:
        msg["id"] = ping_id
    return msg


def backpressure_message(paused: bool) -> BackpressureMessage:
    return {"type": "backpressure", "paused": paused}


def turn_message(
    event: TurnEvent, reason: str | None = None, item_id: str | None = None
) -> TurnMessage:
    msg: TurnMessage = {"type": "turn", "event": event}
    if reason:
        msg["reason"] = reason
    if item_id:
        msg["itemId"] = item_id
    return msg


def tool_call_message(call_id: str, name: str, arguments: Any) -> ToolCallMessage:
    return {"type": "tool_call", "callId": call_id, "name": name, "arguments": arguments}


def tool_status_message(
    call_id: str, name: str, status: ToolStatus, ms: int, error: str | None = None
) -> ToolStatusMessage:
    msg: ToolStatusMessage = {
        "type": "tool_status", "callId": call_id, "name": name, "status": status, "ms": ms,
    }  # fmt: skip
    if error:
        msg["error"] = error
    return msg


SERVER_TYPES = frozenset(
    [
        "session_ready",
        "status",
        "speaking",
        "user_speaking",
        "transcript",
        "audio",
        "response_done",
        "interrupted",
        "error",
        "pong",
        "backpressure",
        "turn",
        "tool_call",
        "tool_status",
    ]
)
