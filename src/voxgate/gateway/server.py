"""Running the app under uvicorn with a shutdown that clients can act on.

uvicorn's own shutdown closes WebSockets with 1012 ("service restart"), which official SDKs
treat as "reconnect now", and it does so before the app's lifespan shutdown runs. We step in
first: stop accepting, tell every session `status: disconnected` (reason `server_shutdown`),
close with 1001, let sessions finish writing turns, then let uvicorn finish.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from voxgate.config import Settings
from voxgate.gateway.limits import HEADER_LIMIT_BYTES, HEADERS_TOO_LARGE
from voxgate.gateway.state import GatewayState

log = logging.getLogger("voxgate.server")


class VoxgateServer(uvicorn.Server):
    async def shutdown(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        app = self.config.loaded_app
        state: GatewayState | None = _find_state(app)
        # Stop accepting new connections first.
        for server in getattr(self, "servers", []):
            server.close()
        if state is not None:
            try:
                await state.shutdown_sessions("server_shutdown")
            except Exception:
                log.exception("graceful session shutdown failed")
        await super().shutdown(sockets=sockets)


def _find_state(app: object) -> GatewayState | None:
    # uvicorn wraps the app in middleware; walk down to the FastAPI instance.
    seen = 0
    while app is not None and seen < 10:
        if isinstance(app, FastAPI):
            return getattr(app.state, "gateway", None)
        app = getattr(app, "app", None)
        seen += 1
    return None


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two bounds it lacks: a deadline for each request's headers,
    and a cap on open connections.

    uvicorn's keep-alive timer only runs between requests and is reset by any byte, so a client
    that trickles a request's headers (or never finishes them) holds its socket for good; a few
    hundred of those exhaust the process's file descriptors and `/health` stops answering. Here
    the whole request head must arrive within `header_timeout_s` of the connection (or of the
    previous response); past `max_connections` open connections, a new one is closed at once.
    """

    header_timeout_s = 10.0
    max_connections = 2048
    _last_refusal_log = -1e9

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            now = self.loop.time()
            if now - BoundedH11Protocol._last_refusal_log > 10.0:  # a flood is one line, not many
                BoundedH11Protocol._last_refusal_log = now
                log.warning(
                    "%d connections open, the limit is %d (VOXGATE_MAX_CONNECTIONS): closing new "
                    "ones until some end", len(self.connections) - 1, self.max_connections,
                )  # fmt: skip
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()  # the request's head is in (or the socket was upgraded)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request on this connection gets its own deadline
        super().on_response_complete()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # h11 refuses a head that outgrows `h11_max_incomplete_event_size` before it is whole
        # (one that arrived whole reaches `HeaderSizeLimit` instead): say what was wrong, with
        # the same 431 and body, not a bare "Invalid HTTP request".
        pending, _ = self.conn.trailing_data
        if len(pending) <= HEADER_LIMIT_BYTES or self.conn.our_state is not h11.IDLE:
            super().send_400_response(msg)
            return
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(HEADERS_TOO_LARGE)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + HEADERS_TOO_LARGE
        )
        self.transport.close()


def batching_ws_protocol() -> type | str:
    """uvicorn's sans-I/O WebSocket protocol, pausing reads only when the app falls behind.

    uvicorn pauses reading the socket after every message it queues for the app and resumes
    once the app has taken it: two `epoll_ctl` calls and selector bookkeeping per audio frame,
    9 to 12% of the gateway's CPU (docs/benchmarks.md, benchmark 8). Here it pauses only
    when more than `PAUSE_BYTES` or `PAUSE_MESSAGES` wait for the app (and resumes, as uvicorn
    does, once the app has emptied the queue), so a client that keeps up costs no pausing and
    one that floods is still held to a bounded queue. Falls back to uvicorn's own choice if its
    protocol class is not the one this was written against.
    """
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:  # pragma: no cover - uvicorn without the sans-I/O implementation
        return "auto"
    if not all(
        hasattr(WebSocketsSansIOProtocol, name) for name in ("send_receive_event_to_app", "receive")
    ):  # pragma: no cover
        return "auto"

    class BatchingWebSocketProtocol(WebSocketsSansIOProtocol):
        PAUSE_BYTES = 64 * 1024
        PAUSE_MESSAGES = 64
        _queued_bytes = 0

        def send_receive_event_to_app(self) -> None:
            size = sum(map(len, self.frames))
            paused = self.read_paused
            self.read_paused = True  # so uvicorn's own pause after every message is skipped
            try:
                super().send_receive_event_to_app()
            finally:
                self.read_paused = paused
            if self.close_sent or self.read_paused:
                return  # past the close, reads stay on (uvicorn discards the message)
            self._queued_bytes += size
            if self._queued_bytes > self.PAUSE_BYTES or self.queue.qsize() >= self.PAUSE_MESSAGES:
                self.read_paused = True
                self.transport.pause_reading()

        async def receive(self) -> Any:
            message = await super().receive()  # resumes reading once the queue is empty
            if self.queue.empty():
                self._queued_bytes = 0
            return message

    return BatchingWebSocketProtocol


def bounded_protocol(settings: Settings) -> type[BoundedH11Protocol]:
    """The HTTP protocol class with this server's bounds."""
    return type(
        "VoxgateH11Protocol",
        (BoundedH11Protocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_connections": settings.max_connections},
    )


def uvicorn_config(app: FastAPI, settings: Settings, *, port: int | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_level=settings.log_level.lower(),
        log_config=None,  # our logging setup applies
        access_log=False,
        # The app checks VOXGATE_MAX_FRAME_BYTES itself so it can say why; uvicorn's hard cap
        # only guards memory against absurd frames.
        ws_max_size=max(
            16 * 1024 * 1024, settings.max_frame_bytes * 4, settings.compat_max_event_bytes + 65536
        ),
        ws_ping_interval=20.0,
        # Every browser offers permessage-deflate; on PCM it costs 4-6% CPU per frame and saves
        # almost nothing (docs/benchmarks.md), so audio links go uncompressed.
        ws_per_message_deflate=settings.ws_compression,
        proxy_headers=True,
        # Ours, not uvicorn's FORWARDED_ALLOW_IPS: one documented place for it.
        forwarded_allow_ips=settings.forwarded_allow_ips,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_deadline_s)),
        lifespan="on",
        # h11 enforces the header-size bound below while parsing (httptools buffers any size
        # first); only the HTTP handshake is parsed this way, WebSocket frames are not. The
        # subclass adds the header deadline and the connection cap.
        http=bounded_protocol(settings),
        ws=batching_ws_protocol(),
        h11_max_incomplete_event_size=HEADER_LIMIT_BYTES,
        # Requests beyond this many connections or in-flight requests get 503.
        limit_concurrency=settings.max_connections,
    )


def serve(settings: Settings) -> None:
    from voxgate.gateway.app import create_app

    app = create_app(settings)
    server = VoxgateServer(uvicorn_config(app, settings))
    # `run()` uses uvicorn's loop choice: uvloop when installed (uvicorn[standard]), which cut
    # the gateway's CPU per relayed frame by 15-30% in the relay benchmark.
    server.run()
