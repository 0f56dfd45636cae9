"""`GET /v1/live/sessions` (WebSocket): GPT-Live's door, then the dial, then one relay.

Existing GPT-Live code (the official SDK pointed at voxgate with a voxgate token as its API
key, or a browser with the `voxgate.bearer.<token>` subprotocol) connects here; voxgate dials
GPT-Live with the server's key. GPT-Live has no ephemeral client keys, so this is the only way a
browser can reach it without the key. Open only when the operator enabled `openai-live`.
Sideband (`…/{id}/attach`) and fork routes are not offered: they would let one user attach to
any session the server's key owns.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from voxgate.engines.openai_live.dial import dial_live
from voxgate.engines.upstream import UpstreamOptions, close_quietly
from voxgate.gateway.admission import Admitted, Refusal, admit
from voxgate.gateway.compat.endpoint import dial_upstream
from voxgate.gateway.compat.handshake import SERVER_ERROR
from voxgate.gateway.compat.live_handshake import LIVE_DOOR, LIVE_ENGINE_NAME, live_refused
from voxgate.gateway.compat.live_relay import LiveRelaySession
from voxgate.gateway.compat.policy import LIVE_ENGINE, engine_refusal, user_engine_refusal
from voxgate.protocol import CloseCode

router = APIRouter(tags=["openai-compatible"])


@router.websocket("/v1/live/sessions")
async def openai_live_ws(websocket: WebSocket) -> None:
    """OpenAI GPT-Live over WebSocket, relayed to GPT-Live with the server's key."""
    await admit(websocket.app.state.gateway, websocket, LIVE_DOOR, _relay)


async def _relay(admitted: Admitted) -> None:
    state = admitted.state
    settings = state.settings
    websocket = admitted.websocket
    refusal = engine_refusal(settings, LIVE_ENGINE) or user_engine_refusal(
        admitted.identity.engines, LIVE_ENGINE
    )
    if refusal is not None:
        raise live_refused(refusal.code, refusal.message, CloseCode.ENGINE_UNAVAILABLE)
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if not key:
        raise live_refused(
            "engine_unavailable",
            "the gateway has no OpenAI API key configured (OPENAI_API_KEY)",
            CloseCode.ENGINE_UNAVAILABLE,
            SERVER_ERROR,
        )
    breaker = state.breaker(LIVE_ENGINE)
    if not breaker.allow():
        raise live_refused(
            "upstream_unavailable",
            "OpenAI GPT-Live is failing to accept connections; new sessions are paused for "
            f"{breaker.retry_after_s():.0f} s (circuit breaker open)",
            CloseCode.ENGINE_UNAVAILABLE,
            SERVER_ERROR,
        )
    # Accept before dialling, as `/v1/realtime` does: what the client sends meanwhile (its
    # `session.start`) waits in the socket until the relay starts.
    await websocket.accept(subprotocol=admitted.subprotocol)
    options = UpstreamOptions.from_settings(settings)
    upstream = await dial_upstream(
        state, breaker, LIVE_ENGINE_NAME,
        lambda: dial_live(settings.openai_live_url, key, options),
        lambda sentence: live_refused(
            "upstream_unavailable", sentence, CloseCode.UPSTREAM_FAILED, SERVER_ERROR
        ),
    )  # fmt: skip
    try:
        if state.shutting_down:  # the server began shutting down while we dialled
            raise LIVE_DOOR.refusal(Refusal.SHUTDOWN, "")
        await admitted.run(LiveRelaySession(state, websocket, upstream, admitted.identity))
    finally:
        await close_quietly(upstream, 2.0)


__all__ = ["router"]
