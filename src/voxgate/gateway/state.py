"""Process-wide gateway state shared by all routes and sessions (one per app)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from voxgate.config import Settings
from voxgate.gateway.auth import Authenticator
from voxgate.gateway.limits import CircuitBreaker, KeyedTokenBuckets, SessionLimiter
from voxgate.gateway.metrics import Metrics
from voxgate.gateway.outbox import Outbox, OutboxFactory
from voxgate.store.base import ConversationStore
from voxgate.tools.box import ToolBox

log = logging.getLogger("voxgate.gateway")


class LiveSession(Protocol):
    """What the registry of live sessions needs from one, whichever endpoint serves it: the
    status and admin routes read it, and a server shutdown asks it to end."""

    @property
    def id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def engine_name(self) -> str | None: ...
    @property
    def started(self) -> bool: ...
    @property
    def conversation_id(self) -> str | None: ...
    def info(self) -> dict[str, Any]: ...
    def request_shutdown(self, reason: str = "server_shutdown") -> None: ...


@dataclass(frozen=True, slots=True)
class SessionTuning:
    """Knobs of the session machinery for experiments (benchmarks), not settings of voxgate."""

    #: Builds each `/ws` session's outbox (a benchmark tries variants).
    outbox_factory: OutboxFactory = Outbox
    #: How often a session's watchdog wakes to check its timeouts.
    watchdog_tick_s: float = 1.0


class GatewayState:
    def __init__(
        self,
        settings: Settings,
        store: ConversationStore | None = None,
        tuning: SessionTuning | None = None,
    ) -> None:
        self.settings = settings
        self.tuning = tuning or SessionTuning()
        self.authenticator = Authenticator(settings)
        self.limiter = SessionLimiter(settings.max_sessions, settings.max_sessions_per_user)
        #: One per-user budget for every route that mints a credential (`/ws` session tokens,
        #: provider secrets from either token endpoint): two routes must not mean two budgets.
        self.token_buckets = KeyedTokenBuckets.per_minute(settings.token_requests_per_min)
        self.metrics = Metrics()
        self.store: ConversationStore = store if store is not None else _default_store(settings)
        self.audio_log = _audio_log(settings)
        #: The operator's server tools (`VOXGATE_TOOLS`, `VOXGATE_TOOLS_FILE`).
        self.tools = ToolBox.from_settings(settings)
        self.sessions: dict[str, LiveSession] = {}
        self.websockets_open = 0
        self.shutting_down = False
        self.started_at = time.time()
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, engine: str) -> CircuitBreaker:
        b = self._breakers.get(engine)
        if b is None:
            b = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_cooldown_s)
            self._breakers[engine] = b
        return b

    def status(self) -> dict[str, Any]:
        started = [s for s in self.sessions.values() if s.started]
        by_engine: dict[str, int] = {}
        for s in started:
            by_engine[s.engine_name or "?"] = by_engine.get(s.engine_name or "?", 0) + 1
        return {
            "websockets": self.websockets_open,
            "sessions": len(started),
            "pending": len(self.sessions) - len(started),
            "byEngine": by_engine,
            "maxSessions": self.settings.max_sessions,
            "shuttingDown": self.shutting_down,
        }

    async def shutdown_sessions(self, reason: str = "server_shutdown") -> None:
        """Tell every client we are going away (1001), let sessions finish writing turns."""
        self.shutting_down = True
        sessions = list(self.sessions.values())
        if not sessions:
            return
        log.info("shutting down %d session(s)", len(sessions))
        for session in sessions:
            session.request_shutdown(reason)
        deadline = self.settings.shutdown_deadline_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                while self.sessions:
                    await asyncio.sleep(0.05)


def _default_store(settings: Settings) -> ConversationStore:
    from voxgate.store.sql import SqlConversationStore

    return SqlConversationStore(settings.database_url)


def _audio_log(settings: Settings) -> Any:
    if not settings.audio_log_dir:
        return None
    from voxgate.store.audio_log import AudioLog

    return AudioLog(settings.audio_log_dir)
