"""The life of one live session, whichever endpoint serves it: run, watch, finish.

Shape (after Kyutai unmute's handler): the endpoint's loops and a watchdog run in one
`asyncio.TaskGroup`; whichever ends first ends the session by raising `SessionEnded` (how to
close the socket, what to tell the client first) and the group cancels the rest. Turn writes go
through the session's `TurnLog`, drained with a deadline after the group ends, so finished turns
are stored even when the session dies.

The two endpoints speak different dialects (neutral `error` messages, OpenAI-shaped error
events) but end for the same reasons; `LiveSessionBase` decides when and the endpoint words it
(`_ending`), along with the few steps only it knows (its loops, how its upstream stops).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from starlette.websockets import WebSocket, WebSocketState

from voxgate import protocol as P
from voxgate.gateway.auth import Identity
from voxgate.gateway.outbox import abort_connection
from voxgate.gateway.state import GatewayState
from voxgate.gateway.turnlog import TurnLog
from voxgate.logs import session_id_var
from voxgate.protocol import CloseCode

log = logging.getLogger("voxgate.session")

#: How long a session's last words (and the close) may take before its connection is dropped.
LAST_WORDS_S = 2.0
#: The shutdown reason of a session an admin ended (`DELETE /api/realtime/sessions/{id}`):
#: the client is told and the socket closes normally (1000), so clients do not reconnect.
ENDED_BY_ADMIN = "ended_by_admin"


def close_reason(text: str, limit: int = 123) -> str:
    """`text` cut to fit a close frame (123 UTF-8 bytes), on a character boundary.

    Why bytes: a reason quoting client input (an origin, a message type) in non-ASCII letters
    overflows the frame even at 120 characters, the close fails, and the client sees 1006
    (which SDKs auto-reconnect on) instead of the code that says why.
    """
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


class SessionEnded(Exception):
    """Raised inside the task group to end the session; carries how to close the socket.

    `final` holds the messages the client reads before the close, in its endpoint's dialect.
    `client_gone` skips them (and the close) when the client already left.
    """

    def __init__(
        self,
        close_code: int = CloseCode.NORMAL,
        reason: str = "",
        final: Sequence[Mapping[str, Any]] = (),
        *,
        client_gone: bool = False,
    ) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason
        self.final = final
        self.client_gone = client_gone


class Ending(StrEnum):
    """Why the lifecycle itself ends a session; each endpoint says it in its own dialect."""

    SHUTDOWN = "shutdown"  # the server is going away (reason: `shutdown_reason`)
    IDLE = "idle"  # nothing received for `VOXGATE_IDLE_TIMEOUT_S`
    STALLED = "stalled"  # the client stopped reading for `VOXGATE_CLIENT_STALL_TIMEOUT_S`
    EXPIRED = "expired"  # the session reached `VOXGATE_MAX_SESSION_S`
    INTERNAL = "internal"  # a bug in the gateway


class _Ticker:
    """One timer for every live session on an event loop (with the same tick): each tick runs
    every session's checks (`LiveSessionBase._tick`) in one callback, where a task per session
    used to wake up every second, all in step (a task, a timer and a `wait_for` each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_s: float) -> None:
        self.loop = loop
        self.tick_s = tick_s
        self.sessions: dict[LiveSessionBase, None] = {}  # an ordered set
        self._timer: asyncio.TimerHandle | None = None

    def add(self, session: LiveSessionBase) -> None:
        self.sessions[session] = None
        if self._timer is None:
            self._timer = self.loop.call_later(self.tick_s, self._run)

    def discard(self, session: LiveSessionBase) -> None:
        self.sessions.pop(session, None)

    def _run(self) -> None:
        self._timer = None
        for session in list(self.sessions):
            session._tick()  # never raises: a failure ends that session only
        if self.sessions:
            self._timer = self.loop.call_later(self.tick_s, self._run)


_tickers: dict[tuple[asyncio.AbstractEventLoop, float], _Ticker] = {}


def _ticker(tick_s: float) -> _Ticker:
    loop = asyncio.get_running_loop()
    ticker = _tickers.get((loop, tick_s))
    if ticker is None:
        for key in [k for k in _tickers if k[0].is_closed()]:  # loops of finished tests/runs
            del _tickers[key]
        ticker = _tickers[(loop, tick_s)] = _Ticker(loop, tick_s)
    return ticker


class LiveSessionBase(ABC):
    """One client socket served until it ends: the part both endpoints share.

    It fits `state.LiveSession` (what `/ws/status`, the admin routes and a shutdown read).
    """

    #: Names the session in logs and its store writer.
    label: ClassVar[str] = "session"

    def __init__(
        self, state: GatewayState, websocket: WebSocket, identity: Identity, engine_name: str | None
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.ws = websocket
        self.identity = identity
        self.id = identity.session_id or uuid.uuid4().hex
        self.user_id = identity.user_id
        self.engine_name = engine_name
        self.started = False
        self.started_at = time.time()
        self.last_activity = time.monotonic()
        #: Client audio in each direction, in bytes at the client's rates (`*_bytes_per_s`).
        self.audio_in_bytes = 0
        self.audio_out_bytes = 0
        self.in_bytes_per_s = 48000
        self.out_bytes_per_s = 48000
        self._flushed_in = 0
        self._flushed_out = 0
        self.turns = TurnLog(
            state.store, state.metrics, f"{self.label} {self.id}", engine=engine_name
        )
        self._shutdown = asyncio.Event()
        self.shutdown_reason = "server_shutdown"
        #: Resolved (with an `Ending`, or a failure) when the watchdog must end the session.
        self._doom: asyncio.Future[Ending] | None = None

    # --- what the registry reads ------------------------------------------------------------

    @property
    def conversation_id(self) -> str | None:
        return self.turns.conversation_id

    @property
    def status(self) -> str:
        return "connected"

    def info(self) -> dict[str, Any]:
        return {
            "sessionId": self.id,
            "userId": self.user_id,
            "engine": self.engine_name,
            "conversationId": self.conversation_id,
            "started": self.started,
            "startedAt": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "audioInSeconds": round(self.audio_in_bytes / self.in_bytes_per_s, 3),
            "audioOutSeconds": round(self.audio_out_bytes / self.out_bytes_per_s, 3),
            "turns": self.turns.stored_count,
            "status": self.status,
        }

    def request_shutdown(self, reason: str = "server_shutdown") -> None:
        self.shutdown_reason = reason
        self._shutdown.set()
        self._end_by(Ending.SHUTDOWN)

    def _end_by(self, why: Ending) -> None:
        doom = self._doom
        if doom is not None and not doom.done():
            doom.set_result(why)

    # --- what each endpoint supplies --------------------------------------------------------

    @abstractmethod
    def _start_loops(self, group: asyncio.TaskGroup) -> None:
        """Start the endpoint's loops in `group`; the first to end ends the session."""

    @abstractmethod
    def _ending(self, why: Ending) -> SessionEnded:
        """How this endpoint ends a session for a reason the lifecycle found."""

    @abstractmethod
    async def _stop_upstream(self) -> None:
        """Stop whatever the session talks to (the engine, the provider socket); no raising."""

    @abstractmethod
    def _store_cut_off(self, ended: SessionEnded) -> None:
        """Store the turns this end cut off, as the endpoint keeps them."""

    def _pending_frames(self) -> list[str]:
        """Messages still queued for the client, which go out ahead of the last words."""
        return []

    def _stalled_s(self) -> float:
        """How long the client has not taken a frame (endpoints with an outbox know)."""
        return 0.0

    def _unexpected(self, exc: BaseException) -> SessionEnded:
        """An exception nothing caught: a bug must not take the process down."""
        log.exception("%s %s failed", self.label, self.id, exc_info=exc)
        return self._ending(Ending.INTERNAL)

    # --- the lifecycle ------------------------------------------------------------------------

    def _count_start(self) -> None:
        self.started = True
        metrics = self.state.metrics
        metrics.sessions_total.labels(self.engine_name).inc()
        metrics.active_sessions.labels(self.engine_name).inc()

    async def run(self) -> None:
        """Serve the (already accepted) socket until it ends; never raises."""
        session_id_var.set(self.id)
        self.turns.start()
        ended = SessionEnded()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watchdog(), name="watchdog")
                self._start_loops(group)
        except* SessionEnded as eg:
            ended = eg.exceptions[0]  # type: ignore[assignment]
        except* Exception as eg:
            ended = self._unexpected(eg.exceptions[0])
        finally:
            await self._finish(ended)

    async def _watchdog(self) -> None:
        """The one owner of every session timeout, and the once-a-second metrics flush: it
        waits while the loop's shared `_Ticker` checks the session once a tick (`_tick`), and
        ends the session for the reason found (a shutdown request: at once)."""
        self._doom = doom = asyncio.get_running_loop().create_future()
        if self._shutdown.is_set():
            doom.set_result(Ending.SHUTDOWN)
        ticker = _ticker(self.state.tuning.watchdog_tick_s)
        ticker.add(self)
        try:
            why = await doom
        finally:
            ticker.discard(self)
        self._flush_metrics()
        raise self._ending(why)

    def _tick(self) -> None:
        """One tick's checks (from the shared `_Ticker`); never raises."""
        doom = self._doom
        if doom is None or doom.done():
            return
        try:
            self._flush_metrics()
            s = self.settings
            if time.monotonic() - self.last_activity > s.idle_timeout_s:
                doom.set_result(Ending.IDLE)
            elif self._stalled_s() > s.client_stall_timeout_s:
                # Memory is bounded anyway (see Outbox); this frees the session and, through
                # the abort in `_last_words`, the connection. The client will likely never read
                # why, but the logs and metrics will.
                log.warning("%s %s: the client stopped reading; closing", self.label, self.id)
                doom.set_result(Ending.STALLED)
            elif time.time() - self.started_at > s.max_session_s:
                doom.set_result(Ending.EXPIRED)
        except Exception as exc:  # a bug: this session ends as `internal`, the others tick on
            doom.set_exception(exc)

    def _flush_metrics(self) -> None:
        # Audio counters are summed locally per frame and flushed once a second: no lock and no
        # float maths per frame on the hot path.
        # Only ever forward: a Prometheus counter raises on a negative step, and a flush that
        # raised would end the session and skip its bookkeeping.
        m = self.state.metrics
        if self.audio_in_bytes > self._flushed_in:
            m.audio_in_seconds.inc((self.audio_in_bytes - self._flushed_in) / self.in_bytes_per_s)
            self._flushed_in = self.audio_in_bytes
        if self.audio_out_bytes > self._flushed_out:
            m.audio_out_seconds.inc(
                (self.audio_out_bytes - self._flushed_out) / self.out_bytes_per_s
            )
            self._flushed_out = self.audio_out_bytes

    async def _finish(self, ended: SessionEnded) -> None:
        try:
            # Stop the upstream first: no new events, nothing more to relay.
            await self._stop_upstream()
            await self._last_words(ended)
            # Finish writing turns, within the shutdown deadline, keeping what the end cut off.
            self._store_cut_off(ended)
            await self.turns.close(self.settings.shutdown_deadline_s)
            self._flush_metrics()
        finally:
            # Whatever failed above, the gauge of live sessions must come down.
            if self.started and self.engine_name:
                m = self.state.metrics
                m.active_sessions.labels(self.engine_name).dec()
                m.session_duration.labels(self.engine_name).observe(time.time() - self.started_at)
        log.info(
            "%s %s ended (close %s%s)",
            self.label,
            self.id,
            ended.close_code,
            f": {ended.reason}" if ended.reason else "",
        )

    async def _last_words(self, ended: SessionEnded) -> None:
        """Queued messages and the final ones, then the close, all within `LAST_WORDS_S`."""
        frames = self._pending_frames() + [P.encode(message) for message in ended.final]
        ws = self.ws
        if ended.client_gone or ws.application_state != WebSocketState.CONNECTED:
            return
        try:
            async with asyncio.timeout(LAST_WORDS_S):
                for text in frames:
                    await ws.send({"type": "websocket.send", "text": text})
                await ws.close(ended.close_code, close_reason(ended.reason))
        except TimeoutError:
            # The client stopped reading: drop the connection rather than hold it and its
            # buffers until the peer's zero window opens (see `abort_connection`).
            if abort_connection(ws):
                log.warning(
                    "%s %s: the client is not reading; dropping its connection", self.label, self.id
                )
        except Exception:
            pass  # the client is gone; nothing left to tell it


__all__ = ["ENDED_BY_ADMIN", "Ending", "LiveSessionBase", "SessionEnded", "close_reason"]
