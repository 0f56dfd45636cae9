"""`POST /v1/realtime/client_secrets`: OpenAI ephemeral keys, minted with the server's key.

Same rules as direct secrets on `POST /api/realtime/session`: authenticated users only (a
provider secret spends the operator's money), no single-use `/ws` session tokens, and at most
`VOXGATE_TOKEN_REQUESTS_PER_MIN` per user.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from voxgate.engines.openai.rest import OpenAIRequestError, post_client_secret
from voxgate.gateway.auth import AuthError
from voxgate.gateway.compat.handshake import INVALID_REQUEST, SERVER_ERROR
from voxgate.gateway.limits import KeyedTokenBuckets
from voxgate.gateway.state import GatewayState

log = logging.getLogger("voxgate.openai_compat")

router = APIRouter(tags=["openai-compatible"])


def _http_error(status: int, code: str, message: str, type_: str = INVALID_REQUEST) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status_code=status,
    )


@router.post("/v1/realtime/client_secrets")
async def client_secrets(request: Request) -> Response:
    """Mint an OpenAI ephemeral client secret with the server's key, for an authenticated user.

    The body is OpenAI's own (`expires_after`, `session`) and is forwarded unchanged; the answer
    is OpenAI's JSON (`value`, `expires_at`, `session`). Errors keep OpenAI's status and shape,
    with anything key-like masked.
    """
    state: GatewayState = request.app.state.gateway
    settings = state.settings
    try:
        # A single-use /ws session token must not mint provider secrets (HTTP routes refuse them).
        identity, _ = state.authenticator.authenticate(request, allow_session_token=False)
    except AuthError as exc:
        state.metrics.errors_total.labels("unauthorized").inc()
        return _http_error(401, "unauthorized", exc.message)
    if identity.anonymous:
        state.metrics.errors_total.labels("unauthorized").inc()
        return _http_error(
            403, "unauthorized",
            "provider client secrets need an authenticated user: enable VOXGATE_AUTH=jwt",
        )  # fmt: skip
    limit = settings.token_requests_per_min
    if not _buckets(request, limit).take(f"user:{identity.user_id}"):
        state.metrics.errors_total.labels("rate_limited").inc()
        return _http_error(
            429, "rate_limited", f"too many client secrets: the limit is {limit} per minute",
        )  # fmt: skip
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if not key:
        return _http_error(
            503, "engine_unavailable",
            "the gateway has no OpenAI API key configured (OPENAI_API_KEY)", SERVER_ERROR,
        )  # fmt: skip
    body = await request.body()
    try:
        reply = await post_client_secret(
            settings.openai_api_base, key, body, settings.start_timeout_s
        )
    except OpenAIRequestError as exc:
        return _http_error(502, "upstream_unavailable", exc.message, SERVER_ERROR)
    if reply.status < 400:
        log.info("client secret minted for %s", identity.user_id)
    return Response(reply.body, status_code=reply.status, media_type="application/json")


def _buckets(request: Request, per_minute: int) -> KeyedTokenBuckets:
    """This route's per-user buckets, created on first use (one set per app, its own budget)."""
    app_state = request.app.state
    buckets: KeyedTokenBuckets | None = getattr(app_state, "openai_compat_secret_buckets", None)
    if buckets is None:
        buckets = KeyedTokenBuckets.per_minute(per_minute)
        app_state.openai_compat_secret_buckets = buckets
    return buckets


__all__ = ["client_secrets", "router"]
