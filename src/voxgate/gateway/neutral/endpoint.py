"""`GET /ws`: the neutral protocol's door (auth, refusals as protocol `error` messages)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from voxgate import protocol as P
from voxgate.gateway.admission import Admitted, Door, Refusal, Refused, admit, offered_subprotocols
from voxgate.gateway.auth import SUBPROTOCOL, Identity
from voxgate.gateway.neutral.session import NeutralSession
from voxgate.gateway.state import GatewayState
from voxgate.protocol import CloseCode, ErrorCode

router = APIRouter()

#: What each refusal of the shared checks is in protocol v1: (error code, close code).
_REFUSALS: dict[Refusal, tuple[ErrorCode, CloseCode]] = {
    Refusal.SHUTDOWN: (ErrorCode.UPSTREAM_UNAVAILABLE, CloseCode.GOING_AWAY),
    Refusal.ORIGIN: (ErrorCode.FORBIDDEN_ORIGIN, CloseCode.FORBIDDEN_ORIGIN),
    Refusal.UNAUTHORIZED: (ErrorCode.UNAUTHORIZED, CloseCode.UNAUTHORIZED),
    Refusal.LIMIT: (ErrorCode.SESSION_LIMIT, CloseCode.LIMIT),
    Refusal.UNAVAILABLE: (ErrorCode.UPSTREAM_UNAVAILABLE, CloseCode.ENGINE_UNAVAILABLE),
}


class NeutralDoor(Door):
    label = "websocket"

    def subprotocol(self, websocket: WebSocket) -> str | None:
        offered = offered_subprotocols(websocket)
        if SUBPROTOCOL in offered:
            return SUBPROTOCOL
        return offered[0] if offered else None

    def identify(self, state: GatewayState, websocket: WebSocket) -> tuple[Identity, str | None]:
        return state.authenticator.authenticate(websocket)

    def refusal(self, why: Refusal, sentence: str) -> Refused:
        code, close_code = _REFUSALS[why]
        frame = P.error_message(code, sentence, fatal=True)
        return Refused(code.value, frame, close_code, sentence)


DOOR = NeutralDoor()


@router.websocket("/ws")
async def ws_endpoint(websocket: WebSocket) -> None:
    """Protocol v1: the shared door, then one `NeutralSession`."""
    await admit(websocket.app.state.gateway, websocket, DOOR, _serve)


async def _serve(admitted: Admitted) -> None:
    websocket = admitted.websocket
    await websocket.accept(subprotocol=admitted.subprotocol)
    state = admitted.state
    session = NeutralSession(state, websocket, admitted.identity, state.tuning.outbox_factory)
    await admitted.run(session)
