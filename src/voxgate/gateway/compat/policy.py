"""What the OpenAI-compatible surface may spend: the operator's engine choice, models, sizes.

Everything a compatible client asks for is paid with the operator's key, so the same bounds
apply at every place a client can name a model or attach instructions and tools: the
`?model=` of `/v1/realtime`, `session.update` and `response.create` inside the relay, and the
body of `POST /v1/realtime/client_secrets`. A refusal is a `Violation` (an OpenAI error code, a
sentence, the offending parameter); nothing refused is forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voxgate.config import Settings

#: The engine the compatible endpoints stand for: open only when the operator enabled it.
COMPAT_ENGINE = "openai"
#: The engine `/v1/live/sessions` stands for.
LIVE_ENGINE = "openai-live"


@dataclass(frozen=True, slots=True)
class Violation:
    """A request the operator's bounds refuse: OpenAI's `code`, a sentence, the parameter."""

    code: str
    message: str
    param: str | None = None


def engine_refusal(settings: Settings, engine: str = COMPAT_ENGINE) -> Violation | None:
    """Refuse unless the operator enabled `engine` (the default engine, or an allowed one):
    a gateway run for the cascade must not hand out Realtime sessions on its speech key."""
    if engine in settings.engines_allowed_for_clients():
        return None
    return Violation(
        "engine_not_enabled",
        f"the {engine} engine is not enabled on this server, so its OpenAI-compatible "
        f"endpoints are closed (the operator enables it with VOXGATE_ENGINE={engine} or "
        "VOXGATE_ALLOWED_ENGINES)",
    )


def user_engine_refusal(engines: tuple[str, ...] | None, engine: str = COMPAT_ENGINE) -> Violation | None:
    """Refuse a user whose token's `engines` claim leaves `engine` out."""
    if engines is None or engine in engines:
        return None
    return Violation(
        "engine_not_enabled",
        f"your token does not allow the {engine} engine (its 'engines' claim allows: "
        f"{', '.join(engines) or 'none'})",
    )


def models_for(settings: Settings, user_models: tuple[str, ...] | None) -> list[str]:
    """The models this user may use: the gateway's (`VOXGATE_ALLOWED_MODELS`), narrowed by the
    token's `models` claim when it has one."""
    allowed = settings.models_allowed()
    if user_models is None:
        return allowed
    return [m for m in allowed if m in user_models]


def default_model(settings: Settings, user_models: tuple[str, ...] | None) -> str | Violation:
    """The realtime model for a client that names none: the configured one, unless the token's
    `models` claim leaves it out; then the first realtime model of the user's the gateway
    allows (the transcription model is no realtime model), or a refusal when there is none."""
    configured = settings.openai_realtime_model
    if user_models is None or configured in user_models:
        return configured
    mine = [m for m in models_for(settings, user_models) if m != settings.openai_transcription_model]
    if mine:
        return mine[0]
    return Violation(
        "model_not_allowed",
        f"your token allows no model this gateway offers (its 'models' claim: "
        f"{', '.join(user_models) or 'none'}; the gateway's: {', '.join(settings.models_allowed())})",
        "model",
    )


def check_model(
    settings: Settings,
    model: object,
    param: str = "model",
    user_models: tuple[str, ...] | None = None,
    allowed: list[str] | None = None,
) -> Violation | None:
    """Refuse a model the gateway (`allowed`, by default the Realtime endpoints' list,
    `VOXGATE_ALLOWED_MODELS`) or this user's token (its `models` claim) does not allow."""
    gateway = settings.models_allowed() if allowed is None else allowed
    allowed = [m for m in gateway if user_models is None or m in user_models]
    if isinstance(model, str) and model in allowed:
        return None
    shown = repr(model)[:80] if isinstance(model, str) else type(model).__name__
    if user_models is not None and isinstance(model, str) and model in gateway:
        return Violation(
            "model_not_allowed",
            f"model {shown} is not allowed for this user; allowed: {', '.join(allowed) or 'none'} "
            "(the token's 'models' claim)",
            param,
        )
    return Violation(
        "model_not_allowed",
        f"model {shown} is not allowed on this gateway; allowed: {', '.join(allowed)} "
        "(VOXGATE_ALLOWED_MODELS)",
        param,
    )


def check_session(
    settings: Settings, session: object, where: str = "session",
    user_models: tuple[str, ...] | None = None,
) -> Violation | None:  # fmt: skip
    """Bounds for a session configuration (`session.update`, a client secret's `session`)."""
    if not isinstance(session, dict):
        return None  # not ours to judge: OpenAI answers a malformed event itself
    if "model" in session:
        if (bad := check_model(settings, session["model"], f"{where}.model", user_models)) is not None:
            return bad
    audio = session.get("audio")
    transcription = (audio.get("input") or {}).get("transcription") if isinstance(audio, dict) else None
    if isinstance(transcription, dict) and "model" in transcription:
        param = f"{where}.audio.input.transcription.model"
        if (bad := check_model(settings, transcription["model"], param, user_models)) is not None:
            return bad
    return check_sizes(settings, session, where)


def check_sizes(settings: Settings, config: dict[str, Any], where: str) -> Violation | None:
    """Instructions and tools: what makes every later turn cost more (`response.create` too)."""
    instructions = config.get("instructions")
    cap = settings.max_instructions_chars
    if isinstance(instructions, str) and len(instructions) > cap:
        return Violation(
            "instructions_too_long",
            f"instructions of {len(instructions)} characters exceed this gateway's limit of "
            f"{cap} (VOXGATE_MAX_INSTRUCTIONS_CHARS)",
            f"{where}.instructions",
        )
    tools = config.get("tools")
    if isinstance(tools, list) and len(tools) > settings.max_tools:
        return Violation(
            "too_many_tools",
            f"{len(tools)} tools exceed this gateway's limit of {settings.max_tools} "
            "(VOXGATE_MAX_TOOLS)",
            f"{where}.tools",
        )
    return None


def check_client_event(
    settings: Settings, event: dict[str, Any], user_models: tuple[str, ...] | None = None
) -> Violation | None:
    """A relayed client event that configures spending, or None when it may go upstream."""
    etype = event.get("type")
    if etype == "session.update":
        return check_session(settings, event.get("session"), user_models=user_models)
    if etype == "response.create":
        response = event.get("response")
        if isinstance(response, dict):
            return check_sizes(settings, response, "response")
    return None


def check_live_session(
    settings: Settings, session: object, where: str = "session",
    user_models: tuple[str, ...] | None = None,
) -> Violation | None:  # fmt: skip
    """Bounds for a GPT-Live `session.start`/`session.update` config: the Live model, and the
    backend a delegation would call (its model, instructions and tools spend too)."""
    if not isinstance(session, dict):
        return None  # GPT-Live answers a malformed event itself
    allowed = settings.live_models_allowed()
    if "model" in session:
        if (bad := check_model(settings, session["model"], f"{where}.model", user_models, allowed)) is not None:
            return bad
    delegation = session.get("delegation")
    if isinstance(delegation, dict):
        for backend in ("responses", "decisions"):
            config = delegation.get(backend)
            if not isinstance(config, dict):
                continue
            place = f"{where}.delegation.{backend}"
            if "model" in config:
                if (bad := check_model(settings, config["model"], f"{place}.model", user_models, allowed)) is not None:
                    return bad
            if (bad := check_sizes(settings, config, place)) is not None:
                return bad
    return check_sizes(settings, session, where)


def client_secret_request(
    settings: Settings, body: object, user_models: tuple[str, ...] | None = None
) -> dict[str, Any] | Violation:
    """The body to forward for `POST /v1/realtime/client_secrets`, bounded, or why not.

    A missing lifetime becomes the ceiling (OpenAI's own default, 600 s, may exceed it) and a
    missing model the user's default (OpenAI's default may not be on the allowlist).
    """
    if not isinstance(body, dict):
        return Violation("invalid_request_error", "the body must be a JSON object", None)
    ceiling = settings.client_secret_max_ttl_s
    expires = body.get("expires_after")
    if expires is None:
        expires = {"anchor": "created_at", "seconds": ceiling}
    seconds = expires.get("seconds") if isinstance(expires, dict) else None
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds > ceiling:
        return Violation(
            "expires_after_too_long",
            f"client secrets minted through this gateway live at most {ceiling} s "
            f"(VOXGATE_CLIENT_SECRET_MAX_TTL_S); ask for expires_after.seconds <= {ceiling}",
            "expires_after.seconds",
        )
    session = body.get("session")
    if session is None:
        session = {"type": "realtime"}
    if not isinstance(session, dict):
        return Violation("invalid_type", "'session' must be an object", "session")
    if "model" not in session:
        model = default_model(settings, user_models)
        if isinstance(model, Violation):
            return model
        session = {"model": model, **session}
    if (bad := check_session(settings, session, user_models=user_models)) is not None:
        return bad
    return {**body, "expires_after": expires, "session": session}


__all__ = [
    "COMPAT_ENGINE",
    "LIVE_ENGINE",
    "check_live_session",
    "Violation",
    "check_client_event",
    "check_model",
    "check_session",
    "check_sizes",
    "client_secret_request",
    "default_model",
    "engine_refusal",
    "models_for",
    "user_engine_refusal",
]
