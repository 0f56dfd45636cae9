"""What must hold across every gateway process: the shared-state seam.

One process keeps everything in its memory (`MemoryShared`, the default, exactly today's
behaviour). Several processes, on one host or many, share it through Redis (`RedisShared` in
`shared_redis`, chosen by `VOXGATE_REDIS_URL`), so that they behave as one gateway:

- single-use `/ws` session tokens (one winner across all nodes; expiry by TTL);
- the global and per-user concurrent-session caps, held as leases the owning node renews
  (a node that dies without cleaning up loses them within `LEASE_S`);
- the per-user credential rate limit (one bucket per user for the whole cluster);
- the directory of live sessions (which node holds which), and ending one on any node;
- each engine's circuit breaker (news of an opened breaker reaches every node);
- the registry of live nodes (`/health` lists them).

Only admissions and the operations routes talk to it; a live session's audio never does, so
a Redis outage cannot stop a conversation in progress (see `SharedUnavailable`).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from voxgate.gateway.limits import KeyedTokenBuckets, LimitExceeded, SessionLimiter


class LiveSession(Protocol):
    """What the directory reads from a live session (`state.LiveSession` fits)."""

    @property
    def id(self) -> str: ...
    def info(self) -> dict[str, Any]: ...


class GatewayState(Protocol):
    """What the shared state reads from its gateway (`state.GatewayState` fits)."""

    sessions: dict[str, Any]
    shutting_down: bool

#: How long a node's session leases and its registry entry outlive its last renewal: the
#: longest a dead node's users stay locked out of their per-user cap.
LEASE_S = 15.0
#: How often a node renews its leases (three renewals may fail before a lease lapses).
RENEW_S = LEASE_S / 3


class SharedUnavailable(Exception):
    """The shared state cannot be reached: admissions that need it fail closed (HTTP 503,
    close 4503) unless the operator chose fail-open."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def default_node_id() -> str:
    """host:pid plus a little randomness, so a restarted process is a new node."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


class SharedState(ABC):
    """The seam. Every method that may reach another process is async.

    Leases: `acquire` takes one session slot under a lease id the caller picks; the slot is
    given back by `release`, or lapses `LEASE_S` after the node stops renewing it. `attach`
    names the live session a lease belongs to (for the directory).
    """

    #: "memory" or "redis"; `/health` reports it.
    kind: str = "memory"

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id or default_node_id()
        self.started_at = time.time()
        #: Called with a session id another node (or this one) asked to end, and the reason.
        self.on_end_session: Callable[[str, str], None] | None = None
        #: Called with (engine, opened, retry_after_s) when another node's breaker changed.
        self.on_breaker: Callable[[str, bool, float], None] | None = None
        #: Called when an admin asked this node to drain.
        self.on_drain: Callable[[], None] | None = None

    async def start(self, state: GatewayState) -> None:
        """Begin background work (renewals, heartbeats, listening to other nodes)."""
        return None  # noqa: B027 - one process has nothing to do here

    async def close(self) -> None:
        """Give back everything this node holds and stop background work."""
        return None  # noqa: B027 - one process has nothing to do here

    # --- single-use session tokens ------------------------------------------------------
    @abstractmethod
    async def put_token(self, token: str, payload: str, ttl_s: float) -> None:
        """Store `payload` under `token` for `ttl_s`."""

    @abstractmethod
    async def take_token(self, token: str) -> str | None:
        """The payload stored under `token`, removed in the same step (one winner), or None."""

    # --- session caps -------------------------------------------------------------------
    @abstractmethod
    async def acquire(self, lease_id: str, user_id: str, *, per_user: bool) -> None:
        """Take one session slot (and one of `user_id`'s when `per_user`); `LimitExceeded`."""

    @abstractmethod
    async def release(self, lease_id: str, user_id: str) -> None:
        """Give the slot back; never raises (an unreachable store lets the lease lapse)."""

    def attach(self, lease_id: str, session: LiveSession) -> None:
        """`session` is what `lease_id` admitted (the directory shows it)."""
        return None  # noqa: B027 - one process has nothing to do here

    @abstractmethod
    async def hold(self, user_id: str, seconds: float) -> str:
        """Count a minted provider credential as one of the user's sessions for `seconds`;
        -> a handle for `unhold`. Raises `LimitExceeded`."""

    @abstractmethod
    async def unhold(self, user_id: str, handle: str) -> None:
        """The credential was not minted after all; never raises."""

    # --- rate limits --------------------------------------------------------------------
    @abstractmethod
    async def take_rate(self, key: str, per_min: int) -> float:
        """Spend one of `key`'s `per_min` requests per minute: 0.0 when allowed, else the
        seconds until one is back."""

    # --- the session directory ----------------------------------------------------------
    @abstractmethod
    async def sessions(self) -> list[dict[str, Any]]:
        """Every live session in the cluster (each `info()` plus its `node`)."""

    async def session(self, session_id: str) -> dict[str, Any] | None:
        for info in await self.sessions():
            if info.get("sessionId") == session_id:
                return info
        return None

    @abstractmethod
    async def end_session(self, session_id: str, reason: str) -> bool:
        """Ask whichever node holds `session_id` to end it; False when no node does."""

    async def drain_node(self, node: str) -> bool:
        """Ask `node` to drain (stop admitting, send its clients elsewhere, exit); False when
        no live node has that name."""
        if node != self.node_id:
            return False
        if self.on_drain is not None:
            self.on_drain()
        return True

    # --- breakers and nodes -------------------------------------------------------------
    def breaker_changed(self, engine: str, opened: bool, retry_after_s: float) -> None:
        """This node's breaker for `engine` opened or closed: tell the others."""
        return None  # noqa: B027 - one process has nothing to do here

    @abstractmethod
    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes, each `{"node", "startedAt", "sessions", "draining"}`."""


class MemoryShared(SharedState):
    """Everything in this process: one gateway process, as voxgate always ran."""

    kind = "memory"

    def __init__(
        self, limiter: SessionLimiter, buckets: KeyedTokenBuckets, node_id: str | None = None
    ) -> None:
        super().__init__(node_id)
        self.limiter = limiter
        self.buckets = buckets
        self._tokens: dict[str, tuple[str, float]] = {}
        self._state: GatewayState | None = None

    async def start(self, state: GatewayState) -> None:
        self._state = state

    async def put_token(self, token: str, payload: str, ttl_s: float) -> None:
        now = time.monotonic()
        for old in [t for t, (_, until) in self._tokens.items() if until < now]:
            del self._tokens[old]
        self._tokens[token] = (payload, now + ttl_s)

    async def take_token(self, token: str) -> str | None:
        entry = self._tokens.pop(token, None)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    async def acquire(self, lease_id: str, user_id: str, *, per_user: bool) -> None:
        self.limiter.acquire(user_id, per_user=per_user)

    async def release(self, lease_id: str, user_id: str) -> None:
        self.limiter.release(user_id)

    async def hold(self, user_id: str, seconds: float) -> str:
        return repr(self.limiter.hold(user_id, seconds))

    async def unhold(self, user_id: str, handle: str) -> None:
        self.limiter.unhold(user_id, float(handle))

    async def take_rate(self, key: str, per_min: int) -> float:
        if self.buckets.take(key):
            return 0.0
        return max(1e-3, self.buckets.retry_after_s(key))

    async def sessions(self) -> list[dict[str, Any]]:
        if self._state is None:
            return []
        return [{**s.info(), "node": self.node_id} for s in list(self._state.sessions.values())]

    async def end_session(self, session_id: str, reason: str) -> bool:
        if self._state is None or session_id not in self._state.sessions:
            return False
        if self.on_end_session is not None:
            self.on_end_session(session_id, reason)
        return True

    async def nodes(self) -> list[dict[str, Any]]:
        state = self._state
        return [
            {
                "node": self.node_id,
                "startedAt": _iso(self.started_at),
                "sessions": len(state.sessions) if state else 0,
                "draining": bool(state and state.shutting_down),
            }
        ]


__all__ = [
    "LEASE_S",
    "RENEW_S",
    "LimitExceeded",
    "MemoryShared",
    "SharedState",
    "SharedUnavailable",
    "default_node_id",
]
