"""The engine seam: one small abstract class that every conversation engine implements.

The gateway session drives a `ConversationEngine` and reads its `EngineEvent`s; it never imports
a provider. Engines know nothing about client sockets, auth or storage.

Audio contract: `send_audio` takes PCM16 LE mono at `capabilities.input_rate`, and `AudioOut`
events carry PCM16 at `capabilities.output_rate`. Both rates are the engine's native ones and are
final once `start()` returns; the session resamples between them and the client's rates, so an
engine never deals with client rates (and the common 24 kHz case costs nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, Self

from voxgate.pcm_b64 import Base64PCM

if TYPE_CHECKING:
    from voxgate.config import Settings

EngineStatus = Literal["disconnected", "connecting", "connected", "reconnecting"]
Role = Literal["user", "assistant"]
#: Roles of the turns a conversation remembers: a tool call and its result are one `tool` turn.
HistoryRole = Literal["user", "assistant", "tool"]
#: How an engine honours `interrupt`: "exact" stops the provider's answer where the listener
#: stopped hearing it; "advisory" stops what reaches the client and records the heard text,
#: while the provider's model yields on its own (it cannot be told to stop).
InterruptKind = Literal["exact", "advisory"]


@dataclass(slots=True)
class Capabilities:
    audio_in: bool = True
    audio_out: bool = True
    tools: bool = False
    server_vad: bool = True
    input_rate: int = 24000
    output_rate: int = 24000
    #: `commit` and `turnDetection.mode: "manual"` work. False for engines whose model decides
    #: every turn itself: there a commit is refused with a non-fatal error, not faked.
    manual_turns: bool = True
    interrupt: InterruptKind = "exact"
    #: The gateway may steer turns: the engine holds back its own replies and its own barge-in
    #: when told (`set_turn_control`) and answers on request (`respond`). Without it the
    #: provider decides when the assistant speaks and stops, and the gateway can only stop it
    #: (`interrupt`) and end a user turn (`commit`); `hold` and the interruption policy are
    #: refused for such an engine with a sentence, never silently ignored.
    turn_control: bool = False

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "audioIn": d["audio_in"],
            "audioOut": d["audio_out"],
            "tools": d["tools"],
            "serverVad": d["server_vad"],
            "manualTurns": d["manual_turns"],
            "interrupt": d["interrupt"],
            "turnControl": d["turn_control"],
        }


@dataclass(slots=True)
class TurnDetectionOptions:
    mode: Literal["server_vad", "manual"] = "server_vad"
    threshold: float | None = None  # 0..1, engine-specific meaning (VAD sensitivity)
    silence_ms: int | None = None
    prefix_ms: int | None = None
    #: Engines with `Capabilities.turn_control` start with these (see `set_turn_control`).
    auto_respond: bool = True
    auto_interrupt: bool = True


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: what `StartOptions.tools` lists for the engine to declare
    in the provider's own shape."""

    name: str
    description: str
    #: JSON Schema of the arguments object.
    parameters: dict[str, Any]


@dataclass(slots=True)
class ToolExchange:
    """One tool call and what the model was given back, as a conversation remembers it."""

    call_id: str
    name: str
    arguments: str  # the JSON text the model produced
    output: str | None = None  # None while the call runs


@dataclass(slots=True)
class HistoryTurn:
    """A prior turn replayed into an engine (resume, reconnect) so the assistant remembers."""

    role: HistoryRole
    text: str
    #: For a `tool` turn: the call and its output (`text` is a readable summary of them).
    tool: ToolExchange | None = None


@dataclass(slots=True)
class StartOptions:
    instructions: str | None = None
    voice: str | None = None
    personality: dict[str, int] | None = None
    turn_detection: TurnDetectionOptions = field(default_factory=TurnDetectionOptions)
    #: The client's rates. Informational: engines produce and consume their native rates.
    input_rate: int = 24000
    output_rate: int = 24000
    history: list[HistoryTurn] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    session_id: str | None = None
    #: Tools the model may call (engines with `Capabilities.tools`); each call arrives as a
    #: `ToolCall` event and is answered with `send_tool_result`.
    tools: list[ToolSpec] = field(default_factory=list)

    def system_prompt(self, default: str = "You are a helpful, concise voice assistant.") -> str:
        """Instructions plus the personality traits as plain sentences."""
        parts = [self.instructions.strip() if self.instructions else default]
        traits = personality_text(self.personality)
        if traits:
            parts.append(traits)
        return "\n\n".join(parts)


_TRAIT_WORDS: dict[str, tuple[str, str, str]] = {
    # trait: (low, middle, high)
    "playfulness": ("serious and focused", "lightly playful", "very playful and lively"),
    "empathy": ("matter-of-fact", "considerate", "warm and deeply empathetic"),
    "humor": ("without jokes", "with occasional gentle humor", "funny, with frequent humor"),
    "intelligence": ("simple and plain-spoken", "clear and knowledgeable", "expert, precise and insightful"),
    "supportiveness": ("neutral", "encouraging", "highly supportive and reassuring"),
}


def personality_text(personality: dict[str, int] | None) -> str:
    """Turn 0-100 traits into one instruction sentence (engines put it in the system prompt)."""
    if not personality:
        return ""
    phrases = []
    for trait, (low, mid, high) in _TRAIT_WORDS.items():
        value = personality.get(trait)
        if value is None:
            continue
        word = low if value < 34 else mid if value < 67 else high
        phrases.append(f"{word} ({trait} {int(value)}/100)")
    if not phrases:
        return ""
    return "Personality: be " + "; ".join(phrases) + "."


# --------------------------------------------------------------------------------------------
# Events (engine -> session). Small slotted dataclasses: audio events are on the hot path.
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class StatusChanged:
    status: EngineStatus
    reason: str | None = None


@dataclass(slots=True)
class AssistantSpeaking:
    is_speaking: bool


@dataclass(slots=True)
class UserSpeaking:
    is_speaking: bool
    #: The user item this speech becomes (its transcripts carry the same id), when known.
    item_id: str | None = None


@dataclass(slots=True)
class Transcript:
    role: Role
    item_id: str
    text: str  # everything so far for this item
    delta: str  # what is new
    final: bool


@dataclass(slots=True)
class AudioOut:
    #: PCM16 at capabilities.output_rate: bytes, or the provider's base64 text kept as it came
    #: (`Base64PCM`, for a JSON client to get without a decode and re-encode).
    audio: bytes | Base64PCM
    item_id: str

    @property
    def pcm16(self) -> bytes:
        audio = self.audio
        return audio if isinstance(audio, bytes) else audio.pcm


@dataclass(slots=True)
class ResponseDone:
    response_id: str
    status: Literal["completed", "cancelled", "failed"]
    usage: dict[str, Any] | None = None


@dataclass(slots=True)
class Interrupted:
    item_id: str
    played_ms: int
    #: What the listener actually heard, when the engine knows (ElevenLabs correction, cascade
    #: sentence tracking); otherwise the session estimates it from played_ms.
    heard_text: str | None = None


@dataclass(slots=True)
class InputAudioDropped:
    """The upstream has been away so long that the user audio kept for it overflowed: the
    oldest is being dropped and only the newest `kept_s` seconds will reach the provider.
    Emitted once per reconnect; the session tells the client (the session survives)."""

    kept_s: float


@dataclass(slots=True)
class ToolCall:
    """The model calls a tool. The session runs it and answers with `send_tool_result`; the
    engine asks the model to go on once every call of the response is answered."""

    call_id: str
    name: str
    arguments: str  # JSON text, as the model produced it (it may not be valid JSON)


@dataclass(slots=True)
class EngineError:
    code: str  # a protocol ErrorCode value
    message: str
    fatal: bool = False


EngineEvent = (
    StatusChanged
    | AssistantSpeaking
    | UserSpeaking
    | Transcript
    | AudioOut
    | ResponseDone
    | Interrupted
    | InputAudioDropped
    | ToolCall
    | EngineError
)

#: What a reconnecting engine reports about the user audio it kept for the provider:
#: "buffered" (entered the buffer), "replayed" (reached the new upstream), "overflow" (oldest
#: dropped past the limit), "discarded" (thrown away because the reconnect failed).
HeldAudioKind = Literal["buffered", "replayed", "overflow", "discarded"]


class EngineConfig(Protocol):
    """A frozen view of the settings one engine reads."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Self: ...

    def problem(self) -> str | None:
        """Why sessions could not start with this view (a sentence), or None. Cheap."""
        ...


class CapabilityMissing(RuntimeError):
    """The gateway asked an engine for something its `capabilities` say it does not have (turn
    control, tools). The session checks the capabilities first and answers the client itself
    (`unsupported`, or no tools offered), so reaching one is a bug in the gateway, reported
    loudly rather than silently ignored."""


class EngineUnavailable(Exception):
    """Raised by `start()` when the engine cannot run at all (missing binary, no key, breaker).

    The session reports it as `engine_unavailable` (or `upstream_unavailable` when `upstream`
    is true) with this sentence, which must tell the user what to do.
    """

    def __init__(self, message: str, *, upstream: bool = False, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.upstream = upstream
        #: False for errors that retrying cannot fix (invalid key, no quota).
        self.retryable = retryable


class ConversationEngine(ABC):
    """One live conversation with a provider (or the local cascade).

    Lifecycle: `start()` once; then any mix of the input methods while iterating `events()`;
    `stop()` once (idempotent). After a fatal `EngineError` the engine emits nothing further
    and `events()` ends.
    """

    name: str = "engine"
    #: The frozen view of `Settings` the constructor takes (built by `from_settings`).
    config_type: ClassVar[type[EngineConfig]]
    capabilities: Capabilities
    status: EngineStatus = "disconnected"
    is_speaking: bool = False

    #: Bounded, so a stalled consumer slows the engine instead of growing memory.
    EVENT_QUEUE_SIZE = 1024

    def __init__(self) -> None:
        self.capabilities = Capabilities()
        self._events: asyncio.Queue[EngineEvent | None] = asyncio.Queue(self.EVENT_QUEUE_SIZE)
        self._closed = False
        #: Set by the consumer: takes each `AudioOut` at once, in the engine's own task, when
        #: no earlier event is waiting in the queue (so the order is the same), saving the task
        #: switch per frame that `events()` costs. Should it raise, the event goes through the
        #: queue after all, and the consumer meets the failure there, as it would have.
        self.audio_sink: Callable[[AudioOut], None] | None = None
        #: Set by the session: called with (ok, seconds) after each upstream connect attempt.
        self.connect_observer: Callable[[bool, float], None] | None = None
        #: Set by the session: called with (kind, seconds) about audio kept across reconnects.
        self.held_audio_observer: Callable[[HeldAudioKind, float], None] | None = None
        #: Set by the session: called with provider seconds billed since the last call.
        self.billed_observer: Callable[[float], None] | None = None

    # --- configuration --------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """A new, unstarted engine for these settings.

        An engine reads a small frozen view of the settings (`config_type`), never the whole
        `Settings`: what it depends on is visible in one place, and a test can build one.
        """
        return cls(cls.config_type.from_settings(settings))  # type: ignore[call-arg]

    @classmethod
    def availability(cls, settings: Settings) -> str | None:
        """Why sessions would fail to start with these settings (a sentence), or None.

        Must be cheap (no model loads, no network): `/health` and engine choice call it.
        """
        return cls.config_type.from_settings(settings).problem()

    @classmethod
    async def warm_up(cls, settings: Settings) -> None:
        """Load what every session of this engine shares (local models), once, at startup.

        Without it the first session of a process pays the load while its user waits, and a
        browser's early microphone audio may outlast its buffer. Default: nothing to load.
        """
        return None

    @classmethod
    def describe(cls, settings: Settings) -> list[str]:
        """Lines `voxgate serve` logs about which parts of this engine run and why."""
        return []

    # --- input ----------------------------------------------------------------------------
    @abstractmethod
    async def start(self, options: StartOptions) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def send_audio(self, pcm16: bytes) -> None: ...

    async def send_audio_base64(self, audio: Base64PCM) -> None:
        """`send_audio` for audio a JSON client sent as base64 at `capabilities.input_rate`.
        Engines whose provider wants base64 too override it to pass the text on as it is."""
        await self.send_audio(audio.pcm)

    @abstractmethod
    async def commit(self) -> None: ...

    @abstractmethod
    async def send_user_message(self, text: str) -> None: ...

    @abstractmethod
    async def send_context_update(self, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    async def interrupt(self, played_ms: int | None) -> None: ...

    # --- turn control (engines with `capabilities.turn_control`) ----------------------------
    async def set_turn_control(self, *, auto_respond: bool, auto_interrupt: bool) -> None:
        """Whether the engine answers each user turn by itself (`auto_respond`: a finished
        utterance, a `commit`, a typed message) and stops the assistant when the user starts
        speaking over it (`auto_interrupt`). With either off the gateway decides: it calls
        `respond` and `interrupt` itself. Audio, voice activity and transcripts flow as always."""
        raise CapabilityMissing(f"the {self.name} engine has no turn control")

    async def respond(self) -> None:
        """Answer now what the conversation holds (every user turn since the last reply); a
        reply still being generated is replaced, as after `commit`."""
        raise CapabilityMissing(f"the {self.name} engine has no turn control")

    # --- tools (engines with `capabilities.tools`) -------------------------------------------
    async def send_tool_result(
        self, call_id: str, output: str, *, respond: bool = True, is_error: bool = False
    ) -> None:
        """The result of a `ToolCall`: it joins the conversation, and once no call of that
        response is left unanswered the model goes on (unless `respond` is false: the calls
        were cancelled by an interrupt, and the model must wait for the user). `is_error`:
        `output` says why the call failed (providers that mark failures get told)."""
        raise CapabilityMissing(f"the {self.name} engine has no tools")

    async def say_filler(self, text: str) -> bool:
        """Say `text` now ("One moment, please.") while tool calls run, so the user hears no
        dead air; -> whether the engine could (a provider that decides what its agent says
        cannot, and neither can an engine with no call waiting)."""
        return False

    # --- output ---------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def emit(self, event: EngineEvent) -> None:
        if self._closed:
            return
        if type(event) is AudioOut:
            sink = self.audio_sink
            if sink is not None and self._events.empty():
                try:
                    sink(event)
                    return
                except Exception:
                    self.audio_sink = None
        elif isinstance(event, StatusChanged):
            self.status = event.status
        elif isinstance(event, AssistantSpeaking):
            self.is_speaking = event.is_speaking
        await self._events.put(event)
        if isinstance(event, EngineError) and event.fatal:
            self._finish_events()

    def _finish_events(self) -> None:
        """End `events()` for the consumer; further emits are dropped."""
        if self._closed:
            return
        self._closed = True
        try:
            self._events.put_nowait(None)
        except asyncio.QueueFull:
            # Make room for the sentinel: a consumer that stopped reading loses stale events only.
            with contextlib.suppress(asyncio.QueueEmpty):
                self._events.get_nowait()
            self._events.put_nowait(None)

    def report_connect(self, ok: bool, seconds: float) -> None:
        """Engines call this after every upstream connect attempt (start and reconnects).

        The session hooks `connect_observer` up to the circuit breaker and the metrics.
        """
        if self.connect_observer is not None:
            self.connect_observer(ok, seconds)

    def report_billed(self, seconds: float) -> None:
        """Engines billed by duration call this with each increase of the provider's usage;
        the session hooks `billed_observer` up to `voxgate_billed_seconds_total`."""
        if self.billed_observer is not None and seconds > 0:
            self.billed_observer(seconds)

    def report_held_audio(self, kind: HeldAudioKind, seconds: float) -> None:
        """Reconnecting engines' `ReconnectAudioBuffer` calls this once per reconnect and kind;
        the session hooks `held_audio_observer` up to the metrics."""
        if self.held_audio_observer is not None and seconds > 0:
            self.held_audio_observer(kind, seconds)
