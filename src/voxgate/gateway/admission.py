"""The door of every WebSocket endpoint: the same checks, in the same order, then one session.

Every endpoint admits a connection the same way: count it, refuse it while the server shuts
down, check its Origin, identify the caller, take a session slot, and register the session so
the status routes and a shutdown find it; whatever happens, everything taken is given back.
A refusal accepts the socket and then closes it, so the client can read why (a bare HTTP 403
says nothing to an SDK). Only the words differ between endpoints; a `Door` supplies them.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from voxgate import protocol as P
from voxgate.gateway.auth import SESSION_TOKEN_PREFIX, AuthError, Identity, extract_token
from voxgate.gateway.limits import LimitExceeded
from voxgate.gateway.live import LiveSessionBase, close_reason
from voxgate.gateway.origins import origin_allowed
from voxgate.gateway.retention import quota_refusal
from voxgate.gateway.shared import SharedUnavailable
from voxgate.gateway.state import GatewayState
from voxgate.protocol import CloseCode

log = logging.getLogger("voxgate.gateway")


class Refusal(StrEnum):
    """Why the shared checks turn a connection away."""

    SHUTDOWN = "shutdown"
    ORIGIN = "origin"
    UNAUTHORIZED = "unauthorized"
    LIMIT = "limit"
    #: The shared state (Redis) cannot be reached, so the shared checks cannot run.
    UNAVAILABLE = "unavailable"


class Refused(Exception):
    """A connection turned away: the error the client reads, then the close.

    Raised by the shared checks (through `Door.refusal`) and by an endpoint's own checks after
    them; `admit` sends it. `code` labels the error metric; `reason` goes in the close frame.
    """

    def __init__(self, code: str, frame: Mapping[str, Any], close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.frame = frame
        self.close_code = close_code
        self.reason = reason


class Door(ABC):
    """One endpoint's handshake dialect: how callers identify themselves, how refusals read."""

    #: Names the endpoint in logs.
    label: str

    @abstractmethod
    def subprotocol(self, websocket: WebSocket) -> str | None:
        """The subprotocol to accept a socket with in order to refuse it."""

    @abstractmethod
    def identify(self, state: GatewayState, websocket: WebSocket) -> tuple[Identity, str | None]:
        """-> (who is calling, the subprotocol to accept with). Raises `AuthError` or `Refused`."""

    @abstractmethod
    def refusal(self, why: Refusal, sentence: str) -> Refused:
        """The refusal for a failed shared check; `sentence` says why in plain words."""


@dataclass(slots=True)
class Admitted:
    """A connection that passed the door and holds a session slot (not accepted yet)."""

    state: GatewayState
    websocket: WebSocket
    identity: Identity
    subprotocol: str | None
    #: The session slot this connection holds in the shared state.
    lease_id: str = ""

    async def run(self, session: LiveSessionBase) -> None:
        """Serve `session`, registered as live for as long as it runs."""
        sessions = self.state.sessions
        sessions[session.id] = session
        self.state.shared.attach(self.lease_id, session)
        try:
            await session.run()
        finally:
            sessions.pop(session.id, None)


Serve = Callable[[Admitted], Awaitable[None]]


async def admit(state: GatewayState, websocket: WebSocket, door: Door, serve: Serve) -> None:
    """Run the shared checks on a new socket, then `serve` it; refuse it if a check fails."""
    metrics = state.metrics
    state.websockets_open += 1
    metrics.websockets_open.inc()
    admitted: Admitted | None = None
    try:
        try:
            admitted = await _check(state, websocket, door)
            if not admitted.identity.anonymous:  # anonymous callers are new users every time
                if (full := await quota_refusal(state, admitted.identity.user_id)) is not None:
                    raise door.refusal(Refusal.LIMIT, full)
            await serve(admitted)
        except Refused as refused:
            await _refuse(state, websocket, refused, door.subprotocol(websocket))
    except Exception:
        log.exception("%s handler failed", door.label)
        with contextlib.suppress(Exception):
            await websocket.close(CloseCode.INTERNAL)
    finally:
        if admitted is not None:
            await state.shared.release(admitted.lease_id, admitted.identity.user_id)
        state.websockets_open -= 1
        metrics.websockets_open.dec()


async def _check(state: GatewayState, websocket: WebSocket, door: Door) -> Admitted:
    if state.shutting_down:
        raise door.refusal(Refusal.SHUTDOWN, "the server is shutting down")
    if not origin_allowed(websocket, state.settings):
        origin = websocket.headers.get("origin")
        raise door.refusal(
            Refusal.ORIGIN, f"origin '{origin}' is not allowed (VOXGATE_ALLOWED_ORIGINS)"
        )
    try:
        # A session token lives in the shared state: take it there first (one winner across
        # every node), so the door's synchronous check finds it.
        for token in _session_tokens(websocket):
            await state.authenticator.session_tokens.claim(token)
        identity, subprotocol = door.identify(state, websocket)
    except AuthError as exc:
        raise door.refusal(Refusal.UNAUTHORIZED, exc.message) from None
    except SharedUnavailable as exc:
        raise door.refusal(Refusal.UNAVAILABLE, exc.message) from None
    lease_id = uuid.uuid4().hex
    try:
        await state.shared.acquire(lease_id, identity.user_id, per_user=not identity.anonymous)
    except LimitExceeded as exc:
        raise door.refusal(Refusal.LIMIT, exc.message) from None
    except SharedUnavailable as exc:
        raise door.refusal(Refusal.UNAVAILABLE, exc.message) from None
    return Admitted(state, websocket, identity, subprotocol, lease_id)


def _session_tokens(websocket: WebSocket) -> list[str]:
    """Every session token the handshake carries, wherever an endpoint may read it from (a
    header, `?token=`, a subprotocol such as `voxgate.bearer.<t>` or OpenAI's key form)."""
    found: list[str] = []
    token, _ = extract_token(websocket)
    if token and token.startswith(SESSION_TOKEN_PREFIX):
        found.append(token)
    marker = "." + SESSION_TOKEN_PREFIX
    for proto in offered_subprotocols(websocket):
        at = proto.find(marker)
        if at >= 0 and proto[at + 1 :] not in found:
            found.append(proto[at + 1 :])
    return found[:3]


async def _refuse(
    state: GatewayState, websocket: WebSocket, refused: Refused, subprotocol: str | None
) -> None:
    state.metrics.errors_total.labels(refused.code).inc()
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept(subprotocol=subprotocol)
    await websocket.send_text(P.encode(refused.frame))
    await websocket.close(refused.close_code, close_reason(refused.reason))


def offered_subprotocols(websocket: WebSocket) -> list[str]:
    """The subprotocols the client offered, in its order."""
    header = websocket.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


__all__ = [
    "Admitted",
    "Door",
    "Refusal",
    "Refused",
    "Serve",
    "admit",
    "offered_subprotocols",
]
