"""The steps of a `start` on `/ws`, in order: which engine, what history, may it connect,
with which options, and the engine's start itself.

Each step refuses with a `ProtocolError` that says what to change; the session runs them and
keeps the results. They are functions of the gateway state and the message, not of the session,
so each reads as the one decision it makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from voxgate import protocol as P
from voxgate.config import Settings
from voxgate.engines.base import (
    ConversationEngine,
    EngineUnavailable,
    HeldAudioKind,
    HistoryTurn,
    StartOptions,
    TurnDetectionOptions,
)
from voxgate.gateway.auth import Identity
from voxgate.gateway.choices import default_engine, engines_for
from voxgate.gateway.compat.policy import COMPAT_ENGINE as MODEL_ENGINE
from voxgate.gateway.compat.policy import Violation, check_model, default_model
from voxgate.gateway.limits import CircuitBreaker
from voxgate.gateway.neutral.arbiter import TurnPolicy
from voxgate.gateway.state import GatewayState
from voxgate.protocol import CloseCode, ErrorCode, ProtocolError
from voxgate.store.base import ConversationRecord, UserSettings
from voxgate.tools.record import tool_history_turn


def choose_engine(
    settings: Settings, requested: str | None, identity: Identity, preferred: str | None = None
) -> str:
    """The engine `start` asked for (or the default), if the server and this user allow it.

    A `start` that names none gets the user's saved engine (`preferred`) while they may still
    use it, else the server's default when they may use it, else the first of their engines
    the server allows (a token's `engines` claim can leave the default out).
    """
    allowed = engines_for(settings, identity)
    default = default_engine(settings, allowed, preferred)
    if default is None:
        raise ProtocolError(
            ErrorCode.ENGINE_UNAVAILABLE,
            "none of the engines your token allows is enabled on this server",
            fatal=True,
            close_code=CloseCode.ENGINE_UNAVAILABLE,
        )
    name = requested or default
    if name not in allowed:
        whose = "for this user" if identity.engines is not None else "here"
        raise P.invalid(f"start: engine '{name}' is not allowed {whose}; allowed: {', '.join(allowed)}")
    return name


def choose_model(
    settings: Settings, requested: str | None, identity: Identity, engine_name: str
) -> str | None:
    """The model `start` asked for, or the user's default; None: the engine's configured one.

    Only the openai engine takes a model (its realtime model), bounded like the compatible
    endpoints: VOXGATE_ALLOWED_MODELS, narrowed by the token's `models` claim.
    """
    if engine_name != MODEL_ENGINE:
        if requested is not None:
            raise P.invalid(
                f"start: the {engine_name} engine does not take a model ('model' picks the "
                f"{MODEL_ENGINE} engine's realtime model)"
            )
        return None
    if requested is None and identity.models is None:
        return None  # the configured model, as before there were per-user models
    model: str | Violation = requested or default_model(settings, identity.models)
    bad = model if isinstance(model, Violation) else check_model(settings, model, "model", identity.models)
    if bad is not None:
        raise P.invalid(f"start: {bad.message}")
    return model if isinstance(model, str) else None


def engine_settings(settings: Settings, model: str | None) -> Settings:
    """The settings the engine is built from: the chosen model in place of the configured one."""
    if model is None:
        return settings
    return settings.model_copy(update={"openai_realtime_model": model})


async def saved_settings(state: GatewayState, identity: Identity) -> UserSettings:
    """A signed-in user's saved settings (empty for anonymous users and for new ones)."""
    if identity.anonymous:
        return UserSettings(identity.user_id)
    return await state.store.get_user_settings(identity.user_id) or UserSettings(identity.user_id)


async def resume(
    state: GatewayState, identity: Identity, conversation_id: str | None
) -> tuple[ConversationRecord | None, list[HistoryTurn]]:
    """The conversation to continue and the turns the engine should remember (none for new)."""
    if not conversation_id:
        return None, []
    record = await state.store.get_conversation(conversation_id, with_turns=True)
    if record is None or (
        state.authenticator.enabled and record.user_id != identity.user_id and not identity.is_admin
    ):
        # Somebody else's conversation reads as a missing one: ids are not to be probed.
        raise P.invalid(f"start: conversation '{conversation_id}' was not found")
    history: list[HistoryTurn] = []
    for turn in record.turns:
        if turn.role == "tool":
            # A tool call and its output, given back to the model (engines with tools).
            if (tool_turn := tool_history_turn(turn.item_id, turn.text)) is not None:
                history.append(tool_turn)
        elif text := turn.remembered_text:
            history.append(HistoryTurn(turn.role, text))
    return record, history


def pass_breaker(state: GatewayState, engine_name: str) -> CircuitBreaker:
    """The engine's circuit breaker, if it lets a session through.

    Run it last among the checks: a half-open breaker lets exactly one trial through, and a
    trial refused for another reason (say, an unknown conversationId) would never report an
    outcome.
    """
    breaker = state.breaker(engine_name)
    if not breaker.allow():
        raise ProtocolError(
            ErrorCode.ENGINE_UNAVAILABLE,
            f"the {engine_name} engine is failing to connect; new sessions are paused for "
            f"{max(1.0, breaker.retry_after_s()):.0f} s (circuit breaker open)",
            fatal=True,
            close_code=CloseCode.ENGINE_UNAVAILABLE,
        )
    return breaker


def start_options(
    saved: UserSettings, session_id: str, msg: P.StartMessage, history: list[HistoryTurn]
) -> StartOptions:
    """What the engine starts with: the message, and a signed-in user's saved settings for
    what the message leaves out."""
    personality = msg.personality.model_dump(exclude_none=True) if msg.personality else None
    td = msg.turn_detection
    turn_detection = (
        TurnDetectionOptions(
            mode=td.mode, threshold=td.threshold, silence_ms=td.silence_ms, prefix_ms=td.prefix_ms
        )
        if td
        else TurnDetectionOptions()
    )
    return StartOptions(
        instructions=msg.instructions if msg.instructions is not None else saved.instructions,
        voice=msg.voice if msg.voice is not None else saved.voice,
        personality=personality if personality is not None else saved.personality,
        turn_detection=turn_detection,
        input_rate=msg.input_rate,
        output_rate=msg.output_rate,
        history=history,
        metadata=msg.metadata,
        session_id=session_id,
    )


def turn_policy(
    settings: Settings, msg: P.StartMessage, engine: ConversationEngine
) -> tuple[TurnPolicy, list[tuple[ErrorCode, str]]]:
    """The session's turn-taking: the operator's `VOXGATE_TURN_*` under the client's
    `turnDetection`, as far as the engine can follow it; and what to tell the client about
    the rest (non-fatal errors after `session_ready`: nothing is dropped silently)."""
    td = msg.turn_detection
    policy = TurnPolicy.from_settings(settings, td)
    notes: list[tuple[ErrorCode, str]] = []
    if td is not None and (unknown := td.unknown_fields()):
        names = ", ".join(f"'{name[:40]}'" for name in unknown[:5])
        notes.append((ErrorCode.BAD_REQUEST, f"start: unknown turnDetection field {names}; ignored"))
    if not engine.capabilities.turn_control:
        policy, dropped = policy.without_turn_control()
        asked = [name for name in dropped if td is not None and name in td.model_fields_set_wire()]
        if asked:
            notes.append((
                ErrorCode.UNSUPPORTED,
                f"start: the {engine.name} engine decides turns on its side (its provider "
                f"answers and stops by itself), so turnDetection {', '.join(asked)} cannot be "
                "applied; the session goes on without it",
            ))  # fmt: skip
    return policy, notes


def connect_observer(
    state: GatewayState, breaker: CircuitBreaker, engine_name: str
) -> Callable[[bool, float], None]:
    """What the engine reports each upstream connect to: its breaker and the metrics."""
    histogram = state.metrics.upstream_connect_seconds

    def observe(ok: bool, seconds: float) -> None:
        breaker.record(ok)
        histogram.labels(engine_name, "ok" if ok else "error").observe(seconds)

    return observe


def held_audio_observer(state: GatewayState, engine_name: str) -> Callable[[HeldAudioKind, float], None]:
    """Where the engine reports the user audio it kept across a reconnect: the metrics."""
    m = state.metrics
    counters = {
        "buffered": m.reconnect_audio_buffered_seconds.labels(engine_name),
        "replayed": m.reconnect_audio_replayed_seconds.labels(engine_name),
        "overflow": m.reconnect_audio_dropped_seconds.labels(engine_name, "overflow"),
        "discarded": m.reconnect_audio_dropped_seconds.labels(engine_name, "reconnect_failed"),
    }

    def observe(kind: HeldAudioKind, seconds: float) -> None:
        counters[kind].inc(seconds)

    return observe


def billed_observer(state: GatewayState, engine_name: str) -> Callable[[float], None]:
    """Where the engine reports provider time billed by duration: the metrics."""
    counter = state.metrics.billed_seconds.labels(engine_name)
    return counter.inc


async def start_engine(
    engine: ConversationEngine,
    options: StartOptions,
    settings: Settings,
    breaker: CircuitBreaker,
    engine_name: str,
) -> None:
    """Start the engine within the start timeout, or refuse with why."""
    # A configuration problem (no key, a malformed URL) is the operator's to fix, not the
    # provider's: say so as `engine_unavailable` before anything is dialled.
    if (problem := type(engine).availability(settings)) is not None:
        raise ProtocolError(
            ErrorCode.ENGINE_UNAVAILABLE, problem, fatal=True, close_code=CloseCode.ENGINE_UNAVAILABLE
        )
    try:
        await asyncio.wait_for(engine.start(options), settings.start_timeout_s + 5.0)
    except EngineUnavailable as exc:
        code = ErrorCode.UPSTREAM_UNAVAILABLE if exc.upstream else ErrorCode.ENGINE_UNAVAILABLE
        close = CloseCode.UPSTREAM_FAILED if exc.upstream else CloseCode.ENGINE_UNAVAILABLE
        raise ProtocolError(code, exc.message, fatal=True, close_code=close) from None
    except TimeoutError:
        breaker.record(False)
        raise ProtocolError(
            ErrorCode.TIMEOUT,
            f"the {engine_name} engine did not become ready within {settings.start_timeout_s:.0f} s",
            fatal=True,
            close_code=CloseCode.UPSTREAM_FAILED,
        ) from None


__all__ = [
    "billed_observer",
    "choose_engine",
    "choose_model",
    "engine_settings",
    "connect_observer",
    "held_audio_observer",
    "pass_breaker",
    "resume",
    "saved_settings",
    "start_engine",
    "start_options",
    "turn_policy",
]
