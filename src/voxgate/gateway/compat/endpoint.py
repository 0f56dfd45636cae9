"""`GET /v1/realtime`: the shared door in OpenAI's words, then the dial, then one relay."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket
from websockets.asyncio.client import ClientConnection

from voxgate.config import Settings
from voxgate.engines.base import EngineUnavailable
from voxgate.engines.openai.dial import dial_openai, realtime_url
from voxgate.engines.upstream import UpstreamOptions, close_quietly
from voxgate.gateway.admission import Admitted, Refusal, Refused, admit
from voxgate.gateway.compat.handshake import (
    DOOR,
    ENGINE_NAME,
    FORWARDED_QUERY,
    REQUEST_CLOSE,
    SERVER_ERROR,
    refused,
)
from voxgate.gateway.compat.policy import (
    Violation,
    check_model,
    default_model,
    engine_refusal,
    user_engine_refusal,
)
from voxgate.gateway.compat.relay import CompatSession
from voxgate.gateway.limits import CircuitBreaker
from voxgate.gateway.state import GatewayState
from voxgate.protocol import CloseCode

router = APIRouter(tags=["openai-compatible"])


@router.websocket("/v1/realtime")
async def openai_realtime_ws(websocket: WebSocket) -> None:
    """OpenAI Realtime GA over WebSocket, relayed to OpenAI with the server's key: the shared
    door (origin, auth, beta, limits), then the upstream, then one relay."""
    await admit(websocket.app.state.gateway, websocket, DOOR, _relay)


async def _relay(admitted: Admitted) -> None:
    state = admitted.state
    settings = state.settings
    websocket = admitted.websocket
    if (off := engine_refusal(settings) or user_engine_refusal(admitted.identity.engines)) is not None:
        raise refused(off.code, off.message, CloseCode.ENGINE_UNAVAILABLE)
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if not key:
        raise refused(
            "engine_unavailable",
            "the gateway has no OpenAI API key configured (OPENAI_API_KEY)",
            CloseCode.ENGINE_UNAVAILABLE,
            SERVER_ERROR,
        )
    breaker = state.breaker("openai")
    if not breaker.allow():
        raise refused(
            "upstream_unavailable",
            "OpenAI is failing to accept connections; new sessions are paused for "
            f"{breaker.retry_after_s():.0f} s (circuit breaker open)",
            CloseCode.ENGINE_UNAVAILABLE,
            SERVER_ERROR,
        )
    url, model = upstream_url(settings, websocket, admitted.identity.models)
    # Accept before dialling: the client's handshake completes at once (its open timeout is
    # often shorter than ours for OpenAI), and whatever it sends meanwhile waits in the
    # socket's receive buffer until the relay starts.
    await websocket.accept(subprotocol=admitted.subprotocol)
    options = UpstreamOptions.from_settings(settings)
    upstream = await dial_upstream(
        state, breaker, ENGINE_NAME,
        lambda: dial_openai(url, key, options),
        lambda sentence: refused(
            "upstream_unavailable", sentence, CloseCode.UPSTREAM_FAILED, SERVER_ERROR
        ),
    )  # fmt: skip
    try:
        if state.shutting_down:  # the server began shutting down while we dialled
            raise DOOR.refusal(Refusal.SHUTDOWN, "")
        await admitted.run(CompatSession(state, websocket, upstream, admitted.identity, model))
    finally:
        await close_quietly(upstream, 2.0)


def upstream_url(
    settings: Settings, websocket: WebSocket, user_models: tuple[str, ...] | None = None
) -> tuple[str, str]:
    """-> (upstream URL, model): the client's model (or the user's default) and `intent`.
    Raises `Refused` for a model the operator, or the user's token, did not allow."""
    params = websocket.query_params
    model: str | Violation = params.get("model") or default_model(settings, user_models)
    bad = model if isinstance(model, Violation) else check_model(settings, model, "model", user_models)
    if bad is not None:
        raise refused(bad.code, bad.message, REQUEST_CLOSE)
    assert isinstance(model, str)
    query = {"model": model}
    for name in FORWARDED_QUERY:
        value = params.get(name)
        if value:
            query[name] = value
    return realtime_url(settings.openai_url, query), model


async def dial_upstream(
    state: GatewayState,
    breaker: CircuitBreaker,
    engine_label: str,
    dial: Callable[[], Awaitable[ClientConnection]],
    refuse: Callable[[str], Refused],
) -> ClientConnection:
    """Open the upstream socket with the server's key (and nothing of the client's headers);
    the outcome feeds the breaker and the connect metric. A failure is `refuse(sentence)`."""
    connect_seconds = state.metrics.upstream_connect_seconds
    started = time.monotonic()
    try:
        upstream = await dial()
    except EngineUnavailable as exc:
        breaker.record(False)
        connect_seconds.labels(engine_label, "error").observe(time.monotonic() - started)
        raise refuse(exc.message) from None
    breaker.record(True)
    connect_seconds.labels(engine_label, "ok").observe(time.monotonic() - started)
    return upstream


__all__ = ["dial_upstream", "router", "upstream_url"]
