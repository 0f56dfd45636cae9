"""The `/v1/realtime` handshake in OpenAI's terms: subprotocols, keys, beta clients, errors.

OpenAI SDKs and browser code bring their credential the way they would to OpenAI (an
`Authorization: Bearer` header, or the `openai-insecure-api-key.<key>` subprotocol); here that
credential is the caller's voxgate token, since the gateway holds the OpenAI key. Refusals read
like OpenAI's own (`{"type":"error","error":{...}}`) and close with codes the official SDKs
never auto-reconnect on (4xxx, 1009), except a server shutdown, which closes 1001: on a
restart a reconnect is exactly what a client should do.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.websockets import WebSocket

from voxgate.gateway.admission import Door, Refusal, Refused, offered_subprotocols
from voxgate.gateway.auth import BEARER_SUBPROTOCOL_PREFIX, AuthError, Identity
from voxgate.gateway.state import GatewayState
from voxgate.protocol import CloseCode

#: The engine name compat sessions carry in metrics, `/ws/status` and stored conversations.
ENGINE_NAME = "openai-compat"
#: Subprotocols of OpenAI's browser WebSocket convention: `realtime` must be selected for the
#: browser's handshake to succeed; the key rides in `openai-insecure-api-key.<key>`.
REALTIME_SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
#: OpenAI's close code for a request it refuses at the handshake, a beta-shaped client or a
#: model it does not serve (not an SDK reconnect code).
REQUEST_CLOSE = 4000
BETA_CLOSE = REQUEST_CLOSE
#: Query parameters passed upstream besides `model`. Never `token` (a voxgate credential) and
#: never `call_id` (it would attach the server's key to somebody else's WebRTC/SIP call).
FORWARDED_QUERY = ("intent",)

SERVER_ERROR = "server_error"
INVALID_REQUEST = "invalid_request_error"


def openai_error(
    code: str,
    message: str,
    *,
    type_: str = INVALID_REQUEST,
    event_id: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """An `error` server event in OpenAI's GA shape, so SDK users read it as usual."""
    return {
        "type": "error",
        "event_id": f"event_{uuid.uuid4().hex[:20]}",
        "error": {
            "type": type_,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        },
    }


def refused(code: str, message: str, close_code: int, type_: str = INVALID_REQUEST) -> Refused:
    """A handshake refusal as OpenAI words one: its error event, and `type.code` as the reason."""
    return Refused(code, openai_error(code, message, type_=type_), close_code, f"{type_}.{code}")


def select_subprotocol(offered: list[str]) -> str | None:
    """`realtime` when offered (browsers fail the handshake unless one is selected); otherwise
    the first offer that carries no credential, and a credential one only as a last resort."""
    if REALTIME_SUBPROTOCOL in offered:
        return REALTIME_SUBPROTOCOL
    for proto in offered:
        if not proto.startswith((KEY_SUBPROTOCOL_PREFIX, BEARER_SUBPROTOCOL_PREFIX)):
            return proto
    return offered[0] if offered else None


def client_token(websocket: WebSocket, offered: list[str]) -> str | None:
    """The caller's voxgate token: SDK `Authorization: Bearer`, OpenAI's browser subprotocol
    `openai-insecure-api-key.<token>`, voxgate's `voxgate.bearer.<token>`, or `?token=`."""
    header = websocket.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
        if token:
            return token
    for proto in offered:
        for prefix in (KEY_SUBPROTOCOL_PREFIX, BEARER_SUBPROTOCOL_PREFIX):
            if proto.startswith(prefix):
                return proto[len(prefix) :] or None
    return websocket.query_params.get("token") or None


def is_beta(websocket: WebSocket, offered: list[str]) -> bool:
    return "realtime=v1" in websocket.headers.get("openai-beta", "").replace(" ", "") or (
        BETA_SUBPROTOCOL in offered
    )


_BETA_SENTENCE = (
    "voxgate's OpenAI-compatible endpoint supports only the GA Realtime interface, like OpenAI "
    "since the beta shutdown in May 2026: use client.realtime.connect() (openai>=1.103), not "
    "client.beta.realtime.connect(), and send no 'OpenAI-Beta: realtime=v1' header or "
    "'openai-beta.realtime-v1' subprotocol."
)

#: What each refusal of the shared checks is in OpenAI's terms: (code, close code, type).
#: `/v1/live/sessions` words them the same way.
REFUSALS: dict[Refusal, tuple[str, int, str]] = {
    Refusal.SHUTDOWN: ("server_shutdown", CloseCode.GOING_AWAY, SERVER_ERROR),
    Refusal.ORIGIN: ("forbidden_origin", CloseCode.FORBIDDEN_ORIGIN, INVALID_REQUEST),
    Refusal.UNAUTHORIZED: ("unauthorized", CloseCode.UNAUTHORIZED, INVALID_REQUEST),
    Refusal.LIMIT: ("session_limit", CloseCode.LIMIT, INVALID_REQUEST),
    Refusal.UNAVAILABLE: ("server_unavailable", CloseCode.ENGINE_UNAVAILABLE, SERVER_ERROR),
}


class CompatDoor(Door):
    """`/v1/realtime` at the shared door: OpenAI's credentials and error shape.

    Beta-shaped clients (`OpenAI-Beta: realtime=v1`, subprotocol `openai-beta.realtime-v1`)
    get the same `beta_api_shape_disabled` error event and close 4000 that OpenAI sends; beta
    is not translated (the SDK's GA interface has been available since openai 1.103).
    """

    label = "openai-compat"

    def subprotocol(self, websocket: WebSocket) -> str | None:
        return select_subprotocol(offered_subprotocols(websocket))

    def identify(self, state: GatewayState, websocket: WebSocket) -> tuple[Identity, str | None]:
        offered = offered_subprotocols(websocket)
        authenticator = state.authenticator
        if not authenticator.enabled:
            identity = authenticator.anonymous()
        else:
            token = client_token(websocket, offered)
            if not token:
                raise AuthError(
                    "authentication required: pass your voxgate token as the API key "
                    "(Authorization: Bearer <token>) or as the 'openai-insecure-api-key.<token>' "
                    "subprotocol; the gateway holds the OpenAI key"
                )
            identity = authenticator.verify_token(token)
        if is_beta(websocket, offered):
            raise refused("beta_api_shape_disabled", _BETA_SENTENCE, BETA_CLOSE)
        return identity, select_subprotocol(offered)

    def refusal(self, why: Refusal, sentence: str) -> Refused:
        code, close_code, type_ = REFUSALS[why]
        if why is Refusal.SHUTDOWN:
            sentence = "the server is shutting down; reconnect shortly"
        return refused(code, sentence, close_code, type_)


DOOR = CompatDoor()


__all__ = [
    "DOOR",
    "ENGINE_NAME",
    "FORWARDED_QUERY",
    "REFUSALS",
    "REQUEST_CLOSE",
    "CompatDoor",
    "client_token",
    "is_beta",
    "openai_error",
    "refused",
    "select_subprotocol",
]
