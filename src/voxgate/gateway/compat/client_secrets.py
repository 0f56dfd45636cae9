"""`POST /v1/realtime/client_secrets`: OpenAI ephemeral keys, minted with the server's key.

Same rules as direct secrets on `POST /api/realtime/session`: open only when the operator
enabled the `openai` engine, authenticated users only (a provider secret spends the operator's
money), no single-use `/ws` session tokens, one budget of `VOXGATE_TOKEN_REQUESTS_PER_MIN` per
user across both routes, and each secret holds one of the user's session slots until it
expires. The body is bounded by the compatible surface's policy (`policy`).
"""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from voxgate.engines.openai.rest import OpenAIRequestError, post_client_secret
from voxgate.gateway.auth import AuthError, Identity
from voxgate.gateway.compat.handshake import INVALID_REQUEST, SERVER_ERROR
from voxgate.gateway.compat.policy import (
    Violation,
    client_secret_request,
    engine_refusal,
    user_engine_refusal,
)
from voxgate.gateway.limits import LimitExceeded
from voxgate.gateway.shared import SharedUnavailable
from voxgate.gateway.state import GatewayState

log = logging.getLogger("voxgate.openai_compat")

router = APIRouter(tags=["openai-compatible"])


def _http_error(
    status: int, code: str, message: str, type_: str = INVALID_REQUEST, *, param: str | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status_code=status,
    )


@router.post("/v1/realtime/client_secrets")
async def client_secrets(request: Request) -> Response:
    """Mint an OpenAI ephemeral client secret with the server's key, for an authenticated user.

    The body is OpenAI's own (`expires_after`, `session`), forwarded once it is within the
    operator's bounds (engine enabled, allowed models, instructions and tools, lifetime); the
    answer is OpenAI's JSON (`value`, `expires_at`, `session`). Errors keep OpenAI's shape, with
    anything key-like masked. A minted secret counts as one of the user's sessions until it
    expires, and shares the user's credential budget with `POST /api/realtime/session`.
    """
    state: GatewayState = request.app.state.gateway
    settings = state.settings
    refusal = await _admit(request, state)
    if not isinstance(refusal, Identity):
        return refusal
    identity = refusal
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if not key:
        return _http_error(
            503, "engine_unavailable",
            "the gateway has no OpenAI API key configured (OPENAI_API_KEY)", SERVER_ERROR,
        )  # fmt: skip
    try:
        asked = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        return _http_error(400, "invalid_json", "the body is not valid JSON")
    payload = client_secret_request(settings, asked, identity.models)
    if isinstance(payload, Violation):
        state.metrics.errors_total.labels(payload.code).inc()
        return _http_error(400, payload.code, payload.message, param=payload.param)
    seconds = payload["expires_after"]["seconds"]
    try:
        handle = await state.shared.hold(identity.user_id, seconds)
    except LimitExceeded as exc:
        state.metrics.errors_total.labels("session_limit").inc()
        return _http_error(429, "session_limit", exc.message)
    except SharedUnavailable as exc:
        return _http_error(503, "server_unavailable", exc.message, SERVER_ERROR)
    try:
        reply = await post_client_secret(
            settings.openai_api_base, key, orjson.dumps(payload), settings.start_timeout_s
        )
    except OpenAIRequestError as exc:
        await state.shared.unhold(identity.user_id, handle)
        return _http_error(502, "upstream_unavailable", exc.message, SERVER_ERROR)
    if reply.status >= 400:
        await state.shared.unhold(identity.user_id, handle)
    else:
        log.info("client secret minted for %s (%d s)", identity.user_id, seconds)
    return Response(reply.body, status_code=reply.status, media_type="application/json")


async def _admit(request: Request, state: GatewayState) -> Identity | Response:
    """Who may mint: the engine enabled, a real user (no `/ws` session token), within budget."""
    if (off := engine_refusal(state.settings)) is not None:
        state.metrics.errors_total.labels(off.code).inc()
        return _http_error(403, off.code, off.message)
    try:
        # A single-use /ws session token must not mint provider secrets (HTTP routes refuse them).
        identity, _ = state.authenticator.authenticate(request, allow_session_token=False)
    except AuthError as exc:
        state.metrics.errors_total.labels("unauthorized").inc()
        return _http_error(401, "unauthorized", exc.message)
    if (off := user_engine_refusal(identity.engines)) is not None:
        state.metrics.errors_total.labels(off.code).inc()
        return _http_error(403, off.code, off.message)
    if identity.anonymous:
        state.metrics.errors_total.labels("unauthorized").inc()
        return _http_error(
            403, "unauthorized",
            "provider client secrets need an authenticated user: enable VOXGATE_AUTH=jwt",
        )  # fmt: skip
    limit = state.settings.token_requests_per_min
    try:
        wait = await state.shared.take_rate(f"user:{identity.user_id}", limit)
    except SharedUnavailable as exc:
        return _http_error(503, "server_unavailable", exc.message, SERVER_ERROR)
    if wait > 0:
        state.metrics.errors_total.labels("rate_limited").inc()
        return _http_error(
            429, "rate_limited",
            f"too many credentials: the limit is {limit} per minute per user, shared with "
            "POST /api/realtime/session",
        )  # fmt: skip
    return identity
