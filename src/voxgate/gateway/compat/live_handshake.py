"""The `/v1/live/sessions` handshake in GPT-Live's terms: credentials and error shapes.

The official SDK brings its credential as GPT-Live expects (`Authorization: Bearer <key>`);
here that key is the caller's voxgate token, since the gateway holds the OpenAI key. A browser
offers `voxgate.v1` and `voxgate.bearer.<token>` (GPT-Live itself has no browser credential: no
ephemeral keys, no key subprotocol). Refusals read like GPT-Live's own errors
(`{"type":"error","error":{type, code, message, param, client_event_id}}`) and close with codes
the SDK never auto-reconnects on.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.websockets import WebSocket

from voxgate.gateway.admission import Door, Refusal, Refused, offered_subprotocols
from voxgate.gateway.auth import AuthError, Identity
from voxgate.gateway.compat.handshake import (
    INVALID_REQUEST,
    REFUSALS,
    client_token,
    select_subprotocol,
)
from voxgate.gateway.state import GatewayState

#: The engine name live compat sessions carry in metrics, `/ws/status` and stored conversations.
LIVE_ENGINE_NAME = "openai-live-compat"


def live_error(
    code: str,
    message: str,
    *,
    type_: str = INVALID_REQUEST,
    client_event_id: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """An `error` server event in GPT-Live's shape, so SDK users read it as usual."""
    error: dict[str, Any] = {"type": type_, "code": code, "message": message, "param": param}
    event: dict[str, Any] = {"type": "error", "event_id": f"event_{uuid.uuid4().hex[:20]}", "error": error}
    if client_event_id is not None:
        error["client_event_id"] = client_event_id
        event["client_event_id"] = client_event_id
    return event


def live_refused(code: str, message: str, close_code: int, type_: str = INVALID_REQUEST) -> Refused:
    """A handshake refusal as GPT-Live words one: its error event, and `type.code` as the reason."""
    return Refused(code, live_error(code, message, type_=type_), close_code, f"{type_}.{code}")


class LiveDoor(Door):
    """`/v1/live/sessions` at the shared door: the SDK's bearer key is a voxgate token."""

    label = "openai-live-compat"

    def subprotocol(self, websocket: WebSocket) -> str | None:
        return select_subprotocol(offered_subprotocols(websocket))

    def identify(self, state: GatewayState, websocket: WebSocket) -> tuple[Identity, str | None]:
        offered = offered_subprotocols(websocket)
        authenticator = state.authenticator
        if not authenticator.enabled:
            return authenticator.anonymous(), select_subprotocol(offered)
        token = client_token(websocket, offered)
        if not token:
            raise AuthError(
                "authentication required: pass your voxgate token as the API key "
                "(Authorization: Bearer <token>), or offer the 'voxgate.bearer.<token>' "
                "subprotocol from a browser; the gateway holds the OpenAI key"
            )
        return authenticator.verify_token(token), select_subprotocol(offered)

    def refusal(self, why: Refusal, sentence: str) -> Refused:
        code, close_code, type_ = REFUSALS[why]
        if why is Refusal.SHUTDOWN:
            sentence = "the server is shutting down; reconnect shortly"
        return live_refused(code, sentence, close_code, type_)


LIVE_DOOR = LiveDoor()


__all__ = ["LIVE_DOOR", "LIVE_ENGINE_NAME", "LiveDoor", "live_error", "live_refused"]
