"""`POST /api/realtime/session`: short-lived credentials a browser may hold.

- Default: a single-use voxgate session token for `/ws` (valid `VOXGATE_SESSION_TOKEN_TTL_S`,
  60 s), bound to the caller's identity, so the page never holds the caller's long-lived JWT.
- `{"direct": "openai"}`: an OpenAI ephemeral client secret (`POST /v1/realtime/client_secrets`,
  GA) for a browser that talks WebRTC to OpenAI itself.
- `{"direct": "elevenlabs"}`: a signed ElevenLabs conversation URL for the configured agent.

Why the guards are in this order: the origin check first (a cross-site page must learn nothing),
then authentication, then the per-user rate limit before any provider is called, so a
looping script costs one bucket lookup and not a provider request. Provider secrets spend the
operator's money, so they need a real authenticated user: with `VOXGATE_AUTH=none` they are
refused (403) while plain `/ws` tokens still work for the anonymous caller.

Provider keys never appear in a response: the provider helpers already remove them from their
error sentences, and every sentence passes `scrub` once more before it leaves.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from voxgate.config import Settings
from voxgate.gateway.auth import Authenticator, AuthError, Identity
from voxgate.gateway.compat.policy import Violation, default_model
from voxgate.gateway.limits import LimitExceeded
from voxgate.gateway.origins import origin_allowed
from voxgate.gateway.shared import SharedState, SharedUnavailable
from voxgate.protocol import ErrorCode
from voxgate.secrets import scrub

log = logging.getLogger("voxgate.gateway.tokens")

router = APIRouter(tags=["auth"])

#: OpenAI accepts 10-7200 s for `expires_after.seconds`.
_OPENAI_SECRET_TTL_RANGE = (10, 7200)
#: ElevenLabs signed URLs expire after 15 minutes.
_ELEVENLABS_SIGNED_URL_TTL_S = 15 * 60
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class SessionTokenRequest(BaseModel):
    """Optional body; unknown fields are ignored like in protocol messages."""

    model_config = ConfigDict(extra="ignore")

    direct: Literal["openai", "elevenlabs"] | None = Field(
        None,
        description="Mint a provider credential for a direct browser connection instead of a "
        "voxgate /ws token. Needs an authenticated user.",
    )
    voice: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="direct=openai: the output voice (e.g. marin, cedar, alloy).",
    )
    instructions: str | None = Field(
        None, max_length=16_000, description="direct=openai: the session instructions."
    )


class SessionTokenResponse(BaseModel):
    token: str = Field(description="Single-use token for /ws, starts with 'vxs_'.")
    sessionId: str = Field(description="The id the session opened with this token will have.")
    expiresAt: int = Field(description="Epoch seconds; connect before this.")


class OpenAIDirectResponse(BaseModel):
    provider: Literal["openai"] = "openai"
    clientSecret: str = Field(description="OpenAI ephemeral key (ek_...) for the browser.")
    expiresAt: int = Field(description="Epoch seconds.")
    model: str
    callsUrl: str = Field(description="Where the browser POSTs its WebRTC SDP offer.")


class ElevenLabsDirectResponse(BaseModel):
    provider: Literal["elevenlabs"] = "elevenlabs"
    signedUrl: str = Field(description="Conversation WebSocket URL for the configured agent.")
    expiresAt: int = Field(description="Epoch seconds (ElevenLabs: 15 minutes after minting).")


class ErrorBody(BaseModel):
    detail: str
    code: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why}
    for status, why in (
        (400, "The provider refused the requested options"),
        (401, "Missing or invalid token"),
        (403, "Origin not allowed, or a direct credential asked for without authentication"),
        (429, "Too many requests from this user (or at the provider)"),
        (502, "The provider refused or could not be reached"),
        (503, "The provider is not configured on this server, or the gateway's shared state "
         "(Redis) cannot be reached"),
    )
}


@router.post(
    "/api/realtime/session",
    response_model=SessionTokenResponse | OpenAIDirectResponse | ElevenLabsDirectResponse,
    responses=_ERRORS,
    summary="Mint a single-use /ws token (or a provider credential for direct connections)",
)
async def mint_session_token(
    request: Request, body: SessionTokenRequest | None = Body(None)
) -> Response:
    app_state = request.app.state
    settings: Settings = app_state.settings
    authenticator: Authenticator = app_state.authenticator
    request_ = body or SessionTokenRequest()

    if not origin_allowed(request, settings):
        return _refuse(
            request,
            403,
            ErrorCode.FORBIDDEN_ORIGIN,
            f"origin '{request.headers.get('origin', '')[:200]}' is not allowed "
            "(VOXGATE_ALLOWED_ORIGINS)",
        )
    try:
        identity, _ = authenticator.authenticate(request, allow_session_token=False)
    except AuthError as exc:
        return _refuse(
            request, 401, ErrorCode.UNAUTHORIZED, exc.message, {"WWW-Authenticate": "Bearer"}
        )

    shared: SharedState = request.app.state.gateway.shared
    try:
        wait = await shared.take_rate(_rate_key(request, identity), settings.token_requests_per_min)
    except SharedUnavailable as exc:
        return _refuse(request, 503, ErrorCode.UPSTREAM_UNAVAILABLE, exc.message)
    if wait > 0:
        retry = max(1, math.ceil(wait))
        return _refuse(
            request,
            429,
            ErrorCode.RATE_LIMITED,
            f"too many token requests: the limit is {settings.token_requests_per_min} per "
            f"minute; retry in {retry} s",
            {"Retry-After": str(retry)},
        )

    if request_.direct is None:
        try:
            token, session_id, expires_at = await authenticator.session_tokens.mint_shared(identity)
        except SharedUnavailable as exc:
            return _refuse(request, 503, ErrorCode.UPSTREAM_UNAVAILABLE, exc.message)
        return _ok(
            request, SessionTokenResponse(token=token, sessionId=session_id, expiresAt=expires_at)
        )

    if identity.anonymous:
        return _refuse(
            request,
            403,
            ErrorCode.UNAUTHORIZED,
            f"direct {request_.direct} credentials spend the operator's provider account, so they "
            "need an authenticated user: run the server with VOXGATE_AUTH=jwt",
        )
    if request_.direct not in settings.engines_allowed_for_clients():
        return _refuse(
            request,
            403,
            ErrorCode.BAD_REQUEST,
            f"the {request_.direct} engine is not enabled on this server "
            "(VOXGATE_ENGINE / VOXGATE_ALLOWED_ENGINES)",
        )
    if identity.engines is not None and request_.direct not in identity.engines:
        return _refuse(
            request,
            403,
            ErrorCode.BAD_REQUEST,
            f"your token does not allow the {request_.direct} engine (its 'engines' claim "
            f"allows: {', '.join(identity.engines) or 'none'})",
        )
    return await _direct(request, settings, identity, request_)


@router.options("/api/realtime/session", include_in_schema=False)
async def session_token_preflight(request: Request) -> Response:
    """CORS preflight for pages on an allowed origin other than the server's own."""
    settings: Settings = request.app.state.settings
    origin = request.headers.get("origin")
    if origin is None or not origin_allowed(request, settings):
        return Response(status_code=403)
    return Response(
        status_code=204,
        headers={
            **_cors(origin),
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


# --- providers ---------------------------------------------------------------------------------


async def _direct(
    request: Request, settings: Settings, identity: Identity, body: SessionTokenRequest
) -> Response:
    """A provider credential, counted as one of the user's sessions until it expires: the
    provider session it opens is one voxgate never sees, so this is the only place to cap it."""
    shared: SharedState = request.app.state.gateway.shared
    ttl = openai_secret_ttl_s(settings) if body.direct == "openai" else _ELEVENLABS_SIGNED_URL_TTL_S
    try:
        handle = await shared.hold(identity.user_id, ttl)
    except LimitExceeded as exc:
        return _refuse(request, 429, ErrorCode.SESSION_LIMIT, exc.message)
    except SharedUnavailable as exc:
        return _refuse(request, 503, ErrorCode.UPSTREAM_UNAVAILABLE, exc.message)
    if body.direct == "openai":
        answer = await _openai_direct(request, settings, identity, body)
    else:
        answer = await _elevenlabs_direct(request, settings, identity)
    if answer.status_code >= 400:
        await shared.unhold(identity.user_id, handle)  # nothing was minted
    return answer


def openai_secret_ttl_s(settings: Settings) -> int:
    """The lifetime of a direct OpenAI secret: the session-token lifetime, within OpenAI's
    range and the operator's ceiling."""
    low, high = _OPENAI_SECRET_TTL_RANGE
    return min(high, settings.client_secret_max_ttl_s, max(low, settings.session_token_ttl_s))


async def _openai_direct(
    request: Request, settings: Settings, identity: Identity, body: SessionTokenRequest
) -> Response:
    from voxgate.engines.base import EngineUnavailable
    from voxgate.engines.openai.rest import OpenAIRequestError, create_client_secret

    model = default_model(settings, identity.models)
    if isinstance(model, Violation):
        return _refuse(request, 403, ErrorCode.BAD_REQUEST, model.message)
    session: dict[str, Any] = {
        "type": "realtime",
        "model": model,
        "audio": {"output": {"voice": body.voice or settings.openai_voice}},
    }
    if body.instructions:
        session["instructions"] = body.instructions
    payload = {
        "expires_after": {
            "anchor": "created_at",
            "seconds": openai_secret_ttl_s(settings),
        },
        "session": session,
    }
    try:
        data = await create_client_secret(settings, payload)
    except EngineUnavailable as exc:
        return _refuse(request, 503, ErrorCode.ENGINE_UNAVAILABLE, exc.message)
    except OpenAIRequestError as exc:
        log.warning("OpenAI client secret for user %s failed: %s", identity.user_id, exc.message)
        if exc.status in (400, 404, 422):
            # OpenAI refused what was asked (a voice, instructions): the caller can fix it.
            return _refuse(request, 400, ErrorCode.BAD_REQUEST, exc.message)
        if exc.status == 429:
            return _refuse(request, 429, ErrorCode.RATE_LIMITED, exc.message, {"Retry-After": "10"})
        return _refuse(request, 502, ErrorCode.UPSTREAM_ERROR, exc.message)
    value = data.get("value")
    expires_at = data.get("expires_at")
    if not isinstance(value, str) or not isinstance(expires_at, int):
        return _refuse(
            request,
            502,
            ErrorCode.UPSTREAM_ERROR,
            "OpenAI answered the client-secret request without 'value' and 'expires_at'",
        )
    log.info("minted an OpenAI client secret for user %s", identity.user_id)
    return _ok(
        request,
        OpenAIDirectResponse(
            clientSecret=value,
            expiresAt=expires_at,
            model=str((data.get("session") or {}).get("model") or model),
            callsUrl=settings.openai_api_base.rstrip("/") + "/realtime/calls",
        ),
    )


async def _elevenlabs_direct(request: Request, settings: Settings, identity: Identity) -> Response:
    from voxgate.engines.elevenlabs import ElevenLabsConfig, SignedUrlError, fetch_signed_url

    try:
        signed_url = await fetch_signed_url(ElevenLabsConfig.from_settings(settings))
    except SignedUrlError as exc:
        # No status: the server is not configured (no key or agent) or the provider is down.
        not_configured = exc.status is None and not exc.retryable
        log.warning("ElevenLabs signed URL for user %s failed: %s", identity.user_id, exc.message)
        if exc.status == 429:
            return _refuse(request, 429, ErrorCode.RATE_LIMITED, exc.message, {"Retry-After": "10"})
        return _refuse(
            request,
            503 if not_configured else 502,
            ErrorCode.ENGINE_UNAVAILABLE if not_configured else ErrorCode.UPSTREAM_ERROR,
            exc.message,
        )
    log.info("minted an ElevenLabs signed URL for user %s", identity.user_id)
    return _ok(
        request,
        ElevenLabsDirectResponse(
            signedUrl=signed_url, expiresAt=int(time.time()) + _ELEVENLABS_SIGNED_URL_TTL_S
        ),
    )


# --- helpers -----------------------------------------------------------------------------------


def _rate_key(request: Request, identity: Identity) -> str:
    # Anonymous identities are fresh per request, so they are limited by client address.
    if identity.anonymous:
        return "addr:" + (request.client.host if request.client else "unknown")
    return "user:" + identity.user_id


def _cors(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def _extra_headers(request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    # Reached only after the origin check passed (or for refusals, where echoing an allowed
    # origin lets the page read why): a disallowed origin never gets CORS headers.
    if origin and origin_allowed(request, request.app.state.settings):
        return _cors(origin)
    return {}


def _ok(request: Request, model: BaseModel) -> Response:
    return JSONResponse(model.model_dump(), headers={**_NO_STORE, **_extra_headers(request)})


def _refuse(
    request: Request,
    status: int,
    code: ErrorCode,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors_total.labels(code.value).inc()
    return JSONResponse(
        {"detail": _clean(request.app.state.settings, message), "code": code.value},
        status_code=status,
        headers={**_NO_STORE, **_extra_headers(request), **(headers or {})},
    )


def _clean(settings: Settings, text: str) -> str:
    """Belt and braces: no configured secret leaves in an error sentence."""
    for secret in (settings.openai_api_key, settings.elevenlabs_api_key, settings.jwt_secret):
        value = secret.get_secret_value() if secret is not None else ""
        if value:
            text = text.replace(value, "***")
    return scrub(text)
