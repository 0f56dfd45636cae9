"""Process-wide gateway state shared by all routes and sessions (one per app)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any, Protocol

from voxgate.config import Settings
from voxgate.gateway.auth import Authenticator
from voxgate.gateway.limits import CircuitBreaker, KeyedTokenBuckets, SessionLimiter
from voxgate.gateway.metrics import Metrics
from voxgate.gateway.outbox import Outbox, OutboxFactory
from voxgate.gateway.shared import MemoryShared, SharedState
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
        #: What must hold across processes (tokens, caps, rate limits, the session directory,
        #: breakers, the node registry): this process's memory, or Redis.
        self.shared: SharedState = shared_state_for(settings, self.limiter, self.token_buckets)
        self.shared.on_end_session = self._end_session
        self.shared.on_breaker = self._remote_breaker
        self.shared.on_drain = self.drain
        self._draining: asyncio.Task[None] | None = None
        if self.shared.kind != "memory":
            self.authenticator.session_tokens.shared = self.shared
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
            if self.shared.kind != "memory":
                shared = self.shared
                b.on_change = lambda opened, after: shared.breaker_changed(engine, opened, after)
            self._breakers[engine] = b
        return b

    def _remote_breaker(self, engine: str, opened: bool, retry_after_s: float) -> None:
        self.breaker(engine).apply_remote(opened, retry_after_s)

    def _end_session(self, session_id: str, reason: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            log.info("ending session %s (%s)", session_id, reason)
            session.request_shutdown(reason)

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

    def drain(self) -> None:
        """An admin asked this node to drain: exactly what SIGTERM does. Under `voxgate serve`
        the process signals itself, so uvicorn's graceful shutdown runs (stop admitting,
        `/health` 503, clients told `server_shutdown` and closed 1001 so they reconnect
        elsewhere, turns written, exit). A gateway embedded in another program (tests) has no
        such handler: it only stops admitting and ends its sessions the same way."""
        if self._draining is not None:
            return
        self.shutting_down = True
        log.warning("draining: an admin asked this node to stop")
        if _serving_under_uvicorn():
            signal.raise_signal(signal.SIGTERM)
            return
        self._draining = asyncio.get_running_loop().create_task(self.shutdown_sessions())

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


def _serving_under_uvicorn() -> bool:
    """Whether SIGTERM reaches uvicorn's graceful shutdown in this process."""
    handler = signal.getsignal(signal.SIGTERM)
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith(("uvicorn", "voxgate"))


def shared_state_for(
    settings: Settings, limiter: SessionLimiter, buckets: KeyedTokenBuckets
) -> SharedState:
    """The shared state the settings ask for: Redis when `VOXGATE_REDIS_URL` is set."""
    if settings.redis_url:
        from voxgate.gateway.shared_redis import RedisShared

        return RedisShared(
            settings.redis_url,
            max_sessions=settings.max_sessions,
            max_per_user=settings.max_sessions_per_user,
            fail_open=settings.redis_fail_open,
            node_id=settings.node_name,
        )
    return MemoryShared(limiter, buckets, node_id=settings.node_name)


def _default_store(settings: Settings) -> ConversationStore:
    from voxgate.store.sql import SqlConversationStore

    return SqlConversationStore(settings.database_url)


def _audio_log(settings: Settings) -> Any:
    if not settings.audio_log_dir:
        return None
    from voxgate.store.audio_log import AudioLog

    return AudioLog(settings.audio_log_dir)
